package vault

import (
	"bytes"
	"crypto/rand"
	"errors"
	"testing"
)

func testEntry(seed byte) *Entry {
	fill := func(n int, b byte) []byte { return bytes.Repeat([]byte{b}, n) }
	return &Entry{
		Ed25519Master: fill(64, seed),
		RSAIdentity:   fill(128, seed+1),
		Ntor:          fill(32, seed+2),
		NtorOld:       fill(32, seed+3),
		Onion:         fill(128, seed+5),
		Family:        []FamilyKey{{Name: "fam", Secret: fill(64, seed+4)}},
	}
}

func TestBundleRoundTrip(t *testing.T) {
	retired := testEntry(9)
	retired.RetiredAt = 12345 // retired-at and the TAP onion key: the last two tags, in order
	b := &Bundle{Version: 7, Relays: map[string]*Entry{"murazzano": testEntry(1), "gorgonzola": {
		Ed25519Master: make([]byte, 64), RSAIdentity: make([]byte, 128)}, "toma": retired}}
	enc, err := encodeBundle(b)
	if err != nil {
		t.Fatal(err)
	}
	got, err := decodeBundle(enc)
	if err != nil {
		t.Fatal(err)
	}
	if got.Version != 7 || len(got.Relays) != 3 || !got.Relays["murazzano"].equal(b.Relays["murazzano"]) ||
		!got.Relays["gorgonzola"].equal(b.Relays["gorgonzola"]) || !got.Relays["toma"].equal(retired) ||
		got.Relays["gorgonzola"].Onion != nil {
		t.Fatalf("round trip: %+v", got)
	}
	// Every truncation is refused.
	for i := range enc {
		if _, err := decodeBundle(enc[:i]); err == nil {
			t.Fatalf("truncated to %d bytes: accepted", i)
		}
	}
	if _, err := decodeBundle(append(enc, 0)); err == nil {
		t.Fatal("trailing byte accepted")
	}
	t.Logf("3 relays: %d bytes", len(enc))
}

func TestEnvelope(t *testing.T) {
	key := make([]byte, 32)
	rand.Read(key)
	ek := []byte("\x00\x0bEK-name-of-this-tpm")
	b := &Bundle{Version: 3, Relays: map[string]*Entry{"murazzano": testEntry(9)}}
	env, err := seal(key, ek, b)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(env, b.Relays["murazzano"].Ed25519Master[:16]) {
		t.Fatal("plaintext in the envelope")
	}
	if got, err := open(key, ek, env); err != nil || !got.Relays["murazzano"].equal(b.Relays["murazzano"]) {
		t.Fatalf("open: %v", err)
	}
	other := bytes.Clone(key)
	other[0] ^= 1
	if _, err := open(other, ek, env); !errors.Is(err, ErrUndecryptable) {
		t.Fatalf("other vault key: %v", err)
	}
	if _, err := open(key, []byte("\x00\x0bother EK"), env); !errors.Is(err, ErrUndecryptable) {
		t.Fatalf("other EK: %v", err)
	}
	for i := range env {
		bad := bytes.Clone(env)
		bad[i] ^= 0x80
		if _, err := open(key, ek, bad); err == nil {
			t.Fatalf("byte %d flipped: accepted", i)
		}
	}
}

func TestEncodeRefusesBadEntries(t *testing.T) {
	for name, e := range map[string]*Entry{
		"short ed25519": {Ed25519Master: make([]byte, 32), RSAIdentity: make([]byte, 128)},
		"odd p‖q":       {Ed25519Master: make([]byte, 64), RSAIdentity: make([]byte, 127)},
		"short ntor":    {Ed25519Master: make([]byte, 64), RSAIdentity: make([]byte, 128), Ntor: make([]byte, 31)},
		"family name":   {Ed25519Master: make([]byte, 64), RSAIdentity: make([]byte, 128), Family: []FamilyKey{{Name: "../x", Secret: make([]byte, 64)}}},
	} {
		if _, err := encodeBundle(&Bundle{Relays: map[string]*Entry{"r": e}}); err == nil {
			t.Errorf("%s: encoded", name)
		}
	}
	if _, err := encodeBundle(&Bundle{Relays: map[string]*Entry{"a/b": testEntry(1)}}); err == nil {
		t.Error("relay name with a slash encoded")
	}
}

