package httpapi

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"patela/internal/api"
)

// Each decoder must never panic, must refuse bodies over api.MaxBody, and
// whatever it accepts must satisfy its checks and survive a JSON round trip.

func seeds(f *testing.F, valid ...string) {
	for _, s := range valid {
		f.Add([]byte(s))
	}
	for _, s := range []string{
		``, `{}`, `null`, `[]`, `{"a":1}`, `{} {}`, `{"`, `"\u0000"`, `{"cpus":1e400}`,
		`{"ek_public":"!!!"}`, strings.Repeat(`[`, 10000),
		`{"x":"` + strings.Repeat("a", api.MaxBody) + `"}`,
	} {
		f.Add([]byte(s))
	}
}

func roundTrip[T any](t *testing.T, v *T, decode func(r *bytes.Reader) (*T, error)) {
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatalf("re-encoding an accepted value: %v", err)
	}
	w, err := decode(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("re-encoded accepted value refused: %v\n%s", err, b)
	}
	// Compare encodings: nil and empty byte slices are the same on the wire.
	if c, _ := json.Marshal(w); !bytes.Equal(b, c) {
		t.Fatalf("round trip changed the value: %s -> %s", b, c)
	}
}

func checkSize(t *testing.T, data []byte, err error) {
	if len(data) > api.MaxBody && err == nil {
		t.Fatalf("accepted a %d-byte body", len(data))
	}
}

func FuzzDecodeAttest(f *testing.F) {
	seeds(f, `{"ek_public":"AAEC","ak_public":"AwQF"}`, `{"ek_public":"AAEC","ek_certificate":"MAA=","ak_public":"AwQF"}`)
	f.Fuzz(func(t *testing.T, data []byte) {
		v, err := decodeAttest(bytes.NewReader(data))
		checkSize(t, data, err)
		if err != nil {
			return
		}
		if len(v.EKPublic) == 0 || len(v.AKPublic) == 0 {
			t.Fatalf("accepted without keys: %+v", v)
		}
		roundTrip(t, v, func(r *bytes.Reader) (*api.AttestRequest, error) { return decodeAttest(r) })
	})
}

func FuzzDecodeComplete(f *testing.F) {
	seeds(f, `{"challenge_id":"0123abcd","secret":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}`)
	f.Fuzz(func(t *testing.T, data []byte) {
		v, err := decodeComplete(bytes.NewReader(data))
		checkSize(t, data, err)
		if err != nil {
			return
		}
		if v.ChallengeID == "" || len(v.ChallengeID) > 128 || len(v.Secret) == 0 {
			t.Fatalf("accepted %+v", v)
		}
		roundTrip(t, v, func(r *bytes.Reader) (*api.CompleteRequest, error) { return decodeComplete(r) })
	})
}

func FuzzDecodeSpecs(f *testing.F) {
	seeds(f, `{"cpus":4,"memory_bytes":8589934592,"cpu_model":"Xeon"}`, `{"cpus":0,"memory_bytes":1}`, `{"cpus":-1,"memory_bytes":-1}`)
	f.Fuzz(func(t *testing.T, data []byte) {
		v, err := decodeSpecs(bytes.NewReader(data))
		checkSize(t, data, err)
		if err != nil {
			return
		}
		if v.CPUs < 1 || v.MemoryBytes == 0 || len(v.CPUModel) > 256 {
			t.Fatalf("accepted %+v", v)
		}
		roundTrip(t, v, func(r *bytes.Reader) (*api.Specs, error) { return decodeSpecs(r) })
	})
}

func FuzzDecodeKeyBundle(f *testing.F) {
	seeds(f, `{"bundle":"c2VjcmV0","version":3}`, `{"bundle":"","version":1}`, `{"bundle":"AA==","version":18446744073709551615}`)
	f.Fuzz(func(t *testing.T, data []byte) {
		v, err := decodeKeyBundle(bytes.NewReader(data))
		checkSize(t, data, err)
		if err != nil {
			return
		}
		if len(v.Bundle) == 0 || v.Version == 0 || v.Version > 1<<63-1 {
			t.Fatalf("accepted %+v", v)
		}
		roundTrip(t, v, func(r *bytes.Reader) (*api.KeyBundle, error) { return decodeKeyBundle(r) })
	})
}

func FuzzDecodeStatus(f *testing.F) {
	seeds(f, `{"boot_id":"b","uptime_s":12,"relays":[{"name":"murazzano","fingerprint":"AB","ed25519_id":"x","state":"running","restarts":0}]}`,
		`{"boot_id":"","uptime_s":-1,"relays":null}`, `{"relays":[{"name":""}]}`)
	f.Fuzz(func(t *testing.T, data []byte) {
		v, err := decodeStatus(bytes.NewReader(data))
		checkSize(t, data, err)
		if err != nil {
			return
		}
		if len(v.BootID) > 64 || v.UptimeS < 0 || len(v.Relays) > 256 {
			t.Fatalf("accepted %+v", v)
		}
		for _, r := range v.Relays {
			if r.Name == "" || len(r.Name) > 19 || r.Restarts < 0 {
				t.Fatalf("accepted relay %+v", r)
			}
		}
		roundTrip(t, v, func(r *bytes.Reader) (*api.Status, error) { return decodeStatus(r) })
	})
}
