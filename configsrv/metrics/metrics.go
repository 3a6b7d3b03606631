// Package metrics exposes the fleet and the config server in the
// Prometheus text format for `configsrv serve --metrics-listen`: per
// node, per relay (the figures of the nodes' heartbeats, store.Metrics)
// and per server (API requests, the Go process, in a client_golang
// registry). The fleet is read from the database at each scrape, so the
// CLI's changes show at once and nothing is kept twice. Label values come
// from the database (node ids, relay names the server chose, states and
// flags from fixed sets, fingerprints only if 40 hex digits) or the API's
// routes, never from free text a node sends: the number of series grows
// with the fleet and nothing else.
package metrics

import (
	"compress/gzip"
	"context"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"google.golang.org/protobuf/proto"

	"patela/configsrv/store"
	"patela/internal/api"
)

// Path is where the metrics are served.
const Path = "/metrics"

// Exporter is the metrics of one config server.
type Exporter struct {
	st       *store.Store
	reg      *prometheus.Registry
	requests *prometheus.CounterVec
	latency  *prometheus.HistogramVec
}

// New builds the exporter of st's fleet, the API requests it observes and
// the process (configsrv's RSS is process_resident_memory_bytes).
func New(st *store.Store) *Exporter {
	e := &Exporter{
		st:  st,
		reg: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "patela_http_requests_total",
			Help: "API requests answered, by endpoint (the route; other: none) and HTTP status.",
		}, []string{"endpoint", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "patela_http_request_duration_seconds",
			Help:    "API request latency, by endpoint and HTTP status.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		}, []string{"endpoint", "code"}),
	}
	e.reg.MustRegister(e.requests, e.latency,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return e
}

// Observe implements httpapi.Observer.
func (e *Exporter) Observe(pattern string, status int, took time.Duration) {
	endpoint := pattern
	if endpoint == "" || endpoint == "/" {
		endpoint = "other"
	}
	code := strconv.Itoa(status)
	e.requests.WithLabelValues(endpoint, code).Inc()
	e.latency.WithLabelValues(endpoint, code).Observe(took.Seconds())
}

// Handler serves Path (and only it): the registry's families (requests,
// Go, process), then the fleet's, each family built from the database
// snapshot and encoded before the next is built, so a scrape holds one
// family's samples at a time, not the whole fleet's (at 10,000 nodes ×
// 4 relays about a million; bench_test.go). The snapshot is read before
// the first byte: a database that cannot be read is a 500, never half a
// fleet shown as whole.
func (e *Exporter) Handler() http.Handler {
	m := http.NewServeMux()
	m.HandleFunc(Path, e.serve)
	return m
}

func (e *Exporter) serve(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 30*time.Second)
	defer cancel()
	snap, err := read(ctx, e.st)
	if err != nil {
		http.Error(w, "reading the fleet: "+err.Error(), http.StatusInternalServerError)
		return
	}
	own, err := e.reg.Gather()
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	format := expfmt.Negotiate(r.Header)
	w.Header().Set("Content-Type", string(format))
	var out io.Writer = w
	if gzipAccepted(r.Header) {
		w.Header().Set("Content-Encoding", "gzip")
		gz := gzip.NewWriter(w)
		defer gz.Close()
		out = gz
	}
	enc := expfmt.NewEncoder(out, format)
	for _, f := range own {
		if enc.Encode(f) != nil {
			return // the client went away
		}
	}
	for _, x := range families {
		if f := snap.family(x); f != nil && enc.Encode(f) != nil {
			return
		}
	}
	if c, ok := enc.(expfmt.Closer); ok {
		c.Close()
	}
}

func gzipAccepted(h http.Header) bool {
	for _, part := range strings.Split(h.Get("Accept-Encoding"), ",") {
		if enc, _, _ := strings.Cut(strings.TrimSpace(part), ";"); enc == "gzip" {
			return true
		}
	}
	return false
}

// snapshot is what one scrape reads of the fleet.
type snapshot struct {
	now    time.Time
	size   int64
	nodes  []store.Node
	relays []store.Relay
	nm     map[int64]store.NodeMetrics
	rm     map[int64]store.RelayMetrics
	up     map[int64]int              // relays running, by node id
	node   map[int64]*dto.LabelPair   // the node label, by node id
	labels map[int64][]*dto.LabelPair // node, relay, fingerprint, by relay id
}

