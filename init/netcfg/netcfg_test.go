package netcfg

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os/exec"
	"slices"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"patela/init/netnstest"
	"patela/init/reaper"
	"patela/internal/api"
	"patela/internal/layout"
)

// world is an agent namespace with a management link (its own default
// routes, which must never change) and a relay veth to an upstream
// namespace that plays the relay gateway and a host beyond it.
type world struct {
	agent, up *netnstest.NS
	lan       *netnstest.NS // the management network's other end, 10.99.0.1
	m         *Manager
}

const (
	far4 = "198.51.100.1"
	far6 = "2001:db8:ffff::1"
)

func newWorld(t *testing.T) *world {
	w := &world{agent: netnstest.New(t), up: netnstest.New(t), lan: netnstest.New(t)}
	// The management network leads to a namespace of its own that does
	// not forward: traffic that takes the main table goes nowhere.
	netnstest.Veth(t, w.agent, "mgmt0", w.lan, "lan0")
	w.lan.Addr(t, "lan0", "10.99.0.1/24")
	w.agent.Addr(t, "mgmt0", "10.99.0.2/24")
	w.agent.Addr(t, "mgmt0", "2001:db8:99::2/64")
	w.agent.Run(t, "ip", "route", "add", "default", "via", "10.99.0.1", "dev", "mgmt0")
	w.agent.Run(t, "ip", "-6", "route", "add", "default", "via", "2001:db8:99::1", "dev", "mgmt0")
	netnstest.Veth(t, w.agent, "relay0", w.up, "up0")
	w.up.Addr(t, "up0", "192.0.2.1/24")
	w.up.Addr(t, "up0", "2001:db8::1/64")
	w.up.Addr(t, "lo", far4+"/32")
	w.up.Addr(t, "lo", far6+"/128")
	m, err := New(Options{NetNS: w.agent.Fd()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	w.m = m
	return w
}

func relays(rs ...api.Relay) Relays {
	return Relays{
		Network: api.Network{RelayInterface: "relay0", IPv4Gateway: "192.0.2.1", IPv6Gateway: "2001:db8::1"},
		Relays:  rs,
	}
}

var (
	r1 = api.Relay{Name: "murazzano", IPv4: "192.0.2.10/24", IPv6: "2001:db8::10/64", UID: 10001, ORPort: 9001}
	r2 = api.Relay{Name: "robiola", IPv4: "192.0.2.11/24", IPv6: "2001:db8::11/64", UID: 10002, ORPort: 9001}
	r3 = api.Relay{Name: "toma", IPv4: "192.0.2.12/24", UID: 10003, ORPort: 9001}
)

// state is everything Apply may touch, read back from the kernel, as
// sorted strings so that tests compare whole states.
type state struct {
	addrs, rules, routes, main []string
	nft                        string // `nft -j list table inet patela`, handles included
}

func (w *world) state(t *testing.T) state {
	t.Helper()
	var s state
	l, err := w.agent.NL.LinkByName("relay0")
	if err != nil {
		t.Fatal(err)
	}
	as, err := w.agent.NL.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range as {
		if a.IP.IsLinkLocalUnicast() {
			continue
		}
		s.addrs = append(s.addrs, a.IPNet.String())
	}
	for _, fam := range []int{unix.AF_INET, unix.AF_INET6} {
		rs, err := w.agent.NL.RuleList(fam)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rs {
			if r.Table != DefaultTable {
				continue
			}
			if r.Src != nil {
				s.rules = append(s.rules, fmt.Sprintf("%d from %s", r.Priority, r.Src))
			} else {
				s.rules = append(s.rules, fmt.Sprintf("%d fwmark %d", r.Priority, r.Mark))
			}
		}
	}
	rs, err := w.m.listTable()
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rs {
		s.routes = append(s.routes, routeString(r))
	}
	main, err := w.agent.NL.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range main {
		if r.Gw != nil { // the management default routes
			s.main = append(s.main, routeString(r))
		}
	}
	for _, x := range [][]string{s.addrs, s.rules, s.routes, s.main} {
		sort.Strings(x)
	}
	s.nft = w.agent.Run(t, "nft", "-j", "list", "ruleset")
	return s
}

func routeString(r netlink.Route) string {
	dst := "default"
	if ones, _ := r.Dst.Mask.Size(); r.Dst != nil && ones > 0 {
		dst = r.Dst.String()
	}
	if r.Gw != nil {
		return fmt.Sprintf("%s via %s", dst, r.Gw)
	}
	return dst + " link"
}

// nftRules returns the rules of table inet patela per chain, each rule's
// expressions as compact JSON.
func nftRules(t *testing.T, ruleset string) map[string][]string {
	t.Helper()
	var doc struct {
		Nftables []map[string]json.RawMessage `json:"nftables"`
	}
	if err := json.Unmarshal([]byte(ruleset), &doc); err != nil {
		t.Fatalf("nft -j: %v\n%s", err, ruleset)
	}
	out := map[string][]string{}
	for _, o := range doc.Nftables {
		raw, ok := o["rule"]
		if !ok {
			continue
		}
		var r struct {
			Family, Table, Chain string
			Expr                 json.RawMessage
		}
		if err := json.Unmarshal(raw, &r); err != nil {
			t.Fatal(err)
		}
		if r.Family == "inet" && r.Table == TableName {
			var b bytes.Buffer
			if err := json.Compact(&b, r.Expr); err != nil {
				t.Fatal(err)
			}
			out[r.Chain] = append(out[r.Chain], b.String())
		}
	}
	return out
}

func TestApplyConvergeTeardown(t *testing.T) {
	w := newWorld(t)
	ctx := context.Background()
	before := w.state(t)
	if len(before.main) != 2 {
		t.Fatalf("test setup: management default routes = %v", before.main)
	}

	if err := w.m.Apply(ctx, relays(r1, r2)); err != nil {
		t.Fatal(err)
	}
	s1 := w.state(t)
	wantAddrs := []string{"192.0.2.10/24", "192.0.2.11/24", "2001:db8::10/64", "2001:db8::11/64"}
	check(t, "addresses", s1.addrs, wantAddrs)
	check(t, "rules", s1.rules, []string{
		"1000 from 192.0.2.10/32", "1000 from 192.0.2.11/32", "1000 from 2001:db8::10/128", "1000 from 2001:db8::11/128",
		"1000 fwmark 10001", "1000 fwmark 10001", "1000 fwmark 10002", "1000 fwmark 10002",
	})
	check(t, "relay table", s1.routes, []string{"192.0.2.0/24 link", "2001:db8::/64 link", "default via 192.0.2.1", "default via 2001:db8::1"})
	check(t, "management routes", s1.main, before.main)
	nr := nftRules(t, s1.nft)
	if len(nr["mark"]) != 2 || len(nr["snat"]) != 4 || len(nr["guard"]) != 1 {
		t.Fatalf("nft rules: %v", nr)
	}
	for _, want := range []string{`"127.66.0.0","len":16`, `"dport"`, "9035", `"skuid"`, `"op":"!="`, `"drop"`} {
		if !strings.Contains(nr["guard"][0], want) {
			t.Errorf("guard rule %s lacks %s", nr["guard"][0], want)
		}
	}
	for i, want := range [][]string{{`"skuid"`, "10001", `"mark"`}, {`"skuid"`, "10002"}} {
		for _, s := range want {
			if !strings.Contains(nr["mark"][i], s) {
				t.Errorf("mark rule %d %s lacks %s", i, nr["mark"][i], s)
			}
		}
	}
	for i, want := range []string{`"addr":"192.0.2.10"`, `"addr":"2001:db8::10"`, `"addr":"192.0.2.11"`, `"addr":"2001:db8::11"`} {
		if !strings.Contains(nr["snat"][i], want) || !strings.Contains(nr["snat"][i], `"relay0"`) {
			t.Errorf("snat rule %d = %s, want %s on relay0", i, nr["snat"][i], want)
		}
	}

	// The same config again changes nothing, nft handles included.
	if err := w.m.Apply(ctx, relays(r1, r2)); err != nil {
		t.Fatal(err)
	}
	if s := w.state(t); !equal(s, s1) {
		t.Errorf("second Apply changed state:\n%+v\n%+v", s1, s)
	}

	// Bad input is refused and changes nothing.
	bad := r2
	bad.UID = r1.UID
	if err := w.m.Apply(ctx, relays(r1, bad)); err == nil || !strings.Contains(err.Error(), "uid 10001 used twice") {
		t.Errorf("duplicate uid: err = %v", err)
	}
	if s := w.state(t); !equal(s, s1) {
		t.Error("refused Apply changed state")
	}

	// r2 removed, r1's IPv4 changed, r3 (IPv4 only) added: converge with
	// nothing stale.
	r1b := r1
	r1b.IPv4 = "192.0.2.20/24"
	if err := w.m.Apply(ctx, relays(r1b, r3)); err != nil {
		t.Fatal(err)
	}
	s2 := w.state(t)
	check(t, "addresses", s2.addrs, []string{"192.0.2.12/24", "192.0.2.20/24", "2001:db8::10/64"})
	check(t, "rules", s2.rules, []string{
		"1000 from 192.0.2.12/32", "1000 from 192.0.2.20/32", "1000 from 2001:db8::10/128",
		"1000 fwmark 10001", "1000 fwmark 10001", "1000 fwmark 10003",
	})
	check(t, "relay table", s2.routes, []string{"192.0.2.0/24 link", "2001:db8::/64 link", "default via 192.0.2.1", "default via 2001:db8::1"})
	check(t, "management routes", s2.main, before.main)
	nr = nftRules(t, s2.nft)
	if len(nr["mark"]) != 2 || len(nr["snat"]) != 3 || strings.Contains(s2.nft, "10002") || strings.Contains(s2.nft, "192.0.2.11") {
		t.Errorf("stale nft rules: %v", nr)
	}

	// Only IPv4 relays left: the IPv6 side disappears entirely.
	if err := w.m.Apply(ctx, relays(r3)); err != nil {
		t.Fatal(err)
	}
	s3 := w.state(t)
	check(t, "addresses", s3.addrs, []string{"192.0.2.12/24"})
	check(t, "relay table", s3.routes, []string{"192.0.2.0/24 link", "default via 192.0.2.1"})
	check(t, "rules", s3.rules, []string{"1000 from 192.0.2.12/32", "1000 fwmark 10003"})

	if err := w.m.Teardown(); err != nil {
		t.Fatal(err)
	}
	s4 := w.state(t)
	check(t, "addresses", s4.addrs, nil)
	check(t, "rules", s4.rules, nil)
	check(t, "relay table", s4.routes, nil)
	check(t, "management routes", s4.main, before.main)
	if strings.Contains(s4.nft, `"patela"`) {
		t.Errorf("table survived teardown: %s", s4.nft)
	}
}

func TestInterfaceByMAC(t *testing.T) {
	w := newWorld(t)
	l, err := w.agent.NL.LinkByName("relay0")
	if err != nil {
		t.Fatal(err)
	}
	want := relays(r3)
	want.Network.RelayInterface = l.Attrs().HardwareAddr.String()
	if err := w.m.Apply(context.Background(), want); err != nil {
		t.Fatal(err)
	}
	check(t, "addresses", w.state(t).addrs, []string{"192.0.2.12/24"})
	want.Network.RelayInterface = "02:00:00:00:00:99"
	if err := w.m.Apply(context.Background(), want); err == nil || !strings.Contains(err.Error(), "no interface has MAC") {
		t.Errorf("unknown MAC: err = %v", err)
	}
}

// TestRelayTrafficLeavesFromRelayAddress runs a process as each relay's uid
// inside the agent namespace: it connects without binding to an address
// beyond the relay gateway; the main table would send it to the management
// NIC, so only the mark, the relay table and SNAT get it to the peer,
// which must see the relay's own address.
func TestRelayTrafficLeavesFromRelayAddress(t *testing.T) {
	w := newWorld(t)
	if err := w.m.Apply(context.Background(), relays(r1, r3)); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		uid      int
		far, src string
	}{
		{10001, far4, "192.0.2.10"},
		{10003, far4, "192.0.2.12"},
		{10001, far6, "2001:db8::10"},
	} {
		t.Run(fmt.Sprintf("uid%d-%s", tc.uid, tc.far), func(t *testing.T) {
			var l net.Listener
			w.up.Do(t, func() (err error) {
				l, err = net.Listen("tcp", net.JoinHostPort(tc.far, "0"))
				return err
			})
			defer l.Close()
			got := make(chan string, 1)
			go func() {
				c, err := l.Accept()
				if err != nil {
					got <- err.Error()
					return
				}
				defer c.Close()
				io.ReadAll(c)
				got <- c.RemoteAddr().(*net.TCPAddr).IP.String()
			}()
			port := l.Addr().(*net.TCPAddr).Port
			host := tc.far
			script := fmt.Sprintf("exec 3<>/dev/tcp/%s/%d && printf hello >&3", host, port)
			cmd := exec.Command("/bin/bash", "-c", script)
			cmd.Dir = "/"
			cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(tc.uid), Gid: uint32(tc.uid)}}
			var out []byte
			w.agent.Do(t, func() (err error) {
				out, err = reaper.CombinedOutput(cmd)
				if err != nil {
					return fmt.Errorf("bash as uid %d: %v: %s", tc.uid, err, out)
				}
				return nil
			})
			select {
			case src := <-got:
				if src != tc.src {
					t.Errorf("peer saw source %s, want %s", src, tc.src)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("peer saw no connection")
			}
		})
	}
	// root's traffic is not a relay's: it still takes the main table.
	state := w.state(t)
	if !slices.Contains(state.main, "default via 10.99.0.1") {
		t.Errorf("management default route gone: %v", state.main)
	}
}

