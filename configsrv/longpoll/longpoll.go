// Package longpoll holds the waits of nodes for a change of their
// configuration and ends each exactly once: woken when its node's config
// generation moves, expired when its time is up, replaced by a newer wait
// of the same node, or the hub closes. A wait costs the hub a map entry
// and a runtime timer, no goroutine, so ten thousand idle nodes cost
// little; the work a wake starts runs in a fixed pool of workers, in
// random order, so a change that reaches the whole fleet is answered at
// the pace the server can sustain instead of all at once.
package longpoll

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"runtime"
	"sync"
	"time"
)

// Waiter is one held request. The hub calls exactly one of its methods,
// once, from a worker, unless Cancel took the wait back first.
type Waiter interface {
	// Wake: the node's configuration may have changed (or a change may
	// have been missed between Mark and Park): look again, answer or
	// Park again.
	Wake()
	// Expire: the wait is over without a change the hub knows of (time
	// up, replaced by a newer wait of the node, hub closed).
	Expire()
}

// Hub holds the waits, one per node.
type Hub struct {
	log *slog.Logger

	mu     sync.Mutex
	cond   *sync.Cond // signals workers: queue not empty, or closed
	seq    uint64     // bumped by every Notify
	waits  map[int64]*wait
	queue  []task
	closed bool
	wg     sync.WaitGroup
}

type wait struct {
	node  int64
	w     Waiter
	timer *time.Timer
}

type task struct {
	w    Waiter
	wake bool // else expire
}

// New starts a hub with workers goroutines running the wakes (0: twice
// GOMAXPROCS, at least 4).
func New(workers int, log *slog.Logger) *Hub {
	if workers <= 0 {
		workers = max(4, 2*runtime.GOMAXPROCS(0))
	}
	if log == nil {
		log = slog.Default()
	}
	h := &Hub{log: log, waits: map[int64]*wait{}}
	h.cond = sync.NewCond(&h.mu)
	for range workers {
		h.wg.Add(1)
		go h.work()
	}
	return h
}

// Mark returns the notification count. A caller reads it before it reads
// the generation it will wait on, and passes it to Park: a change noticed
// in between wakes the wait at once instead of being lost.
func (h *Hub) Mark() uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.seq
}

// Park holds w for node until deadline. A wait the node already had is
// expired (a node needs one; a new one means the old is gone or stale).
// The returned cancel takes the wait back and reports whether it did:
// false means w's method has been or is being called.
func (h *Hub) Park(node int64, w Waiter, mark uint64, deadline time.Time) (cancel func() bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		go w.Expire() // the workers may be gone
		return func() bool { return false }
	}
	if old := h.waits[node]; old != nil {
		h.dropLocked(old)
		h.enqueueLocked(old.w, false)
	}
	if mark != h.seq {
		h.enqueueLocked(w, true)
		return func() bool { return false }
	}
	e := &wait{node: node, w: w}
	e.timer = time.AfterFunc(time.Until(deadline), func() { h.expire(e) })
	h.waits[node] = e
	return func() bool {
		h.mu.Lock()
		defer h.mu.Unlock()
		if h.waits[node] != e {
			return false
		}
		h.dropLocked(e)
		return true
	}
}

func (h *Hub) expire(e *wait) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.waits[e.node] == e {
		h.dropLocked(e)
		h.enqueueLocked(e.w, false)
	}
}

// Notify wakes the waits of nodes, in random order.
func (h *Hub) Notify(nodes []int64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.seq++
	var woken []Waiter
	for _, n := range nodes {
		if e := h.waits[n]; e != nil {
			h.dropLocked(e)
			woken = append(woken, e.w)
		}
	}
	h.wakeLocked(woken)
}

// NotifyAll wakes every wait (the generations went back: a restored
// database).
func (h *Hub) NotifyAll() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.seq++
	var woken []Waiter
	for _, e := range h.waits {
		h.dropLocked(e)
		woken = append(woken, e.w)
	}
	h.wakeLocked(woken)
}

func (h *Hub) wakeLocked(ws []Waiter) {
	rand.Shuffle(len(ws), func(i, j int) { ws[i], ws[j] = ws[j], ws[i] })
	for _, w := range ws {
		h.enqueueLocked(w, true)
	}
}

func (h *Hub) dropLocked(e *wait) {
	e.timer.Stop()
	delete(h.waits, e.node)
}

func (h *Hub) enqueueLocked(w Waiter, wake bool) {
	h.queue = append(h.queue, task{w, wake})
	h.cond.Signal()
}

// Waiting is the number of waits held.
func (h *Hub) Waiting() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.waits)
}

// Close expires every wait, lets the workers finish the queue and
// returns once they have. Later Parks are expired at once.
func (h *Hub) Close() {
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return
	}
	h.closed = true
	for _, e := range h.waits {
		h.dropLocked(e)
		h.enqueueLocked(e.w, false)
	}
	h.cond.Broadcast()
	h.mu.Unlock()
	h.wg.Wait()
	// Parks racing with Close queued after the workers left.
	h.mu.Lock()
	rest := h.queue
	h.queue = nil
	h.mu.Unlock()
	for _, t := range rest {
		h.run(t)
	}
}

func (h *Hub) work() {
	defer h.wg.Done()
	for {
		h.mu.Lock()
		for len(h.queue) == 0 && !h.closed {
			h.cond.Wait()
		}
		if len(h.queue) == 0 {
			h.mu.Unlock()
			return
		}
		t := h.queue[0]
		h.queue[0] = task{}
		h.queue = h.queue[1:]
		if len(h.queue) == 0 {
			h.queue = nil // let a burst's backing array go
		}
		h.mu.Unlock()
		h.run(t)
	}
}

func (h *Hub) run(t task) {
	defer func() {
		if r := recover(); r != nil {
			h.log.Error("long-poll waiter panicked", "panic", r)
		}
	}()
	if t.wake {
		t.w.Wake()
	} else {
		t.w.Expire()
	}
}

// Source is where configuration changes are read (*store.Store).
type Source interface {
	// ConfigGeneration is a counter every change bumps (cheap to poll).
	ConfigGeneration(ctx context.Context) (int64, error)
	// ConfigChangesSince lists the nodes stamped above after, and the
	// highest stamp.
	ConfigChangesSince(ctx context.Context, after int64) ([]int64, int64, error)
}

// Watch polls src every interval until ctx ends and notifies the nodes
// whose generation moved. Polling sees the admin CLI's changes, made by
// another process, as well as the server's own.
func (h *Hub) Watch(ctx context.Context, src Source, interval time.Duration) {
	var global, after int64
	var err error
	for {
		if global, err = src.ConfigGeneration(ctx); err == nil {
			after = global // every later stamp is above the counter's value now
			break
		}
		h.log.Warn("long-poll watcher", "err", err)
		if !sleep(ctx, time.Second) {
			return
		}
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		g, err := src.ConfigGeneration(ctx)
		if err != nil {
			if ctx.Err() == nil {
				h.log.Warn("long-poll watcher", "err", err)
			}
			continue
		}
		switch {
		case g == global:
			continue
		case g < global:
			h.log.Warn("config generation went back (database restored?); waking every long poll", "from", global, "to", g)
			h.NotifyAll()
			global, after = g, g
			continue
		}
		nodes, top, err := src.ConfigChangesSince(ctx, after)
		if err != nil {
			if ctx.Err() == nil {
				h.log.Warn("long-poll watcher", "err", err)
			}
			continue
		}
		h.Notify(nodes)
		global, after = g, top
	}
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
