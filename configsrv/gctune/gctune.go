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
//
// The headroom is for a server at rest. Under load a large live heap
// with a quarter of headroom is collected many times a second: a 10,000
// node heartbeat storm with 250 MiB live spent most of its CPU in the
// collector and took twice as long as with the default. So when the
// collector takes more than MaxGCShare of the Go CPU in a tick (and a
// tenth of a core), Run gives the default back for RelaxHold after the
// last such tick; memory grows while the load lasts, and the quiet
// release returns it after.
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
	// MaxGCShare is the collector's share of the Go CPU (user code plus
	// collector) in a tick above which the default headroom returns.
	MaxGCShare = 0.25
)

// RelaxHold is how long the default stays after the last tick over
// MaxGCShare: long enough that a load the default serves with less
// collection does not switch back and forth every tick.
var RelaxHold = 30 * time.Second

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
	s := []metrics.Sample{{Name: "/gc/heap/live:bytes"}, {Name: "/gc/heap/allocs:bytes"},
		{Name: "/cpu/classes/gc/total:cpu-seconds"}, {Name: "/cpu/classes/user:cpu-seconds"}}
	quiet := uint64(QuietRate * every.Seconds())
	t := time.NewTicker(every)
	defer t.Stop()
	cur := -1
	var last, released uint64
	var gcLast, userLast float64
	var relaxUntil time.Time
	for first := true; ; first = false {
		metrics.Read(s)
		now := time.Now()
		gc, user := s[2].Value.Float64(), s[3].Value.Float64()
		// A tenth of a core at least: a small collection in an idle tick
		// is no load.
		if dgc, duser := gc-gcLast, user-userLast; !first && dgc > MaxGCShare*(dgc+duser) && dgc > every.Seconds()/10 {
			relaxUntil = now.Add(RelaxHold)
		}
		gcLast, userLast = gc, user
		p := Percent(s[0].Value.Uint64())
		if now.Before(relaxUntil) {
			p = 100
		}
		if p != cur {
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
			gcLast, userLast = s[2].Value.Float64(), s[3].Value.Float64() // its own collection is no load
		}
		last = allocs
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
