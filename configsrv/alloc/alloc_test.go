package alloc

import (
	"net/netip"
	"regexp"
	"testing"
)

var nickname = regexp.MustCompile(`^[A-Za-z0-9]{1,19}$`)

func TestNames(t *testing.T) {
	seen := map[string]bool{}
	for i := 0; i < 50*len(Cheeses); i++ {
		n := Name(i)
		if !nickname.MatchString(n) {
			t.Fatalf("Name(%d) = %q is not a tor nickname", i, n)
		}
		if seen[n] {
			t.Fatalf("Name(%d) = %q repeats", i, n)
		}
		seen[n] = true
	}
	if Name(0) != "murazzano" || Name(len(Cheeses)) != "murazzano2" || Name(2*len(Cheeses)+1) != "castelmagno3" {
		t.Errorf("names: %s %s %s", Name(0), Name(len(Cheeses)), Name(2*len(Cheeses)+1))
	}
	used := map[string]bool{"murazzano": true, "raschera": true}
	if n := FreeName(used); n != "castelmagno" {
		t.Errorf("FreeName = %s", n)
	}
}

func TestRelayCount(t *testing.T) {
	const G = 1 << 30
	for _, c := range []struct {
		cpus       int
		mem        uint64
		relMB, max int
		want       int
	}{
		{4, 8 * G, 1024, 8, 4},
		{16, 8 * G, 1024, 8, 8},
		{16, 3 * G, 1024, 8, 3},
		{16, 8 * G, 2048, 8, 4},
		{0, 8 * G, 1024, 8, 1}, // at least one when memory allows
		{4, G / 2, 1024, 8, 0},
		{4, 8 * G, 1024, 0, 0},
		{64, 1 << 40, 1024, 64, 64},
	} {
		if got := RelayCount(c.cpus, c.mem, c.relMB, c.max); got != c.want {
			t.Errorf("RelayCount(%d, %d, %d, %d) = %d, want %d", c.cpus, c.mem, c.relMB, c.max, got, c.want)
		}
	}
}

func TestFreeAddr(t *testing.T) {
	p := netip.MustParsePrefix("192.0.2.0/30")
	gw := netip.MustParseAddr("192.0.2.1")
	a, ok := FreeAddr(p, gw, nil)
	if !ok || a.String() != "192.0.2.2" {
		t.Fatalf("%v %v", a, ok)
	}
	if a, ok := FreeAddr(p, gw, map[netip.Addr]bool{a: true}); ok {
		t.Fatalf("handed out %v (broadcast or beyond)", a)
	}
	p6 := netip.MustParsePrefix("2001:db8::/126")
	used := map[netip.Addr]bool{netip.MustParseAddr("2001:db8::2"): true}
	if a, ok := FreeAddr(p6, netip.MustParseAddr("2001:db8::1"), used); !ok || a.String() != "2001:db8::3" {
		t.Fatalf("v6: %v %v (the last v6 address is usable)", a, ok)
	}
	if Size(p, 1<<63) != 1 || Size(netip.MustParsePrefix("192.0.2.0/24"), 1<<63) != 253 || Size(p6, 1<<63) != 2 {
		t.Error("Size")
	}
}

func TestNameIndex(t *testing.T) {
	for i := 0; i < 10*len(Cheeses); i++ {
		if j, ok := NameIndex(Name(i)); !ok || j != i {
			t.Fatalf("NameIndex(Name(%d) = %q) = %d, %v", i, Name(i), j, ok)
		}
	}
	for _, n := range []string{"", "gouda", "murazzano1", "murazzano02", "toma-2", "bra2x"} {
		if i, ok := NameIndex(n); ok {
			t.Errorf("NameIndex(%q) = %d", n, i)
		}
	}
}
