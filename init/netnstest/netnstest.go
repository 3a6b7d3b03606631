// Package netnstest creates network namespaces and veth pairs for tests of
// the agent's network code, and removes them when the test ends. It needs
// root (CAP_SYS_ADMIN + CAP_NET_ADMIN); without it tests skip, except under
// CI where they fail.
package netnstest

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/server4"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"patela/init/nsexec"
	"patela/init/reaper"
	"patela/internal/testutil"
)

// RequireRoot skips t without root, or fails it when CI is set.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		testutil.SkipOrFail(t, "network namespace tests need root (CI runs as root)")
	}
}

// NS is a named network namespace (visible to `ip netns exec`).
type NS struct {
	Name   string
	Handle netns.NsHandle
	NL     *netlink.Handle
}

var seq atomic.Int64

// New creates a namespace with lo up; it is deleted at test end.
func New(t testing.TB) *NS {
	t.Helper()
	RequireRoot(t)
	name := fmt.Sprintf("ptl%d-%d", os.Getpid(), seq.Add(1))
	var h netns.NsHandle
	var err error
	done := make(chan struct{})
	go func() { // same dance as nsexec.Do: NewNamed switches the thread
		defer close(done)
		runtime.LockOSThread()
		orig, e := netns.Get()
		if e != nil {
			err = e
			return
		}
		defer orig.Close()
		h, err = netns.NewNamed(name)
		if e := netns.Set(orig); e != nil {
			err = e
			return
		}
		runtime.UnlockOSThread()
	}()
	<-done
	if err != nil {
		t.Fatalf("creating netns %s: %v", name, err)
	}
	nl, err := netlink.NewHandleAt(h)
	if err != nil {
		t.Fatal(err)
	}
	ns := &NS{Name: name, Handle: h, NL: nl}
	t.Cleanup(func() {
		nl.Close()
		h.Close()
		if err := netns.DeleteNamed(name); err != nil {
			t.Errorf("deleting netns %s: %v", name, err)
		}
	})
	lo, err := nl.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if err := nl.LinkSetUp(lo); err != nil {
		t.Fatal(err)
	}
	return ns
}

// Fd is the namespace as the agent's packages take it.
func (ns *NS) Fd() int { return int(ns.Handle) }

// Veth connects a (interface aName) and b (bName) and sets both up.
func Veth(t testing.TB, a *NS, aName string, b *NS, bName string) {
	t.Helper()
	v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: aName}, PeerName: bName, PeerNamespace: netlink.NsFd(b.Fd())}
	if err := a.NL.LinkAdd(v); err != nil {
		t.Fatalf("veth %s/%s: %v", aName, bName, err)
	}
	for _, x := range []struct {
		ns   *NS
		name string
	}{{a, aName}, {b, bName}} {
		l, err := x.ns.NL.LinkByName(x.name)
		if err != nil {
			t.Fatal(err)
		}
		if err := x.ns.NL.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
	}
}

// Addr adds a CIDR address to an interface; IPv6 without DAD.
func (ns *NS) Addr(t testing.TB, ifname, cidr string) {
	t.Helper()
	l, err := ns.NL.LinkByName(ifname)
	if err != nil {
		t.Fatal(err)
	}
	a, err := netlink.ParseAddr(cidr)
	if err != nil {
		t.Fatal(err)
	}
	if a.IP.To4() == nil {
		a.Flags = 0x02 // IFA_F_NODAD
	}
	if err := ns.NL.AddrAdd(l, a); err != nil {
		t.Fatalf("addr %s on %s: %v", cidr, ifname, err)
	}
}

// Do runs fn inside the namespace (sockets it opens stay there).
func (ns *NS) Do(t testing.TB, fn func() error) {
	t.Helper()
	if err := nsexec.Do(ns.Fd(), fn); err != nil {
		t.Fatal(err)
	}
}

// Run runs a command inside the namespace (`ip netns exec`) and returns
// its standard output; failure fails the test.
func (ns *NS) Run(t testing.TB, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns.Name, name}, args...)...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := reaper.Output(cmd)
	if err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, stderr.String())
	}
	return string(out)
}

// ServeDHCPv4 runs a DHCPv4 server on ns's interface iface until the test
// ends. It offers and acknowledges every request with the lease that
// opts describe (dhcpv4.WithYourIP, WithNetmask, ...) and answers by
// broadcast.
func (ns *NS) ServeDHCPv4(t testing.TB, iface string, opts ...dhcpv4.Modifier) {
	t.Helper()
	var gs *server4.Server
	ns.Do(t, func() (err error) {
		gs, err = server4.NewServer(iface, &net.UDPAddr{IP: net.IPv4zero, Port: 67}, func(c net.PacketConn, _ net.Addr, m *dhcpv4.DHCPv4) {
			typ := dhcpv4.MessageTypeOffer
			if m.MessageType() == dhcpv4.MessageTypeRequest {
				typ = dhcpv4.MessageTypeAck
			}
			r, err := dhcpv4.NewReplyFromRequest(m, append([]dhcpv4.Modifier{dhcpv4.WithMessageType(typ)}, opts...)...)
			if err == nil {
				c.WriteTo(r.ToBytes(), &net.UDPAddr{IP: net.IPv4bcast, Port: 68})
			}
		})
		return err
	})
	go gs.Serve()
	t.Cleanup(func() { gs.Close() })
}