// FuzzDecodeBundle: the decoder never panics, and whatever it accepts
// re-encodes to the same bytes (one encoding per bundle).
func FuzzDecodeBundle(f *testing.F) {
	for _, b := range []*Bundle{
		{},
		{Version: 1, Relays: map[string]*Entry{"murazzano": testEntry(1)}},
		{Version: 1 << 40, Relays: map[string]*Entry{"a": testEntry(2), "b": {Ed25519Master: make([]byte, 64), RSAIdentity: make([]byte, 128)}}},
	} {
		if b.Relays == nil {
			b.Relays = map[string]*Entry{}
		}
		enc, err := encodeBundle(b)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(enc)
	}
	f.Add([]byte("PTLK\x01"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		b, err := decodeBundle(data)
		if err != nil {
			return
		}
		enc, err := encodeBundle(b)
		if err != nil {
			t.Fatalf("decoded bundle does not encode: %v", err)
		}
		if !bytes.Equal(enc, data) {
			t.Fatalf("re-encoding differs:\n%x\n%x", data, enc)
		}
	})
}

// withFields is the bundle of one relay, named r, with e's fields and then
// the raw fields extra (tag, data), as a later agent could write it.
func withFields(t *testing.T, e *Entry, extra ...[2][]byte) []byte {
	t.Helper()
	enc, err := encodeBundle(&Bundle{Version: 3, Relays: map[string]*Entry{"r": e}})
	if err != nil {
		t.Fatal(err)
	}
	const nf = 4 + 1 + 8 + 2 + 1 + len("r") // the relay's field count
	enc[nf] += byte(len(extra))
	for _, f := range extra {
		enc = append(enc, f[0][0], byte(len(f[1])>>8), byte(len(f[1])))
		enc = append(enc, f[1]...)
	}
	return enc
}

func TestOptionalFields(t *testing.T) {
	e := &Entry{Ed25519Master: bytes.Repeat([]byte{1}, 64), RSAIdentity: bytes.Repeat([]byte{2}, 128)}
	field := func(tag byte, n int) [2][]byte { return [2][]byte{{tag}, bytes.Repeat([]byte{tag}, n)} }

	// A later agent's optional fields are skipped; the keys come through.
	got, err := decodeBundle(withFields(t, e, field(tagOptional, 5), field(200, 300)))
	if err != nil {
		t.Fatalf("optional fields refused: %v", err)
	}
	if !got.Relays["r"].equal(e) {
		t.Fatalf("keys changed: %+v", got.Relays["r"])
	}
	// and are gone from what this agent writes back.
	re, err := encodeBundle(got)
	if err != nil {
		t.Fatal(err)
	}
	if want := withFields(t, e); !bytes.Equal(re, want) {
		t.Fatal("re-encoded bundle keeps the skipped fields")
	}

	for _, c := range []struct {
		name  string
		extra [][2][]byte
	}{
		{"unknown field below the optional range", [][2][]byte{field(tagOnion+1, 4)}},
		{"last tag below the optional range", [][2][]byte{field(tagOptional-1, 4)}},
		{"optional fields out of order", [][2][]byte{field(tagOptional+2, 1), field(tagOptional+1, 1)}},
		{"optional field repeated", [][2][]byte{field(tagOptional, 1), field(tagOptional, 1)}},
	} {
		if _, err := decodeBundle(withFields(t, e, c.extra...)); err == nil {
			t.Errorf("%s: accepted", c.name)
		}
	}
	// An optional field cut short is a truncated bundle.
	enc := withFields(t, e, field(tagOptional, 10))
	if _, err := decodeBundle(enc[:len(enc)-1]); err == nil {
		t.Error("truncated optional field accepted")
	}
}
