package netcfg

import (
	"encoding/binary"
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
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
	if link == nil || len(p.relays) == 0 {
		return c.Flush()
	}
	c.AddTable(t)
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
