package reconcile

import (
	"context"
	"runtime"
	"testing"
	"time"

	"patela/internal/api"
	"patela/internal/testutil"
)

// BenchmarkRound8Relays is one reconcile round (specs, config, network
// converge, relay diff, heartbeat) of a node running 8 real tor relays
// against a real configsrv, nothing changed. It reports the RSS of this
// process (tor excluded, but the in-process configsrv included) before the
// relays and with the 8 relays supervised, and the time from the first
// round to 8 relays running.
func BenchmarkRound8Relays(b *testing.B) {
	w := newWorld(b, 8, time.Hour)
	ctx := context.Background()
	runtime.GC()
	before := testutil.VmRSS(b)
	start := time.Now()
	if _, err := w.l.Once(ctx); err != nil {
		b.Fatal(err)
	}
	for {
		st := w.sup.Status()
		n := 0
		for _, s := range st {
			if s.State == api.RelayRunning && s.Fingerprint != "" {
				n++
			}
		}
		if n == 8 {
			break
		}
		if time.Since(start) > time.Minute {
			b.Fatalf("relays not running: %+v", st)
		}
		time.Sleep(20 * time.Millisecond)
	}
	toRunning := time.Since(start)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := w.l.Once(ctx); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	b.ReportMetric(toRunning.Seconds(), "s-to-8-running")
	b.ReportMetric(before, "KiB-rss-before")
	b.ReportMetric(testutil.VmRSS(b), "KiB-rss-8-relays")
}

// BenchmarkScrape8Relays is the metrics part of a round on a node of 8
// real tor relays with the network on (their MetricsPorts open): one
// Supervisor.Metrics, every relay scraped and summarised in parallel. It
// reports the size of the round's heartbeat, summary included, as the
// agent sends it.
func BenchmarkScrape8Relays(b *testing.B) {
	w := networkWorld(b, 8)
	c, rec := w.s.Proxy(b, nil)
	w.l.cfg.Client = c
	hb := roundsUntilScraped(b, w, rec, 8, func(api.RelayMetrics) bool { return true })
	bs := rec.Bodies(statusKey)
	size := len(bs[len(bs)-1])
	ctx := context.Background()
	b.ResetTimer()
	for b.Loop() {
		if ms := w.sup.Metrics(ctx); len(ms) != 8 || ms[7].Error != "" {
			b.Fatalf("scrape: %+v", ms)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(size), "heartbeat-bytes")
	b.ReportMetric(float64(len(hb.Relays)), "relays")
}
