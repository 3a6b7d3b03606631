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
	if err := f.SetServer([]string{"192.0.2.53", "2001:db8::53"}); err != nil {
		t.Fatal(err)
	}
	got := read()
	if !strings.Contains(got, "nameserver 192.0.2.53\nnameserver 2001:db8::53\n") || strings.Contains(got, "10.0.2.3") {
		t.Errorf("server list should win:\n%s", got)
	}
	// A bad list changes nothing.
	if err := f.SetServer([]string{"192.0.2.54", "dns.example.org"}); err == nil || !strings.Contains(err.Error(), `"dns.example.org"`) {
		t.Errorf("err = %v", err)
	}
	if read() != got {
		t.Error("refused list changed the file")
	}
	// The server drops its list: back to the lease's.
	if err := f.SetServer(nil); err != nil {
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
