package dhcp

import (
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/rfc1035label"

	"patela/init/resolv"
)

func ack(t testing.TB, mods ...dhcpv4.Modifier) *dhcpv4.DHCPv4 {
	t.Helper()
	base := []dhcpv4.Modifier{
		dhcpv4.WithMessageType(dhcpv4.MessageTypeAck),
		dhcpv4.WithYourIP(net.IPv4(192, 0, 2, 50)),
		dhcpv4.WithNetmask(net.CIDRMask(24, 32)),
		dhcpv4.WithRouter(net.IPv4(192, 0, 2, 1)),
		dhcpv4.WithDNS(net.IPv4(192, 0, 2, 53)),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.IPv4(192, 0, 2, 1))),
		dhcpv4.WithLeaseTime(3600),
	}
	m, err := dhcpv4.New(append(base, mods...)...)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestFromACK(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	l, err := FromACK(ack(t, dhcpv4.WithDomainSearchList("lab.example.org")), now)
	if err != nil {
		t.Fatal(err)
	}
	if l.Addr != netip.MustParsePrefix("192.0.2.50/24") || l.Router != netip.MustParseAddr("192.0.2.1") ||
		len(l.DNS) != 1 || l.DNS[0] != netip.MustParseAddr("192.0.2.53") || l.Server != netip.MustParseAddr("192.0.2.1") {
		t.Errorf("lease = %+v", l)
	}
	if l.Duration != time.Hour || l.T1 != 30*time.Minute || l.T2 != 52*time.Minute+30*time.Second {
		t.Errorf("times: lease %v t1 %v t2 %v", l.Duration, l.T1, l.T2)
	}
	rc := string(resolv.Render(l.DNS, l.Search))
	if !strings.Contains(rc, "nameserver 192.0.2.53\n") || !strings.Contains(rc, "search lab.example.org\n") {
		t.Errorf("resolv.conf:\n%s", rc)
	}

	// Server T1/T2 out of order are replaced by the RFC defaults.
	l, err = FromACK(ack(t, dhcpv4.WithOption(dhcpv4.OptRenewTimeValue(50*time.Minute)),
		dhcpv4.WithOption(dhcpv4.OptRebindingTimeValue(40*time.Minute))), now)
	if err != nil || l.T1 >= l.T2 || l.T2 >= l.Duration {
		t.Errorf("bad T1/T2 kept: %+v %v", l, err)
	}
	// No DNS: resolv.conf names no resolver, certainly not a public one.
	l, err = FromACK(ack(t, dhcpv4.WithoutOption(dhcpv4.OptionDomainNameServer)), now)
	if err != nil || len(l.DNS) != 0 {
		t.Errorf("DNS without a DNS option: %v (%v)", l.DNS, err)
	}

	for _, tc := range []struct {
		name string
		mod  dhcpv4.Modifier
		want string
	}{
		{"offer", dhcpv4.WithMessageType(dhcpv4.MessageTypeOffer), "not an ACK"},
		{"no address", dhcpv4.WithYourIP(net.IPv4zero), "not a unicast"},
		{"multicast", dhcpv4.WithYourIP(net.IPv4(224, 0, 0, 1)), "not a unicast"},
		{"network addr", dhcpv4.WithYourIP(net.IPv4(192, 0, 2, 0)), "network address"},
		{"broadcast addr", dhcpv4.WithYourIP(net.IPv4(192, 0, 2, 255)), "broadcast address"},
		{"bad mask", dhcpv4.WithNetmask(net.IPMask{255, 0, 255, 0}), "not a valid IPv4 netmask"},
		{"no lease time", dhcpv4.WithoutOption(dhcpv4.OptionIPAddressLeaseTime), "no lease time"},
	} {
		if _, err := FromACK(ack(t, tc.mod), now); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want %q", tc.name, err, tc.want)
		}
	}
}

// FuzzFromACK feeds arbitrary packets through the parser and FromACK: no
// panic, and whatever FromACK accepts is installable.
func FuzzFromACK(f *testing.F) {
	f.Add(ack(f).ToBytes())
	f.Add(ack(f, dhcpv4.WithoutOption(dhcpv4.OptionSubnetMask), dhcpv4.WithLeaseTime(0xffffffff)).ToBytes())
	f.Add(ack(f, dhcpv4.WithLeaseTime(1), dhcpv4.WithDNS(net.IPv4bcast, net.IPv4zero, net.IPv4(192, 0, 2, 9))).ToBytes())
	f.Add(ack(f, dhcpv4.WithOption(dhcpv4.OptDomainSearch(&rfc1035label.Labels{Labels: []string{"a.example", "evil\nnameserver 8.8.8.8"}}))).ToBytes())
	f.Add(ack(f, dhcpv4.WithRouter(net.IPv4(192, 0, 2, 50)), dhcpv4.WithNetmask(net.CIDRMask(32, 32))).ToBytes())
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := dhcpv4.FromBytes(data)
		if err != nil {
			return
		}
		l, err := FromACK(m, time.Unix(0, 0))
		if err != nil {
			return
		}
		a := l.Addr.Addr()
		if !a.Is4() || !a.IsGlobalUnicast() || l.Addr.Bits() < 1 || l.Addr.Bits() > 32 {
			t.Fatalf("accepted address %v", l.Addr)
		}
		if l.Duration < minLease || l.Duration > maxLease || l.T1 <= 0 || l.T1 >= l.T2 || l.T2 >= l.Duration {
			t.Fatalf("times: lease %v t1 %v t2 %v", l.Duration, l.T1, l.T2)
		}
		if l.Router.IsValid() && (!l.Router.Is4() || l.Router == a) {
			t.Fatalf("router %v", l.Router)
		}
		for _, d := range l.DNS {
			if !d.Is4() || d.IsUnspecified() || d.IsMulticast() {
				t.Fatalf("DNS server %v", d)
			}
		}
		for _, line := range strings.Split(strings.TrimSuffix(string(resolv.Render(l.DNS, l.Search)), "\n"), "\n") {
			if !strings.HasPrefix(line, "#") && !strings.HasPrefix(line, "nameserver ") && !strings.HasPrefix(line, "search ") {
				t.Fatalf("resolv.conf line %q", line)
			}
		}
	})
}

func BenchmarkFromACK(b *testing.B) {
	raw := ack(b, dhcpv4.WithDomainSearchList("lab.example.org")).ToBytes()
	now := time.Now()
	for b.Loop() {
		m, err := dhcpv4.FromBytes(raw)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := FromACK(m, now); err != nil {
			b.Fatal(err)
		}
	}
}
