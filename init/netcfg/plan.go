package netcfg

import (
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"sort"
	"strings"

	"patela/internal/torrc"
)

// relayPlan is one relay, parsed.
type relayPlan struct {
	name    string
	uid     uint32
	v4      netip.Prefix // zero if none
	v6      netip.Prefix
	orPort  uint16 // the ports the inbound firewall opens on the relay's addresses
	dirPort uint16 // 0: none; IPv4 only, as tor's DirPort
}

// plan is a validated Relays: everything Apply needs, nothing to parse.
type plan struct {
	ifName string // as given: a name or a MAC
	gw4    netip.Addr
	gw6    netip.Addr
	relays []relayPlan // sorted by uid
}

var nameRE = regexp.MustCompile(`^[A-Za-z0-9]{1,19}$`)

// parse checks want completely before anything is changed.
func parse(want Relays) (*plan, error) {
	p := &plan{ifName: want.Network.RelayInterface}
	if len(want.Relays) == 0 {
		return p, nil
	}
	if p.ifName == "" {
		return nil, errors.New("network.relay_interface is empty")
	}
	var err error
	if g := want.Network.IPv4Gateway; g != "" {
		if p.gw4, err = netip.ParseAddr(g); err != nil || !p.gw4.Is4() {
			return nil, fmt.Errorf("network.ipv4_gateway %q: not an IPv4 address", g)
		}
	}
	if g := want.Network.IPv6Gateway; g != "" {
		if p.gw6, err = netip.ParseAddr(g); err != nil || !p.gw6.Is6() || p.gw6.Is4In6() {
			return nil, fmt.Errorf("network.ipv6_gateway %q: not an IPv6 address", g)
		}
	}
	names, uids, addrs := map[string]bool{}, map[uint32]bool{}, map[netip.Addr]bool{}
	for _, r := range want.Relays {
		rp := relayPlan{name: r.Name}
		if !nameRE.MatchString(r.Name) {
			return nil, fmt.Errorf("relay %q: name must be 1-19 letters or digits", r.Name)
		}
		if names[r.Name] {
			return nil, fmt.Errorf("relay %q listed twice", r.Name)
		}
		names[r.Name] = true
		// The uid is also the packet mark: 0 would match unmarked packets.
		if r.UID < 1000 || r.UID > 1<<31-1 {
			return nil, fmt.Errorf("relay %s: uid %d out of range (1000..2^31-1)", r.Name, r.UID)
		}
		rp.uid = uint32(r.UID)
		if r.ORPort < 1 || r.ORPort > 65535 {
			return nil, fmt.Errorf("relay %s: or_port %d out of range", r.Name, r.ORPort)
		}
		rp.orPort = uint16(r.ORPort)
		if rp.dirPort, err = dirPort(r.Torrc); err != nil {
			return nil, fmt.Errorf("relay %s: %w", r.Name, err)
		}
		if uids[rp.uid] {
			return nil, fmt.Errorf("relay %s: uid %d used twice", r.Name, r.UID)
		}
		uids[rp.uid] = true
		if r.IPv4 == "" && r.IPv6 == "" {
			return nil, fmt.Errorf("relay %s: no address", r.Name)
		}
		if r.IPv4 != "" {
			if rp.v4, err = parsePrefix(r.IPv4, true); err != nil {
				return nil, fmt.Errorf("relay %s: ipv4: %w", r.Name, err)
			}
			if !p.gw4.IsValid() {
				return nil, fmt.Errorf("relay %s has an IPv4 address but network.ipv4_gateway is empty", r.Name)
			}
		}
		if r.IPv6 != "" {
			if rp.v6, err = parsePrefix(r.IPv6, false); err != nil {
				return nil, fmt.Errorf("relay %s: ipv6: %w", r.Name, err)
			}
			if !p.gw6.IsValid() {
				return nil, fmt.Errorf("relay %s has an IPv6 address but network.ipv6_gateway is empty", r.Name)
			}
		}
		for _, a := range []netip.Prefix{rp.v4, rp.v6} {
			if !a.IsValid() {
				continue
			}
			if addrs[a.Addr()] {
				return nil, fmt.Errorf("relay %s: address %s used twice", r.Name, a.Addr())
			}
			addrs[a.Addr()] = true
		}
		p.relays = append(p.relays, rp)
	}
	sort.Slice(p.relays, func(i, j int) bool { return p.relays[i].uid < p.relays[j].uid })
	return p, nil
}

// dirPort is the port of the torrc's DirPort (its last value, as tor
// takes it), 0 when it has none.
func dirPort(text string) (uint16, error) {
	if text == "" {
		return 0, nil
	}
	c, err := torrc.Parse([]byte(text))
	if err != nil {
		return 0, fmt.Errorf("torrc: %w", err)
	}
	vs := c.Values("DirPort")
	if len(vs) == 0 {
		return 0, nil
	}
	return uint16(torrc.ListenPort(vs[len(vs)-1])), nil
}

func parsePrefix(s string, v4 bool) (netip.Prefix, error) {
	pf, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is not an address/prefix", s)
	}
	a := pf.Addr()
	switch {
	case v4 && !a.Is4(), !v4 && (!a.Is6() || a.Is4In6()):
		return netip.Prefix{}, fmt.Errorf("%q is the wrong address family", s)
	case !a.IsGlobalUnicast() || a == pf.Masked().Addr() && pf.Bits() < a.BitLen()-1:
		return netip.Prefix{}, fmt.Errorf("%q is not a host address", s)
	}
	return pf, nil
}

func (p *plan) equal(q *plan) bool {
	return q != nil && p.ifName == q.ifName && p.gw4 == q.gw4 && p.gw6 == q.gw6 && slices.Equal(p.relays, q.relays)
}

func (p *plan) wantAddrs() []netip.Prefix {
	var out []netip.Prefix
	for _, r := range p.relays {
		for _, a := range []netip.Prefix{r.v4, r.v6} {
			if a.IsValid() {
				out = append(out, a)
			}
		}
	}
	return out
}

// String renders a plan for logs.
func (p *plan) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "if=%s gw4=%v gw6=%v", p.ifName, p.gw4, p.gw6)
	for _, r := range p.relays {
		fmt.Fprintf(&b, " %s(uid=%d %v %v or=%d dir=%d)", r.name, r.uid, r.v4, r.v6, r.orPort, r.dirPort)
	}
	return b.String()
}
