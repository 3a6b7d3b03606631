package attest

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-tpm/tpm2"
)

// seedPublics are real public areas: EKs and AKs swtpm made (RSA-2048
// L-1, P-256 L-2, swtpm_setup's P-384 H-3, a P-256 and an RSA-2048 AK)
// and the software EK and AK of the load generators.
func seedPublics(t testing.TB) map[string][]byte {
	t.Helper()
	files, err := filepath.Glob("testdata/*.hex")
	if err != nil || len(files) < 7 {
		t.Fatalf("seed public areas: %v %v", files, err)
	}
	out := map[string][]byte{}
	for _, f := range files {
		h, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		b, err := hex.DecodeString(strings.TrimSpace(string(h)))
		if err != nil {
			t.Fatal(err)
		}
		out[filepath.Base(f)] = b
	}
	return out
}

// fastOnly is parsePublic's hand reader alone: ok says it read b.
func fastOnly(b []byte) (*tpm2.TPMTPublic, bool) {
	sh := shapes.find(b)
	if sh == nil {
		return nil, false
	}
	u, ok := sh.parseUnique(b)
	if !ok {
		return nil, false
	}
	pub := sh.pub
	pub.Unique = u
	return &pub, true
}

// agree checks parsePublic against go-tpm on b: both refuse it or both
// read the same structure, and whatever the hand reader reads go-tpm
// reads alike. It says whether the hand reader read b.
func agree(t testing.TB, b []byte) bool {
	t.Helper()
	ref, refErr := parsePublicTPM(b)
	fast, fastOK := fastOnly(b)
	if fastOK {
		if refErr != nil {
			t.Fatalf("hand reader accepted what go-tpm refuses (%v): %x", refErr, b)
		}
		if !reflect.DeepEqual(fast, ref) {
			t.Fatalf("hand reader read %+v, go-tpm %+v: %x", fast, ref, b)
		}
	}
	got, err := parsePublic(b)
	if (err == nil) != (refErr == nil) {
		t.Fatalf("parsePublic: %v, go-tpm: %v on %x", err, refErr, b)
	}
	if err == nil && !reflect.DeepEqual(got, ref) {
		t.Fatalf("parsePublic read %+v, go-tpm %+v: %x", got, ref, b)
	}
	return fastOK
}

var learnSeeds sync.Once

// TestParsePublicAgrees: every real public area is read by hand once its
// shape is known, alike; every truncation, trailing byte, byte flip and
// changed length prefix is refused by both or read alike.
func TestParsePublicAgrees(t *testing.T) {
	seeds := seedPublics(t)
	r := rand.New(rand.NewPCG(3, 4))
	for name, b := range seeds {
		agree(t, b) // learns the shape if new
		if !agree(t, b) {
			t.Fatalf("%s: not read by hand after its shape was learnt", name)
		}
		for n := range len(b) {
			agree(t, b[:n])
		}
		for _, tail := range [][]byte{{0}, {0, 0}, {0xff}, b[len(b)-2:], b} {
			agree(t, append(bytes.Clone(b), tail...))
		}
		for i := range len(b) {
			for _, x := range []byte{0x01, 0x80, 0xff, byte(1 + r.IntN(255))} {
				c := bytes.Clone(b)
				c[i] ^= x
				agree(t, c)
			}
		}
		// The key's own length prefixes, made longer and shorter: these
		// stay in a known shape, so the hand reader decides.
		sh := shapes.find(b)
		p := len(sh.prefix)
		for _, d := range []int{-2, -1, 1, 2, 0x100} {
			c := bytes.Clone(b)
			binary.BigEndian.PutUint16(c[p:], uint16(int(binary.BigEndian.Uint16(c[p:]))+d))
			agree(t, c)
		}
		// A key of other sizes: still read alike (sizes are the callers'
		// checks: fullSize, ImportEncapsulationKey, ekid).
		for _, n := range []int{0, 1, 31, 33, 600} {
			c := append(bytes.Clone(b[:p]), reencodeUnique(sh.pub.Type, bytes.Repeat([]byte{7}, n))...)
			if !agree(t, c) {
				t.Fatalf("%s with a %d-byte key: not read by hand", name, n)
			}
		}
	}
}

// reencodeUnique encodes a unique of typ whose coordinates (or modulus)
// are v.
func reencodeUnique(typ tpm2.TPMAlgID, v []byte) []byte {
	b2 := func(v []byte) []byte { return append(binary.BigEndian.AppendUint16(nil, uint16(len(v))), v...) }
	if typ == tpm2.TPMAlgECC {
		return append(b2(v), b2(v)...)
	}
	return b2(v)
}

// The parsers on top keep refusing what they refused: an EK that is a
// signing key, an AK that can decrypt, though both are read by hand.
func TestParsePublicRefusalsKept(t *testing.T) {
	seeds := seedPublics(t)
	for name, b := range seeds {
		if _, err := parsePublic(b); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		isEK := strings.Contains(name, "-ek-")
		_, ekErr := ParseEK(b)
		_, _, akErr := ParseAK(b)
		if isEK && (ekErr != nil || akErr == nil) {
			t.Errorf("%s: ParseEK %v, ParseAK %v", name, ekErr, akErr)
		}
		if !isEK && (akErr != nil || ekErr == nil) {
			t.Errorf("%s: ParseAK %v, ParseEK %v", name, akErr, ekErr)
		}
	}
}

// Learning is bounded: many shapes keep at most maxShapes, and reading
// stays correct while they churn.
func TestShapesBounded(t *testing.T) {
	seeds := seedPublics(t)
	b := seeds["softek-ek-p256.hex"]
	for i := range 3 * maxShapes {
		// Vary the auth policy: a new shape each time.
		pub, err := parsePublicTPM(b)
		if err != nil {
			t.Fatal(err)
		}
		p := *pub
		p.AuthPolicy = tpm2.TPM2BDigest{Buffer: bytes.Repeat([]byte{byte(i)}, 32)}
		c := tpm2.Marshal(p)
		agree(t, c)
		if !agree(t, c) {
			t.Fatalf("shape %d not read by hand just after it was learnt", i)
		}
		if n := len(*shapes.list.Load()); n > maxShapes {
			t.Fatalf("%d shapes kept", n)
		}
	}
	for _, s := range seeds {
		agree(t, s)
	}
}

// FuzzParsePublic holds parsePublic to go-tpm (Unmarshal plus the
// canonical re-Marshal), from real public areas.
func FuzzParsePublic(f *testing.F) {
	seeds := seedPublics(f)
	for _, b := range seeds {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		learnSeeds.Do(func() {
			for _, s := range seeds {
				parsePublic(s)
			}
		})
		agree(t, b)
		agree(t, b) // its shape may have been learnt just now
	})
}

// BenchmarkParse: a new node's EK and AK read (NewEK, ParseAK), as the
// first handshake since the server started reads them (shapes known);
// "tpm" is only the two go-tpm parses the hand reader replaces.
func BenchmarkParse(b *testing.B) {
	seeds := seedPublics(b)
	ek, ak := seeds["softek-ek-p256.hex"], seeds["quotetest-ak-p256.hex"]
	b.Run("hand", func(b *testing.B) {
		for b.Loop() {
			if _, err := NewEK(ek); err != nil {
				b.Fatal(err)
			}
			if _, _, err := ParseAK(ak); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("tpm", func(b *testing.B) {
		for b.Loop() {
			if _, err := parsePublicTPM(ek); err != nil {
				b.Fatal(err)
			}
			if _, err := parsePublicTPM(ak); err != nil {
				b.Fatal(err)
			}
		}
	})
}
