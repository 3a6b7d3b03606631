// Package netcfg converges the relay side of a node's network to the
// server's node config: the relay NIC up with every relay's addresses, a
// routing table of our own with the relay gateways, rules that select it,
// and the nftables table `inet patela` that marks each relay's packets by
// uid and SNATs them to the relay's address.
//
// The management NIC (DHCP, main table, default route) is never touched:
// relay traffic reaches the relay table only through our rules:
//
//	from <relay addr> lookup T   sockets bound to the relay address (tor's
//	                             OutboundBindAddress, replies on ORPort)
//	fwmark <uid> lookup T        anything else the relay's uid sends: the
//	                             output chain marks it and the kernel reroutes
//
// and the postrouting chain rewrites the source of marked packets leaving
// the relay NIC, so a relay's traffic always leaves from its own address.
package netcfg

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"patela/init/nsexec"
	"patela/internal/api"
)

// TableName is the nftables table (family inet) the agent owns entirely.
const TableName = "patela"

// Defaults for Options.
const (
	DefaultTable    = 200
	DefaultPriority = 1000
)

// Relays is the relay side of a node config.
type Relays struct {
	Network api.Network
	Relays  []api.Relay
}

// Options configure a Manager. The zero value works on the current
// network namespace.
type Options struct {
	// NetNS is an open netns fd to work in; 0 is the current namespace.
	NetNS int
	// Table is the routing table for relay traffic; Priority the priority
	// of the rules selecting it. The agent owns every rule pointing at
	// Table.
	Table    int
	Priority int
	Log      *slog.Logger
}

// Manager applies Relays. It remembers which addresses it added (the
// agent is PID 1 of a diskless machine: its memory lives exactly as long
// as the kernel state it describes); rules, routes and the nftables table
// are read back from the kernel.
type Manager struct {
	mu    sync.Mutex // one Apply or Teardown at a time
	opts  Options
	nl    *netlink.Handle
	log   *slog.Logger
	addrs map[addrKey]bool // addresses this manager added
	last  *plan            // last plan fully applied
}

type addrKey struct {
	link int
	addr netip.Prefix
}

// New opens netlink in the configured namespace.
func New(opts Options) (*Manager, error) {
	if opts.Table == 0 {
		opts.Table = DefaultTable
	}
	if opts.Priority == 0 {
		opts.Priority = DefaultPriority
	}
	if opts.Table < 1 || opts.Table >= unix.RT_TABLE_COMPAT || opts.Table == unix.RT_TABLE_MAIN || opts.Table == unix.RT_TABLE_DEFAULT {
		return nil, fmt.Errorf("netcfg: routing table %d is reserved or out of range", opts.Table)
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	// Route netlink only: a handle for every family also opens XFRM,
	// which a minimal kernel (xfrm_user not loaded) refuses.
	var h *netlink.Handle
	var err error
	if opts.NetNS != 0 {
		h, err = netlink.NewHandleAt(netns.NsHandle(opts.NetNS), unix.NETLINK_ROUTE)
	} else {
		h, err = netlink.NewHandle(unix.NETLINK_ROUTE)
	}
	if err != nil {
		return nil, fmt.Errorf("netcfg: netlink: %w", err)
	}
	return &Manager{opts: opts, nl: h, log: opts.Log, addrs: map[addrKey]bool{}}, nil
}

// Close releases the netlink handle.
func (m *Manager) Close() { m.nl.Close() }

// relayPlan is one relay, parsed.
type relayPlan struct {
	name string
	uid  uint32
	v4   netip.Prefix // zero if none
	v6   netip.Prefix
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

// Apply converges the kernel to want: after it returns nil, exactly the
// wanted addresses, rules, routes and nftables rules exist; applying the
// same want again changes nothing. Invalid input is refused before any
// change.
func (m *Manager) Apply(ctx context.Context, want Relays) error {
	p, err := parse(want)
	if err != nil {
		return fmt.Errorf("netcfg: %w", err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return err
	}
	var link netlink.Link
	if len(p.relays) > 0 {
		if link, err = m.findLink(p.ifName); err != nil {
			return fmt.Errorf("netcfg: relay interface: %w", err)
		}
	}
	unchanged := p.equal(m.last)
	// Order: addresses first (routes need the source and gateway on-link),
	// then routes, rules, and the firewall last, so the marks never point
	// at a table that is not ready.
	steps := []struct {
		what string
		fn   func() error
	}{
		{"link", func() error { return m.linkUp(link) }},
		{"addresses", func() error { return m.syncAddrs(link, p) }},
		{"routes", func() error { return m.syncRoutes(link, p) }},
		{"rules", func() error { return m.syncRules(p) }},
		{"nftables", func() error { return m.syncNft(link, p, unchanged) }},
	}
	m.last = nil
	for _, s := range steps {
		if err := s.fn(); err != nil {
			return fmt.Errorf("netcfg: %s: %w", s.what, err)
		}
	}
	m.last = p
	if !unchanged {
		m.log.Info("relay network applied", "interface", p.ifName, "relays", len(p.relays))
		m.log.Debug("relay network plan", "plan", p)
	}
	return nil
}

// Teardown removes everything Apply added: rules, the relay table's
// routes, the nftables table and the relay addresses. The management side
// stays as it is, so the next boot (or a reboot after this) starts clean.
func (m *Manager) Teardown() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	var errs []error
	if err := m.syncNft(nil, &plan{}, false); err != nil {
		errs = append(errs, fmt.Errorf("nftables: %w", err))
	}
	if err := m.syncRules(&plan{}); err != nil {
		errs = append(errs, fmt.Errorf("rules: %w", err))
	}
	if err := m.syncRoutes(nil, &plan{}); err != nil {
		errs = append(errs, fmt.Errorf("routes: %w", err))
	}
	if err := m.syncAddrs(nil, &plan{}); err != nil {
		errs = append(errs, fmt.Errorf("addresses: %w", err))
	}
	m.last = nil
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("netcfg teardown: %w", err)
	}
	return nil
}

// findLink resolves the relay interface by name or MAC address.
func (m *Manager) findLink(s string) (netlink.Link, error) {
	if mac, err := net.ParseMAC(s); err == nil {
		links, err := m.nl.LinkList()
		if err != nil {
			return nil, err
		}
		for _, l := range links {
			if bytes.Equal(l.Attrs().HardwareAddr, mac) {
				return l, nil
			}
		}
		return nil, fmt.Errorf("no interface has MAC %s", mac)
	}
	l, err := m.nl.LinkByName(s)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", s, err)
	}
	return l, nil
}

