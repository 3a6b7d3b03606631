package reconcile

import (
	"context"
	"encoding/json"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"patela/init/tor"
	"patela/internal/api"
)

const (
	statusKey = "POST " + api.PathStatus
	configKey = "GET " + api.PathConfig
)

// While the config long-poll is held, what the supervisor reports
// reaches the server within seconds as heartbeats of their own, without
// config fetches: a new relay's READY=1, a SIGKILL and its restart, a
// relay that fails in a crash loop. A burst of changes gives a bounded
// number of heartbeats, and a failing heartbeat is retried with backoff.
func TestHeartbeatOnChange(t *testing.T) {
	w := newWorld(t, 1, time.Hour)
	var outage atomic.Bool
	var inm lastINM
	c, rec := w.s.Proxy(t, func(rw http.ResponseWriter, r *http.Request) bool {
		if r.URL.Path == api.PathConfig {
			inm.record(r)
		}
		if outage.Load() && r.URL.Path == api.PathStatus {
			rw.Header().Set("Content-Type", "application/json")
			rw.WriteHeader(http.StatusServiceUnavailable)
			rw.Write([]byte(`{"error":"test outage","code":"unavailable"}`))
			return true
		}
		return false
	})
	w.l.cfg.Client = c
	ctx, cancel := context.WithCancel(context.Background())
	runDone := make(chan error, 1)
	go func() { runDone <- w.l.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-runDone })
	sup := w.sup
	gap := w.l.cfg.HeartbeatGap

	local := func() tor.Status {
		st := sup.Status()
		if len(st) != 1 {
			return tor.Status{}
		}
		return st[0]
	}
	onServer := func(name string) relayView { return serverRelays(t, w.s, w.id)[name] }
	lastSent := func() api.RelayStatus {
		bs := rec.Bodies(statusKey)
		var st api.Status
		if err := json.Unmarshal(bs[len(bs)-1], &st); err != nil || len(st.Relays) != 1 {
			t.Fatalf("heartbeat %s: %v", bs[len(bs)-1], err)
		}
		return st.Relays[0]
	}

	// A new relay: the round's heartbeat says starting, READY=1 follows.
	var first tor.Status
	waitFor(t, "relay running", func() bool {
		first = local()
		return first.State == api.RelayRunning
	})
	waitFor(t, "server sees the relay running", func() bool {
		r := onServer(first.Name)
		return r.State == api.RelayRunning && len(r.Fingerprint) == 40
	})
	lag := time.Since(first.Since) // Since: when READY=1 came
	t.Logf("READY=1 to the server seeing running + fingerprint: %v (poll interval 1h)", lag.Round(10*time.Millisecond))
	// The poll is an hour and no round ran (the fetch count below): the
	// change heartbeat carried it. The bound catches only a lost one, not
	// a slow machine.
	if lag > 30*time.Second {
		t.Errorf("READY=1 reached the server after %v", lag)
	}
	// The first fetch, then the long poll held (one more when the
	// fingerprint's stamp of the family's nodes woke the first).
	waitFor(t, "the long poll held on the current config", func() bool { return heldCurrent(t, w, &inm) })
	cfgBase := rec.Count(configKey)
	if cfgBase < 2 || cfgBase > 3 {
		t.Errorf("%d config fetches to start: want the first and the held one(s)", cfgBase)
	}

	// SIGKILL: the restart reaches the server within seconds (the exit
	// too, unless the rate bound holds it until tor is back).
	hb0 := rec.Count(statusKey)
	t0 := time.Now()
	unix.Kill(first.PID, unix.SIGKILL)
	waitFor(t, "server sees restarts=1 running", func() bool {
		r := onServer(first.Name)
		return r.State == api.RelayRunning && r.Restarts == 1
	})
	lag = time.Since(t0)
	t.Logf("SIGKILL to the server seeing running restarts=1: %v, %d heartbeats", lag.Round(10*time.Millisecond), rec.Count(statusKey)-hb0)
	if lag > 30*time.Second+gap {
		t.Errorf("restart reached the server after %v", lag)
	}
	if n := rec.Count(statusKey) - hb0; n > 3 {
		t.Errorf("%d heartbeats for one exit and restart", n)
	}
	if n := rec.Count(configKey); n != cfgBase {
		t.Errorf("%d config fetches: change heartbeats ran rounds", n-cfgBase)
	}

	// The server fails heartbeats: the change heartbeat fails and is
	// retried with backoff (RetryMin doubling to RetryMax), the long poll
	// held all along; once the server takes them again, the retries stop.
	time.Sleep(gap) // let the rate bound lapse: the next change is sent at once
	outage.Store(true)
	hb0 = rec.Count(statusKey)
	t0 = time.Now()
	second := local()
	unix.Kill(second.PID, unix.SIGKILL)
	waitFor(t, "relay restarted", func() bool {
		st := local()
		return st.State == api.RelayRunning && st.Restarts == 2
	})
	waitFor(t, "heartbeats retried", func() bool { return rec.Count(statusKey) >= hb0+4 })
	outage.Store(false)
	waitFor(t, "server sees restarts=2", func() bool {
		r := onServer(first.Name)
		return r.State == api.RelayRunning && r.Restarts == 2
	})
	outageFor := time.Since(t0)
	hbs := rec.Count(statusKey) - hb0
	t.Logf("outage: %d heartbeats in %v", hbs, outageFor.Round(10*time.Millisecond))
	if limit := 4 + int(outageFor/w.l.cfg.RetryMax); hbs > limit {
		t.Errorf("%d heartbeats in %v of outage: more than %d, the backoff does not hold", hbs, outageFor, limit)
	}
	if n := rec.Count(configKey); n != cfgBase {
		t.Errorf("%d config fetches during the heartbeat outage", n-cfgBase)
	}
	hb1 := rec.Count(statusKey)
	time.Sleep(3 * time.Second)
	if n := rec.Count(statusKey); n != hb1 {
		t.Errorf("%d heartbeats after the server recovered, with nothing changing", n-hb1)
	}
	cfg1 := rec.Count(configKey)

	// A crash loop: tor killed as soon as it starts, until the supervisor
	// gives up. Heartbeats stay within the rate bound, and the last one
	// says failed.
	hb0 = rec.Count(statusKey)
	t0 = time.Now()
	killed, changes, lastKilled := 0, 0, 0
	prev := local()
	for prev.State != api.RelayFailed {
		st := local()
		if st.State != prev.State || st.PID != prev.PID || st.Restarts != prev.Restarts {
			changes++
		}
		prev = st
		if st.PID != 0 && st.PID != lastKilled && unix.Kill(st.PID, unix.SIGKILL) == nil {
			killed, lastKilled = killed+1, st.PID
		}
		if time.Since(t0) > time.Minute {
			t.Fatalf("no crash loop after %d kills: %+v", killed, st)
		}
		time.Sleep(5 * time.Millisecond)
	}
	failedAt := time.Now()
	waitFor(t, "server sees failed", func() bool { return onServer(first.Name).State == api.RelayFailed })
	window := time.Since(t0)
	hbs = rec.Count(statusKey) - hb0
	t.Logf("crash loop: %d kills, %d state changes seen, %d heartbeats in %v; failed on the server %v after the supervisor",
		killed, changes, hbs, window.Round(10*time.Millisecond), time.Since(failedAt).Round(10*time.Millisecond))
	if limit := 2 + int(window/gap); hbs > limit {
		t.Errorf("%d heartbeats in %v: more than %d", hbs, window, limit)
	}
	if st := lastSent(); st.State != api.RelayFailed {
		t.Errorf("last heartbeat says %+v", st)
	}
	if n := rec.Count(configKey); n != cfg1 {
		t.Errorf("%d rounds during the crash loop", n-cfg1)
	}
}
