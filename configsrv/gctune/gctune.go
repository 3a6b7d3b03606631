// Package gctune sizes the garbage collector's headroom for the server.
//
// Go's default (GOGC=100) lets the heap grow to twice what is live
// before collecting. A server holding 10,000 long polls has a heap that
// is nearly all long-lived (each held connection's TLS state, ~6.5 KiB,
// that crypto/tls never shrinks): there the default doubled the heap,
// and the garbage of the handshakes left spans a quarter empty, for a
// resident size of 242 MiB where 91 MiB were live. A quarter of headroom
// took it to 176 MiB for 15% more CPU while the 10,000 connected
// (bench/REPORT.md, "Long-polled config"); a tenth gained little more
// and cost 70%. Small heaps keep the default: their headroom is a few
// MiB either way, and collecting them more often would only cost CPU.
//
// A burst (ten thousand nodes connecting) ends with its garbage not yet
// collected and the pages the collections freed kept for the next one:
// once the server goes quiet, Run collects and returns the free pages to
// the OS (debug.FreeOSMemory), at most once per Floor bytes allocated,
// so it costs at most one collection per collection the headroom would
// have made anyway, and only when there is little else to do.
package gctune

import (
	"context"
	"runtime/debug"
	"runtime/metrics"
	"time"
)

const (
	// Floor is the live heap up to which the default applies; above it
	// the headroom stays Floor bytes until that is MinPercent of the heap.
	Floor      = 32 << 20
	MinPercent = 25
	// QuietRate is the allocation rate (bytes a second) below which the
	// server is quiet, and ReleaseAfter the bytes allocated since the
	// last release before a quiet server releases again.
	QuietRate    = 1 << 20
	ReleaseAfter = Floor
)

// Percent is the GOGC for a live heap of live bytes.
func Percent(live uint64) int {
	if live <= Floor {
		return 100
	}
	return max(MinPercent, int(Floor*100/live))
}

// Run sets GOGC from the live heap every interval until ctx ends, and
// returns free memory to the OS when the server has gone quiet, calling
// release (if not nil) after the heap's: the C heap's turn.
func Run(ctx context.Context, every time.Duration, release func()) {
	s := []metrics.Sample{{Name: "/gc/heap/live:bytes"}, {Name: "/gc/heap/allocs:bytes"}}
	quiet := uint64(QuietRate * every.Seconds())
	t := time.NewTicker(every)
	defer t.Stop()
	cur := -1
	var last, released uint64
	for first := true; ; first = false {
		metrics.Read(s)
		if p := Percent(s[0].Value.Uint64()); p != cur {
			debug.SetGCPercent(p)
			cur = p
		}
		allocs := s[1].Value.Uint64()
		if !first && allocs-last < quiet && allocs-released >= ReleaseAfter {
			debug.FreeOSMemory()
			if release != nil {
				release()
			}
			metrics.Read(s)
			allocs = s[1].Value.Uint64()
			released = allocs
		}
		last = allocs
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
