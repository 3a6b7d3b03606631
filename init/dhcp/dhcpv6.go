package dhcp

import (
	"context"
	"net"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv6"
	"github.com/insomniacslk/dhcp/dhcpv6/nclient6"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"patela/init/nsexec"
)

// dhcpv6 asks for a stateful IPv6 address where a DHCPv6 server answers
// (SLAAC needs nothing from us but the sysctls). A few tries at boot;
// silence means the network offers none, which is normal. A held address
// is refreshed by a new exchange at T1, and carries the server's lifetimes
// so the kernel drops it if that stops.
func (c *Client) dhcpv6(ctx context.Context) {
	var cl *nclient6.Client
	for n := 0; n < 5 && cl == nil; n++ {
		// The link-local address must finish DAD before we can bind it.
		err := nsexec.Do(c.cfg.NetNS, func() (err error) {
			cl, err = nclient6.New(c.cfg.Interface, nclient6.WithTimeout(c.cfg.AttemptTimeout), nclient6.WithRetry(1))
			return err
		})
		if err != nil {
			cl = nil
			if !sleepUntil(ctx, time.Now().Add(c.backoff(n))) {
				return
			}
		}
	}
	if cl == nil {
		c.log.Info("DHCPv6: no usable link-local address; SLAAC only")
		return
	}
	defer cl.Close()
	for n := 0; ; {
		actx, cancel := context.WithTimeout(ctx, 2*c.cfg.AttemptTimeout)
		reply, err := cl.RapidSolicit(actx)
		cancel()
		if ctx.Err() != nil {
			return
		}
		var refresh time.Duration
		if err == nil {
			refresh = c.install6(reply)
		}
		if refresh == 0 {
			n++
			if n == 3 {
				c.log.Info("DHCPv6: no server answered; IPv6 from router advertisements only")
				return
			}
			refresh = c.backoff(n)
		}
		if !sleepUntil(ctx, time.Now().Add(refresh)) {
			return
		}
	}
}

// install6 adds the reply's address and returns when to refresh it (0 if
// the reply held no address).
func (c *Client) install6(reply *dhcpv6.Message) time.Duration {
	iana := reply.Options.OneIANA()
	if iana == nil {
		return 0
	}
	a := iana.Options.OneAddress()
	if a == nil || a.IPv6Addr.To4() != nil || !a.IPv6Addr.IsGlobalUnicast() || a.ValidLifetime < minLease {
		return 0
	}
	valid := min(a.ValidLifetime, maxLease)
	pref := min(a.PreferredLifetime, valid)
	addr := &netlink.Addr{
		IPNet:       &net.IPNet{IP: a.IPv6Addr, Mask: net.CIDRMask(128, 128)},
		ValidLft:    int(valid / time.Second),
		PreferedLft: int(pref / time.Second),
		Flags:       unix.IFA_F_NODAD,
	}
	if err := c.nl.AddrReplace(c.link, addr); err != nil {
		c.log.Warn("DHCPv6: adding address", "addr", a.IPv6Addr, "err", err)
		return 0
	}
	c.log.Info("DHCPv6 lease", "addr", a.IPv6Addr, "valid", valid, "dns", reply.Options.DNS())
	if iana.T1 > 0 && iana.T1 < valid {
		return iana.T1
	}
	return max(pref/2, minLease)
}
