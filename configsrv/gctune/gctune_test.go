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
