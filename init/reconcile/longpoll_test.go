package reconcile

import (
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"patela/internal/api"
)

// runLoop runs w's loop until the test ends.
func runLoop(t *testing.T, w *world) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.l.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
}

// With a server that long-polls, an idle node's config request is held
// (asking for no longer than its token lives) and a change reaches the
// node at once; the specs are posted again only after a change. With an
// older server (no ETag), the loop polls every interval with a heartbeat
// per round, as before.
func TestLongPollAndOlderServers(t *testing.T) {
	w := newWorld(t, 1, time.Hour)
	var mu sync.Mutex
	var waits []string
	var inm lastINM
	c, rec := w.s.Proxy(t, func(rw http.ResponseWriter, r *http.Request) bool {
		if r.URL.Path == api.PathConfig {
			mu.Lock()
			waits = append(waits, r.URL.Query().Get("wait"))
			mu.Unlock()
			inm.record(r)
		}
		return false
	})
	w.l.cfg.Client = c
	w.l.cfg.LongPollWait = time.Hour
	tokens := &expiring{softTokens: w.tokens, at: time.Now().Add(5 * time.Minute)}
	w.l.cfg.Tokens = tokens
	runLoop(t, w)
	// The console line boots are timed by.
	waitFor(t, "all relays running logged", func() bool {
		return strings.Contains(w.logs.String(), `msg="all relays running" relays=1 since_boot=`)
	})
	waitFor(t, "the server has the relay's fingerprint", func() bool {
		for _, r := range serverRelays(t, w.s, w.id) {
			return len(r.Fingerprint) == 40
		}
		return false
	})
	waitFor(t, "the long poll held on the current config", func() bool { return heldCurrent(t, w, &inm) })
	specs0, cfg0 := rec.Count("POST "+api.PathSpecs), rec.Count(configKey)
	mu.Lock()
	// The first fetch asks for no wait; the relay's fingerprint, in the
	// heartbeat after it, stamps the nodes of its family, this one too,
	// which may cost one more fetch.
	if len(waits) < 2 || len(waits) > 3 || waits[0] != "" {
		t.Fatalf("config requests' waits %q: want none, then the long poll(s)", waits)
	}
	for _, w := range waits[1:] {
		if n, _ := strconv.Atoi(w); n < 290 || n > 300 {
			t.Errorf("long poll asked to wait %ss, want the 5 min its token has left", w)
		}
	}
	mu.Unlock()
	time.Sleep(2 * time.Second)
	if rec.Count(configKey) != cfg0 || rec.Count("POST "+api.PathSpecs) != specs0 {
		t.Fatalf("idle: %d config fetches, %d specs posts", rec.Count(configKey)-cfg0, rec.Count("POST "+api.PathSpecs)-specs0)
	}

	// A change: applied at once (the relay reloads), then specs again.
	f := filepath.Join(t.TempDir(), "node.torrc")
	os.WriteFile(f, []byte("ContactInfo changed <ops@example.org>\n"), 0o644)
	t0 := time.Now()
	w.s.Admin(t, "torrc", "import", f, "--node", w.ids)
	waitFor(t, "the change applied", func() bool {
		st := w.sup.Status()
		return len(st) == 1 && st[0].Reloads == 1
	})
	t.Logf("torrc import --node to reloaded, long-polled: %v", time.Since(t0).Round(time.Millisecond))
	waitFor(t, "the long poll held again", func() bool { return w.s.Waiting() == 1 && rec.Count(configKey) == cfg0+1 })
	if n := rec.Count("POST "+api.PathSpecs) - specs0; n != 1 {
		t.Errorf("%d specs posts after a change, want 1", n)
	}
}

// lastINM is the If-None-Match of the newest config request.
type lastINM struct {
	mu  sync.Mutex
	inm string
}

func (l *lastINM) record(r *http.Request) {
	l.mu.Lock()
	l.inm = r.Header.Get("If-None-Match")
	l.mu.Unlock()
}

// heldCurrent reports whether the loop's long poll is held on the node's
// current config, so that nothing already committed will wake it: the
// hub notices a stamp only at its next look at the store.
func heldCurrent(t *testing.T, w *world, l *lastINM) bool {
	l.mu.Lock()
	inm := l.inm
	l.mu.Unlock()
	if w.s.Waiting() != 1 || inm == "" {
		return false
	}
	tok, err := w.tokens.Token(context.Background())
	if err != nil {
		return false
	}
	r, err := w.s.Client(t).ConfigWait(context.Background(), tok, inm, 0)
	return err == nil && r.Config == nil
}

// expiring is softTokens whose token is renewed at a set time.
type expiring struct {
	*softTokens
	at time.Time
}

func (e *expiring) RefreshAt() time.Time { return e.at }

// An older server: no ETag, no hold. The loop polls every interval.
func TestOlderServerPolls(t *testing.T) {
	const poll = 500 * time.Millisecond
	w := newWorld(t, 1, poll)
	plain := w.s.Client(t)
	c, rec := w.s.Proxy(t, func(rw http.ResponseWriter, r *http.Request) bool {
		if r.URL.Path != api.PathConfig {
			return false
		}
		// What a server before issue 18 answers: the config, no ETag,
		// whatever the request's wait and If-None-Match.
		req, _ := http.NewRequest("GET", plain.BaseURL+api.PathConfig, nil)
		req.Header.Set("Authorization", r.Header.Get("Authorization"))
		resp, err := plain.HTTP.Do(req)
		if err != nil {
			rw.WriteHeader(http.StatusBadGateway)
			return true
		}
		defer resp.Body.Close()
		rw.Header().Set("Content-Type", "application/json")
		rw.WriteHeader(resp.StatusCode)
		io.Copy(rw, resp.Body)
		return true
	})
	w.l.cfg.Client = c
	runLoop(t, w)
	waitFor(t, "relay running", func() bool {
		st := w.sup.Status()
		return len(st) == 1 && st[0].State == api.RelayRunning
	})
	cfg0, hb0 := rec.Count(configKey), rec.Count(statusKey)
	time.Sleep(10 * poll)
	rounds, hbs := rec.Count(configKey)-cfg0, rec.Count(statusKey)-hb0
	t.Logf("older server: %d rounds, %d heartbeats in %v", rounds, hbs, 10*poll)
	if rounds < 5 || rounds > 11 {
		t.Errorf("%d config fetches in 10 poll intervals", rounds)
	}
	if hbs < rounds-1 || hbs > rounds+2 {
		t.Errorf("%d heartbeats for %d rounds: want one a round", hbs, rounds)
	}
	if strings.Contains(w.logs.String(), "reconcile failed") {
		t.Errorf("rounds failed:\n%s", w.logs.String())
	}
}
