// Package dhcp keeps the management NIC configured from DHCP: it waits
// for the link, obtains a DHCPv4 lease (with timeouts and backoff),
// installs it with netlink (address with the lease's lifetime, default
// route, resolv.conf), renews it at T1, rebinds at T2, and starts over if
// it expires. IPv6 comes from router advertisements (SLAAC, by the kernel)
// and from DHCPv6 where a server answers.
//
// Nothing is released on shutdown: the next boot asks for the same
// address again, and the server keeps it for us meanwhile.
package dhcp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/nclient4"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"patela/init/nsexec"
)

// Config says where to run DHCP.
type Config struct {
	// Interface is the management NIC's name.
	Interface string
	// NetNS is an open netns fd to work in; 0 is the current namespace.
	NetNS int
	// Resolv receives the lease's DNS servers (a *resolv.File); nil:
	// they are not written anywhere.
	Resolv Resolver
	// AttemptTimeout bounds one exchange (default 3 s); retries back off
	// up to MaxBackoff (default 30 s).
	AttemptTimeout time.Duration
	MaxBackoff     time.Duration
	// IPv6 enables SLAAC and DHCPv6 on the interface.
	IPv6 bool
	Log  *slog.Logger
	// OnLease, if set, is called after each lease (new or renewed) is
	// installed.
	OnLease func(*Lease)
}

// Resolver takes the DNS servers and search domains of a lease.
type Resolver interface {
	SetDHCP(dns []netip.Addr, search []string) error
}

// Client holds the management NIC's lease.
type Client struct {
	cfg  Config
	nl   *netlink.Handle
	link netlink.Link
	c4   *nclient4.Client
	log  *slog.Logger

	mu    sync.Mutex
	lease *Lease

	stop context.CancelFunc
	wg   sync.WaitGroup // keep and dhcpv6
}

