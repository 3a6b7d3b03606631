package httpapi_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http/httptest"
	"sync"
	"testing"

	"patela/configsrv/attest"
	"patela/configsrv/attest/softek"
	"patela/configsrv/httpapi"
	"patela/internal/api"
)

// nodeRow is what a completion records of node id (and the audit rows of
// successful completions), to check that a refused one recorded nothing.
func nodeRow(t *testing.T, l *local, id int64) string {
	t.Helper()
	var attested, seen any
	l.st.DB().QueryRow(`SELECT attested_at, last_seen FROM nodes WHERE id = ?`, id).Scan(&attested, &seen)
	return fmt.Sprint(attested, seen, countRows(t, l.st, "audit WHERE action = 'attest.ok'"), countRows(t, l.st, "attestations"))
}

// newLocalOn is a second server over l's database, keys and clock: l's
// server restarted.
func newLocalOn(t *testing.T, l *local) *local {
	t.Helper()
	r := *l
	r.api = &httpapi.Server{Store: l.st, Tokens: l.auth, Trust: &attest.Trust{}, Now: l.clock.Now,
		Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	srv := httptest.NewUnstartedServer(r.api.Handler())
	srv.StartTLS()
	t.Cleanup(srv.Close)
	r.url = srv.URL
	r.client = &api.Client{BaseURL: srv.URL, HTTP: srv.Client()}
	return &r
}

// attestFor runs POST /v1/attest for the node of ek and activates the
// credential.
func attestFor(t *testing.T, l *local, ek *softek.EK, ak []byte) (*api.AttestResponse, []byte) {
	t.Helper()
	_, akName, _ := attest.ParseAK(ak)
	ch, err := l.client.Attest(context.Background(), &api.AttestRequest{EKPublic: ek.Public, AKPublic: ak})
	if err != nil {
		t.Fatal(err)
	}
	secret, err := ek.Activate(ch.CredentialBlob, ch.EncryptedSecret, akName)
	if err != nil {
		t.Fatal(err)
	}
	return ch, secret
}

// Of concurrent completions of one challenge, right and wrong secrets
// mixed, exactly one is answered as its secret deserves; every other is
// 410 and records nothing.
func TestChallengeConcurrentCompletions(t *testing.T) {
	l := newLocal(t, nil)
	ctx := context.Background()
	_, ek, ak := l.enroll(t)
	oks := 0
	for range 4 {
		ch, secret := attestFor(t, l, ek, ak)
		bad := append([]byte(nil), secret...)
		bad[0] ^= 1
		var mu sync.Mutex
		answers := map[string]int{}
		var wg sync.WaitGroup
		for i := range 16 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				s := secret
				if i%2 == 0 {
					s = bad
				}
				_, err := l.client.Complete(ctx, &api.CompleteRequest{ChallengeID: ch.ChallengeID, Secret: s})
				k := "ok"
				if e, ok := api.AsError(err); ok {
					k = string(e.Code)
				} else if err != nil {
					k = err.Error()
				}
				mu.Lock()
				answers[k]++
				mu.Unlock()
			}()
		}
		wg.Wait()
		if answers[string(api.CodeChallengeExpired)] != 15 || answers["ok"]+answers[string(api.CodeBadSecret)] != 1 {
			t.Fatalf("answers: %v", answers)
		}
		oks += answers["ok"]
	}
	if n := countRows(t, l.st, "audit WHERE action = 'attest.ok'"); n != oks {
		t.Fatalf("%d attestations recorded for %d tokens", n, oks)
	}
	if l.api.PendingChallenges() != 0 {
		t.Fatalf("%d challenges left", l.api.PendingChallenges())
	}
}