var fingerprint = regexp.MustCompile(`^[0-9A-F]{40}$`)

func read(ctx context.Context, st *store.Store) (*snapshot, error) {
	s := &snapshot{now: time.Now(), up: map[int64]int{}, node: map[int64]*dto.LabelPair{}, labels: map[int64][]*dto.LabelPair{}}
	var err error
	if s.nodes, err = st.Nodes(ctx); err != nil {
		return nil, err
	}
	if s.relays, err = st.Relays(ctx, 0); err != nil {
		return nil, err
	}
	if s.nm, s.rm, err = st.Metrics(ctx); err != nil {
		return nil, err
	}
	if s.size, err = st.Size(ctx); err != nil {
		return nil, err
	}
	for _, n := range s.nodes {
		s.node[n.ID] = pair("node", strconv.FormatInt(n.ID, 10))
	}
	for _, r := range s.relays {
		if r.State == string(api.RelayRunning) {
			s.up[r.NodeID]++
		}
		fp := r.Fingerprint
		if !fingerprint.MatchString(fp) {
			fp = ""
		}
		s.labels[r.ID] = []*dto.LabelPair{s.node[r.NodeID], pair("relay", r.Name), pair("fingerprint", fp)}
	}
	return s, nil
}

// family builds family x from the snapshot; nil if it has no samples.
func (s *snapshot) family(x fam) *dto.MetricFamily {
	f := &dto.MetricFamily{Name: proto.String(x.name), Help: proto.String(x.help), Type: x.typ.Enum()}
	x.samples(s, func(v float64, labels ...*dto.LabelPair) {
		m := &dto.Metric{Label: labels}
		if x.typ == counter {
			m.Counter = &dto.Counter{Value: proto.Float64(v)}
		} else {
			m.Gauge = &dto.Gauge{Value: proto.Float64(v)}
		}
		f.Metric = append(f.Metric, m)
	})
	if len(f.Metric) == 0 {
		return nil
	}
	return f
}

// add adds one sample; its label pairs may be shared with other samples
// (the encoder only reads them).
type add func(v float64, labels ...*dto.LabelPair)

// fam is one family of the fleet: its name, help, type, label names (in
// the order samples give them) and how its samples come from a snapshot.
type fam struct {
	name, help string
	typ        dto.MetricType
	labels     []string
	samples    func(s *snapshot, add add)
}

var (
	gauge   = dto.MetricType_GAUGE
	counter = dto.MetricType_COUNTER
)

func pair(name, value string) *dto.LabelPair {
	return &dto.LabelPair{Name: proto.String(name), Value: proto.String(value)}
}

// with is a relay's labels plus one.
func with(l []*dto.LabelPair, extra *dto.LabelPair) []*dto.LabelPair {
	return append(append(make([]*dto.LabelPair, 0, 4), l...), extra)
}

// nodeFam is a family of one sample per node (value: ok false for none).
func nodeFam(name, help string, typ dto.MetricType, v func(s *snapshot, n *store.Node) (float64, bool)) fam {
	return fam{name, help, typ, []string{"node"}, func(s *snapshot, add add) {
		for i := range s.nodes {
			if x, ok := v(s, &s.nodes[i]); ok {
				add(x, s.node[s.nodes[i].ID])
			}
		}
	}}
}

// nodeFigure is a node family from the node's metrics summary.
func nodeFigure(name, help string, v func(m store.NodeMetrics) uint64) fam {
	return nodeFam(name, help, gauge, func(s *snapshot, n *store.Node) (float64, bool) {
		m, ok := s.nm[n.ID]
		return float64(v(m)), ok
	})
}

// relayFam is a family of samples per relay, with extra label names.
func relayFam(name, help string, typ dto.MetricType, extra []string, each func(s *snapshot, r *store.Relay, l []*dto.LabelPair, add add)) fam {
	return fam{name, help, typ, append([]string{"node", "relay", "fingerprint"}, extra...), func(s *snapshot, add add) {
		for i := range s.relays {
			r := &s.relays[i]
			each(s, r, s.labels[r.ID], add)
		}
	}}
}

