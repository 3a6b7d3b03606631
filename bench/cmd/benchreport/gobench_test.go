package main

import (
	"regexp"
	"testing"
)

func TestParseBench(t *testing.T) {
	out := []byte("goos: linux\npkg: patela/init/reconcile\n" +
		"BenchmarkRound8Relays-2   \t     747\t   1704215 ns/op\t     28752 KiB-rss-8-relays\t  253255 B/op\t    1701 allocs/op\n" +
		"BenchmarkBoot/first-2 \t 3\t 1.5e+09 ns/op\t 61.00 tpm-cmds/boot\n" +
		"BenchmarkBroken-2 \t x\t 12 ns/op\n--- FAIL: BenchmarkOther\n" +
		"BenchmarkBoot/later-2 \tswtpm: Data client disconnected\n      30\t  40812073 ns/op\t 29.00 tpm-cmds/boot\nPASS\n")
	res := parseBench("patela/init/reconcile", out)
	if len(res) != 3 {
		t.Fatalf("%d results: %+v", len(res), res)
	}
	r := res[0]
	if r.Name != "BenchmarkRound8Relays" || r.N != 747 || r.Metrics["ns/op"] != 1704215 || r.Metrics["KiB-rss-8-relays"] != 28752 ||
		len(r.Units) != 4 || r.Units[1] != "KiB-rss-8-relays" {
		t.Errorf("%+v", r)
	}
	if res[1].Name != "BenchmarkBoot/first" || res[1].Metrics["tpm-cmds/boot"] != 61 || res[1].Metrics["ns/op"] != 1.5e9 {
		t.Errorf("%+v", res[1])
	}
	if res[2].Name != "BenchmarkBoot/later" || res[2].N != 30 || res[2].Metrics["tpm-cmds/boot"] != 29 {
		t.Errorf("a result pushed to the next line by a log line: %+v", res[2])
	}
}

// The heartbeat burst sends what tor writes and the server takes (it
// once sent ed25519_id "bench", refused, and measured the refusals):
// keys in tor's encodings, none shared between relays.
func TestBenchHeartbeatKeys(t *testing.T) {
	fp, ed := regexp.MustCompile(`^[0-9A-F]{40}$`), regexp.MustCompile(`^[A-Za-z0-9+/]{43}$`)
	seen := map[string]bool{}
	st := benchHeartbeat([]string{"r0", "r1", "r2"}, map[string]string{"r1": "x"})
	for _, r := range st.Relays {
		if !fp.MatchString(r.Fingerprint) || !ed.MatchString(r.Ed25519ID) || seen[r.Fingerprint] || seen[r.Ed25519ID] {
			t.Fatalf("relay %s: fingerprint %q, ed25519 id %q", r.Name, r.Fingerprint, r.Ed25519ID)
		}
		seen[r.Fingerprint], seen[r.Ed25519ID] = true, true
	}
	if st.Relays[1].TorrcSHA256 != "x" || st.Relays[0].TorrcSHA256 != "" {
		t.Fatalf("torrc_sha256 not by name: %+v", st.Relays)
	}
}