// Start brings the interface up, waits for its link, and obtains and
// installs a first lease, retrying until ctx ends. Then it keeps the lease
// renewed in the background until Stop.
func Start(ctx context.Context, cfg Config) (*Client, error) {
	if cfg.AttemptTimeout == 0 {
		cfg.AttemptTimeout = 3 * time.Second
	}
	if cfg.MaxBackoff == 0 {
		cfg.MaxBackoff = 30 * time.Second
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	c := &Client{cfg: cfg, log: cfg.Log.With("interface", cfg.Interface)}
	// Route netlink only: a handle for every family also opens XFRM,
	// which a minimal kernel (xfrm_user not loaded) refuses.
	var err error
	if cfg.NetNS != 0 {
		c.nl, err = netlink.NewHandleAt(netns.NsHandle(cfg.NetNS), unix.NETLINK_ROUTE)
	} else {
		c.nl, err = netlink.NewHandle(unix.NETLINK_ROUTE)
	}
	if err != nil {
		return nil, fmt.Errorf("netlink: %w", err)
	}
	fail := func(err error) (*Client, error) {
		c.close()
		return nil, fmt.Errorf("%s: %w", cfg.Interface, err)
	}
	if c.link, err = c.nl.LinkByName(cfg.Interface); err != nil {
		return fail(err)
	}
	if cfg.IPv6 {
		// Before the link comes up, so the first RA is already accepted.
		c.enableSLAAC()
	}
	if err := c.waitLink(ctx); err != nil {
		return fail(err)
	}
	// The raw socket belongs to the namespace it is opened in.
	err = nsexec.Do(cfg.NetNS, func() (err error) {
		c.c4, err = nclient4.New(cfg.Interface, nclient4.WithTimeout(cfg.AttemptTimeout), nclient4.WithRetry(2))
		return err
	})
	if err != nil {
		return fail(fmt.Errorf("opening DHCP socket: %w", err))
	}
	c.log.Info("DHCP: requesting a lease")
	l, err := c.obtain(ctx)
	if err != nil {
		return fail(err)
	}
	if err := c.install(l, nil); err != nil {
		return fail(err)
	}
	rctx, cancel := context.WithCancel(context.Background())
	c.stop = cancel
	c.wg.Go(func() { c.keep(rctx) })
	if cfg.IPv6 {
		c.wg.Go(func() { c.dhcpv6(rctx) })
	}
	return c, nil
}

// Lease returns the current lease.
func (c *Client) Lease() *Lease {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lease
}

// Stop ends renewals. The address stays until its lifetime runs out (the
// machine is about to reboot or power off): nothing is released.
func (c *Client) Stop() {
	if c.stop != nil {
		c.stop()
		c.wg.Wait()
	}
	c.close()
}

func (c *Client) close() {
	if c.c4 != nil {
		c.c4.Close()
	}
	c.nl.Close()
}

func (c *Client) enableSLAAC() {
	for _, kv := range [][2]string{{"disable_ipv6", "0"}, {"accept_ra", "1"}, {"autoconf", "1"}} {
		if err := nsexec.WriteSysctl(c.cfg.NetNS, "net/ipv6/conf/"+c.cfg.Interface+"/"+kv[0], kv[1]); err != nil {
			c.log.Warn("IPv6 autoconfiguration unavailable", "err", err)
			return
		}
	}
}

// waitLink sets the link up and waits for carrier.
func (c *Client) waitLink(ctx context.Context) error {
	if err := c.nl.LinkSetUp(c.link); err != nil {
		return fmt.Errorf("setting link up: %w", err)
	}
	start := time.Now()
	logged := false
	for {
		l, err := c.nl.LinkByIndex(c.link.Attrs().Index)
		if err != nil {
			return err
		}
		a := l.Attrs()
		if a.OperState == netlink.OperUp || a.OperState == netlink.OperUnknown && a.RawFlags&unix.IFF_LOWER_UP != 0 {
			c.log.Debug("link up", "after", time.Since(start))
			return nil
		}
		if !logged && time.Since(start) > 2*time.Second {
			c.log.Info("waiting for link (cable?)", "state", a.OperState)
			logged = true
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("no link (state %s): %w", a.OperState, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// backoff returns the wait before attempt n (0-based): 1 s doubling to
// MaxBackoff, ±20 % jitter so a rack rebooting at once does not pulse.
func (c *Client) backoff(n int) time.Duration {
	d := time.Second << min(n, 10)
	d = min(d, c.cfg.MaxBackoff)
	return time.Duration(float64(d) * (0.8 + 0.4*rand.Float64()))
}

// obtain runs DORA until it gets a usable lease or ctx ends.
func (c *Client) obtain(ctx context.Context) (*Lease, error) {
	for n := 0; ; n++ {
		l, err := c.request(ctx)
		if err == nil {
			return l, nil
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("no lease: %w (last error: %v)", ctx.Err(), err)
		}
		wait := c.backoff(n)
		c.log.Warn("DHCP: no lease yet", "err", err, "retry_in", wait.Round(time.Millisecond))
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("no lease: %w (last error: %v)", ctx.Err(), err)
		case <-time.After(wait):
		}
	}
}

// wanted are the options we ask servers for; some (dnsmasq) send the
// search list only when asked.
var wanted = dhcpv4.WithRequestedOptions(
	dhcpv4.OptionSubnetMask, dhcpv4.OptionRouter, dhcpv4.OptionDomainNameServer,
	dhcpv4.OptionDomainName, dhcpv4.OptionDNSDomainSearchList,
	dhcpv4.OptionIPAddressLeaseTime, dhcpv4.OptionRenewTimeValue, dhcpv4.OptionRebindingTimeValue,
)

func (c *Client) request(ctx context.Context) (*Lease, error) {
	lease, err := c.c4.Request(ctx, wanted)
	if err != nil {
		return nil, err
	}
	return FromACK(lease.ACK, time.Now())
}

// keep renews at T1 (to the server that gave the lease), rebinds at T2
// (to any server) and, if the lease expires, removes it and starts over.
func (c *Client) keep(ctx context.Context) {
	for {
		l := c.Lease()
		t1 := l.Acquired.Add(l.T1)
		t2 := l.Acquired.Add(l.T2)
		end := l.Acquired.Add(l.Duration)
		if !sleepUntil(ctx, t1) {
			return
		}
		next, err := c.extend(ctx, l, t2, false)
		if err != nil && ctx.Err() == nil {
			c.log.Warn("DHCP renew failed until T2; rebinding", "err", err)
			next, err = c.extend(ctx, l, end, true)
		}
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			c.log.Error("DHCP lease expired; removing it and starting over", "addr", l.Addr, "err", err)
			c.remove(l)
			next, err = c.obtain(ctx)
			if err != nil {
				return // ctx ended
			}
		}
		if err := c.install(next, l); err != nil {
			c.log.Error("DHCP: installing lease failed", "err", err)
		}
	}
}

// extend sends renewal (or, with rebind, broadcast rebinding) requests with
// backoff until one is ACKed or deadline passes. A NAK ends at once.
func (c *Client) extend(ctx context.Context, l *Lease, deadline time.Time, rebind bool) (*Lease, error) {
	for n := 0; ; n++ {
		actx, cancel := context.WithDeadline(ctx, deadline)
		var ack *dhcpv4.DHCPv4
		var err error
		if rebind {
			// RFC 2131 4.4.5 REBINDING: the renewal message, broadcast,
			// answered by any server.
			var req *dhcpv4.DHCPv4
			if req, err = dhcpv4.NewRenewFromAck(l.ack, wanted, dhcpv4.WithOption(dhcpv4.OptMaxMessageSize(nclient4.MaxMessageSize))); err == nil {
				ack, err = c.c4.SendAndRead(actx, nclient4.DefaultServers, req,
					nclient4.IsMessageType(dhcpv4.MessageTypeAck, dhcpv4.MessageTypeNak))
			}
		} else {
			var nl *nclient4.Lease
			if nl, err = c.c4.Renew(actx, &nclient4.Lease{ACK: l.ack, Offer: l.ack}, wanted); err == nil {
				ack = nl.ACK
			}
		}
		cancel()
		var nak *nclient4.ErrNak
		switch {
		case err == nil && ack.MessageType() == dhcpv4.MessageTypeNak, errors.As(err, &nak):
			return nil, errNAK
		case err == nil:
			next, err := FromACK(ack, time.Now())
			if err != nil {
				return nil, fmt.Errorf("unusable ACK: %w", err)
			}
			return next, nil
		}
		if ctx.Err() != nil || !time.Now().Add(time.Second).Before(deadline) {
			return nil, err
		}
		c.log.Debug("DHCP renew attempt failed", "rebind", rebind, "err", err)
		// Retry at half the remaining time (RFC 2131), at least a second.
		wait := max(time.Until(deadline)/2, time.Second)
		if !sleepUntil(ctx, time.Now().Add(min(wait, c.backoff(n)*4))) {
			return nil, ctx.Err()
		}
	}
}

var errNAK = errors.New("the server refused the lease (NAK)")

func sleepUntil(ctx context.Context, t time.Time) bool {
	select {
	case <-ctx.Done():
		return false
	case <-time.After(time.Until(t)):
		return true
	}
}

// install puts l on the interface: the address with l's lifetime (so the
// kernel drops it if we stop renewing), the default route via the router,
// and resolv.conf. old, if set, is the lease being replaced.
func (c *Client) install(l *Lease, old *Lease) error {
	secs := int(l.Duration / time.Second)
	addr := &netlink.Addr{
		IPNet:       &net.IPNet{IP: l.Addr.Addr().AsSlice(), Mask: net.CIDRMask(l.Addr.Bits(), 32)},
		ValidLft:    secs,
		PreferedLft: secs,
	}
	if old != nil && old.Addr != l.Addr {
		c.remove(old)
	}
	if err := c.nl.AddrReplace(c.link, addr); err != nil {
		return fmt.Errorf("address %s: %w", l.Addr, err)
	}
	if l.Router.IsValid() {
		r := &netlink.Route{
			LinkIndex: c.link.Attrs().Index,
			Dst:       &net.IPNet{IP: net.IPv4zero, Mask: net.CIDRMask(0, 32)},
			Gw:        l.Router.AsSlice(),
			Protocol:  unix.RTPROT_DHCP,
		}
		if !l.Addr.Contains(l.Router) {
			r.Flags = int(netlink.FLAG_ONLINK)
		}
		if err := c.nl.RouteReplace(r); err != nil {
			return fmt.Errorf("default route via %s: %w", l.Router, err)
		}
	}
	if c.cfg.Resolv != nil {
		if err := c.cfg.Resolv.SetDHCP(l.DNS, l.Search); err != nil {
			return err
		}
	}
	c.mu.Lock()
	c.lease = l
	c.mu.Unlock()
	if old == nil {
		c.log.Info("DHCP lease", "addr", l.Addr, "router", l.Router, "dns", l.DNS, "server", l.Server, "lease", l.Duration, "t1", l.T1)
	} else {
		c.log.Info("DHCP lease renewed", "addr", l.Addr, "lease", l.Duration)
	}
	if c.cfg.OnLease != nil {
		c.cfg.OnLease(l)
	}
	return nil
}

// remove takes an expired or replaced lease off the interface.
func (c *Client) remove(l *Lease) {
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: l.Addr.Addr().AsSlice(), Mask: net.CIDRMask(l.Addr.Bits(), 32)}}
	if err := c.nl.AddrDel(c.link, addr); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
		c.log.Warn("removing old DHCP address", "addr", l.Addr, "err", err)
	}
}

// Addr4 is the current IPv4 address, for logs and the pid1 selftest.
func (c *Client) Addr4() netip.Prefix {
	if l := c.Lease(); l != nil {
		return l.Addr
	}
	return netip.Prefix{}
}
