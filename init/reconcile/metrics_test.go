package reconcile

import (
	"context"
	"encoding/json"
	"maps"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"patela/init/netcfg"
	"patela/init/netnstest"
	"patela/init/nsexec"
	"patela/internal/api"
	"patela/internal/layout"
)

// networkWorld is a world whose relays run with the network on (tor
// opens its MetricsPort only then), inside the agent's namespace: what
// they can reach is the up namespace, the relay gateway 192.0.2.1, which
// forwards nothing.
func networkWorld(t testing.TB, maxRelays int) *world {
	w := newWorld(t, maxRelays, time.Hour)
	w.up.Addr(t, "up0", "192.0.2.1/24")
	global := filepath.Join(t.TempDir(), "global.torrc")
	os.WriteFile(global, []byte("ContactInfo patela test relays <ops@example.org>\nShutdownWaitLength 1\nExitRelay 0\n"), 0o644)
	w.s.Admin(t, "torrc", "import", global, "--default")
	return w
}

// roundsUntilScraped runs rounds until a heartbeat carries a scrape of
// every relay without error that ok accepts, and returns that heartbeat
// as sent.
func roundsUntilScraped(t testing.TB, w *world, rec interface{ Bodies(string) [][]byte }, relays int, ok func(api.RelayMetrics) bool) api.Status {
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
			if m.Error != "" || !ok(m) {
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
// namespace nothing reaches it: not the relay's address on that port, nor
// a SYN crafted for the loopback address, which the inbound filter and
// the kernel each drop, where the same SYN is answered without both.
func TestMetricsPortBehindTheAgent(t *testing.T) {
	w := networkWorld(t, 1)
	c, rec := w.s.Proxy(t, nil)
	w.l.cfg.Client = c
	roundsUntilScraped(t, w, rec, 1, func(api.RelayMetrics) bool { return true })
	cfg, err := w.s.Client(t).Config(context.Background(), mustToken(t, w.tokens))
	if err != nil {
		t.Fatal(err)
	}
	relayIP := netip.MustParsePrefix(cfg.Relays[0].IPv4).Addr()
	orPort := netip.AddrPortFrom(relayIP, uint16(cfg.Relays[0].ORPort))
	// Two TCP connections held open to the ORPort: two OR connections
	// that the figures must carry all the way.
	for range 2 {
		w.agent.Do(t, func() error {
			c, err := net.Dial("tcp", orPort.String())
			if err == nil {
				t.Cleanup(func() { c.Close() })
			}
			return err
		})
	}
	hb := roundsUntilScraped(t, w, rec, 1, func(m api.RelayMetrics) bool { return m.ORConns == 2 })
	st := w.sup.Status()[0]
	m, node := hb.Metrics.Relays[0], hb.Metrics
	t.Logf("heartbeat metrics: node %+v", *node)
	if m.Name != st.Name || m.TorRSSBytes == 0 || m.UptimeS < 0 || m.SigningCertExpires < time.Now().Add(20*24*time.Hour).Unix() {
		t.Errorf("relay summary %+v", m)
	}
	if node.AgentRSSBytes == 0 || node.MemAvailableBytes == 0 || node.MemAvailableBytes > node.MemTotalBytes {
		t.Errorf("node figures %+v", *node)
	}

	// The server's /metrics shows them, read with Prometheus' parser.
	fams := w.s.Metrics(t)
	fp := serverRelays(t, w.s, w.id)[st.Name].Fingerprint
	rl := map[string]string{"node": w.ids, "relay": st.Name, "fingerprint": fp}
	for _, c := range []struct {
		name  string
		extra map[string]string
		want  float64
	}{
		{"patela_relay_running", nil, 1},
		{"patela_relay_scrape_success", nil, 1},
		{"patela_relay_traffic_bytes_total", map[string]string{"direction": "read"}, float64(m.BytesRead)},
		{"patela_relay_traffic_bytes_total", map[string]string{"direction": "written"}, float64(m.BytesWritten)},
		{"patela_relay_connections", map[string]string{"type": "or"}, float64(m.ORConns)},
		{"patela_relay_circuits", nil, float64(m.Circuits)},
		{"patela_relay_onionskins_total", map[string]string{"action": "dropped"}, float64(m.OnionskinsDropped)},
		{"patela_relay_dns_errors_total", nil, float64(m.DNSErrors)},
		{"patela_relay_signing_cert_expiry_timestamp_seconds", nil, float64(m.SigningCertExpires)},
		{"patela_relay_uptime_seconds", nil, float64(m.UptimeS)},
		{"patela_relay_tor_rss_bytes", nil, float64(m.TorRSSBytes)},
	} {
		if got, ok := sample(fams, c.name, rl, c.extra); !ok || got != c.want {
			t.Errorf("/metrics %s%v = %v (found %v), want %v", c.name, c.extra, got, ok, c.want)
		}
	}
	nodeLabel := map[string]string{"node": w.ids}
	for name, want := range map[string]float64{"patela_node_relays_running": 1, "patela_node_relays_wanted": 1,
		"patela_node_agent_rss_bytes": float64(hb.Metrics.AgentRSSBytes), "patela_node_memory_total_bytes": float64(hb.Metrics.MemTotalBytes)} {
		if got, ok := sample(fams, name, nodeLabel, nil); !ok || got != want {
			t.Errorf("/metrics %s = %v (found %v), want %v", name, got, ok, want)
		}
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

	l, err := w.agent.NL.LinkByName("relay0")
	if err != nil {
		t.Fatal(err)
	}
	mac := l.Attrs().HardwareAddr
	src := netip.MustParseAddrPort("192.0.2.1:40001")
	syn := func(dst netip.AddrPort) string {
		return w.up.SYN(t, "up0", mac, src, dst, 2*time.Second)
	}
	if a := syn(orPort); a != netnstest.SYNACK {
		t.Fatalf("SYN to the ORPort: %q: the probe does not work", a)
	}
	if a := syn(netip.AddrPortFrom(relayIP, layout.MetricsPort)); a != netnstest.NoAnswer {
		t.Errorf("SYN to the relay address, metrics port: %q, want no answer (the inbound filter)", a)
	}
	// Two layers keep the loopback address off the link, each enough
	// alone: the inbound filter, and the kernel (a 127/8 destination
	// from outside is a martian unless route_localnet is set). Only with
	// both taken away does the same SYN get an answer: the probe works.
	localnet := func(v string) {
		if err := nsexec.WriteSysctl(w.agent.Fd(), "net/ipv4/conf/relay0/route_localnet", v); err != nil {
			t.Fatal(err)
		}
	}
	if a := syn(addr); a != netnstest.NoAnswer {
		t.Errorf("SYN to the metrics address from the link: %q, want no answer", a)
	}
	localnet("1")
	if a := syn(addr); a != netnstest.NoAnswer {
		t.Errorf("with route_localnet, the inbound filter let a SYN to %s answer: %q", addr, a)
	}
	localnet("0")
	w.agent.Run(t, "nft", "delete", "chain", "inet", netcfg.TableName, "input")
	if a := syn(addr); a != netnstest.NoAnswer {
		t.Errorf("without the inbound filter, the kernel let a SYN to %s answer: %q", addr, a)
	}
	localnet("1")
	answered := syn(addr)
	localnet("0")
	if answered != netnstest.SYNACK {
		t.Errorf("with neither layer the SYN got %q: the probe proves nothing", answered)
	}
}

// sample is the value of the sample of family name whose labels are
// exactly labels plus extra.
func sample(fams map[string]*dto.MetricFamily, name string, labels, extra map[string]string) (float64, bool) {
	want := maps.Clone(labels)
	maps.Copy(want, extra)
	for _, m := range fams[name].GetMetric() {
		got := map[string]string{}
		for _, l := range m.GetLabel() {
			got[l.GetName()] = l.GetValue()
		}
		if !maps.Equal(got, want) {
			continue
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue(), true
		case m.Gauge != nil:
			return m.Gauge.GetValue(), true
		}
		return m.GetUntyped().GetValue(), true
	}
	return 0, false
}
