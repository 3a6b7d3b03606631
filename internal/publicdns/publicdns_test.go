package publicdns

import (
	"net/netip"
	"testing"
)

func TestOperator(t *testing.T) {
	for a, want := range map[string]string{
		"8.8.8.8": "Google Public DNS", "::ffff:1.1.1.1": "Cloudflare", "2620:fe::fe": "Quad9",
		"208.67.222.222": "OpenDNS", "4.2.2.2": "Level3", "2001:4860:4860::8888": "Google Public DNS",
	} {
		if got, ok := Operator(netip.MustParseAddr(a)); !ok || got != want {
			t.Errorf("Operator(%s) = %q, %v; want %q", a, got, ok, want)
		}
	}
	for _, a := range []string{"192.0.2.53", "198.51.100.1", "2001:db8::53", "8.8.8.9", "127.0.0.1"} {
		if got, ok := Operator(netip.MustParseAddr(a)); ok {
			t.Errorf("Operator(%s) = %q", a, got)
		}
	}
}
