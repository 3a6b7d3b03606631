package httpapi_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"patela/configsrv/attest"
	"patela/configsrv/attest/softek"
	"patela/configsrv/httpapi"
	"patela/configsrv/quote/quotetest"
	"patela/configsrv/store"
	"patela/internal/api"
	"patela/internal/pcr"
	"patela/internal/release"
	"patela/internal/testutil"
)

// quoting is a node with a software EK and a software AK that quotes.
type quoting struct {
	id int64
	ek *softek.EK
	ak *quotetest.AK
}

func (l *local) enrollQuoting(t *testing.T) *quoting {
	t.Helper()
	id, ek, _ := l.enroll(t)
	ak, err := quotetest.NewAK()
	if err != nil {
		t.Fatal(err)
	}
	return &quoting{id: id, ek: ek, ak: ak}
}

// challenge runs POST /v1/attest and activates the credential.
func (q *quoting) challenge(t *testing.T, l *local) (*api.AttestResponse, []byte) {
	t.Helper()
	ch, err := l.client.Attest(context.Background(), &api.AttestRequest{EKPublic: q.ek.Public, AKPublic: q.ak.Public})
	if err != nil {
		t.Fatal(err)
	}
	if len(ch.Nonce) != api.NonceSize {
		t.Fatalf("challenge nonce of %d bytes", len(ch.Nonce))
	}
	_, name, err := attest.ParseAK(q.ak.Public)
	if err != nil {
		t.Fatal(err)
	}
	secret, err := q.ek.Activate(ch.CredentialBlob, ch.EncryptedSecret, name)
	if err != nil {
		t.Fatal(err)
	}
	return ch, secret
}

