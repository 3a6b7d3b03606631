package metrics

import (
	"context"
	"crypto/sha256"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"

	"patela/configsrv/httpapi"
	"patela/configsrv/store"
	"patela/internal/api"
	"patela/internal/ekid"
)

func scrape(t *testing.T, url string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("GET %s: %s %s", url, resp.Status, b)
	}
	var p expfmt.TextParser
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return fams
}

// series lists a family's samples as "k=v,k=v" (sorted) → value.
func series(f *dto.MetricFamily) map[string]float64 {
	out := map[string]float64{}
	for _, m := range f.GetMetric() {
		var ls []string
		for _, l := range m.GetLabel() {
			ls = append(ls, l.GetName()+"="+l.GetValue())
		}
		v := m.GetGauge().GetValue() + m.GetCounter().GetValue() + m.GetUntyped().GetValue()
		slices.Sort(ls)
		out[strings.Join(ls, ",")] = v
	}
	return out
}

const fp0 = "0123456789ABCDEF0123456789ABCDEF01234567"

// A fleet of three nodes exported: every family of the table appears,
// values are the stored ones, and what a node reports as free text (a
// state, a fingerprint, a flag) never becomes a label value the server
// did not choose. Requests are counted by route, unknown paths as other.
func TestExport(t *testing.T) {
	st, err := store.Open(filepath.Join(t.TempDir(), "p.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ctx := context.Background()
	if err := st.AddPool(ctx, netip.MustParsePrefix("192.0.2.0/24"), netip.MustParseAddr("192.0.2.1"), time.Now()); err != nil {
		t.Fatal(err)
	}
	var ids []int64
	for i := range 3 {
		n, _, err := st.AddPending(ctx, ekid.ID(sha256.Sum256([]byte{byte(i), 1, 2, 3})), []byte{byte(i), 1, 2, 3}, time.Now().Add(-time.Hour), store.PendingLimits{}, nil)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, n.ID)
	}
	a := ids[0]
	st.SetNodeState(ctx, a, api.NodeEnabled)
	st.SetNodeState(ctx, ids[2], api.NodeDisabled)
	// Boot evidence (issue 14): node a sent no quote, the second's matched
	// no release, the third's release A.
	for _, ev := range []*store.Attestation{{NodeID: a, Status: store.AttestUnattested},
		{NodeID: ids[1], Status: store.AttestUnknown, PCRDigest: "ab"}, {NodeID: ids[2], Status: store.AttestRelease, Release: "A"}} {
		ev.At = time.Now()
		if _, err := st.RecordAttestation(ctx, ev); err != nil {
			t.Fatal(err)
		}
	}
	if a, err := st.Allocate(ctx, a, &api.Specs{CPUs: 2, MemoryBytes: 8 << 30}, time.Now()); err != nil || a.After != 2 {
		t.Fatalf("allocate: %+v %v", a, err)
	}
	rs, _ := st.Relays(ctx, a)
	r0, r1 := rs[0].Name, rs[1].Name
	_, err = st.RecordStatus(ctx, a, &api.Status{BootID: "b", UptimeS: 77, Relays: []api.RelayStatus{
		{Name: r0, Fingerprint: fp0, State: api.RelayRunning, Restarts: 3, KeysUnsaved: true},
		{Name: r1, Fingerprint: "not hex, and long" + strings.Repeat("!", 40), State: "made-up"},
	}, Metrics: &api.NodeMetrics{AgentRSSBytes: 30 << 20, MemAvailableBytes: 5 << 30, MemTotalBytes: 8 << 30,
		Relays: []api.RelayMetrics{
			{Name: r0, BytesRead: 11, BytesWritten: 12, ORConns: 13, ExitConns: 14, Circuits: 15,
				OnionskinsProcessed: 16, OnionskinsDropped: 17, DNSQueries: 18, DNSErrors: 19, DNSTimeouts: 20,
				Flags: []string{"Running", "Exit", "Bogus"}, Overloaded: true, SigningCertExpires: 1_800_000_000,
				UptimeS: 21, TorRSSBytes: 22},
			{Name: r1, Error: "connection refused"},
		}}}, nil, time.Now())
	if err != nil {
		t.Fatal(err)
	}

	e := New(st)
	mux := http.NewServeMux()
	mux.HandleFunc("/v1/x", func(w http.ResponseWriter, r *http.Request) {})
	mux.HandleFunc("/", http.NotFound)
	apiSrv := httptest.NewServer(httpapi.Instrument(mux, e))
	defer apiSrv.Close()
	for _, p := range []string{"/v1/x", "/v1/x", "/no/such/path-1234"} {
		resp, err := http.Get(apiSrv.URL + p)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	srv := httptest.NewServer(e.Handler())
	defer srv.Close()
	fams := scrape(t, srv.URL+Path)

	for _, f := range families {
		name := f.name
		if fams[name] == nil {
			t.Errorf("family %s missing from the scrape", name)
		}
	}
	for _, name := range []string{"patela_http_requests_total", "patela_http_request_duration_seconds", "process_resident_memory_bytes", "go_goroutines"} {
		if fams[name] == nil {
			t.Errorf("%s missing", name)
		}
	}
	n := "node=" + itoa(a)
	l0 := n + ",relay=" + r0 + ",fingerprint=" + fp0
	l1 := n + ",relay=" + r1 + ",fingerprint="
	want := map[string]map[string]float64{
		"patela_nodes":                                       {"state=pending": 1, "state=enabled": 1, "state=disabled": 1, "state=banned": 0},
		"patela_node_relays_wanted":                          {n: 2, "node=" + itoa(ids[1]): 0, "node=" + itoa(ids[2]): 0},
		"patela_node_relays_running":                         {n: 1, "node=" + itoa(ids[1]): 0, "node=" + itoa(ids[2]): 0},
		"patela_node_uptime_seconds":                         {n: 77, "node=" + itoa(ids[1]): 0, "node=" + itoa(ids[2]): 0},
		"patela_node_agent_rss_bytes":                        {n: 30 << 20},
		"patela_node_memory_available_bytes":                 {n: 5 << 30},
		"patela_node_memory_total_bytes":                     {n: 8 << 30},
		"patela_relay_info":                                  {l0 + ",state=running": 1, l1 + ",state=unknown": 1},
		"patela_relay_running":                               {l0: 1, l1: 0},
		"patela_relay_restarts_total":                        {l0: 3, l1: 0},
		"patela_relay_scrape_success":                        {l0: 1, l1: 0},
		"patela_relay_traffic_bytes_total":                   {l0 + ",direction=read": 11, l0 + ",direction=written": 12},
		"patela_relay_connections":                           {l0 + ",type=or": 13, l0 + ",type=exit": 14},
		"patela_relay_circuits":                              {l0: 15},
		"patela_relay_onionskins_total":                      {l0 + ",action=processed": 16, l0 + ",action=dropped": 17},
		"patela_relay_dns_queries_total":                     {l0: 18},
		"patela_relay_dns_errors_total":                      {l0: 19},
		"patela_relay_dns_timeouts_total":                    {l0: 20},
		"patela_relay_flag":                                  {l0 + ",flag=Exit": 1, l0 + ",flag=Running": 1},
		"patela_relay_overloaded":                            {l0: 1},
		"patela_relay_signing_cert_expiry_timestamp_seconds": {l0: 1_800_000_000},
		"patela_relay_uptime_seconds":                        {l0: 21},
		"patela_relay_tor_rss_bytes":                         {l0: 22},
		"patela_http_requests_total":                         {"code=200,endpoint=/v1/x": 2, "code=404,endpoint=other": 1},
	}
	for name, w := range want {
		got := series(fams[name])
		norm := map[string]float64{}
		for k, v := range w {
			norm[sortLabels(k)] = v
		}
		if !maps.Equal(got, norm) {
			t.Errorf("%s:\n got %v\nwant %v", name, got, norm)
		}
	}
	if age := series(fams["patela_node_last_seen_age_seconds"])[n]; age < 0 || age > 60 {
		t.Errorf("last seen age %v s of a node just heard from", age)
	}
	info := map[string]float64{sortLabels(n + ",state=enabled,release="): 1,
		sortLabels("node=" + itoa(ids[1]) + ",state=pending,release=unknown"): 1,
		sortLabels("node=" + itoa(ids[2]) + ",state=disabled,release=A"):      1}
	if got := series(fams["patela_node_info"]); !maps.Equal(got, info) {
		t.Errorf("node_info:\n got %v\nwant %v", got, info)
	}
}

func sortLabels(s string) string {
	ls := strings.Split(s, ",")
	slices.Sort(ls)
	return strings.Join(ls, ",")
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

// A database that cannot be read is a failed scrape (500), never a
// partial fleet.
func TestExportDatabaseError(t *testing.T) {
	st, err := store.Open(filepath.Join(t.TempDir(), "p.db"))
	if err != nil {
		t.Fatal(err)
	}
	e := New(st)
	st.Close()
	srv := httptest.NewServer(e.Handler())
	defer srv.Close()
	resp, err := http.Get(srv.URL + Path)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 500 {
		t.Errorf("scrape with the database closed: %s\n%.300s", resp.Status, body)
	}
}
