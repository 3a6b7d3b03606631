package netcfg

import (
	"errors"
	"fmt"
	"net/netip"
	"sort"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// routeKey identifies a route in our table for comparison.
type routeKey struct {
	dst  netip.Prefix
	gw   netip.Addr
	link int
}

func (m *Manager) wantRoutes(link netlink.Link, p *plan) map[routeKey]bool {
	want := map[routeKey]bool{}
	if link == nil {
		return want
	}
	idx := link.Attrs().Index
	for _, a := range p.wantAddrs() {
		want[routeKey{dst: a.Masked(), link: idx}] = true
		if a.Addr().Is4() {
			want[routeKey{dst: netip.PrefixFrom(netip.IPv4Unspecified(), 0), gw: p.gw4, link: idx}] = true
		} else {
			want[routeKey{dst: netip.PrefixFrom(netip.IPv6Unspecified(), 0), gw: p.gw6, link: idx}] = true
		}
	}
	return want
}

func (m *Manager) listTable() ([]netlink.Route, error) {
	return m.nl.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: m.opts.Table}, netlink.RT_FILTER_TABLE)
}

func keyOf(r netlink.Route) routeKey {
	k := routeKey{link: r.LinkIndex}
	if r.Dst != nil {
		k.dst = fromIPNet(r.Dst)
	} else if r.Family == unix.AF_INET6 {
		k.dst = netip.PrefixFrom(netip.IPv6Unspecified(), 0)
	} else {
		k.dst = netip.PrefixFrom(netip.IPv4Unspecified(), 0)
	}
	if r.Gw != nil {
		k.gw, _ = netip.AddrFromSlice(r.Gw)
		k.gw = k.gw.Unmap()
	}
	return k
}

// syncRoutes makes the relay table hold exactly p's routes: a link route
// per relay prefix and a default route per family via its gateway.
func (m *Manager) syncRoutes(link netlink.Link, p *plan) error {
	want := m.wantRoutes(link, p)
	have, err := m.listTable()
	if err != nil {
		return err
	}
	seen := map[routeKey]bool{}
	for _, r := range have {
		k := keyOf(r)
		// The kernel adds multicast and local routes to no table but
		// main/local; anything else in our table is ours to judge.
		if want[k] && !seen[k] {
			seen[k] = true
			continue
		}
		if err := m.nl.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("removing route %v: %w", r, err)
		}
	}
	// Link routes before the default routes that need them.
	keys := make([]routeKey, 0, len(want))
	for k := range want {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return !keys[i].gw.IsValid() && keys[j].gw.IsValid() })
	for _, k := range keys {
		if seen[k] {
			continue
		}
		r := &netlink.Route{LinkIndex: k.link, Dst: toIPNet(k.dst), Table: m.opts.Table, Protocol: unix.RTPROT_STATIC}
		if k.gw.IsValid() {
			r.Gw = k.gw.AsSlice()
		} else {
			r.Scope = netlink.SCOPE_LINK
		}
		if err := m.nl.RouteReplace(r); err != nil {
			return fmt.Errorf("adding route %s via %v: %w", k.dst, k.gw, err)
		}
	}
	return nil
}