// The relays' metrics listeners answer the agent's uid only: as a relay's
// uid, a connection to one hangs (dropped); as the agent's it connects,
// and so does the relay's uid to any other port of the same address.
// Without the table (Teardown) the relay's uid connects too: the rule is
// what stopped it.
func TestMetricsGuard(t *testing.T) {
	w := newWorld(t)
	if err := w.m.Apply(context.Background(), relays(r1)); err != nil {
		t.Fatal(err)
	}
	addr := layout.MetricsAddr(r1.UID)
	other := netip.AddrPortFrom(addr.Addr(), layout.MetricsPort+1)
	for _, a := range []netip.AddrPort{addr, other} {
		var l net.Listener
		w.agent.Do(t, func() (err error) {
			l, err = net.Listen("tcp", a.String())
			return err
		})
		t.Cleanup(func() { l.Close() })
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				c.Close()
			}
		}()
	}
	for _, tc := range []struct {
		uid     int
		to      netip.AddrPort
		connect bool
	}{
		{r1.UID, addr, false},
		{10002, addr, false}, // any other uid, relay or not
		{0, addr, true},
		{r1.UID, other, true},
	} {
		if got := w.agent.ConnectAs(t, tc.uid, tc.to); got != tc.connect {
			t.Errorf("uid %d to %s: connected %v, want %v", tc.uid, tc.to, got, tc.connect)
		}
	}
	if err := w.m.Teardown(); err != nil {
		t.Fatal(err)
	}
	if !w.agent.ConnectAs(t, r1.UID, addr) {
		t.Errorf("uid %d cannot reach %s without the table either: the test proves nothing", r1.UID, addr)
	}
}

