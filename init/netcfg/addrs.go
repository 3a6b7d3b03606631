package netcfg

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// addrKey is one address on one link.
type addrKey struct {
	link int
	addr netip.Prefix
}

func toIPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func fromIPNet(n *net.IPNet) netip.Prefix {
	a, _ := netip.AddrFromSlice(n.IP)
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones)
}

// syncAddrs puts p's addresses on link and removes, from any link it
// touched, the addresses this manager added (or found and kept) that p no
// longer has. Other addresses are never removed.
func (m *Manager) syncAddrs(link netlink.Link, p *plan) error {
	want := map[addrKey]bool{}
	if link != nil {
		for _, a := range p.wantAddrs() {
			want[addrKey{link.Attrs().Index, a}] = true
		}
	}
	// What the kernel has now, on every link we ever touched.
	have := map[addrKey]bool{}
	links := map[int]bool{}
	for k := range m.addrs {
		links[k.link] = true
	}
	if link != nil {
		links[link.Attrs().Index] = true
	}
	for idx := range links {
		l, err := m.nl.LinkByIndex(idx)
		if err != nil {
			continue // the link is gone, and its addresses with it
		}
		as, err := m.nl.AddrList(l, netlink.FAMILY_ALL)
		if err != nil {
			return err
		}
		for _, a := range as {
			have[addrKey{idx, fromIPNet(a.IPNet)}] = true
		}
	}
	for k := range m.addrs {
		if want[k] {
			continue
		}
		if have[k] {
			l, err := m.nl.LinkByIndex(k.link)
			if err == nil {
				err = m.nl.AddrDel(l, &netlink.Addr{IPNet: toIPNet(k.addr)})
			}
			if err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
				return fmt.Errorf("removing %s: %w", k.addr, err)
			}
			m.log.Info("relay address removed", "addr", k.addr)
		}
		delete(m.addrs, k)
	}
	for k := range want {
		if !have[k] {
			a := &netlink.Addr{IPNet: toIPNet(k.addr)}
			if k.addr.Addr().Is6() {
				// tor binds at once; a tentative (DAD) address cannot be bound.
				a.Flags = unix.IFA_F_NODAD
			}
			if err := m.nl.AddrAdd(link, a); err != nil && !errors.Is(err, unix.EEXIST) {
				return fmt.Errorf("adding %s: %w", k.addr, err)
			}
			m.log.Info("relay address added", "addr", k.addr, "interface", link.Attrs().Name)
		}
		m.addrs[k] = true
	}
	return nil
}
