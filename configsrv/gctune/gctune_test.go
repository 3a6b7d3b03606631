package gctune

import (
	"context"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync/atomic"
	"testing"
	"time"
)

func TestPercent(t *testing.T) {
	for _, c := range []struct {
		live uint64
		want int
	}{{0, 100}, {Floor, 100}, {2 * Floor, 50}, {4 * Floor, 25}, {100 * Floor, 25}} {
		if got := Percent(c.live); got != c.want {
			t.Errorf("Percent(%d MiB) = %d, want %d", c.live>>20, got, c.want)
		}
	}
}

// waitGOGC waits up to 3 s for GOGC to be want, calling each before
// every look.
func waitGOGC(t *testing.T, want int, what string, each func()) {
	t.Helper()
	gogc := func() int {
		s := []metrics.Sample{{Name: "/gc/gogc:percent"}}
		metrics.Read(s)
		return int(s[0].Value.Uint64())
	}
	for i := 0; ; i++ {
		each()
		if gogc() == want {
			return
		}
		if i > 300 {
			t.Fatalf("%s: GOGC %d, want %d", what, gogc(), want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Run sets GOGC from the heap it finds: a live heap of 4×Floor gets the
// minimum, and the default comes back once it is gone.
func TestRun(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	// The memory rule alone: the test's own collections are no load.
	defer func(h time.Duration) { RelaxHold = h }(RelaxHold)
	RelaxHold = 0
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { Run(ctx, 10*time.Millisecond, nil); close(done) }()
	defer func() { cancel(); <-done }()
	// Each wait collects, so that Run sees the live heap change.
	wait := func(want int) { t.Helper(); waitGOGC(t, want, "", runtime.GC) }
	held := make([][]byte, 0, 4*Floor>>20+1)
	for range 4*Floor>>20 + 1 {
		held = append(held, make([]byte, 1<<20))
	}
	wait(MinPercent)
	runtime.KeepAlive(held)
	held = nil
	wait(100)
}

// Under load the headroom gives way: a large live heap churned hard gets
// the default while the churn lasts, and the headroom back RelaxHold
// after.
func TestRelaxUnderLoad(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	defer func(h time.Duration) { RelaxHold = h }(RelaxHold)
	RelaxHold = 300 * time.Millisecond
	// A live heap of pointers, as a server's is, so that marking costs.
	type node struct {
		next *node
		_    [56]byte
	}
	var held *node
	for range 4*Floor/64 + 1<<16 {
		held = &node{next: held}
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { Run(ctx, 50*time.Millisecond, nil); close(done) }()
	defer func() { cancel(); <-done }()
	wait := func(want int, what string) { t.Helper(); waitGOGC(t, want, what, func() {}) }
	runtime.GC() // the live heap measured
	wait(MinPercent, "at rest")
	var stop atomic.Bool
	churned := make(chan struct{})
	defer func() { stop.Store(true); <-churned }()
	go func() {
		defer close(churned)
		var sink []byte
		for !stop.Load() {
			sink = make([]byte, 64<<10)
		}
		runtime.KeepAlive(sink)
	}()
	wait(100, "churning")
	stop.Store(true)
	wait(MinPercent, "after the churn")
	runtime.KeepAlive(held)
}

// The garbage a burst leaves is collected and its pages returned once
// the process goes quiet, by a collection of Run's own; then, with
// nothing allocated, no more.
func TestReleaseWhenQuiet(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	forced := func() uint64 {
		s := []metrics.Sample{{Name: "/gc/cycles/forced:gc-cycles"}}
		metrics.Read(s)
		return s[0].Value.Uint64()
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	var released atomic.Int64
	go func() { Run(ctx, 50*time.Millisecond, func() { released.Add(1) }); close(done) }()
	defer func() { cancel(); <-done }()
	// A release of what the process allocated before, if any, runs to
	// its end first: nothing changes for 300 ms (a release counts its
	// collection before it calls release).
	var forced0 uint64
	var released0 int64
	for i := 0; ; i++ {
		f, r := forced(), released.Load()
		time.Sleep(300 * time.Millisecond)
		if forced() == f && released.Load() == r {
			forced0, released0 = f, r
			break
		}
		if i > 20 {
			t.Fatal("the process did not settle before the burst")
		}
	}
	// A burst: 4×ReleaseAfter allocated, most of it garbage by the end.
	var keep [][]byte
	for i := range 4 * ReleaseAfter >> 16 {
		b := make([]byte, 1<<16)
		if i%16 == 0 {
			keep = append(keep, b)
		}
	}
	for i := 0; released.Load() == released0; i++ {
		if i > 100 {
			t.Fatal("no release within 2 s of the burst")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if forced() == forced0 {
		t.Error("released without a collection")
	}
	runtime.KeepAlive(keep)
	// Quiet and nothing allocated since (a release the ticks saw in the
	// middle of the burst may be followed by one after it): no more.
	time.Sleep(200 * time.Millisecond)
	forced1, released1 := forced(), released.Load()
	time.Sleep(300 * time.Millisecond)
	if f := forced(); f != forced1 || released.Load() != released1 {
		t.Errorf("%d more forced collections and %d release calls while nothing was allocated", f-forced1, released.Load()-released1)
	}
}
