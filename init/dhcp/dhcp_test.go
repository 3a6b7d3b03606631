package dhcp

import (
	"context"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/server4"
	"github.com/vishvananda/netlink"

	"patela/init/netnstest"
	"patela/init/reaper"
	"patela/init/resolv"
	"patela/internal/testutil"
)

// pair is a client namespace (cli0) wired to a server namespace (srv0,
// 192.0.2.1/24).
func pair(t *testing.T) (cli, srv *netnstest.NS) {
	cli, srv = netnstest.New(t), netnstest.New(t)
	netnstest.Veth(t, cli, "cli0", srv, "srv0")
	srv.Addr(t, "srv0", "192.0.2.1/24")
	return cli, srv
}

func defaultRoute(t *testing.T, ns *netnstest.NS) string {
	t.Helper()
	rs, err := ns.NL.RouteList(nil, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rs {
		if ones, _ := r.Dst.Mask.Size(); r.Gw != nil && (r.Dst == nil || ones == 0) {
			return r.Gw.String()
		}
	}
	return ""
}

func addrs(t *testing.T, ns *netnstest.NS, ifname string) map[string]netlink.Addr {
	t.Helper()
	l, err := ns.NL.LinkByName(ifname)
	if err != nil {
		t.Fatal(err)
	}
	as, err := ns.NL.AddrList(l, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]netlink.Addr{}
	for _, a := range as {
		out[a.IPNet.String()] = a
	}
	return out
}

// dnsmasq runs Debian's dnsmasq as the DHCP (and DHCPv6/RA) server in
// srv's namespace until the test ends.
func dnsmasq(t *testing.T, srv *netnstest.NS, args ...string) {
	bin := testutil.RequireTool(t, "dnsmasq", "scripts/deps.sh installs dnsmasq-base")
	dir := t.TempDir()
	cmd := exec.Command("ip", append([]string{"netns", "exec", srv.Name, bin, "--no-daemon", "--conf-file=/dev/null",
		"--port=0", "--no-ping", "--interface=srv0", "--bind-interfaces",
		"--dhcp-leasefile=" + filepath.Join(dir, "leases"), "--pid-file=" + filepath.Join(dir, "pid")}, args...)...)
	var log strings.Builder
	cmd.Stderr = &log
	if err := reaper.Start(cmd); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		reaper.Wait(cmd)
		if t.Failed() {
			t.Logf("dnsmasq:\n%s", log.String())
		}
	})
}

