package netcfg

import (
	"encoding/binary"
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"patela/internal/layout"
)

// TableName is the nftables table (family inet) the agent owns entirely.
const TableName = "patela"

func (m *Manager) nft() (*nftables.Conn, error) {
	if m.opts.NetNS != 0 {
		return nftables.New(nftables.WithNetNSFd(m.opts.NetNS))
	}
	return nftables.New()
}

// syncNft replaces the whole table in one transaction (add, delete, add:
// the first add makes the delete valid when the table is absent), so a
// packet sees either the old ruleset or the new one. An unchanged plan
// whose table still exists is left alone, so its counters and handles
// survive a no-op Apply.
func (m *Manager) syncNft(link netlink.Link, p *plan, unchanged bool) error {
	c, err := m.nft()
	if err != nil {
		return err
	}
	if unchanged {
		if _, err := c.ListTableOfFamily(TableName, nftables.TableFamilyINet); err == nil {
			return nil
		}
	}
	t := &nftables.Table{Name: TableName, Family: nftables.TableFamilyINet}
	c.AddTable(t)
	c.DelTable(t)
	if p == nil {
		return c.Flush() // Teardown
	}
	c.AddTable(t)
	relayIf := ""
	if link != nil {
		relayIf = link.Attrs().Name
	}
	addInput(c, t, relayIf, p)
	m.guardMetrics(c, t)
	if link == nil || len(p.relays) == 0 {
		return c.Flush()
	}
	mark := c.AddChain(&nftables.Chain{
		Name: "mark", Table: t, Type: nftables.ChainTypeRoute,
		Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityMangle,
	})
	snat := c.AddChain(&nftables.Chain{
		Name: "snat", Table: t, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource,
	})
	for _, r := range p.relays {
		// meta skuid <uid> meta mark set <uid>
		c.AddRule(&nftables.Rule{Table: t, Chain: mark, Exprs: []expr.Any{
			&expr.Meta{Key: expr.MetaKeySKUID, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: u32(r.uid)},
			&expr.Immediate{Register: 1, Data: u32(r.uid)},
			&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1},
		}})
		// meta mark <uid> oifname <relay if> meta nfproto ipvX snat ipX to <addr>
		for _, a := range []netip.Prefix{r.v4, r.v6} {
			if !a.IsValid() {
				continue
			}
			proto := byte(unix.NFPROTO_IPV4)
			if a.Addr().Is6() {
				proto = unix.NFPROTO_IPV6
			}
			c.AddRule(&nftables.Rule{Table: t, Chain: snat, Exprs: []expr.Any{
				&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: u32(r.uid)},
				&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname(link.Attrs().Name)},
				&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
				&expr.Immediate{Register: 1, Data: a.Addr().AsSlice()},
				&expr.NAT{Type: expr.NATTypeSourceNAT, Family: uint32(proto), RegAddrMin: 1, RegAddrMax: 1},
			}})
		}
	}
	return c.Flush()
}

// ICMP types a host needs inbound: errors (PMTU discovery is "fragmentation
// needed" and "packet too big") and IPv6 neighbour discovery. Router
// advertisements are taken on the management NIC only.
var (
	icmp4Types     = []byte{3, 11}                // destination unreachable, time exceeded
	icmp6Types     = []byte{1, 2, 3, 4, 135, 136} // unreachable, too big, time exceeded, parameter problem, NS, NA
	icmp6MgmtTypes = []byte{134}                  // router advertisement
	accept         = &expr.Verdict{Kind: expr.VerdictAccept}
)

