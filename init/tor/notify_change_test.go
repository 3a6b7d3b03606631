package tor

import (
	"context"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"patela/internal/api"
)

// Changes holds one signal at most, never blocks the relay that sends
// it, and signals only what Status shows (not a new Since alone).
func TestChangesCoalesce(t *testing.T) {
	s := &Supervisor{relays: map[string]*relay{}, changes: make(chan struct{}, 1)}
	r := &relay{changed: s.signal, st: Status{Name: "alpha", State: api.RelayStarting}}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 1000 { // nobody reads: none of these may block
			r.setState(api.RelayBackoff, "")
			r.update(func(st *Status) { st.Restarts = i + 1 })
		}
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("status changes blocked with no reader")
	}
	if n := len(s.Changes()); n != 1 {
		t.Fatalf("%d signals pending, want 1", n)
	}
	<-s.Changes()
	r.setState(api.RelayBackoff, "") // same state, new Since: nothing to report
	r.readFingerprints()             // no DataDirectory: still empty
	if n := len(s.Changes()); n != 0 {
		t.Fatalf("a change of Since alone was signalled")
	}
	r.setState(api.RelayRunning, "")
	if n := len(s.Changes()); n != 1 {
		t.Fatalf("state change not signalled")
	}
	<-s.Changes()
	s.setRelay("alpha", r)
	if n := len(s.Changes()); n != 1 {
		t.Fatalf("relay added, not signalled")
	}
}

// With real tor: a relay's start, READY=1, SIGKILL and restart are all
// signalled, and a reader that reads Status after each signal ends with
// exactly the supervisor's final state (the last change is never lost),
// while a supervisor nobody listens to runs as before.
func TestChangesFollowRelay(t *testing.T) {
	h := newHarness(t, nil)
	ctx := context.Background()

	// Nobody reads Changes: the relay still starts and runs.
	if err := h.sup.Apply(ctx, Spec{Name: "india", UID: 20009, Torrc: serverTorrc("india", 39109)}); err != nil {
		t.Fatal(err)
	}
	first := h.waitRunning(t, "india")
	waitFor(t, "fingerprint", func() bool { return h.status(t, "india").Fingerprint != "" })
	if n := len(h.sup.Changes()); n != 1 {
		t.Fatalf("%d signals pending after an unread start, want 1", n)
	}

	var mu sync.Mutex
	var seen []Status // the relay's state as read after each signal
	stop := make(chan struct{})
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		for {
			select {
			case <-stop:
				return
			case <-h.sup.Changes():
				st := h.sup.Status()
				mu.Lock()
				if len(st) == 1 {
					seen = append(seen, st[0])
				}
				mu.Unlock()
			}
		}
	}()
	seenStates := func() []api.RelayState {
		mu.Lock()
		defer mu.Unlock()
		var s []api.RelayState
		for _, st := range seen {
			if len(s) == 0 || s[len(s)-1] != st.State {
				s = append(s, st.State)
			}
		}
		return s
	}

	if err := unix.Kill(first.PID, unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	var final Status
	waitFor(t, "restarted relay running", func() bool {
		final = h.status(t, "india")
		return final.State == api.RelayRunning && final.Restarts == 1 && final.Fingerprint != ""
	})
	time.Sleep(time.Second) // several key polls: nothing more may change
	close(stop)
	<-readerDone
	final = h.status(t, "india")
	mu.Lock()
	last := seen[len(seen)-1]
	mu.Unlock()
	last.Since, final.Since = time.Time{}, time.Time{}
	if last != final {
		t.Errorf("last state read after a signal:\n  %+v\nfinal state:\n  %+v", last, final)
	}
	states := seenStates()
	t.Logf("states read after signals: %v", states)
	// The reader may skip a state that a quicker one replaced before it
	// read Status, but it must see the relay down and running again.
	if states[len(states)-1] != api.RelayRunning || len(states) < 2 {
		t.Errorf("states read after signals %v: want the exit, then running", states)
	}
}
