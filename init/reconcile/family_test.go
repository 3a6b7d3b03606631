package reconcile

import (
	"bytes"
	"context"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"patela/init/tor"
	"patela/internal/api"
	"patela/internal/familykey"
)

// agentRun is one running agent of a fleet test.
type agentRun struct {
	*world
	name string // its one relay
	pid  int
	fp   string
}

func (a *agentRun) live(t *testing.T) []byte {
	t.Helper()
	b, _ := os.ReadFile(filepath.Join(a.root, "run", a.name+".torrc"))
	return b
}

func (a *agentRun) status(t *testing.T) tor.Status {
	t.Helper()
	st, ok := statusOf(a.sup, a.name)
	if !ok {
		t.Fatalf("relay %s gone", a.name)
	}
	return st
}

// startAgent runs agent w (one relay) until the test ends, and
// waits until its relay runs and the server has its fingerprint.
func startAgent(t *testing.T, w *world) *agentRun {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.l.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	a := &agentRun{world: w}
	waitFor(t, "relay running", func() bool {
		st := w.sup.Status()
		if len(st) == 1 && st[0].State == api.RelayRunning && st[0].Fingerprint != "" {
			a.name, a.pid, a.fp = st[0].Name, st[0].PID, st[0].Fingerprint
			return true
		}
		return false
	})
	waitFor(t, "fingerprint on the server", func() bool { return serverRelays(t, w.s, w.id)[a.name].Fingerprint == a.fp })
	return a
}

// A fleet of three agents against the real server, each with a real tor:
// one family key (FamilyId) and MyFamily on every relay; a relay that
// joins changes every other relay's torrc, and each agent applies it by
// reload (same tor); a key rotation reaches every relay by reload too.
func TestFleetFamilyReloads(t *testing.T) {
	const poll = time.Second
	s := startServer(t)
	s.Admin(t, "family", "create")
	one := newWorldOn(t, s, 1, poll)
	two := newWorldOn(t, s, 1, poll)
	a := startAgent(t, one)
	b := startAgent(t, two)

	hasFamily := func(x *agentRun, others ...*agentRun) bool {
		live := x.live(t)
		for _, o := range others {
			if !bytes.Contains(live, []byte("MyFamily $"+o.fp+"\n")) {
				return false
			}
		}
		return bytes.Contains(live, []byte("FamilyId "))
	}
	waitFor(t, "two relays in one family", func() bool { return hasFamily(a, b) && hasFamily(b, a) })
	keyFile := func(x *agentRun) string {
		return filepath.Join(x.root, "state", x.name, "keys", "patela-fleet"+familykey.FileSuffix)
	}
	for _, x := range []*agentRun{a, b} {
		if _, err := os.Stat(keyFile(x)); err != nil {
			t.Fatalf("%s: family key not installed: %v", x.name, err)
		}
		if st := x.status(t); st.PID != x.pid || st.Restarts != 0 {
			t.Fatalf("%s restarted: %+v", x.name, st)
		}
	}

	// reloadsAfter makes a change and waits until every agent of xs has
	// reloaded once more than before, with the same tor; it says how long
	// that took after change returned (the server had the change).
	reloadsAfter := func(what string, xs []*agentRun, cond func(*agentRun) bool, change func()) time.Duration {
		t.Helper()
		// tor counts a reload when it reports RELOADING, a moment after
		// the agent wrote the torrc the earlier waits read: count from a
		// fleet where every relay runs and no reload moved for two polls.
		before := map[string]int{}
		waitFor(t, "the relays settled before "+what, func() bool {
			now := map[string]int{}
			for _, x := range xs {
				st := x.status(t)
				if st.State != api.RelayRunning {
					return false
				}
				now[x.name] = st.Reloads
			}
			if maps.Equal(now, before) {
				return true
			}
			before = now
			time.Sleep(2 * poll)
			return false
		})
		change()
		t0 := time.Now()
		var took time.Duration
		for _, x := range xs {
			waitFor(t, x.name+" reloaded for "+what, func() bool {
				st := x.status(t)
				return cond(x) && st.Reloads > before[x.name] && st.State == api.RelayRunning
			})
			took = max(took, time.Since(t0))
		}
		time.Sleep(2 * poll) // nothing more comes of it
		n := 0
		for _, x := range xs {
			st := x.status(t)
			if st.PID != x.pid || st.Restarts != 0 {
				t.Errorf("%s: %s restarted tor: pid %d → %d, restarts %d", what, x.name, x.pid, st.PID, st.Restarts)
			}
			n += st.Reloads - before[x.name]
		}
		t.Logf("%s: %d reloads across %d relays, the last %v after the server had it (poll %v)", what, n, len(xs), took.Round(time.Millisecond), poll)
		if n != len(xs) {
			t.Errorf("%s: %d reloads, want one per relay (%d)", what, n, len(xs))
		}
		return took
	}

	// A third node joins: both others reload once with its fingerprint,
	// counted from the server taking it in a heartbeat.
	var c *agentRun
	reloadsAfter("a relay joining", []*agentRun{a, b}, func(x *agentRun) bool { return c != nil && hasFamily(x, c) }, func() {
		c = startAgent(t, newWorldOn(t, s, 1, poll))
	})
	waitFor(t, "the new relay lists the others", func() bool { return hasFamily(c, a, b) })

	// Rotation: every relay reloads with the new FamilyId and key.
	old, _ := os.ReadFile(keyFile(a))
	all := []*agentRun{a, b, c}
	reloadsAfter("a family key rotation", all, func(x *agentRun) bool {
		k, _ := os.ReadFile(keyFile(x))
		return len(k) > 0 && !bytes.Equal(k, old)
	}, func() { s.Admin(t, "family", "rotate") })
	for _, x := range all {
		if logs := strings.Join(x.sup.Logs(x.name), "\n"); strings.Contains(logs, "No key was found") || strings.Contains(logs, "old keys") {
			t.Errorf("%s: tor did not take the new key:\n%s", x.name, logs)
		}
	}
}
