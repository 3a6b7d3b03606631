package gctune

import (
	"context"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
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

// Run sets GOGC from the heap it finds: a live heap of 4×Floor gets the
// minimum, and the default comes back once it is gone.
func TestRun(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { Run(ctx, 10*time.Millisecond); close(done) }()
	defer func() { cancel(); <-done }()
	gogc := func() int {
		s := []metrics.Sample{{Name: "/gc/gogc:percent"}}
		metrics.Read(s)
		return int(s[0].Value.Uint64())
	}
	wait := func(want int) {
		t.Helper()
		for i := 0; gogc() != want; i++ {
			if i > 300 {
				t.Fatalf("GOGC %d, want %d", gogc(), want)
			}
			runtime.GC()
			time.Sleep(10 * time.Millisecond)
		}
	}
	held := make([][]byte, 0, 4*Floor>>20+1)
	for range 4*Floor>>20 + 1 {
		held = append(held, make([]byte, 1<<20))
	}
	wait(MinPercent)
	runtime.KeepAlive(held)
	held = nil
	wait(100)
}

// The garbage a burst leaves is collected and its pages returned once
// the process goes quiet, without a collection of its own.
func TestReleaseWhenQuiet(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	read := func() (forced, free uint64) {
		s := []metrics.Sample{{Name: "/gc/cycles/forced:gc-cycles"}, {Name: "/memory/classes/heap/free:bytes"}}
		metrics.Read(s)
		return s[0].Value.Uint64(), s[1].Value.Uint64()
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { Run(ctx, 50*time.Millisecond); close(done) }()
	defer func() { cancel(); <-done }()
	time.Sleep(100 * time.Millisecond)
	forced0, _ := read()
	// A burst: 4×ReleaseAfter allocated, most of it garbage by the end.
	var keep [][]byte
	for i := range 4 * ReleaseAfter >> 16 {
		b := make([]byte, 1<<16)
		if i%16 == 0 {
			keep = append(keep, b)
		}
	}
	for i := 0; ; i++ {
		forced, free := read()
		if forced > forced0 && free < 1<<20 {
			break
		}
		if i > 100 {
			t.Fatalf("after the burst: %d forced collections, %d KiB of free heap kept, want one and under 1 MiB",
				forced-forced0, free>>10)
		}
		time.Sleep(20 * time.Millisecond)
	}
	runtime.KeepAlive(keep)
	// Quiet and nothing allocated since: no more releases.
	forced1, _ := read()
	time.Sleep(300 * time.Millisecond)
	if forced, _ := read(); forced != forced1 {
		t.Errorf("%d more forced collections while nothing was allocated", forced-forced1)
	}
}
