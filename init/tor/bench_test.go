package tor

import (
	"context"
	"fmt"
	"runtime"
	"testing"

	"patela/internal/api"
	"patela/internal/testutil"
)

// startN starts n relays and waits until all are running.
func startN(b *testing.B, h *harness, n int) {
	for i := 0; i < n; i++ {
		name := fmt.Sprintf("bench%d", i)
		if err := h.sup.Apply(context.Background(), Spec{Name: name, UID: 20100 + i, Torrc: serverTorrc(name, 39200+i)}); err != nil {
			b.Fatal(err)
		}
	}
	for i := 0; i < n; i++ {
		h.waitRunning(b, fmt.Sprintf("bench%d", i))
	}
}

// BenchmarkStatus8Relays reads the status of 8 supervised relays (what
// each heartbeat does) and reports the supervisor's RSS with 8 real tor
// relays running: this test process only, tor excluded.
func BenchmarkStatus8Relays(b *testing.B) {
	h := newHarness(b, nil)
	runtime.GC()
	before := testutil.VmRSS(b)
	startN(b, h, 8)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if len(h.sup.Status()) != 8 {
			b.Fatal("lost a relay")
		}
	}
	b.StopTimer()
	b.ReportMetric(before, "KiB-rss-0-relays")
	b.ReportMetric(testutil.VmRSS(b), "KiB-rss-8-relays")
}

// BenchmarkReload is a reloadable torrc change from Apply to tor's READY=1
// after the SIGHUP: verify, install, signal, tor re-reads its config.
func BenchmarkReload(b *testing.B) {
	h := newHarness(b, nil)
	startN(b, h, 1)
	ctx := context.Background()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		before := h.status(b, "bench0").Reloads
		torrc := serverTorrc("bench0", 39200, fmt.Sprintf("ContactInfo reload %d <ops@example.org>", i))
		if err := h.sup.Apply(ctx, Spec{Name: "bench0", UID: 20100, Torrc: torrc}); err != nil {
			b.Fatal(err)
		}
		waitFor(b, "reload", func() bool {
			st := h.status(b, "bench0")
			return st.Reloads == before+1 && st.State == api.RelayRunning
		})
	}
}

// BenchmarkRestart is a torrc change that needs a restart (ORPort), from
// Apply to the new tor's READY=1; ShutdownWaitLength 0 so the old tor's
// exit is not the measure.
func BenchmarkRestart(b *testing.B) {
	h := newHarness(b, nil)
	ctx := context.Background()
	torrc := func(port int) []byte { return serverTorrc("bench0", port, "ShutdownWaitLength 0") }
	if err := h.sup.Apply(ctx, Spec{Name: "bench0", UID: 20100, Torrc: torrc(39300)}); err != nil {
		b.Fatal(err)
	}
	h.waitRunning(b, "bench0")
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		pid := h.status(b, "bench0").PID
		if err := h.sup.Apply(ctx, Spec{Name: "bench0", UID: 20100, Torrc: torrc(39301 + i%2)}); err != nil {
			b.Fatal(err)
		}
		waitFor(b, "restart", func() bool {
			st := h.status(b, "bench0")
			return st.PID != pid && st.State == api.RelayRunning
		})
	}
}
