package reconcile

import (
	"bytes"
	"context"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"patela/init/tor"
	"patela/internal/api"
)

// running waits for n relays running with fingerprints and returns them.
func running(t *testing.T, w *world, n int) map[string]tor.Status {
	t.Helper()
	got := map[string]tor.Status{}
	waitFor(t, strconv.Itoa(n)+" relays running", func() bool {
		clear(got)
		for _, st := range w.sup.Status() {
			if st.State == api.RelayRunning && st.Fingerprint != "" {
				got[st.Name] = st
			}
		}
		return len(got) == n && len(w.sup.Status()) == n
	})
	return got
}

// stopped waits until no relay is supervised and every tor process of
// was has exited, and returns how long that took since t0.
func stopped(t *testing.T, w *world, was map[string]tor.Status, t0 time.Time) time.Duration {
	t.Helper()
	waitFor(t, "relays stopped", func() bool {
		if len(w.sup.Status()) != 0 {
			return false
		}
		for _, st := range was {
			if unix.Kill(st.PID, 0) == nil {
				return false
			}
		}
		return true
	})
	return time.Since(t0)
}

// Revocation on a running node, against the real server, tor and the
// TPM key vault: disabled, the relays stop at the next round, their key
// files leave tmpfs and their keys stay in the vault, and they come back
// as themselves when the node is enabled again; banned, the same, with
// the loop (and so the machine) still running; removed, the relays stop
// and the node asks again as a new pending node, its old relays' names
// and addresses free at the server. The console says each once.
func TestRevocation(t *testing.T) {
	const poll = 2 * time.Second
	v := testVault(t, nil)
	w := newWorld(t, 2, poll, func(_ *world, o *tor.Options) { o.Keys = v })
	ctx, cancel := context.WithCancel(context.Background())
	runDone := make(chan error, 1)
	go func() { runDone <- w.l.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-runDone })
	admin := func(args ...string) time.Time {
		t.Helper()
		w.s.Admin(t, args...)
		return time.Now()
	}

	first := running(t, w, 2)
	waitFor(t, "keys in the vault", func() bool { return len(v.Relays()) == 2 })

	// Disabled.
	d := stopped(t, w, first, admin("node", "disable", w.ids))
	t.Logf("disable -> relays stopped: %v (poll %v, tor ShutdownWaitLength 1 s)", d.Round(10*time.Millisecond), poll)
	if got := v.Relays(); len(got) != 2 {
		t.Fatalf("the vault holds %v after the stop, want both relays", got)
	}
	for name := range first {
		if _, err := os.Stat(filepath.Join(w.root, "state", name)); !os.IsNotExist(err) {
			t.Errorf("%s's data directory (its key files) left on tmpfs: %v", name, err)
		}
	}
	t0 := admin("node", "enable", w.ids)
	again := running(t, w, 2)
	t.Logf("enable -> relays running again: %v", time.Since(t0).Round(10*time.Millisecond))
	for name, st := range first {
		if again[name].Fingerprint != st.Fingerprint || again[name].Ed25519ID != st.Ed25519ID {
			t.Errorf("%s came back as %s, was %s", name, again[name].Fingerprint, st.Fingerprint)
		}
	}

	// Banned: stopped, no reboot (the loop runs on), asking again.
	d = stopped(t, w, again, admin("node", "ban", w.ids))
	t.Logf("ban -> relays stopped: %v", d.Round(10*time.Millisecond))
	time.Sleep(3 * poll)
	select {
	case err := <-runDone:
		t.Fatalf("the loop ended on a ban: %v", err)
	default:
	}
	admin("node", "enable", w.ids)
	again = running(t, w, 2)

	// Removed: stopped; the node comes back as a new pending node.
	names := slices.Sorted(func(yield func(string) bool) {
		for n := range again {
			if !yield(n) {
				return
			}
		}
	})
	d = stopped(t, w, again, admin("node", "remove", w.ids))
	t.Logf("remove -> relays stopped: %v", d.Round(10*time.Millisecond))
	var newID string
	waitFor(t, "a new pending node", func() bool {
		for _, line := range strings.Split(w.s.Admin(t, "node", "list"), "\n") {
			if f := strings.Fields(line); len(f) > 1 && f[1] == "pending" && f[0] != w.ids {
				newID = f[0]
				return true
			}
		}
		return false
	})
	if out := w.s.Admin(t, "relay", "list"); strings.Contains(out, names[0]) || strings.Contains(out, names[1]) {
		t.Errorf("the removed node's relays are still allocated:\n%s", out)
	}
	w.id, _ = strconv.ParseInt(newID, 10, 64)
	w.ids = newID
	admin("node", "set", newID, "relay_interface", "relay0")
	admin("node", "set", newID, "max_relays", "2")
	admin("node", "enable", newID)
	running(t, w, 2)

	logs := w.logs.String()
	for line, n := range map[string]int{
		"this node is disabled by the config server: relays stopped, keys kept sealed":                  1,
		"this node is BANNED by the config server: relays stopped, keys kept sealed; no reboot":         1,
		"this node is pending at the config server (as node " + newID + ": removed and enrolled anew?)": 1,
		"the config server lets this node run relays again: starting them":                              3,
	} {
		if got := strings.Count(logs, line); got != n {
			t.Errorf("the console says %q %d times, want %d", line, got, n)
		}
	}
}