func (m *Manager) linkUp(link netlink.Link) error {
	if link == nil {
		return nil
	}
	// Replies to the relay addresses arrive on the relay NIC from sources
	// the main table routes via the management NIC: strict reverse-path
	// filtering would drop them. Loose mode (2) still drops martians.
	//
	// Relay addresses often share a subnet; the first is the primary and
	// the kernel deletes the secondaries with it unless told to promote.
	name := link.Attrs().Name
	for _, s := range [][2]string{{"rp_filter", "2"}, {"promote_secondaries", "1"}} {
		if err := nsexec.WriteSysctl(m.opts.NetNS, "net/ipv4/conf/"+name+"/"+s[0], s[1]); err != nil {
			return err
		}
	}
	if link.Attrs().Flags&net.FlagUp != 0 {
		return nil
	}
	return m.nl.LinkSetUp(link)
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

func toIPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func fromIPNet(n *net.IPNet) netip.Prefix {
	a, _ := netip.AddrFromSlice(n.IP)
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones)
}

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

// ruleKey identifies one of our rules.
type ruleKey struct {
	family int
	mark   uint32 // 0: a source rule
	src    netip.Prefix
}

func (m *Manager) wantRules(p *plan) map[ruleKey]bool {
	want := map[ruleKey]bool{}
	for _, r := range p.relays {
		for _, a := range []netip.Prefix{r.v4, r.v6} {
			if !a.IsValid() {
				continue
			}
			fam := unix.AF_INET
			if a.Addr().Is6() {
				fam = unix.AF_INET6
			}
			want[ruleKey{family: fam, mark: r.uid}] = true
			want[ruleKey{family: fam, src: netip.PrefixFrom(a.Addr(), a.Addr().BitLen())}] = true
		}
	}
	return want
}

func (m *Manager) syncRules(p *plan) error {
	want := m.wantRules(p)
	seen := map[ruleKey]bool{}
	for _, fam := range []int{unix.AF_INET, unix.AF_INET6} {
		rules, err := m.nl.RuleList(fam)
		if err != nil {
			return err
		}
		for _, r := range rules {
			if r.Table != m.opts.Table {
				continue
			}
			k := ruleKey{family: fam}
			if r.Mark != 0 {
				k.mark = r.Mark
			}
			if r.Src != nil {
				k.src = fromIPNet(r.Src)
			}
			ok := want[k] && !seen[k] && r.Priority == m.opts.Priority &&
				(k.mark == 0) != (r.Src == nil) && (r.Mask == nil || *r.Mask == 0xffffffff)
			if ok {
				seen[k] = true
				continue
			}
			r := r
			r.Family = fam
			if err := m.nl.RuleDel(&r); err != nil && !errors.Is(err, unix.ENOENT) {
				return fmt.Errorf("removing rule %v: %w", r, err)
			}
		}
	}
	for k := range want {
		if seen[k] {
			continue
		}
		r := netlink.NewRule()
		r.Family = k.family
		r.Table = m.opts.Table
		r.Priority = m.opts.Priority
		if k.mark != 0 {
			r.Mark = k.mark
			mask := uint32(0xffffffff)
			r.Mask = &mask
		} else {
			r.Src = toIPNet(k.src)
		}
		if err := m.nl.RuleAdd(r); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("adding rule %v: %w", r, err)
		}
	}
	return nil
}

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

// String renders a plan for logs.
func (p *plan) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "if=%s gw4=%v gw6=%v", p.ifName, p.gw4, p.gw6)
	for _, r := range p.relays {
		fmt.Fprintf(&b, " %s(uid=%d %v %v)", r.name, r.uid, r.v4, r.v6)
	}
	return b.String()
}
