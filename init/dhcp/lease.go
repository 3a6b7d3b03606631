package dhcp

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"

	"patela/init/resolv"
)

// Lease is what a DHCPv4 ACK means for the machine: the settings to
// install and when to renew them. It is derived from the ACK once, by
// FromACK, which refuses anything it cannot install safely.
type Lease struct {
	Addr     netip.Prefix // address with the subnet's prefix length
	Router   netip.Addr   // zero if the server sent none
	DNS      []netip.Addr
	Search   []string
	Server   netip.Addr // server identifier
	Duration time.Duration
	T1, T2   time.Duration
	Acquired time.Time

	ack *dhcpv4.DHCPv4 // for renewals
}

// Bounds on lease times: a lease shorter than minLease would keep the
// client renewing in a loop; "infinite" (0xffffffff s) is kept as a long
// finite time so renewal arithmetic stays simple.
const (
	minLease = 2 * time.Second
	maxLease = 365 * 24 * time.Hour
)

// FromACK validates an ACK and derives the lease. now is the time the ACK
// arrived.
func FromACK(ack *dhcpv4.DHCPv4, now time.Time) (*Lease, error) {
	if ack == nil {
		return nil, errors.New("no ACK")
	}
	if mt := ack.MessageType(); mt != dhcpv4.MessageTypeAck {
		return nil, fmt.Errorf("message is %s, not an ACK", mt)
	}
	ip, ok := netip.AddrFromSlice(ack.YourIPAddr)
	ip = ip.Unmap()
	if !ok || !ip.Is4() || !ip.IsGlobalUnicast() || ip == netip.IPv4Unspecified() {
		return nil, fmt.Errorf("offered address %v is not a unicast IPv4 address", ack.YourIPAddr)
	}
	bits := 32
	if m := ack.SubnetMask(); m != nil {
		ones, size := m.Size()
		if size != 32 || ones == 0 {
			return nil, fmt.Errorf("subnet mask %v is not a valid IPv4 netmask", net.IP(m))
		}
		bits = ones
	} else {
		// RFC 2131 says use the class default; a host route is the
		// cautious reading (the router, if any, is added on-link).
		bits = 32
	}
	l := &Lease{Addr: netip.PrefixFrom(ip, bits), Acquired: now, ack: ack}
	if l.Addr.Masked().Addr() == ip && bits < 31 {
		return nil, fmt.Errorf("offered address %s is the network address of %s", ip, l.Addr.Masked())
	}
	if bits < 31 && ip == lastAddr(l.Addr) {
		return nil, fmt.Errorf("offered address %s is the broadcast address of %s", ip, l.Addr.Masked())
	}
	if sid, ok := netip.AddrFromSlice(ack.ServerIdentifier()); ok {
		l.Server = sid.Unmap()
	}
	for _, r := range ack.Router() {
		a, ok := netip.AddrFromSlice(r)
		a = a.Unmap()
		if ok && a.Is4() && a.IsGlobalUnicast() && a != ip {
			l.Router = a
			break
		}
	}
	for _, d := range ack.DNS() {
		a, ok := netip.AddrFromSlice(d)
		a = a.Unmap()
		if ok && a.Is4() && !a.IsUnspecified() && !a.IsMulticast() && a != netip.AddrFrom4([4]byte{255, 255, 255, 255}) {
			l.DNS = append(l.DNS, a)
		}
	}
	if ds := ack.DomainSearch(); ds != nil {
		for _, s := range ds.Labels {
			if resolv.ValidDomain(s) {
				l.Search = append(l.Search, s)
			}
		}
	} else if d := ack.DomainName(); resolv.ValidDomain(d) {
		l.Search = []string{d}
	}
	l.Duration = ack.IPAddressLeaseTime(0)
	if l.Duration == 0 {
		return nil, errors.New("ACK carries no lease time")
	}
	l.Duration = min(max(l.Duration, minLease), maxLease)
	// RFC 2131 4.4.5: T1 = 0.5, T2 = 0.875 of the lease unless given;
	// given values must keep T1 < T2 < lease.
	l.T1 = ack.IPAddressRenewalTime(l.Duration / 2)
	l.T2 = ack.IPAddressRebindingTime(l.Duration * 7 / 8)
	if l.T2 <= 0 || l.T2 >= l.Duration {
		l.T2 = l.Duration * 7 / 8
	}
	if l.T1 <= 0 || l.T1 >= l.T2 {
		l.T1 = min(l.Duration/2, l.T2/2)
	}
	return l, nil
}

func lastAddr(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr().As4()
	host := ^uint32(0) >> p.Bits()
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	v |= host
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}
