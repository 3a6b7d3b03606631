package resolv

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestServerWinsOverDHCP(t *testing.T) {
	f := &File{Path: filepath.Join(t.TempDir(), "etc/resolv.conf")}
	read := func() string {
		b, err := os.ReadFile(f.Path)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	if err := f.SetDHCP([]netip.Addr{netip.MustParseAddr("10.0.2.3")}, []string{"lab.example.org", "bad name"}); err != nil {
		t.Fatal(err)
	}
	if got := read(); !strings.Contains(got, "nameserver 10.0.2.3\n") || !strings.Contains(got, "search lab.example.org\n") || strings.Contains(got, "bad") {
		t.Errorf("from DHCP:\n%s", got)
	}
	if err := f.SetServer([]string{"192.0.2.53", "2001:db8::53"}, false); err != nil {
		t.Fatal(err)
	}
	got := read()
	if !strings.Contains(got, "nameserver 192.0.2.53\nnameserver 2001:db8::53\n") || strings.Contains(got, "10.0.2.3") {
		t.Errorf("server list should win:\n%s", got)
	}
	// A bad list changes nothing.
	if err := f.SetServer([]string{"192.0.2.54", "dns.example.org"}, false); err == nil || !strings.Contains(err.Error(), `"dns.example.org"`) {
		t.Errorf("err = %v", err)
	}
	if read() != got {
		t.Error("refused list changed the file")
	}
	// The server drops its list: back to the lease's.
	if err := f.SetServer(nil, false); err != nil {
		t.Fatal(err)
	}
	if got := read(); !strings.Contains(got, "nameserver 10.0.2.3\n") {
		t.Errorf("fallback to DHCP:\n%s", got)
	}
}

func TestRenderNeverPublic(t *testing.T) {
	got := string(Render(nil, nil))
	if strings.Contains(got, "nameserver") {
		t.Errorf("no resolvers known, yet:\n%s", got)
	}
	many := []netip.Addr{netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2"), netip.MustParseAddr("192.0.2.3"), netip.MustParseAddr("192.0.2.4")}
	if n := strings.Count(string(Render(many, nil)), "nameserver"); n != MaxNS {
		t.Errorf("%d nameserver lines", n)
	}
}

// An exit never gets a public resolver into resolv.conf, from the server
// (refused with its name) or from the DHCP lease (left out); a node that
// stops running exits may use them again.
func TestExitNoPublicResolver(t *testing.T) {
	f := &File{Path: filepath.Join(t.TempDir(), "etc/resolv.conf")}
	read := func() string {
		b, err := os.ReadFile(f.Path)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	err := f.SetServer([]string{"192.0.2.53", "8.8.8.8"}, true)
	if err == nil || !strings.Contains(err.Error(), "8.8.8.8 (Google Public DNS)") {
		t.Fatalf("public resolver for an exit: %v", err)
	}
	if got := read(); strings.Contains(got, "8.8.8.8") || !strings.Contains(got, "nameserver 192.0.2.53\n") {
		t.Fatalf("resolv.conf:\n%s", got)
	}
	// Not an exit: the same list is written whole.
	if err := f.SetServer([]string{"192.0.2.53", "8.8.8.8"}, false); err != nil {
		t.Fatal(err)
	}
	if got := read(); !strings.Contains(got, "nameserver 8.8.8.8\n") {
		t.Fatalf("non-exit:\n%s", got)
	}
	// No server list: the lease's public resolvers are left out for an exit.
	if err := f.SetServer(nil, true); err != nil {
		t.Fatal(err)
	}
	if err := f.SetDHCP([]netip.Addr{netip.MustParseAddr("1.1.1.1"), netip.MustParseAddr("2620:fe::fe")}, nil); err != nil {
		t.Fatal(err)
	}
	if got := read(); strings.Contains(got, "nameserver") {
		t.Fatalf("lease's public resolvers written for an exit:\n%s", got)
	}
	if err := f.SetDHCP([]netip.Addr{netip.MustParseAddr("1.1.1.1"), netip.MustParseAddr("10.0.2.3")}, nil); err != nil {
		t.Fatal(err)
	}
	if got := read(); strings.Contains(got, "1.1.1.1") || !strings.Contains(got, "nameserver 10.0.2.3\n") {
		t.Fatalf("exit with a lease:\n%s", got)
	}
}