// addInput adds the inbound firewall: the input chain drops (and counts)
// everything but loopback, established and related traffic, the ICMP a
// host needs, TCP to each relay's own addresses on its ORPort and (IPv4)
// DirPort on the relay NIC, and DHCP, DHCPv6 and router advertisements on
// any other NIC (the management side). A port a relay uid opens on the
// side, or anything listening on the management address, is unreachable.
// With no relay NIC (no relays yet) every NIC but lo is the management
// side.
func addInput(c *nftables.Conn, t *nftables.Table, relayIf string, p *plan) {
	pol := nftables.ChainPolicyDrop
	in := c.AddChain(&nftables.Chain{
		Name: "input", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter, Policy: &pol,
	})
	rule := func(e ...expr.Any) { c.AddRule(&nftables.Rule{Table: t, Chain: in, Exprs: e}) }
	iif := func(op expr.CmpOp, name string) []expr.Any {
		return []expr.Any{&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1}, &expr.Cmp{Op: op, Register: 1, Data: ifname(name)}}
	}
	l4 := func(proto byte) []expr.Any {
		return []expr.Any{&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1}, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}}}
	}
	// th: a transport header field (offset, len) equal to data.
	th := func(off uint32, data []byte) []expr.Any {
		return []expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: off, Len: uint32(len(data))},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: data},
		}
	}
	cat := func(parts ...[]expr.Any) []expr.Any {
		var out []expr.Any
		for _, p := range parts {
			out = append(out, p...)
		}
		return out
	}
	rule(cat(iif(expr.CmpOpEq, "lo"), []expr.Any{accept})...)
	rule(&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: u32(expr.CtStateBitESTABLISHED | expr.CtStateBitRELATED), Xor: u32(0)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: u32(0)}, accept)
	for _, ty := range icmp4Types {
		rule(cat(l4(unix.IPPROTO_ICMP), th(0, []byte{ty}), []expr.Any{accept})...)
	}
	for _, ty := range icmp6Types {
		rule(cat(l4(unix.IPPROTO_ICMPV6), th(0, []byte{ty}), []expr.Any{accept})...)
	}
	if relayIf != "" {
		for _, r := range p.relays {
			for _, a := range []netip.Prefix{r.v4, r.v6} {
				if !a.IsValid() {
					continue
				}
				ports := []uint16{r.orPort}
				if r.dirPort != 0 && a.Addr().Is4() {
					ports = append(ports, r.dirPort)
				}
				for _, port := range ports {
					rule(cat(iif(expr.CmpOpEq, relayIf), daddr(a.Addr()), l4(unix.IPPROTO_TCP),
						th(2, binary.BigEndian.AppendUint16(nil, port)), []expr.Any{accept})...)
				}
			}
		}
	}
	mgmt := []expr.Any{}
	if relayIf != "" {
		mgmt = iif(expr.CmpOpNeq, relayIf)
	}
	rule(cat(mgmt, l4(unix.IPPROTO_UDP), th(0, []byte{0, 67, 0, 68}), []expr.Any{accept})...) // DHCP server → client
	rule(cat(mgmt, l4(unix.IPPROTO_UDP), th(0, []byte{2, 35, 2, 34}), []expr.Any{accept})...) // DHCPv6 547 → 546
	for _, ty := range icmp6MgmtTypes {
		rule(cat(mgmt, l4(unix.IPPROTO_ICMPV6), th(0, []byte{ty}), []expr.Any{accept})...)
	}
	rule(&expr.Counter{}, &expr.Verdict{Kind: expr.VerdictDrop})
}

// daddr matches packets to address a (its family's destination field).
func daddr(a netip.Addr) []expr.Any {
	proto, off := byte(unix.NFPROTO_IPV4), uint32(16)
	if a.Is6() {
		proto, off = unix.NFPROTO_IPV6, 24
	}
	b := a.AsSlice()
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: uint32(len(b))},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: b},
	}
}

// guardMetrics adds the chain that keeps the relays' MetricsPorts
// (layout.MetricsNet, port layout.MetricsPort, on loopback) the agent's
// alone: a connection to them from any socket not owned by the agent's
// uid is dropped before it leaves the sender.
//
//	meta nfproto ipv4 ip daddr 127.66.0.0/16 meta l4proto tcp tcp dport 9035 meta skuid != <agent> drop
//
// Only new connections match (the destination port), so tor's answers
// (source port 9035) pass. Nothing from outside the machine reaches a
// 127/8 address: the kernel drops such packets as martians.
func (m *Manager) guardMetrics(c *nftables.Conn, t *nftables.Table) {
	guard := c.AddChain(&nftables.Chain{
		Name: "guard", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityFilter,
	})
	pfx := layout.MetricsNet
	mask := net4Mask(pfx.Bits())
	port := make([]byte, 2)
	binary.BigEndian.PutUint16(port, layout.MetricsPort)
	c.AddRule(&nftables.Rule{Table: t, Chain: guard, Exprs: []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.NFPROTO_IPV4}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask, Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: pfx.Addr().AsSlice()},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: port},
		&expr.Meta{Key: expr.MetaKeySKUID, Register: 1},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: u32(m.uid)},
		&expr.Verdict{Kind: expr.VerdictDrop},
	}})
}

// net4Mask is an IPv4 netmask of bits ones, as bytes.
func net4Mask(bits int) []byte {
	b := make([]byte, 4)
	binary.BigEndian.PutUint32(b, ^uint32(0)<<(32-bits))
	return b
}

// u32 is a 32-bit value as nftables registers hold it (host order).
func u32(v uint32) []byte {
	b := make([]byte, 4)
	binary.NativeEndian.PutUint32(b, v)
	return b
}

// ifname pads an interface name to IFNAMSIZ as the kernel compares it.
func ifname(n string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, n)
	return b
}