func TestParseRefusesBadInput(t *testing.T) {
	ok := relays(r1)
	for _, tc := range []struct {
		name string
		mod  func(*Relays)
		want string
	}{
		{"no interface", func(r *Relays) { r.Network.RelayInterface = "" }, "relay_interface is empty"},
		{"bad gw4", func(r *Relays) { r.Network.IPv4Gateway = "2001:db8::1" }, "not an IPv4 address"},
		{"bad gw6", func(r *Relays) { r.Network.IPv6Gateway = "192.0.2.1" }, "not an IPv6 address"},
		{"no gw4", func(r *Relays) { r.Network.IPv4Gateway = "" }, "ipv4_gateway is empty"},
		{"no gw6", func(r *Relays) { r.Network.IPv6Gateway = "" }, "ipv6_gateway is empty"},
		{"bad name", func(r *Relays) { r.Relays[0].Name = "a-b" }, "letters or digits"},
		{"low uid", func(r *Relays) { r.Relays[0].UID = 0 }, "out of range"},
		{"no prefix", func(r *Relays) { r.Relays[0].IPv4 = "192.0.2.10" }, "not an address/prefix"},
		{"v6 as v4", func(r *Relays) { r.Relays[0].IPv4 = "2001:db8::5/64" }, "wrong address family"},
		{"network addr", func(r *Relays) { r.Relays[0].IPv4 = "192.0.2.0/24" }, "not a host address"},
		{"no address", func(r *Relays) { r.Relays[0].IPv4, r.Relays[0].IPv6 = "", "" }, "no address"},
		{"dup addr", func(r *Relays) { x := r3; x.IPv4 = r1.IPv4; r.Relays = append(r.Relays, x) }, "used twice"},
		{"dup name", func(r *Relays) { x := r3; x.Name = r1.Name; r.Relays = append(r.Relays, x) }, "listed twice"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := ok
			r.Relays = slices.Clone(ok.Relays)
			tc.mod(&r)
			_, err := parse(r)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want %q", err, tc.want)
			}
		})
	}
}

