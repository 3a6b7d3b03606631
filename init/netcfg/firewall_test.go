package netcfg

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"patela/init/netnstest"
	"patela/init/nsexec"
)

// reach reports whether a TCP connection from namespace from to addr
// completes (a dropped SYN times out).
func reach(t *testing.T, from *netnstest.NS, addr string) bool {
	t.Helper()
	err := nsexec.Do(from.Fd(), func() error {
		c, err := net.DialTimeout("tcp", addr, 400*time.Millisecond)
		if err == nil {
			c.Close()
		}
		return err
	})
	return err == nil
}

// listen accepts (and closes) connections on addr in ns until the test ends.
func listen(t *testing.T, ns *netnstest.NS, addr string) {
	t.Helper()
	var l net.Listener
	ns.Do(t, func() (err error) {
		l, err = net.Listen("tcp", addr)
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

// udpReaches reports whether a datagram from port sport in ns from
// reaches a socket listening on dst in the agent namespace.
func udpReaches(t *testing.T, w *world, from *netnstest.NS, sport int, dst string) bool {
	t.Helper()
	var pc net.PacketConn
	w.agent.Do(t, func() (err error) {
		pc, err = net.ListenPacket("udp", dst)
		return err
	})
	defer pc.Close()
	from.Do(t, func() error {
		c, err := net.DialUDP("udp", &net.UDPAddr{Port: sport}, net.UDPAddrFromAddrPort(netAddrPort(t, dst)))
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.Write([]byte("x"))
		return err
	})
	pc.SetReadDeadline(time.Now().Add(400 * time.Millisecond))
	_, _, err := pc.ReadFrom(make([]byte, 16))
	return err == nil
}

// The inbound firewall, tried from both sides: a peer on the relay
// network reaches each relay's ORPort (and DirPort, IPv4) on its own
// address and nothing else; a peer on the management network reaches
// nothing; DHCP replies still arrive; the drops are counted.
func TestInboundFirewall(t *testing.T) {
	w := newWorld(t)
	// Before any Apply nothing filters: the probes can succeed.
	listen(t, w.agent, "10.99.0.2:2222")
	if !reach(t, w.lan, "10.99.0.2:2222") {
		t.Fatal("control: the management address is unreachable even without a firewall")
	}

	withDir := r1
	withDir.Torrc = "ContactInfo x\nDirPort 9030\n"
	if err := w.m.Apply(context.Background(), relays(withDir, r3)); err != nil {
		t.Fatal(err)
	}
	// What relays and relay uids could listen on: their ports, ports on
	// the side, on every address.
	for _, a := range []string{"192.0.2.10:9001", "192.0.2.10:9030", "[2001:db8::10]:9001", "[2001:db8::10]:9030",
		"192.0.2.12:9001", "192.0.2.12:9030", "192.0.2.10:4444", "[::]:5555"} {
		listen(t, w.agent, a)
	}
	for addr, want := range map[string]bool{
		"192.0.2.10:9001":     true,  // ORPort
		"192.0.2.10:9030":     true,  // DirPort
		"[2001:db8::10]:9001": true,  // ORPort over IPv6 (neighbour discovery works)
		"[2001:db8::10]:9030": false, // DirPort is IPv4 only
		"192.0.2.12:9001":     true,
		"192.0.2.12:9030":     false, // this relay has no DirPort
		"192.0.2.10:4444":     false, // a port opened on the side
		"192.0.2.10:5555":     false, // a wildcard listener
		"[2001:db8::11]:5555": false,
		"192.0.2.11:9001":     false, // not a relay address of this node
	} {
		if got := reach(t, w.up, addr); got != want {
			t.Errorf("relay side → %s: reached %v, want %v", addr, got, want)
		}
	}
	for _, addr := range []string{"10.99.0.2:2222", "10.99.0.2:5555", "10.99.0.2:9001", "192.0.2.10:9001"} {
		if reach(t, w.lan, addr) {
			t.Errorf("management side → %s reached", addr)
		}
	}
	if !udpReaches(t, w, w.lan, 67, "10.99.0.2:68") {
		t.Error("a DHCP reply (67 → 68) from the management network was dropped")
	}
	if udpReaches(t, w, w.lan, 1067, "10.99.0.2:68") {
		t.Error("a datagram from port 1067 to 68 passed")
	}
	if udpReaches(t, w, w.up, 67, "192.0.2.10:68") {
		t.Error("DHCP from the relay network passed")
	}
	// Outbound connections still get their replies.
	listen(t, w.lan, "10.99.0.1:7777")
	if !reach(t, w.agent, "10.99.0.1:7777") {
		t.Error("the node cannot connect out on the management network")
	}

	if n := dropped(t, w.agent); n == 0 {
		t.Error("drops not counted")
	} else {
		t.Logf("%d packets dropped and counted", n)
	}
}

// dropped is the packet count of the input chain's final drop rule.
func dropped(t *testing.T, ns *netnstest.NS) int {
	t.Helper()
	var doc struct {
		Nftables []map[string]json.RawMessage `json:"nftables"`
	}
	out := ns.Run(t, "nft", "-j", "list", "chain", "inet", TableName, "input")
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatal(err)
	}
	n := -1
	for _, o := range doc.Nftables {
		raw, ok := o["rule"]
		if !ok || !strings.Contains(string(raw), `"drop"`) {
			continue
		}
		var r struct {
			Expr []struct {
				Counter *struct{ Packets int } `json:"counter"`
			} `json:"expr"`
		}
		if err := json.Unmarshal(raw, &r); err != nil {
			t.Fatal(err)
		}
		for _, e := range r.Expr {
			if e.Counter != nil {
				n = e.Counter.Packets
			}
		}
	}
	if n < 0 {
		t.Fatalf("no counted drop rule in\n%s", out)
	}
	return n
}

func netAddrPort(t *testing.T, s string) netip.AddrPort {
	t.Helper()
	a, err := net.ResolveUDPAddr("udp", s)
	if err != nil {
		t.Fatal(fmt.Errorf("%s: %w", s, err))
	}
	return a.AddrPort()
}
