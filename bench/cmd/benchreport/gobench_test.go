package main

import "testing"

func TestParseBench(t *testing.T) {
	out := []byte("goos: linux\npkg: patela/init/reconcile\n" +
		"BenchmarkRound8Relays-2   \t     747\t   1704215 ns/op\t     28752 KiB-rss-8-relays\t  253255 B/op\t    1701 allocs/op\n" +
		"BenchmarkBoot/first-2 \t 3\t 1.5e+09 ns/op\t 61.00 tpm-cmds/boot\n" +
		"BenchmarkBroken-2 \t x\t 12 ns/op\n--- FAIL: BenchmarkOther\nPASS\n")
	res := parseBench("patela/init/reconcile", out)
	if len(res) != 2 {
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
}