// TestLeaseFromDnsmasq gets a lease from Debian's dnsmasq and checks what
// the machine ends up with: address, default route, resolv.conf.
func TestLeaseFromDnsmasq(t *testing.T) {
	cli, srv := pair(t)
	dnsmasq(t, srv, "--dhcp-range=192.0.2.50,192.0.2.60,255.255.255.0,2m",
		"--dhcp-option=option:router,192.0.2.1", "--dhcp-option=option:dns-server,192.0.2.53,192.0.2.54",
		"--dhcp-option=option:domain-search,lab.example.org")
	dir := t.TempDir()
	rcPath := filepath.Join(dir, "etc/resolv.conf")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := Start(ctx, Config{Interface: "cli0", NetNS: cli.Fd(), Resolv: &resolv.File{Path: rcPath}, AttemptTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Stop()
	l := c.Lease()
	if !netip.MustParsePrefix("192.0.2.48/28").Contains(l.Addr.Addr()) || l.Addr.Bits() != 24 {
		t.Errorf("lease address %v outside dnsmasq's range", l.Addr)
	}
	if l.Duration != 2*time.Minute {
		t.Errorf("lease time %v, want 2m", l.Duration)
	}
	a, ok := addrs(t, cli, "cli0")[l.Addr.String()]
	if !ok {
		t.Fatalf("address %v not on cli0", l.Addr)
	}
	if a.ValidLft <= 0 || a.ValidLft > 120 {
		t.Errorf("address lifetime %d s, want the lease's 120 s", a.ValidLft)
	}
	if gw := defaultRoute(t, cli); gw != "192.0.2.1" {
		t.Errorf("default route via %q", gw)
	}
	got, err := os.ReadFile(rcPath)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"nameserver 192.0.2.53\n", "nameserver 192.0.2.54\n", "search lab.example.org\n"} {
		if !strings.Contains(string(got), want) {
			t.Errorf("resolv.conf lacks %q:\n%s", want, got)
		}
	}
	if strings.Contains(string(got), "8.8.8.8") {
		t.Errorf("resolv.conf names a public resolver:\n%s", got)
	}
}

// server is a Go DHCP server with a short lease that records what it sees.
type server struct {
	lease, t1, t2 time.Duration
	mu            sync.Mutex
	log           []seen
	// ignoreRenewals drops renewals (ciaddr set) until this time.
	ignoreUntil time.Time
}

type seen struct {
	at     time.Time
	typ    dhcpv4.MessageType
	ciaddr string
}

func (s *server) renewals() []seen {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []seen
	for _, x := range s.log {
		if x.typ == dhcpv4.MessageTypeRequest && x.ciaddr != "0.0.0.0" {
			out = append(out, x)
		}
	}
	return out
}

func (s *server) handle(conn net.PacketConn, peer net.Addr, m *dhcpv4.DHCPv4) {
	s.mu.Lock()
	s.log = append(s.log, seen{time.Now(), m.MessageType(), m.ClientIPAddr.String()})
	ignore := time.Now().Before(s.ignoreUntil)
	s.mu.Unlock()
	var typ dhcpv4.MessageType
	switch m.MessageType() {
	case dhcpv4.MessageTypeDiscover:
		typ = dhcpv4.MessageTypeOffer
	case dhcpv4.MessageTypeRequest:
		if ignore && !m.ClientIPAddr.IsUnspecified() {
			return
		}
		typ = dhcpv4.MessageTypeAck
	default:
		return
	}
	r, err := dhcpv4.NewReplyFromRequest(m,
		dhcpv4.WithMessageType(typ),
		dhcpv4.WithYourIP(net.IPv4(192, 0, 2, 77)),
		dhcpv4.WithServerIP(net.IPv4(192, 0, 2, 1)),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.IPv4(192, 0, 2, 1))),
		dhcpv4.WithNetmask(net.CIDRMask(24, 32)),
		dhcpv4.WithRouter(net.IPv4(192, 0, 2, 1)),
		dhcpv4.WithDNS(net.IPv4(192, 0, 2, 53)),
		dhcpv4.WithLeaseTime(uint32(s.lease/time.Second)),
	)
	if s.t1 != 0 {
		r.UpdateOption(dhcpv4.OptRenewTimeValue(s.t1))
		r.UpdateOption(dhcpv4.OptRebindingTimeValue(s.t2))
	}
	if err != nil {
		return
	}
	conn.WriteTo(r.ToBytes(), &net.UDPAddr{IP: net.IPv4bcast, Port: 68})
}

func startServer(t *testing.T, srv *netnstest.NS, s *server) {
	var gs *server4.Server
	srv.Do(t, func() (err error) {
		gs, err = server4.NewServer("srv0", &net.UDPAddr{IP: net.IPv4zero, Port: 67}, s.handle)
		return err
	})
	go gs.Serve()
	t.Cleanup(func() { gs.Close() })
}

// TestRenewBeforeExpiry holds a 4-second lease for longer than it lasts:
// the server must see renewals (REQUEST with ciaddr) before each expiry,
// the address must stay, and its kernel lifetime must be refreshed.
func TestRenewBeforeExpiry(t *testing.T) {
	cli, srv := pair(t)
	s := &server{lease: 4 * time.Second}
	startServer(t, srv, s)
	renewed := make(chan *Lease, 8)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := Start(ctx, Config{Interface: "cli0", NetNS: cli.Fd(), AttemptTimeout: time.Second,
		OnLease: func(l *Lease) { renewed <- l }})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Stop()
	first := <-renewed
	if first.Addr != netip.MustParsePrefix("192.0.2.77/24") {
		t.Fatalf("lease %v", first.Addr)
	}
	deadline := first.Acquired.Add(first.Duration)
	for i := 0; i < 2; i++ {
		select {
		case l := <-renewed:
			if !l.Acquired.Before(deadline) {
				t.Errorf("renewal %d at %v, after the lease ended at %v", i, l.Acquired, deadline)
			}
			deadline = l.Acquired.Add(l.Duration)
		case <-ctx.Done():
			t.Fatal("no renewal")
		}
	}
	rs := s.renewals()
	if len(rs) < 2 {
		t.Fatalf("server saw %d renewal REQUESTs", len(rs))
	}
	// More than a whole lease after the first, the address is still there.
	if time.Since(first.Acquired) < first.Duration {
		t.Fatalf("test ran shorter than a lease")
	}
	if _, ok := addrs(t, cli, "cli0")["192.0.2.77/24"]; !ok {
		t.Error("address gone after renewals")
	}
}