// When the pools cannot hold all the node's relays it runs those it got
// and keeps reporting them; an older server's 409 at specs does not stop
// the loop either.
func TestPartialAllocation(t *testing.T) {
	w := newWorld(t, 2, time.Second)
	// A pool with one address: 1 of the 2 relays fits.
	w.s.Admin(t, "pool", "remove", "192.0.2.0/24")
	w.s.Admin(t, "pool", "add", "192.0.2.0/30", "--gateway", "192.0.2.1")
	var old atomic.Bool
	c, rec := w.s.Proxy(t, func(rw http.ResponseWriter, r *http.Request) bool {
		if old.Load() && r.URL.Path == api.PathSpecs {
			rw.Header().Set("Content-Type", "application/json")
			rw.WriteHeader(http.StatusConflict)
			rw.Write([]byte(`{"error":"every IPv4 pool is full","code":"exhausted"}`))
			return true
		}
		return false
	})
	w.l.cfg.Client = c
	ctx, cancel := context.WithCancel(context.Background())
	runDone := make(chan error, 1)
	go func() { runDone <- w.l.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-runDone })
	one := running(t, w, 1)
	var name string
	for n := range one {
		name = n
	}
	waitFor(t, "the server sees the relay running", func() bool {
		return serverRelays(t, w.s, w.id)[name].State == api.RelayRunning
	})
	if !strings.Contains(w.logs.String(), "the config server could not place all this node's relays; running those it placed") {
		t.Errorf("no console line about the shortfall:\n%s", w.logs.String())
	}
	if out := w.s.Admin(t, "node", "show", w.ids); !strings.Contains(out, "wants 2, has 1: pool full") {
		t.Errorf("node show:\n%s", out)
	}
	// An older server answers 409 exhausted: a change still comes
	// through. The loop posts its specs after applying the change (409),
	// then long-polls again.
	old.Store(true)
	specsKey := "POST " + api.PathSpecs
	specs, configs, beats := rec.Count(specsKey), rec.Count(configKey), rec.Count(statusKey)
	f := filepath.Join(t.TempDir(), "node.torrc")
	os.WriteFile(f, []byte("ContactInfo changed <ops@example.org>\n"), 0o644)
	w.s.Admin(t, "torrc", "import", f, "--node", w.ids)
	waitFor(t, "the change applied, specs refused 409, the config asked again", func() bool {
		live, _ := os.ReadFile(filepath.Join(w.root, "run", name+".torrc"))
		return bytes.Contains(live, []byte("ContactInfo changed")) &&
			rec.Count(specsKey) > specs && rec.Count(configKey) > configs && rec.Count(statusKey) > beats
	})
	t.Logf("after the change: %d specs posts, %d config requests, %d heartbeats",
		rec.Count(specsKey)-specs, rec.Count(configKey)-configs, rec.Count(statusKey)-beats)
	if st, ok := statusOf(w.sup, name); !ok || st.PID != one[name].PID {
		t.Errorf("the relay did not keep running through 409s: %+v", st)
	}
}