// boot is the quote of a boot of image seed with nonce.
func (q *quoting) boot(t *testing.T, seed string, nonce []byte) *api.Quote {
	t.Helper()
	l := quotetest.Boot(seed)
	qu, err := q.ak.Quote(nonce, l.AllPCRs(), l.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	return qu
}

// addRelease registers an approved UKI release expecting a boot of seed.
func addRelease(t *testing.T, st *store.Store, name, seed string) {
	t.Helper()
	b := quotetest.Boot(seed)
	r, err := release.New(name, release.KindUKI, map[int]pcr.Value{4: b.PCRs[4], 11: b.PCRs[11], 12: {}},
		release.UKIPolicyPCRs, map[string]string{"uki": strings.Repeat("cd", 32)})
	if err != nil {
		t.Fatal(err)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err := r.Approve(key); err != nil {
		t.Fatal(err)
	}
	if err := st.AddRelease(context.Background(), r, time.Now()); err != nil {
		t.Fatal(err)
	}
}

// evidenceRows is what a refusal must leave alone: the node rows (last
// attestation time, AK) and the recorded boot evidence.
func evidenceRows(t *testing.T, st *store.Store) string {
	t.Helper()
	var b strings.Builder
	for _, q := range []string{
		`SELECT id, coalesce(attested_at, 0), hex(coalesce(ak_name, x'')), last_seen FROM nodes ORDER BY id`,
		`SELECT node_id, status, release, pcr_digest, event_log, coalesce(reset_count, -1), at FROM attestations ORDER BY node_id`,
	} {
		rows, err := st.DB().Query(q)
		if err != nil {
			t.Fatal(err)
		}
		cols, _ := rows.Columns()
		for rows.Next() {
			vals := make([]any, len(cols))
			ptrs := make([]any, len(cols))
			for i := range vals {
				ptrs[i] = &vals[i]
			}
			rows.Scan(ptrs...)
			fmt.Fprintln(&b, vals...)
		}
		rows.Close()
	}
	return b.String()
}

func complete(t *testing.T, l *local, ch *api.AttestResponse, secret []byte, q *api.Quote) (int, api.ErrorCode) {
	t.Helper()
	st, code, _ := raw(t, l.client, http.MethodPost, api.PathAttestComplete, "",
		mustJSON(t, &api.CompleteRequest{ChallengeID: ch.ChallengeID, Secret: secret, Quote: q}))
	return st, code
}

// TestQuoteInHandshake: a node's quote is checked and what it booted
// recorded; forged quotes are refused with nothing changed.
func TestQuoteInHandshake(t *testing.T) {
	l := newLocal(t, nil)
	ctx := context.Background()
	addRelease(t, l.st, "rel-A", "A")
	n := l.enrollQuoting(t)
	att := func() *store.Attestation {
		a, err := l.st.Attestation(ctx, n.id)
		if err != nil {
			t.Fatal(err)
		}
		// What /metrics and `configsrv status` label the node with.
		want := a.Summary()
		if want == store.AttestUnattested {
			want = ""
		}
		if nd, err := l.st.Node(ctx, n.id); err != nil || nd.AttestedRelease() != want {
			t.Errorf("node's attested release %q, want %q (%v)", nd.AttestedRelease(), want, err)
		}
		return a
	}

	ch, secret := n.challenge(t, l)
	if st, code := complete(t, l, ch, secret, n.boot(t, "A", ch.Nonce)); st != 200 {
		t.Fatalf("quote of release A: %d %s", st, code)
	}
	if a := att(); a.Summary() != "rel-A" || a.EventLog != "replayed" || len(a.PCRs) != len(api.QuotePCRs) {
		t.Fatalf("after a boot of A: %+v", a)
	}
	earlier := n.boot(t, "A", ch.Nonce) // the nonce of a spent challenge

	other, _ := quotetest.NewAK()
	for _, c := range []struct {
		name  string
		quote func(nonce []byte) *api.Quote
	}{
		{"replayed quote (an earlier challenge's nonce)", func([]byte) *api.Quote { return earlier }},
		{"quote by another AK", func(no []byte) *api.Quote {
			q, _ := other.Quote(no, quotetest.Boot("A").AllPCRs(), nil)
			return q
		}},
		{"PCRs not the quoted ones", func(no []byte) *api.Quote {
			q := n.boot(t, "C", no)
			q.PCRs = quotetest.Boot("A").AllPCRs()
			return q
		}},
	} {
		before := evidenceRows(t, l.st)
		ch, secret := n.challenge(t, l)
		st, code := complete(t, l, ch, secret, c.quote(ch.Nonce))
		if st != http.StatusUnauthorized || code != api.CodeBadQuote {
			t.Errorf("%s: %d %s, want 401 bad_quote", c.name, st, code)
		}
		if after := evidenceRows(t, l.st); after != before {
			t.Errorf("%s changed the database:\n%s\nbecame\n%s", c.name, before, after)
		}
		// The challenge is spent either way.
		if st, code := complete(t, l, ch, secret, n.boot(t, "A", ch.Nonce)); st != http.StatusGone {
			t.Errorf("%s: the challenge answered again: %d %s", c.name, st, code)
		}
	}

	// A tampered log is flagged; the quote is the evidence.
	ch, secret = n.challenge(t, l)
	q := n.boot(t, "A", ch.Nonce)
	q.EventLog = quotetest.Boot("evil").Bytes()
	if st, code := complete(t, l, ch, secret, q); st != 200 {
		t.Fatalf("tampered log: %d %s", st, code)
	}
	if a := att(); a.Summary() != "rel-A" || a.EventLog != "failed" || !strings.Contains(a.LogDetail, "do not replay") {
		t.Errorf("tampered log: %+v", a)
	}
	// An image no release names, then an agent that sends no quote.
	ch, secret = n.challenge(t, l)
	if st, _ := complete(t, l, ch, secret, n.boot(t, "C", ch.Nonce)); st != 200 {
		t.Fatal(st)
	}
	if a := att(); a.Status != store.AttestUnknown || a.PCRDigest == "" || a.PCRs[4] != quotetest.Boot("C").PCRs[4] {
		t.Errorf("unknown image: %+v", a)
	}
	ch, secret = n.challenge(t, l)
	if st, _ := complete(t, l, ch, secret, nil); st != 200 {
		t.Fatal(st)
	}
	if a := att(); a.Status != store.AttestUnattested || len(a.PCRs) != 0 {
		t.Errorf("no quote: %+v", a)
	}
	log, err := l.st.AuditLog(ctx, 100)
	if err != nil {
		t.Fatal(err)
	}
	var changes []string
	for i := len(log) - 1; i >= 0; i-- {
		if log[i].Action == "attest.release" {
			changes = append(changes, strings.Fields(log[i].Details)[0]+">"+strings.Fields(log[i].Details)[2])
		}
	}
	if got := strings.Join(changes, " "); got != "unattested>rel-A rel-A>unknown unknown>unattested" {
		t.Errorf("audited changes %q", got)
	}
}

// TestRequireRelease: with --require-release, nodes whose boot is no
// active release get no token (403 unknown_release), their evidence is
// recorded and the server log names the PCR digest.
func TestRequireRelease(t *testing.T) {
	var logs testutil.SyncBuffer
	l := newLocal(t, func(s *httpapi.Server) {
		s.RequireRelease = true
		s.Log = slog.New(slog.NewTextHandler(&logs, nil))
	})
	ctx := context.Background()
	addRelease(t, l.st, "rel-A", "A")
	n := l.enrollQuoting(t)
	attestedAt := func() string {
		var at any
		l.st.DB().QueryRow(`SELECT attested_at FROM nodes WHERE id = ?`, n.id).Scan(&at)
		return fmt.Sprint(at)
	}
	refused := func(name string, q func(nonce []byte) *api.Quote, why string) {
		t.Helper()
		before := attestedAt()
		ch, secret := n.challenge(t, l)
		st, code := complete(t, l, ch, secret, q(ch.Nonce))
		if st != http.StatusForbidden || code != api.CodeUnknownRelease {
			t.Errorf("%s: %d %s, want 403 unknown_release", name, st, code)
		}
		if attestedAt() != before {
			t.Errorf("%s: the node's attestation time moved", name)
		}
		a, err := l.st.Attestation(ctx, n.id)
		if err != nil || !strings.Contains(a.Summary(), why) {
			t.Errorf("%s: evidence %+v, %v", name, a, err)
		}
		if a.PCRDigest != "" && !strings.Contains(logs.String(), "pcr_digest="+a.PCRDigest) {
			t.Errorf("%s: the server log does not name the PCR digest %s:\n%s", name, a.PCRDigest, logs.String())
		}
	}
	refused("unknown image", func(no []byte) *api.Quote { return n.boot(t, "C", no) }, "unknown")
	refused("no quote", func([]byte) *api.Quote { return nil }, "unattested")

	ch, secret := n.challenge(t, l)
	if st, code := complete(t, l, ch, secret, n.boot(t, "A", ch.Nonce)); st != 200 {
		t.Fatalf("release A: %d %s", st, code)
	}
	if err := l.st.RetireRelease(ctx, "rel-A", time.Now()); err != nil {
		t.Fatal(err)
	}
	refused("retired release", func(no []byte) *api.Quote { return n.boot(t, "A", no) }, "rel-A")
}

// TestQuoteBadInput: a quote that is not one (fields missing, a PCR index
// no TPM has, an event log over the limit, a body over the endpoint's
// limit) is 400 bad_request with nothing written and the challenge left
// for the node's retry; a quote whose signed bytes are garbage is 401
// bad_quote with nothing written.
func TestQuoteBadInput(t *testing.T) {
	l := newLocal(t, nil)
	addRelease(t, l.st, "rel-A", "A")
	n := l.enrollQuoting(t)
	ch, secret := n.challenge(t, l)
	good := func() *api.Quote { return n.boot(t, "A", ch.Nonce) }
	challenges := l.api.PendingChallenges
	for _, c := range []struct {
		name string
		edit func(q *api.Quote)
		want string
	}{
		{"no signature", func(q *api.Quote) { q.Signature = nil }, "required"},
		{"no quoted bytes", func(q *api.Quote) { q.Quoted = nil }, "required"},
		{"no PCRs", func(q *api.Quote) { q.PCRs = nil }, "required"},
		{"PCR 24", func(q *api.Quote) { q.PCRs[24] = q.PCRs[0] }, "not a PCR index"},
		{"PCR -1", func(q *api.Quote) { q.PCRs[-1] = q.PCRs[0] }, "not a PCR index"},
		{"event log over 256 KiB", func(q *api.Quote) { q.EventLog = make([]byte, api.MaxEventLog+1) }, "event_log is larger"},
		{"body over the limit", func(q *api.Quote) { q.EventLog = make([]byte, api.MaxCompleteBody) }, "body is larger"},
	} {
		before, k := evidenceRows(t, l.st), challenges()
		q := good()
		c.edit(q)
		_, err := l.client.Complete(context.Background(), &api.CompleteRequest{ChallengeID: ch.ChallengeID, Secret: secret, Quote: q})
		if !api.IsCode(err, api.CodeBadRequest) || !strings.Contains(fmt.Sprint(err), c.want) {
			t.Errorf("%s: %v, want 400 bad_request %q", c.name, err, c.want)
		}
		if after := evidenceRows(t, l.st); after != before || challenges() != k {
			t.Errorf("%s changed the database:\n%s\nbecame\n%s (challenges %d -> %d)", c.name, before, after, k, challenges())
		}
	}
	// Signed bytes that are no TPMS_ATTEST: refused as a forgery.
	before := evidenceRows(t, l.st)
	q := good()
	q.Quoted = []byte("not a TPMS_ATTEST")
	if st, code := complete(t, l, ch, secret, q); st != http.StatusUnauthorized || code != api.CodeBadQuote {
		t.Errorf("garbage quoted bytes: %d %s, want 401 bad_quote", st, code)
	}
	if after := evidenceRows(t, l.st); after != before {
		t.Errorf("garbage quoted bytes changed the database:\n%s\nbecame\n%s", before, after)
	}
	// The node's retry with a real quote, on a new challenge, works.
	ch, secret = n.challenge(t, l)
	if st, code := complete(t, l, ch, secret, n.boot(t, "A", ch.Nonce)); st != 200 {
		t.Fatalf("a real quote after the refusals: %d %s", st, code)
	}
}

// TestRolloutWakesLongPoll: a node holding a long-polled config request
// is answered as soon as a rollout asks it to reboot, and again when the
// request is withdrawn (rollout stop): the request is part of its config.
func TestRolloutWakesLongPoll(t *testing.T) {
	l := newLocal(t, nil)
	ctx := context.Background()
	addRelease(t, l.st, "rel-A", "A")
	addRelease(t, l.st, "rel-B", "B")
	n := l.enrollQuoting(t)
	ch, secret := n.challenge(t, l)
	done, err := l.client.Complete(ctx, &api.CompleteRequest{ChallengeID: ch.ChallengeID, Secret: secret, Quote: n.boot(t, "A", ch.Nonce)})
	if err != nil {
		t.Fatal(err)
	}
	tok := done.Token
	if err := l.client.Status(ctx, tok, &api.Status{BootID: "boot-1", Relays: []api.RelayStatus{}}); err != nil {
		t.Fatal(err)
	}
	r, err := l.client.ConfigWait(ctx, tok, "", 0)
	if err != nil || r.Config.Reboot != nil {
		t.Fatalf("config before the rollout: %+v %v", r, err)
	}
	waitFor := func(what string) *api.ConfigResult {
		t.Helper()
		p := poll(l.client, tok, r.ETag, time.Minute)
		for i := 0; l.api.Waiting() != 1; i++ {
			if i > 400 {
				t.Fatalf("%s: not held", what)
			}
			time.Sleep(10 * time.Millisecond)
		}
		return p2r(t, answered(t, p, what), what)
	}
	go func() {
		for l.api.Waiting() != 1 {
			time.Sleep(10 * time.Millisecond)
		}
		if _, err := l.st.StartRollout(ctx, "rel-B", 1, time.Now()); err != nil {
			t.Error(err)
		}
		if _, err := l.st.StepRollout(ctx, time.Now()); err != nil {
			t.Error(err)
		}
	}()
	got := waitFor("a rollout's turn")
	if rb := got.Config.Reboot; rb == nil || rb.BootID != "boot-1" || rb.Release != "rel-B" {
		t.Fatalf("the woken config's reboot request: %+v", rb)
	}
	r = got
	go func() {
		for l.api.Waiting() != 1 {
			time.Sleep(10 * time.Millisecond)
		}
		if _, err := l.st.StopRollout(ctx, time.Now()); err != nil {
			t.Error(err)
		}
	}()
	if got = waitFor("rollout stop"); got.Config.Reboot != nil {
		t.Fatalf("after rollout stop the config still asks for a reboot: %+v", got.Config.Reboot)
	}
}

func p2r(t *testing.T, p polled, what string) *api.ConfigResult {
	t.Helper()
	if p.err != nil || p.r == nil || p.r.Config == nil {
		t.Fatalf("%s: %+v %v", what, p.r, p.err)
	}
	return p.r
}
