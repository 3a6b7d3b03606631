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
// A third chain keeps the relays' metrics listeners on loopback for the
// agent's uid alone (nftables.go).
//
// The same table filters inbound traffic (its input chain, policy drop):
// on the relay NIC only TCP to each relay's own address and ORPort (and
// IPv4 DirPort when its torrc sets one), on any other NIC only DHCP,
// DHCPv6 and router advertisements, and everywhere loopback, established
// and related traffic and the ICMP a host needs; the rest is counted and
// dropped. So a port tor is told to open, or one a relay uid opens on the
// side, is not reachable from outside. The table exists from the first
// Apply, with or without relays, until Teardown.
//
// One file per duty: plan.go checks the server's Relays before anything
// changes; addrs.go, routes.go, rules.go and nftables.go each converge one
// kind of kernel state, in the order Apply runs them.
package netcfg

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"patela/init/nsexec"
	"patela/internal/api"
)

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
	uid   uint32           // the agent's: the one that may reach the relays' metrics (nftables.go)
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
	return &Manager{opts: opts, nl: h, log: opts.Log, addrs: map[addrKey]bool{}, uid: uint32(os.Geteuid())}, nil
}

// Close releases the netlink handle.
func (m *Manager) Close() { m.nl.Close() }

// Apply converges the kernel to want: after it returns nil, exactly the
// wanted addresses, rules, routes and nftables rules exist; applying the
// same want again changes nothing. Invalid input is refused before any
// change.
func (m *Manager) Apply(ctx context.Context, want Relays) error {
	p, err := parse(want)
	if err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return err
	}
	var link netlink.Link
	if len(p.relays) > 0 {
		if link, err = m.findLink(p.ifName); err != nil {
			return fmt.Errorf("relay interface: %w", err)
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
			return fmt.Errorf("%s: %w", s.what, err)
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
	if err := m.syncNft(nil, nil, false); err != nil {
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
	return errors.Join(errs...)
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
