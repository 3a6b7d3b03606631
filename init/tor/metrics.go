package tor

// The agent's view of its relays' MetricsPorts: each tor serves
// Prometheus text on its own loopback address (layout.MetricsAddr), which
// only the agent may reach (init/netcfg's guard, tor's
// MetricsPortPolicy). Metrics scrapes them, parses the text with
// Prometheus' own parser and keeps the few figures the heartbeat carries
// (api.RelayMetrics).

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"

	"patela/init/nsexec"
	"patela/init/procfs"
	"patela/internal/api"
	"patela/internal/layout"
)

// maxScrape bounds what the agent reads of one scrape: tor 0.4.9 writes
// about 26 KB.
const maxScrape = 1 << 20

// loadCounters are the overload signs of one tor process (see
// api.RelayMetrics.Overloaded), as last scraped.
type loadCounters struct {
	pid                    int
	dropped, oom, tcpExhau float64
}

// newScraper is the HTTP client of the scrapes: one connection per
// scrape, from layout.MetricsClient (the one source tor's
// MetricsPortPolicy accepts), inside netns.
func newScraper(netns int, timeout time.Duration) *http.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: layout.MetricsClient.AsSlice()}}
	return &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{
			DisableKeepAlives: true,
			DialContext: func(ctx context.Context, network, addr string) (c net.Conn, err error) {
				err = nsexec.Do(netns, func() error {
					c, err = d.DialContext(ctx, network, addr)
					return err
				})
				return c, err
			},
		},
	}
}

// Metrics scrapes every relay whose tor is running (or reloading) and
// returns their summaries, sorted by name; the others have no tor to
// ask and are left out. Scrapes run in parallel, each bounded by
// ScrapeTimeout; one that fails is a summary with Error set.
func (s *Supervisor) Metrics(ctx context.Context) []api.RelayMetrics {
	s.mapMu.RLock()
	rs := make([]*relay, 0, len(s.relays))
	for _, r := range s.relays {
		rs = append(rs, r)
	}
	s.mapMu.RUnlock()
	out := make([]api.RelayMetrics, len(rs))
	ok := make([]bool, len(rs))
	var wg sync.WaitGroup
	for i, r := range rs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[i], ok[i] = r.scrape(ctx, s.scraper)
		}()
	}
	wg.Wait()
	kept := out[:0]
	for i, m := range out {
		if ok[i] {
			kept = append(kept, m)
		}
	}
	slices.SortFunc(kept, func(a, b api.RelayMetrics) int { return strings.Compare(a.Name, b.Name) })
	return kept
}

// scrape summarises r's tor; false if no tor of r runs.
func (r *relay) scrape(ctx context.Context, c *http.Client) (api.RelayMetrics, bool) {
	r.mu.Lock()
	p, state := r.running, r.st.State
	r.mu.Unlock()
	if p == nil || (state != api.RelayRunning && state != api.RelayReloading) {
		return api.RelayMetrics{}, false
	}
	m := api.RelayMetrics{Name: r.name}
	fams, err := fetchMetrics(ctx, c, layout.MetricsAddr(r.uid).String())
	if err != nil {
		m.Error = err.Error()
		r.log.Debug("metrics scrape failed", "err", err)
		return m, true
	}
	summarize(&m, fams)
	m.UptimeS = int64(time.Since(p.started).Seconds())
	m.TorRSSBytes, _ = procfs.RSS("/proc", strconv.Itoa(p.pid))
	now := loadCounters{pid: p.pid,
		dropped:  float64(m.OnionskinsDropped),
		oom:      sum(fams["tor_relay_load_oom_bytes_total"], nil),
		tcpExhau: sum(fams["tor_relay_load_tcp_exhaustion_total"], nil),
	}
	r.mu.Lock()
	prev := r.load
	r.load = now
	r.mu.Unlock()
	if prev.pid != now.pid {
		prev = loadCounters{} // a new tor: since it started
	}
	m.Overloaded = now.dropped > prev.dropped || now.oom > prev.oom || now.tcpExhau > prev.tcpExhau
	return m, true
}

// fetchMetrics GETs http://addr/metrics and parses it.
func fetchMetrics(ctx context.Context, c *http.Client, addr string) (map[string]*dto.MetricFamily, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("MetricsPort answered %s", resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxScrape+1))
	if err != nil {
		return nil, err
	}
	if len(body) > maxScrape {
		return nil, fmt.Errorf("MetricsPort sent more than %d bytes", maxScrape)
	}
	var p expfmt.TextParser
	fams, err := p.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("parsing MetricsPort text: %w", err)
	}
	return fams, nil
}

// summarize fills m's tor figures from the parsed families.
func summarize(m *api.RelayMetrics, fams map[string]*dto.MetricFamily) {
	u := func(v float64) uint64 { return uint64(max(v, 0)) }
	is := func(name string, values ...string) func(*dto.Metric) bool {
		return func(x *dto.Metric) bool { return slices.Contains(values, label(x, name)) }
	}
	traffic := fams["tor_relay_traffic_bytes"]
	m.BytesRead = u(sum(traffic, is("direction", "read")))
	m.BytesWritten = u(sum(traffic, is("direction", "written")))
	conns := fams["tor_relay_connections"]
	opened := is("state", "opened")
	m.ORConns = u(sum(conns, both(opened, is("type", "OR"))))
	m.ExitConns = u(sum(conns, both(opened, is("type", "Exit"))))
	m.Circuits = u(sum(fams["tor_relay_circuits_total"], opened))
	onion := fams["tor_relay_load_onionskins_total"]
	m.OnionskinsProcessed = u(sum(onion, is("action", "processed")))
	m.OnionskinsDropped = u(sum(onion, is("action", "dropped")))
	m.DNSQueries = u(sum(fams["tor_relay_exit_dns_query_total"], nil))
	dnsErr := fams["tor_relay_exit_dns_error_total"]
	m.DNSErrors = u(sum(dnsErr, is("reason", api.DNSFailureReasons...)))
	m.DNSTimeouts = u(sum(dnsErr, is("reason", "tor_timeout")))
	m.Flags = []string{}
	for _, x := range fams["tor_relay_flag"].GetMetric() {
		if value(x) == 1 {
			m.Flags = append(m.Flags, label(x, "type"))
		}
	}
	slices.Sort(m.Flags)
	if f := fams["tor_relay_signing_cert_expiry_timestamp"]; len(f.GetMetric()) > 0 {
		m.SigningCertExpires = int64(value(f.GetMetric()[0]))
	}
}

func both(a, b func(*dto.Metric) bool) func(*dto.Metric) bool {
	return func(x *dto.Metric) bool { return a(x) && b(x) }
}

// sum adds the values of f's samples that match (all if match is nil).
func sum(f *dto.MetricFamily, match func(*dto.Metric) bool) float64 {
	var s float64
	for _, x := range f.GetMetric() {
		if match == nil || match(x) {
			s += value(x)
		}
	}
	return s
}

// value is a sample's value whatever tor typed it.
func value(x *dto.Metric) float64 {
	switch {
	case x.Counter != nil:
		return x.Counter.GetValue()
	case x.Gauge != nil:
		return x.Gauge.GetValue()
	}
	return x.GetUntyped().GetValue()
}

func label(x *dto.Metric, name string) string {
	for _, l := range x.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}