// A full table refuses new attests with 429 rate_limited and Retry-After,
// and keeps every pending challenge: whoever knows a node's EK public (it
// is public) and floods attests with it cancels no challenge of the node.
func TestChallengeTableFull(t *testing.T) {
	l := newLocal(t, func(s *httpapi.Server) { s.MaxChallenges = 3 })
	ctx := context.Background()
	id, ek, ak := l.enroll(t)
	ch, secret := attestFor(t, l, ek, ak) // the node's own
	// The flood: the node's EK, the attacker's AKs.
	for i := 0; ; i++ {
		ak2, _ := softek.AKPublic()
		_, err := l.client.Attest(ctx, &api.AttestRequest{EKPublic: ek.Public, AKPublic: ak2})
		if err == nil {
			continue
		}
		e, ok := api.AsError(err)
		if !ok || e.Status != 429 || e.Code != api.CodeRateLimited || e.RetryAfter <= 0 || e.RetryAfter > httpapi.ChallengeTTL {
			t.Fatalf("attest %d on a full table: %v (%+v)", i, err, e)
		}
		if i != 2 {
			t.Fatalf("refused after %d challenges, want 2 besides the node's", i)
		}
		break
	}
	before := nodeRow(t, l, id)
	if after := nodeRow(t, l, id); after != before || l.api.PendingChallenges() != 3 {
		t.Fatalf("refusal changed %s -> %s, %d pending", before, after, l.api.PendingChallenges())
	}
	// The node's challenge still completes; its place serves the next.
	if _, err := l.client.Complete(ctx, &api.CompleteRequest{ChallengeID: ch.ChallengeID, Secret: secret}); err != nil {
		t.Fatalf("the node's pending challenge after the flood: %v", err)
	}
	ch, secret = attestFor(t, l, ek, ak)
	if _, err := l.client.Complete(ctx, &api.CompleteRequest{ChallengeID: ch.ChallengeID, Secret: secret}); err != nil {
		t.Fatal(err)
	}
	// The flood's challenges expire and are swept (audited as such) at the
	// next attest.
	l.clock.Add(httpapi.ChallengeTTL)
	ch, secret = attestFor(t, l, ek, ak)
	if l.api.PendingChallenges() != 1 {
		t.Fatalf("%d pending after the sweep", l.api.PendingChallenges())
	}
	if n := countRows(t, l.st, "audit WHERE action = 'attest.challenge' AND details LIKE '%expired unanswered'"); n != 2 {
		t.Fatalf("%d unanswered challenges audited, want 2", n)
	}
	// The last one is pending when the server stops: audited then.
	l.api.CloseAudit()
	if n := countRows(t, l.st, "audit WHERE action = 'attest.challenge' AND details LIKE '%unanswered at shutdown'"); n != 1 {
		t.Fatalf("%d challenges audited at shutdown, want 1", n)
	}
	_ = secret
	if n := countRows(t, l.st, "audit WHERE action = 'attest.challenges_full'"); n != 1 {
		t.Fatalf("%d attest.challenges_full rows, want 1", n)
	}
}

// A node removed, or whose EK identity changed in the database, while its
// challenge is pending cannot complete it: 410 challenge_expired, as when
// the challenge was a row that went with the node, and nothing recorded.
// A challenge does not survive a restart of the server either.
func TestChallengeNodeGone(t *testing.T) {
	l := newLocal(t, nil)
	ctx := context.Background()
	id, ek, ak := l.enroll(t)

	ch, secret := attestFor(t, l, ek, ak)
	if _, err := l.st.DB().Exec(`UPDATE nodes SET ek_hash = zeroblob(32) WHERE id = ?`, id); err != nil {
		t.Fatal(err)
	}
	before := nodeRow(t, l, id)
	if _, err := l.client.Complete(ctx, &api.CompleteRequest{ChallengeID: ch.ChallengeID, Secret: secret}); !api.IsCode(err, api.CodeChallengeExpired) {
		t.Fatalf("re-keyed node: %v", err)
	}
	if after := nodeRow(t, l, id); after != before {
		t.Fatalf("re-keyed node's completion changed %s -> %s", before, after)
	}

	id, ek, ak = l.enroll(t)
	ch, secret = attestFor(t, l, ek, ak)
	if err := l.st.RemoveNode(ctx, id); err != nil {
		t.Fatal(err)
	}
	before = nodeRow(t, l, id)
	if _, err := l.client.Complete(ctx, &api.CompleteRequest{ChallengeID: ch.ChallengeID, Secret: secret}); !api.IsCode(err, api.CodeChallengeExpired) {
		t.Fatalf("removed node: %v", err)
	}
	if after := nodeRow(t, l, id); after != before || countRows(t, l.st, "nodes WHERE id = "+fmt.Sprint(id)) != 0 {
		t.Fatalf("removed node's completion changed %s -> %s", before, after)
	}
	if n := countRows(t, l.st, "audit WHERE action = 'attest.challenge' AND details LIKE '%node removed'"); n != 2 {
		t.Fatalf("%d challenges audited as of a removed node, want 2", n)
	}

	// Restart: a new server over the same database knows no challenge.
	id, ek, ak = l.enroll(t)
	ch, secret = attestFor(t, l, ek, ak)
	l.api.CloseAudit()
	restarted := newLocalOn(t, l)
	before = nodeRow(t, l, id)
	if _, err := restarted.client.Complete(ctx, &api.CompleteRequest{ChallengeID: ch.ChallengeID, Secret: secret}); !api.IsCode(err, api.CodeChallengeExpired) {
		t.Fatalf("challenge after a restart: %v", err)
	}
	if after := nodeRow(t, l, id); after != before {
		t.Fatalf("completion after a restart changed %s -> %s", before, after)
	}
	ch, secret = attestFor(t, restarted, ek, ak)
	if _, err := restarted.client.Complete(ctx, &api.CompleteRequest{ChallengeID: ch.ChallengeID, Secret: secret}); err != nil {
		t.Fatalf("attesting again after a restart: %v", err)
	}
}
