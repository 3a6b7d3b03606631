package longpoll

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"
)

// rec records what the hub did with each waiter.
type rec struct {
	mu  sync.Mutex
	got map[string][]string
	ch  chan string
}

func newRec() *rec { return &rec{got: map[string][]string{}, ch: make(chan string, 100)} }

type waiter struct {
	r    *rec
	name string
}

func (w waiter) Wake()   { w.r.add(w.name, "wake") }
func (w waiter) Expire() { w.r.add(w.name, "expire") }

func (r *rec) add(name, what string) {
	r.mu.Lock()
	r.got[name] = append(r.got[name], what)
	r.mu.Unlock()
	r.ch <- name + " " + what
}

func (r *rec) next(t *testing.T) string {
	t.Helper()
	select {
	case s := <-r.ch:
		return s
	case <-time.After(5 * time.Second):
		t.Fatal("no callback within 5 s")
		return ""
	}
}

func (r *rec) none(t *testing.T) {
	t.Helper()
	select {
	case s := <-r.ch:
		t.Fatalf("unexpected callback %q", s)
	case <-time.After(50 * time.Millisecond):
	}
}

func TestWakeExactlyTheNotifiedNodes(t *testing.T) {
	h := New(2, nil)
	defer h.Close()
	r := newRec()
	far := time.Now().Add(time.Hour)
	for i, n := range []string{"a", "b", "c"} {
		h.Park(int64(i+1), waiter{r, n}, h.Mark(), far)
	}
	if h.Waiting() != 3 {
		t.Fatalf("waiting %d", h.Waiting())
	}
	h.Notify([]int64{2, 7})
	if got := r.next(t); got != "b wake" {
		t.Fatalf("got %q", got)
	}
	r.none(t)
	h.Notify([]int64{2}) // b is no longer waiting: nothing happens twice
	r.none(t)
	if h.Waiting() != 2 {
		t.Fatalf("waiting %d", h.Waiting())
	}
}

func TestExpireReplaceCancel(t *testing.T) {
	h := New(2, nil)
	defer h.Close()
	r := newRec()
	h.Park(1, waiter{r, "soon"}, h.Mark(), time.Now().Add(20*time.Millisecond))
	if got := r.next(t); got != "soon expire" {
		t.Fatalf("got %q", got)
	}
	h.Park(2, waiter{r, "old"}, h.Mark(), time.Now().Add(time.Hour))
	h.Park(2, waiter{r, "new"}, h.Mark(), time.Now().Add(time.Hour))
	if got := r.next(t); got != "old expire" {
		t.Fatalf("got %q", got)
	}
	cancel := h.Park(3, waiter{r, "gone"}, h.Mark(), time.Now().Add(30*time.Millisecond))
	if !cancel() {
		t.Fatal("cancel of a held wait failed")
	}
	if cancel() {
		t.Fatal("second cancel succeeded")
	}
	r.none(t)
	time.Sleep(50 * time.Millisecond)
	r.none(t) // its timer was stopped
	h.Notify([]int64{2})
	if got := r.next(t); got != "new wake" {
		t.Fatalf("got %q", got)
	}
}

// A change noticed between Mark and Park wakes the wait at once.
func TestMarkClosesTheGap(t *testing.T) {
	h := New(1, nil)
	defer h.Close()
	r := newRec()
	m := h.Mark()
	h.Notify([]int64{99})
	h.Park(1, waiter{r, "late"}, m, time.Now().Add(time.Hour))
	if got := r.next(t); got != "late wake" {
		t.Fatalf("got %q", got)
	}
	if h.Waiting() != 0 {
		t.Fatal("a woken wait is still held")
	}
}

func TestCloseExpiresEverything(t *testing.T) {
	h := New(3, nil)
	r := newRec()
	for i := range 50 {
		h.Park(int64(i), waiter{r, "w"}, h.Mark(), time.Now().Add(time.Hour))
	}
	h.Close()
	r.mu.Lock()
	n := len(r.got["w"])
	r.mu.Unlock()
	if n != 50 {
		t.Fatalf("%d of 50 waits ended at Close", n)
	}
	h.Park(1, waiter{r, "after"}, h.Mark(), time.Now().Add(time.Hour))
	for range 50 {
		r.next(t)
	}
	if got := r.next(t); got != "after expire" {
		t.Fatalf("got %q", got)
	}
}

// Many waits, one global change: every one is woken once, by a bounded
// number of workers at a time.
func TestFanOutBounded(t *testing.T) {
	const workers, n = 3, 2000
	h := New(workers, nil)
	defer h.Close()
	var mu sync.Mutex
	busy, peak, done := 0, 0, 0
	all := make(chan struct{})
	nodes := make([]int64, n)
	for i := range n {
		nodes[i] = int64(i)
		h.Park(int64(i), fn(func() {
			mu.Lock()
			busy++
			peak = max(peak, busy)
			mu.Unlock()
			time.Sleep(50 * time.Microsecond)
			mu.Lock()
			busy--
			done++
			if done == n {
				close(all)
			}
			mu.Unlock()
		}), h.Mark(), time.Now().Add(time.Hour))
	}
	h.Notify(nodes)
	select {
	case <-all:
	case <-time.After(30 * time.Second):
		t.Fatalf("%d of %d woken", done, n)
	}
	if peak > workers {
		t.Fatalf("%d wakes ran at once with %d workers", peak, workers)
	}
}

type fn func()

func (f fn) Wake()   { f() }
func (f fn) Expire() { panic("expired") }

// src is a Source over a map of stamps.
type src struct {
	mu     sync.Mutex
	n      int64
	stamps map[int64]int64
}

func (s *src) ConfigGeneration(context.Context) (int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.n, nil
}

func (s *src) ConfigChangesSince(_ context.Context, after int64) ([]int64, int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []int64
	top := after
	for id, g := range s.stamps {
		if g > after {
			out = append(out, id)
			top = max(top, g)
		}
	}
	slices.Sort(out)
	return out, top, nil
}

func (s *src) stamp(ids ...int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.n++
	for _, id := range ids {
		s.stamps[id] = s.n
	}
}

func (s *src) restore(n int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.n = n
}

func TestWatch(t *testing.T) {
	h := New(2, nil)
	defer h.Close()
	s := &src{n: 10, stamps: map[int64]int64{1: 5, 2: 10}}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go h.Watch(ctx, s, 5*time.Millisecond)
	r := newRec()
	time.Sleep(30 * time.Millisecond) // the watcher has read the start
	for _, n := range []int64{1, 2, 3} {
		h.Park(n, waiter{r, string(rune('0' + n))}, h.Mark(), time.Now().Add(time.Hour))
	}
	r.none(t) // old stamps wake nobody
	s.stamp(3)
	if got := r.next(t); got != "3 wake" {
		t.Fatalf("got %q", got)
	}
	r.none(t)
	s.restore(2) // a restored database: every wait is woken
	got := []string{r.next(t), r.next(t)}
	slices.Sort(got)
	if !slices.Equal(got, []string{"1 wake", "2 wake"}) {
		t.Fatalf("after a restore: %v", got)
	}
}