// relayFigure is a relay family from the relay's metrics summary: no
// sample without a summary or when its scrape failed.
func relayFigure(name, help string, typ dto.MetricType, v func(m *store.RelayMetrics) float64) fam {
	return relayFam(name, help, typ, nil, func(s *snapshot, r *store.Relay, l []*dto.LabelPair, add add) {
		if m, ok := s.rm[r.ID]; ok && m.Error == "" {
			add(v(&m), l...)
		}
	})
}

// relayPair is a relay family of two figures told apart by one label.
func relayPair(name, help string, typ dto.MetricType, label, a, b string, v func(m *store.RelayMetrics) (float64, float64)) fam {
	pa, pb := pair(label, a), pair(label, b)
	return relayFam(name, help, typ, []string{label}, func(s *snapshot, r *store.Relay, l []*dto.LabelPair, add add) {
		if m, ok := s.rm[r.ID]; ok && m.Error == "" {
			x, y := v(&m)
			add(x, with(l, pa)...)
			add(y, with(l, pb)...)
		}
	})
}

var (
	nodeStates = []api.NodeState{api.NodePending, api.NodeEnabled, api.NodeDisabled, api.NodeBanned}
	flagPairs  = map[string]*dto.LabelPair{}
	statePairs = map[string]*dto.LabelPair{"unknown": pair("state", "unknown")}
)