func check(t *testing.T, what string, got, want []string) {
	t.Helper()
	sort.Strings(want)
	if !slices.Equal(got, want) {
		t.Errorf("%s:\n got %q\nwant %q", what, got, want)
	}
}

func equal(a, b state) bool {
	return slices.Equal(a.addrs, b.addrs) && slices.Equal(a.rules, b.rules) &&
		slices.Equal(a.routes, b.routes) && slices.Equal(a.main, b.main) && a.nft == b.nft
}

// BenchmarkApplyUnchanged is the cost of a reconcile round that changes
// nothing (8 relays, dual stack): read back addresses, routes and rules,
// check the nftables table exists.
func BenchmarkApplyUnchanged(b *testing.B) {
	agent, up := netnstest.New(b), netnstest.New(b)
	netnstest.Veth(b, agent, "relay0", up, "up0")
	m, err := New(Options{NetNS: agent.Fd(), Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	defer m.Close()
	want := relays()
	for i := range 8 {
		want.Relays = append(want.Relays, api.Relay{Name: fmt.Sprintf("r%d", i), UID: 10001 + i,
			IPv4: fmt.Sprintf("192.0.2.%d/24", 10+i), IPv6: fmt.Sprintf("2001:db8::%x/64", 16+i), ORPort: 9001})
	}
	ctx := context.Background()
	if err := m.Apply(ctx, want); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for b.Loop() {
		if err := m.Apply(ctx, want); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkApplyChanged replaces the nftables table and moves one address
// on every round.
func BenchmarkApplyChanged(b *testing.B) {
	agent, up := netnstest.New(b), netnstest.New(b)
	netnstest.Veth(b, agent, "relay0", up, "up0")
	m, err := New(Options{NetNS: agent.Fd(), Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	defer m.Close()
	ctx := context.Background()
	a, c := relays(r1, r3), relays(r1, r2)
	for i := 0; b.Loop(); i++ {
		w := a
		if i%2 == 1 {
			w = c
		}
		if err := m.Apply(ctx, w); err != nil {
			b.Fatal(err)
		}
	}
}
