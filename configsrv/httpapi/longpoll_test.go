package httpapi_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"patela/configsrv/httpapi"
	"patela/configsrv/testsrv"
	"patela/internal/api"
)

type polled struct {
	r   *api.ConfigResult
	err error
	at  time.Duration // after the poll was sent
}

// poll starts a long poll and returns where its answer arrives.
func poll(c *api.Client, tok, etag string, wait time.Duration) <-chan polled {
	ch := make(chan polled, 1)
	t0 := time.Now()
	go func() {
		r, err := c.ConfigWait(context.Background(), tok, etag, wait)
		ch <- polled{r, err, time.Since(t0)}
	}()
	return ch
}

func answered(t *testing.T, ch <-chan polled, what string) polled {
	t.Helper()
	select {
	case p := <-ch:
		return p
	case <-time.After(20 * time.Second):
		t.Fatalf("%s: no answer within 20 s", what)
		return polled{}
	}
}

func held(t *testing.T, ch <-chan polled, what string) {
	t.Helper()
	select {
	case p := <-ch:
		t.Fatalf("%s: answered (%+v, %v), want held", what, p.r, p.err)
	case <-time.After(300 * time.Millisecond):
	}
}

// waitHeld waits until the server holds n config requests.
func waitHeld(t *testing.T, s *testsrv.Server, n int) {
	t.Helper()
	for i := 0; s.Waiting() != n; i++ {
		if i > 400 {
			t.Fatalf("server holds %d config requests, want %d", s.Waiting(), n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// The conditional GET, the long poll, and what an older agent sends, on
// the real server; changes are the admin CLI's, on the database, as an
// administrator makes them.
func TestLongPoll(t *testing.T) {
	s := testsrv.Start(t)
	ctx := context.Background()
	a, tokA := s.EnrollSoftwareNode(t)
	_, tokB := s.EnrollSoftwareNode(t)
	c := s.Client(t)
	for _, tok := range []string{tokA, tokB} {
		if _, err := c.Specs(ctx, tok, &api.Specs{CPUs: 2, MemoryBytes: 4 << 30}); err != nil {
			t.Fatal(err)
		}
	}
	// An older agent: a plain GET, answered at once with the config.
	old, err := c.Config(ctx, tokA)
	if err != nil || len(old.Relays) != 2 {
		t.Fatalf("plain GET: %+v, %v", old, err)
	}
	first := func(tok string) *api.ConfigResult {
		r, err := c.ConfigWait(ctx, tok, "", time.Minute) // no ETag yet: at once
		if err != nil || r.Config == nil || r.ETag == "" {
			t.Fatalf("first fetch: %+v, %v", r, err)
		}
		return r
	}
	ra, rb := first(tokA), first(tokB)
	if ra.Config.Relays[0].TorrcSHA256 != old.Relays[0].TorrcSHA256 {
		t.Fatal("the conditional fetch differs from the plain one")
	}
	// Same ETag, no wait: 304 at once.
	if r, err := c.ConfigWait(ctx, tokA, ra.ETag, 0); err != nil || r.Config != nil || r.ETag != ra.ETag {
		t.Fatalf("If-None-Match without wait: %+v, %v", r, err)
	}
	// A stale ETag: the config at once, however long the wait.
	if r, err := c.ConfigWait(ctx, tokA, `"1-0000000000000000"`, time.Hour); err != nil || r.Config == nil {
		t.Fatalf("stale ETag: %+v, %v", r, err)
	}

	pa, pb := poll(c, tokA, ra.ETag, time.Minute), poll(c, tokB, rb.ETag, time.Minute)
	waitHeld(t, s, 2)
	held(t, pa, "A, nothing changed")
	// A change of node A's own torrc wakes A, and only A.
	f := filepath.Join(t.TempDir(), "node.torrc")
	os.WriteFile(f, []byte("ExitRelay 0\n"), 0o644)
	s.Admin(t, "torrc", "import", f, "--node", strconv.FormatInt(a, 10))
	p := answered(t, pa, "A after its torrc changed")
	if p.err != nil || p.r.Config == nil || p.r.ETag == ra.ETag {
		t.Fatalf("A after its change: %+v, %v", p.r, p.err)
	}
	if got := p.r.Config.Relays[0].Torrc; !strings.Contains(got, "ExitRelay 0") {
		t.Fatalf("A's new config lacks its change:\n%s", got)
	}
	held(t, pb, "B after A's change")
	ra = p.r
	// A global change wakes both.
	pa = poll(c, tokA, ra.ETag, time.Minute)
	waitHeld(t, s, 2)
	s.Admin(t, "node", "set", "--default", "dns", "192.0.2.53")
	for name, ch := range map[string]<-chan polled{"A": pa, "B": pb} {
		p := answered(t, ch, name+" after a global change")
		if p.err != nil || p.r.Config == nil || len(p.r.Config.Network.DNS) != 1 {
			t.Fatalf("%s after a global change: %+v, %v", name, p.r, p.err)
		}
		if name == "A" {
			ra = p.r
		}
	}
	waitHeld(t, s, 0)

	// A wait that runs out is 304 with the same ETag, after most of it.
	p = answered(t, poll(c, tokA, ra.ETag, 2*time.Second), "a short wait")
	if p.err != nil || p.r.Config != nil || p.r.ETag != ra.ETag || p.at < 1500*time.Millisecond {
		t.Fatalf("a 2 s wait: %+v, %v after %v", p.r, p.err, p.at)
	}
	// A second wait of the same node replaces the first (304).
	p1 := poll(c, tokA, ra.ETag, time.Minute)
	waitHeld(t, s, 1)
	p2 := poll(c, tokA, ra.ETag, time.Minute)
	if p := answered(t, p1, "the replaced wait"); p.err != nil || p.r.Config != nil {
		t.Fatalf("replaced wait: %+v, %v", p.r, p.err)
	}
	waitHeld(t, s, 1)
	// Disabling the node answers its held request at once: refused.
	s.Admin(t, "node", "disable", strconv.FormatInt(a, 10))
	if p := answered(t, p2, "after disable"); !api.IsCode(p.err, api.CodeDisabled) {
		t.Fatalf("held request of a disabled node: %+v, %v", p.r, p.err)
	}
	waitHeld(t, s, 0)
}

// Bad waits are refused and nothing is held; a removed node's held
// request is refused; a server shutting down answers what it holds.
func TestLongPollRefusalsAndShutdown(t *testing.T) {
	s := testsrv.Start(t)
	ctx := context.Background()
	id, tok := s.EnrollSoftwareNode(t)
	c := s.Client(t)
	r, err := c.ConfigWait(ctx, tok, "", 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{"wait=-1", "wait=1.5", "wait=x", "wait=99999999999"} {
		req, _ := http.NewRequest("GET", s.URL+api.PathConfig+"?"+q, nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		req.Header.Set("If-None-Match", r.ETag)
		resp, err := c.HTTP.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("%s: status %d, want 400", q, resp.StatusCode)
		}
	}
	if s.Waiting() != 0 {
		t.Fatalf("%d held after refusals", s.Waiting())
	}
	// Without a valid token nothing is held either.
	if _, err := c.ConfigWait(ctx, "forged", r.ETag, time.Minute); !api.IsCode(err, api.CodeUnauthorized) {
		t.Fatalf("forged token: %v", err)
	}
	p := poll(c, tok, r.ETag, time.Minute)
	waitHeld(t, s, 1)
	s.Admin(t, "node", "remove", strconv.FormatInt(id, 10))
	if p := answered(t, p, "after remove"); !api.IsCode(p.err, api.CodeUnauthorized) {
		t.Fatalf("held request of a removed node: %+v, %v", p.r, p.err)
	}

	_, tok2 := s.EnrollSoftwareNode(t)
	r2, err := c.ConfigWait(ctx, tok2, "", 0)
	if err != nil {
		t.Fatal(err)
	}
	p = poll(c, tok2, r2.ETag, time.Hour)
	waitHeld(t, s, 1)
	s.Stop()
	if p := answered(t, p, "at shutdown"); p.err != nil || p.r.Config != nil || p.r.ETag != r2.ETag {
		t.Fatalf("held request at shutdown: %+v, %v", p.r, p.err)
	}
}

// Over HTTP/2 a held request waits in its handler, woken the same way.
func TestLongPollHTTP2(t *testing.T) {
	l := newLocal(t, nil)
	ctx := context.Background()
	if err := l.st.AddPool(ctx, mustPrefix("192.0.2.0/24"), mustAddr("192.0.2.1"), time.Now()); err != nil {
		t.Fatal(err)
	}
	id, _, _ := l.enroll(t)
	tok := l.token(t, id)
	if _, err := l.client.Specs(ctx, tok, &api.Specs{CPUs: 1, MemoryBytes: 4 << 30}); err != nil {
		t.Fatal(err)
	}
	r, err := l.client.ConfigWait(ctx, tok, "", 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, resp := raw(t, l.client, "GET", api.PathConfig, tok, nil); resp.ProtoMajor != 2 {
		t.Fatalf("the test client speaks %s, not HTTP/2", resp.Proto)
	}
	ch := poll(l.client, tok, r.ETag, time.Minute)
	for i := 0; l.api.Waiting() != 1; i++ {
		if i > 400 {
			t.Fatal("not held")
		}
		time.Sleep(10 * time.Millisecond)
	}
	held(t, ch, "nothing changed")
	if err := l.st.SetNodeTorrc(ctx, id, "ExitRelay 0\n"); err != nil {
		t.Fatal(err)
	}
	p := answered(t, ch, "after a change")
	if p.err != nil || p.r.Config == nil || p.r.ETag == r.ETag {
		t.Fatalf("after a change: %+v, %v", p.r, p.err)
	}
}

// A parked request's access log line, and its observation for the
// metrics, are written when it is answered, with its status and the time
// it was held.
func TestLongPollAccessLog(t *testing.T) {
	var logged syncBuf
	var obs observed
	l := newLocal(t, nil)
	srv := httptest.NewUnstartedServer(httpapi.AccessLog(httpapi.Instrument(l.api.Handler(), &obs), &logged))
	srv.StartTLS() // HTTP/1.1: the request is hijacked and parked
	t.Cleanup(srv.Close)
	c := &api.Client{BaseURL: srv.URL, HTTP: srv.Client()}
	ctx := context.Background()
	id, _, _ := l.enroll(t)
	tok := l.token(t, id)
	r, err := c.ConfigWait(ctx, tok, "", 0)
	if err != nil {
		t.Fatal(err)
	}
	if p := answered(t, poll(c, tok, r.ETag, 2*time.Second), "a short wait"); p.err != nil || p.r.Config != nil {
		t.Fatalf("%+v %v", p.r, p.err)
	}
	ch := poll(c, tok, r.ETag, time.Minute)
	for l.api.Waiting() != 1 {
		time.Sleep(10 * time.Millisecond)
	}
	l.st.SetNodeTorrc(ctx, id, "ExitRelay 0\n")
	if p := answered(t, ch, "after a change"); p.err != nil || p.r.Config == nil {
		t.Fatalf("%+v %v", p.r, p.err)
	}
	// The line follows the answer.
	for i := 0; i < 200 && strings.Count(logged.String(), "\n") < 3; i++ {
		time.Sleep(10 * time.Millisecond)
	}
	lines := strings.Split(strings.TrimSpace(logged.String()), "\n")
	if len(lines) != 3 || !strings.Contains(lines[0], `GET "/v1/node/config" 200`) ||
		!strings.Contains(lines[1], `GET "/v1/node/config" 304 0 1.`) || !strings.Contains(lines[2], `GET "/v1/node/config" 200`) ||
		strings.HasSuffix(lines[2], " 0 ") {
		t.Fatalf("access log:\n%s", logged.String())
	}
	obs.mu.Lock()
	defer obs.mu.Unlock()
	if want := []string{api.PathConfig + " 200 false", api.PathConfig + " 304 true", api.PathConfig + " 200 false"}; !slices.Equal(obs.got, want) {
		t.Fatalf("observed %q, want %q", obs.got, want)
	}
}

type observed struct {
	mu  sync.Mutex
	got []string
}

func (o *observed) Observe(pattern string, status int, took time.Duration) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.got = append(o.got, fmt.Sprintf("%s %d %v", pattern, status, took > 1500*time.Millisecond))
}

type syncBuf struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// What reaches a whole relay family (a relay's new fingerprint in its
// MyFamily lines, the family's key) wakes the long polls of exactly that
// family's members (migration 0018's family generations), whatever
// family the others are in.
func TestFamilyChangeWakesLongPoll(t *testing.T) {
	s := testsrv.Start(t)
	c := s.Client(t)
	ctx := context.Background()
	ns := familyNodes(t, s, c, 3) // 0 and 1 in the default family, 2 in eu
	s.Admin(t, "node", "set", strconv.FormatInt(ns[2].id, 10), "family", "eu")
	etags := make([]string, len(ns))
	for i, n := range ns {
		r, err := c.ConfigWait(ctx, n.tok, "", 0)
		if err != nil || r.Config == nil {
			t.Fatalf("node %d: %+v, %v", n.id, r, err)
		}
		etags[i] = r.ETag
	}
	// change is made while every node's poll is held; want are the nodes
	// it must wake (their configs returned), the others must stay held.
	stillHeld := map[int]<-chan polled{} // the last round's
	round := func(what string, change func(), want ...int) map[int]*api.ConfigResult {
		t.Helper()
		chs := make([]<-chan polled, len(ns))
		for i, n := range ns {
			chs[i] = poll(c, n.tok, etags[i], time.Minute)
		}
		// A node's new poll replaces its held one (answered 304): then
		// all the held polls are this round's.
		for i, ch := range stillHeld {
			if p := answered(t, ch, what+": the replaced poll"); p.err != nil || p.r.Config != nil {
				t.Fatalf("%s: node %d's replaced poll: %+v, %v", what, ns[i].id, p.r, p.err)
			}
		}
		clear(stillHeld)
		waitHeld(t, s, len(ns))
		change()
		got := map[int]*api.ConfigResult{}
		for _, i := range want {
			p := answered(t, chs[i], fmt.Sprintf("%s: node %d", what, ns[i].id))
			if p.err != nil || p.r.Config == nil || p.r.ETag == etags[i] {
				t.Fatalf("%s: node %d answered %+v, %v", what, ns[i].id, p.r, p.err)
			}
			got[i], etags[i] = p.r, p.r.ETag
		}
		for i := range ns {
			if !slices.Contains(want, i) {
				held(t, chs[i], fmt.Sprintf("%s: node %d", what, ns[i].id))
				stillHeld[i] = chs[i]
			}
		}
		// The held ones' configs did not move.
		for i, n := range ns {
			if !slices.Contains(want, i) {
				if r, err := c.ConfigWait(ctx, n.tok, etags[i], 0); err != nil || r.Config != nil {
					t.Fatalf("%s: node %d's config moved: %+v, %v", what, n.id, r, err)
				}
			}
		}
		return got
	}
	beat := func(n familyNode, fp, ed string) func() {
		return func() {
			hb := &api.Status{BootID: "b", Relays: []api.RelayStatus{{Name: n.cfg.Relays[0].Name, State: api.RelayRunning,
				Fingerprint: fp, Ed25519ID: ed}}}
			if err := c.Status(ctx, n.tok, hb); err != nil {
				t.Fatal(err)
			}
		}
	}
	const fp0, fp2 = "0A0A0A0A0A0A0A0A0A0A0A0A0A0A0A0A0A0A0A0A", "2B2B2B2B2B2B2B2B2B2B2B2B2B2B2B2B2B2B2B2B"
	got := round("a relay's first fingerprint", beat(ns[0], fp0, strings.Repeat("A", 43)), 0, 1)
	if !strings.Contains(got[1].Config.Relays[0].Torrc, "MyFamily $"+fp0+"\n") {
		t.Fatalf("the other member's torrc lacks the new relay:\n%s", got[1].Config.Relays[0].Torrc)
	}
	round("the same heartbeat again", beat(ns[0], fp0, strings.Repeat("A", 43)))
	round("a fingerprint in family eu", beat(ns[2], fp2, strings.Repeat("B", 43)), 2)
	round("family eu's key", func() { s.Admin(t, "family", "create", "--family", "eu") }, 2)
	round("the default family's key", func() { s.Admin(t, "family", "create") }, 0, 1)
}

// A held request keeps its token's claims, or the token itself when it
// expires before the hold ends; either way the wake finds a token that
// expired, a node whose token epoch moved, or a wait past the time its
// claims were checked for, and serves no config. Over HTTP/1.1 (parked)
// and HTTP/2 (in its handler).
func TestLongPollRecheckOnWake(t *testing.T) {
	l := newLocal(t, nil)
	ctx := context.Background()
	if err := l.st.AddPool(ctx, mustPrefix("192.0.2.0/24"), mustAddr("192.0.2.1"), time.Now()); err != nil {
		t.Fatal(err)
	}
	tr := l.client.HTTP.Transport.(*http.Transport).Clone()
	tr.TLSClientConfig = tr.TLSClientConfig.Clone()
	tr.TLSClientConfig.NextProtos = []string{"http/1.1"}
	tr.ForceAttemptHTTP2 = false
	h1 := &api.Client{BaseURL: l.url, HTTP: &http.Client{Transport: tr}}
	for _, c := range []*api.Client{h1, l.client} {
		id, _, _ := l.enroll(t)
		if _, err := c.Specs(ctx, l.token(t, id), &api.Specs{CPUs: 1, MemoryBytes: 4 << 30}); err != nil {
			t.Fatal(err)
		}
		torrc := 0
		change := func() {
			torrc++
			if err := l.st.SetNodeTorrc(ctx, id, fmt.Sprintf("ExitRelay 0\nMaxAdvertisedBandwidth %d MBytes\n", 100+torrc)); err != nil {
				t.Fatal(err)
			}
		}
		hold := func(tok string) <-chan polled {
			t.Helper()
			r, err := c.ConfigWait(ctx, tok, "", 0)
			if err != nil || r.Config == nil {
				t.Fatalf("first fetch: %+v, %v", r, err)
			}
			ch := poll(c, tok, r.ETag, time.Minute)
			for i := 0; l.api.Waiting() != 1; i++ {
				if i > 400 {
					t.Fatal("not held")
				}
				time.Sleep(10 * time.Millisecond)
			}
			held(t, ch, "nothing changed") // and the watcher has seen the earlier changes
			return ch
		}

		// A token with 10 s left, held for a minute, is verified again.
		ch := hold(issueAt(t, l.auth, l.st, id, l.clock.Now().Add(-time.Hour+10*time.Second)))
		l.clock.Add(30 * time.Second)
		change()
		if p := answered(t, ch, "expired token"); !api.IsCode(p.err, api.CodeUnauthorized) {
			t.Fatalf("held request whose token expired: %+v, %v", p.r, p.err)
		}

		// The token epoch moves (disabled and enabled again): refused.
		tok := l.token(t, id)
		ch = hold(tok)
		if err := l.st.SetNodeState(ctx, id, api.NodeDisabled); err != nil {
			t.Fatal(err)
		}
		if err := l.st.SetNodeState(ctx, id, api.NodeEnabled); err != nil {
			t.Fatal(err)
		}
		change()
		if p := answered(t, ch, "epoch moved"); !api.IsCode(p.err, api.CodeUnauthorized) && !api.IsCode(p.err, api.CodeDisabled) {
			t.Fatalf("held request of a token from an older epoch: %+v, %v", p.r, p.err)
		}
		if _, err := c.ConfigWait(ctx, tok, "", 0); !api.IsCode(err, api.CodeUnauthorized) {
			t.Fatalf("the older epoch's token afterwards: %v", err)
		}

		// Woken after its deadline: its claims were checked for the hold
		// only, so no config (a 304 without an ETag); the node's next
		// request, checked anew, gets it at once.
		tok = l.token(t, id)
		ch = hold(tok)
		l.clock.Add(2 * time.Minute)
		change()
		p := answered(t, ch, "past the deadline")
		if p.err != nil || p.r.Config != nil {
			t.Fatalf("held request woken past its deadline: %+v, %v", p.r, p.err)
		}
		if r, err := c.ConfigWait(ctx, tok, p.r.ETag, time.Minute); err != nil || r.Config == nil {
			t.Fatalf("the request after: %+v, %v", r, err)
		}
	}
}
