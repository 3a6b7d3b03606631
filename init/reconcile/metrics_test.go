package reconcile

import (
	"context"
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"patela/init/netnstest"
	"patela/init/nsexec"
	"patela/internal/api"
	"patela/internal/layout"
)

// networkWorld is a world whose relays run with the network on (tor
// opens its MetricsPort only then), inside the agent's namespace: what
// they can reach is the up namespace, the relay gateway 192.0.2.1, which
// forwards nothing.
func networkWorld(t *testing.T, maxRelays int) *world {
	w := newWorld(t, maxRelays, time.Hour)
	w.up.Addr(t, "up0", "192.0.2.1/24")
	global := filepath.Join(t.TempDir(), "global.torrc")
	os.WriteFile(global, []byte("ContactInfo patela test relays <ops@example.org>\nShutdownWaitLength 1\nExitRelay 0\n"), 0o644)
	w.s.Admin(t, "torrc", "import", global, "--default")
	return w
}

// roundsUntilScraped runs rounds until a heartbeat carries a scrape of
// every relay without error, and returns that heartbeat as sent.
func roundsUntilScraped(t *testing.T, w *world, rec interface{ Bodies(string) [][]byte }, relays int) api.Status {
	t.Helper()
	var hb api.Status
	waitFor(t, "a heartbeat with every relay scraped", func() bool {
		if _, err := w.l.Once(context.Background()); err != nil {
			t.Fatal(err)
		}
		bs := rec.Bodies(statusKey)
		hb = api.Status{}
		if err := json.Unmarshal(bs[len(bs)-1], &hb); err != nil {
			t.Fatal(err)
		}
		if hb.Metrics == nil || len(hb.Metrics.Relays) != relays {
			return false
		}
		for _, m := range hb.Metrics.Relays {
			if m.Error != "" {
				return false
			}
		}
		return true
	})
	return hb
}

// A relay's MetricsPort is the agent's alone: the agent's heartbeat
// carries its figures, while another uid on the node (the relay's own
// included) cannot connect to it, and from the relay link outside the
// namespace nothing reaches it: the relay's address has no such port, and
// a SYN crafted for its loopback address is dropped by the kernel, where
// the same SYN is answered once the link accepts loopback addresses.
func TestMetricsPortBehindTheAgent(t *testing.T) {
	w := networkWorld(t, 1)
	c, rec := w.s.Proxy(t, nil)
	w.l.cfg.Client = c
	hb := roundsUntilScraped(t, w, rec, 1)
	st := w.sup.Status()[0]
	m, node := hb.Metrics.Relays[0], hb.Metrics
	t.Logf("heartbeat metrics: node %+v relay %+v", *node, m)
	if m.Name != st.Name || m.TorRSSBytes == 0 || m.UptimeS < 0 || m.SigningCertExpires < time.Now().Add(20*24*time.Hour).Unix() {
		t.Errorf("relay summary %+v", m)
	}
	if node.AgentRSSBytes == 0 || node.MemAvailableBytes == 0 || node.MemAvailableBytes > node.MemTotalBytes {
		t.Errorf("node figures %+v", *node)
	}

	addr := layout.MetricsAddr(st.UID)
	for _, uid := range []int{st.UID, 65534} {
		if w.agent.ConnectAs(t, uid, addr) {
			t.Errorf("uid %d connected to the metrics port %s", uid, addr)
		}
	}
	if !w.agent.ConnectAs(t, 0, addr) {
		t.Errorf("the agent's uid cannot connect to %s", addr)
	}

	cfg, err := w.s.Client(t).Config(context.Background(), mustToken(t, w.tokens))
	if err != nil {
		t.Fatal(err)
	}
	relayIP := netip.MustParsePrefix(cfg.Relays[0].IPv4).Addr()
	l, err := w.agent.NL.LinkByName("relay0")
	if err != nil {
		t.Fatal(err)
	}
	mac := l.Attrs().HardwareAddr
	src := netip.MustParseAddrPort("192.0.2.1:40001")
	syn := func(dst netip.AddrPort) string {
		return w.up.SYN(t, "up0", mac, src, dst, 2*time.Second)
	}
	if a := syn(netip.AddrPortFrom(relayIP, uint16(cfg.Relays[0].ORPort))); a != netnstest.SYNACK {
		t.Fatalf("SYN to the ORPort: %q: the probe does not work", a)
	}
	if a := syn(netip.AddrPortFrom(relayIP, layout.MetricsPort)); a != netnstest.RST {
		t.Errorf("SYN to the relay address, metrics port: %q, want refused", a)
	}
	if a := syn(addr); a != netnstest.NoAnswer {
		t.Errorf("SYN to the metrics address from the link: %q, want no answer", a)
	}
	// The control: with loopback addresses routable on the link, the
	// same SYN is answered.
	sysctl := "net/ipv4/conf/relay0/route_localnet"
	if err := nsexec.WriteSysctl(w.agent.Fd(), sysctl, "1"); err != nil {
		t.Fatal(err)
	}
	answered := syn(addr)
	nsexec.WriteSysctl(w.agent.Fd(), sysctl, "0")
	if answered != netnstest.SYNACK {
		t.Errorf("with route_localnet the SYN got %q: the probe proves nothing", answered)
	}
}