func init() {
	for _, f := range api.RelayFlags {
		flagPairs[f] = pair("flag", f)
	}
	for _, st := range []api.RelayState{api.RelayStarting, api.RelayRunning, api.RelayReloading, api.RelayStopping,
		api.RelayBackoff, api.RelayFailed, api.RelayStopped, api.RelayRefused} {
		statePairs[string(st)] = pair("state", string(st))
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// families is the fleet's: the one list of what it exports, in the order
// it is served (the dashboard test checks the dashboard against it).
var families = []fam{
	{"patela_nodes", "Nodes by state.", gauge, []string{"state"}, func(s *snapshot, add add) {
		n := map[api.NodeState]int{}
		for _, x := range s.nodes {
			n[x.State]++
		}
		for _, st := range nodeStates {
			add(float64(n[st]), pair("state", string(st)))
		}
	}},
	{"patela_database_size_bytes", "Size of the SQLite database (pages × page size).", gauge, nil, func(s *snapshot, add add) {
		add(float64(s.size))
	}},
	{"patela_node_info", "1 per node, with its state and the release its last TPM quote matched (unknown: none; empty: no quote of it).",
		gauge, []string{"node", "state", "release"}, func(s *snapshot, add add) {
			for i := range s.nodes {
				n := &s.nodes[i]
				add(1, s.node[n.ID], pair("state", string(n.State)), pair("release", n.AttestedRelease()))
			}
		}},
	nodeFam("patela_node_last_seen_age_seconds", "Seconds since the node's last contact.", gauge, func(s *snapshot, n *store.Node) (float64, bool) {
		return max(s.now.Sub(n.LastSeen).Seconds(), 0), true
	}),
	nodeFam("patela_node_uptime_seconds", "The node's uptime in its last heartbeat.", gauge, func(_ *snapshot, n *store.Node) (float64, bool) {
		return float64(n.UptimeS), true
	}),
	nodeFam("patela_node_relays_wanted", "Relays allocated to the node.", gauge, func(_ *snapshot, n *store.Node) (float64, bool) {
		return float64(n.Relays), true
	}),
	nodeFam("patela_node_relays_running", "Relays the node last reported running.", gauge, func(s *snapshot, n *store.Node) (float64, bool) {
		return float64(s.up[n.ID]), true
	}),
	nodeFigure("patela_node_agent_rss_bytes", "The agent's resident memory.", func(m store.NodeMetrics) uint64 { return m.AgentRSSBytes }),
	nodeFigure("patela_node_memory_available_bytes", "The node's MemAvailable.", func(m store.NodeMetrics) uint64 { return m.MemAvailableBytes }),
	nodeFigure("patela_node_memory_total_bytes", "The node's MemTotal.", func(m store.NodeMetrics) uint64 { return m.MemTotalBytes }),

	relayFam("patela_relay_info", "1 per relay, with the state its node last reported (unknown: none, or one this server does not know).",
		gauge, []string{"state"}, func(_ *snapshot, r *store.Relay, l []*dto.LabelPair, add add) {
			p := statePairs[r.State]
			if p == nil {
				p = statePairs["unknown"]
			}
			add(1, with(l, p)...)
		}),
	relayFam("patela_relay_running", "1 if the relay's node last reported it running.", gauge, nil,
		func(_ *snapshot, r *store.Relay, l []*dto.LabelPair, add add) {
			add(b2f(r.State == string(api.RelayRunning)), l...)
		}),
	relayFam("patela_relay_restarts_total", "tor restarts after unexpected exits since the node booted.", counter, nil,
		func(_ *snapshot, r *store.Relay, l []*dto.LabelPair, add add) { add(float64(r.Restarts), l...) }),
	relayFam("patela_relay_keys_unsaved", "1 while the node reports the relay's current keys not yet saved in its vault storage (a reboot now would lose its identity).",
		gauge, nil, func(_ *snapshot, r *store.Relay, l []*dto.LabelPair, add add) { add(b2f(r.KeysUnsaved), l...) }),
	relayFam("patela_relay_scrape_success", "1 if the agent's last scrape of the relay's MetricsPort worked (no sample: no summary).", gauge, nil,
		func(s *snapshot, r *store.Relay, l []*dto.LabelPair, add add) {
			if m, ok := s.rm[r.ID]; ok {
				add(b2f(m.Error == ""), l...)
			}
		}),
	relayPair("patela_relay_traffic_bytes_total", "Bytes tor read and wrote since it started.", counter, "direction", "read", "written",
		func(m *store.RelayMetrics) (float64, float64) { return float64(m.BytesRead), float64(m.BytesWritten) }),
	relayPair("patela_relay_connections", "Open connections, OR (to relays) and Exit (to destinations).", gauge, "type", "or", "exit",
		func(m *store.RelayMetrics) (float64, float64) { return float64(m.ORConns), float64(m.ExitConns) }),
	relayFigure("patela_relay_circuits", "Open circuits.", gauge, func(m *store.RelayMetrics) float64 { return float64(m.Circuits) }),
	relayPair("patela_relay_onionskins_total", "Onionskins (circuit handshakes) processed and dropped since tor started.", counter, "action", "processed", "dropped",
		func(m *store.RelayMetrics) (float64, float64) {
			return float64(m.OnionskinsProcessed), float64(m.OnionskinsDropped)
		}),
	relayFigure("patela_relay_dns_queries_total", "Exit DNS queries since tor started.", counter, func(m *store.RelayMetrics) float64 { return float64(m.DNSQueries) }),
	relayFigure("patela_relay_dns_errors_total", "Exit DNS queries the resolver failed since tor started.", counter, func(m *store.RelayMetrics) float64 { return float64(m.DNSErrors) }),
	relayFigure("patela_relay_dns_timeouts_total", "Exit DNS queries that timed out since tor started.", counter, func(m *store.RelayMetrics) float64 { return float64(m.DNSTimeouts) }),
	relayFam("patela_relay_flag", "1 for each consensus flag tor reports the relay holds.", gauge, []string{"flag"},
		func(s *snapshot, r *store.Relay, l []*dto.LabelPair, add add) {
			if m, ok := s.rm[r.ID]; ok && m.Error == "" {
				for _, fl := range m.Flags {
					if p := flagPairs[fl]; p != nil { // the store keeps tor's flags only
						add(1, with(l, p)...)
					}
				}
			}
		}),
	relayFigure("patela_relay_overloaded", "1 if the relay dropped onionskins, freed memory (OOM) or ran out of TCP ports between the agent's last two scrapes.",
		gauge, func(m *store.RelayMetrics) float64 { return b2f(m.Overloaded) }),
	relayFam("patela_relay_signing_cert_expiry_timestamp_seconds", "When the relay's ed25519 signing certificate expires.", gauge, nil,
		func(s *snapshot, r *store.Relay, l []*dto.LabelPair, add add) {
			if m, ok := s.rm[r.ID]; ok && m.Error == "" && m.SigningCertExpires > 0 {
				add(float64(m.SigningCertExpires), l...)
			}
		}),
	relayFigure("patela_relay_uptime_seconds", "Seconds since the relay's tor started.", gauge, func(m *store.RelayMetrics) float64 { return float64(m.UptimeS) }),
	relayFigure("patela_relay_tor_rss_bytes", "The relay's tor resident memory.", gauge, func(m *store.RelayMetrics) float64 { return float64(m.TorRSSBytes) }),
}
