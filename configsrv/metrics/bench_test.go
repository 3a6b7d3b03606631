package metrics

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"
	"time"

	"patela/configsrv/alloc"
	"patela/configsrv/store"
)

// benchFleet is a database of nodes enabled nodes of relays relays each,
// every relay with a full metrics summary (5 flags), seeded in SQL.
func benchFleet(b *testing.B, nodes, relays int) *store.Store {
	st, err := store.Open(filepath.Join(b.TempDir(), "p.db"))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { st.Close() })
	db := st.DB()
	now := time.Now().Unix()
	tx, err := db.Begin()
	if err != nil {
		b.Fatal(err)
	}
	must := func(_ any, err error) {
		if err != nil {
			b.Fatal(err)
		}
	}
	must(tx.Exec(`INSERT INTO pools(id, cidr, family, gateway, created) VALUES (1, '10.0.0.0/8', 4, '10.0.0.1', 0)`))
	id := 0
	for n := 1; n <= nodes; n++ {
		must(tx.Exec(`INSERT INTO nodes(id, ek_hash, ek_public, state, first_seen, last_seen, boot_id, uptime_s)
			VALUES (?, ?, x'00', 'enabled', ?, ?, 'b', 86400)`, n, fmt.Sprint(n), now, now))
		must(tx.Exec(`INSERT INTO node_metrics VALUES (?, ?, ?, ?, ?)`, n, now, 30<<20, 6<<30, 8<<30))
		for r := range relays {
			id++
			must(tx.Exec(`INSERT INTO relays(id, node_id, idx, name, ipv4, ipv4_pool, or_port, created, fingerprint, run_state, restarts)
				VALUES (?, ?, ?, ?, ?, 1, 9001, 0, ?, 'running', 1)`, id, n, r, alloc.Name(id-1),
				fmt.Sprintf("10.%d.%d.%d", id>>16&255, id>>8&255, id&255), fmt.Sprintf("%040X", id)))
			must(tx.Exec(`INSERT INTO relay_metrics VALUES (?, ?, '', ?, ?, 120, 900, 3000, 5000000, 12, 800000, 900, 40,
				'Exit Fast Running Stable V2Dir', 0, ?, 86000, 150000000, 1250000.5, 1300000.25)`,
				id, now, int64(id)*1e9, int64(id)*1e9+7, now+20*86400))
		}
	}
	if err := tx.Commit(); err != nil {
		b.Fatal(err)
	}
	return st
}

// BenchmarkMetrics10k renders /metrics for 10,000 nodes × 4 relays with
// full summaries, as Prometheus fetches it (gzip) and as text; it reports
// both sizes and the number of samples. The server's memory with it is
// measured on the configsrv binary (bench/cmd/benchreport).
func BenchmarkMetrics10k(b *testing.B) {
	st := benchFleet(b, 10000, 4)
	e := New(st)
	h := e.Handler()
	get := func(gz bool) *httptest.ResponseRecorder {
		req := httptest.NewRequest(http.MethodGet, Path, nil)
		if gz {
			req.Header.Set("Accept-Encoding", "gzip")
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		if w.Code != 200 {
			b.Fatalf("%d: %.300s", w.Code, w.Body.String())
		}
		return w
	}
	text := get(false).Body.Bytes()
	samples := bytes.Count(text, []byte("\n")) - bytes.Count(text, []byte("\n#"))
	b.Run("gzip", func(b *testing.B) {
		var size int
		for b.Loop() {
			w := get(true)
			if w.Header().Get("Content-Encoding") != "gzip" {
				b.Fatal("not gzip")
			}
			size = w.Body.Len()
		}
		b.ReportMetric(float64(size), "bytes")
	})
	b.Run("text", func(b *testing.B) {
		for b.Loop() {
			get(false)
		}
		b.ReportMetric(float64(len(text)), "bytes")
		b.ReportMetric(float64(samples), "samples")
	})
	// The gzip body is what a scrape moves: check it is the same text.
	zr, err := gzip.NewReader(bytes.NewReader(get(true).Body.Bytes()))
	if err != nil {
		b.Fatal(err)
	}
	var plain bytes.Buffer
	plain.ReadFrom(zr)
	if plain.Len() < len(text)/2 {
		b.Fatalf("gzip body unpacks to %d bytes, text is %d", plain.Len(), len(text))
	}
}