// TestRebindAfterT2: the server ignores renewals until after T2; the
// client must keep asking and be answered by the broadcast rebind before
// the lease runs out. The server's own T1/T2 (1 s, 2 s) must be obeyed.
func TestRebindAfterT2(t *testing.T) {
	cli, srv := pair(t)
	s := &server{lease: 6 * time.Second, t1: time.Second, t2: 2 * time.Second}
	startServer(t, srv, s)
	got := make(chan *Lease, 8)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := Start(ctx, Config{Interface: "cli0", NetNS: cli.Fd(), AttemptTimeout: 500 * time.Millisecond,
		OnLease: func(l *Lease) { got <- l }})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Stop()
	first := <-got
	if first.T1 != time.Second || first.T2 != 2*time.Second {
		t.Fatalf("server T1/T2 not used: %v %v", first.T1, first.T2)
	}
	s.mu.Lock()
	s.ignoreUntil = first.Acquired.Add(first.T2 + 100*time.Millisecond)
	s.mu.Unlock()
	select {
	case l := <-got:
		if l.Acquired.Before(first.Acquired.Add(first.T2)) || !l.Acquired.Before(first.Acquired.Add(first.Duration)) {
			t.Errorf("rebound at +%v, want between T2 (%v) and expiry (%v)", l.Acquired.Sub(first.Acquired), first.T2, first.Duration)
		}
	case <-ctx.Done():
		t.Fatal("lease not rebound")
	}
	if n := len(s.renewals()); n < 2 {
		t.Errorf("server saw %d renewal/rebind requests, want the ignored ones and the answered one", n)
	}
}

// TestNoServer: with nobody answering, Start gives up when its context
// ends and leaves nothing behind.
func TestNoServer(t *testing.T) {
	cli, _ := pair(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, err := Start(ctx, Config{Interface: "cli0", NetNS: cli.Fd(), AttemptTimeout: 300 * time.Millisecond})
	if err == nil || !strings.Contains(err.Error(), "no lease") {
		t.Fatalf("err = %v", err)
	}
	if len(addrs(t, cli, "cli0")) != 0 {
		t.Error("address installed without a lease")
	}
	_, err = Start(context.Background(), Config{Interface: "nope0", NetNS: cli.Fd()})
	if err == nil || !strings.Contains(err.Error(), "nope0") {
		t.Errorf("missing interface: err = %v", err)
	}
}

// TestIPv6FromDnsmasq: dnsmasq sends router advertisements for a prefix
// (SLAAC) and runs stateful DHCPv6 on it; the management NIC must end up
// with both its SLAAC address and a DHCPv6 /128 from the range.
func TestIPv6FromDnsmasq(t *testing.T) {
	cli, srv := pair(t)
	srv.Addr(t, "srv0", "2001:db8:1::1/64")
	dnsmasq(t, srv, "--dhcp-range=192.0.2.50,192.0.2.60,255.255.255.0,2m",
		"--enable-ra", "--dhcp-range=2001:db8:1::100,2001:db8:1::1ff,slaac,64,2m")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := Start(ctx, Config{Interface: "cli0", NetNS: cli.Fd(), IPv6: true, AttemptTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Stop()
	l, _ := cli.NL.LinkByName("cli0")
	prefix := netip.MustParsePrefix("2001:db8:1::/64")
	var slaac, dhcp6 string
	for ctx.Err() == nil && (slaac == "" || dhcp6 == "") {
		as, err := cli.NL.AddrList(l, netlink.FAMILY_V6)
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range as {
			ip, _ := netip.AddrFromSlice(a.IP)
			ones, _ := a.Mask.Size()
			switch {
			case !prefix.Contains(ip):
			case ones == 64:
				slaac = a.IPNet.String()
			case ones == 128 && ip.Compare(netip.MustParseAddr("2001:db8:1::100")) >= 0 && ip.Compare(netip.MustParseAddr("2001:db8:1::1ff")) <= 0:
				dhcp6 = a.IPNet.String()
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	if slaac == "" || dhcp6 == "" {
		t.Fatalf("IPv6: SLAAC address %q, DHCPv6 address %q", slaac, dhcp6)
	}
	t.Logf("SLAAC %s, DHCPv6 %s", slaac, dhcp6)
}
