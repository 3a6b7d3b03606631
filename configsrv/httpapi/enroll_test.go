package httpapi_test

import (
	"context"
	"strconv"
	"testing"
	"time"

	"patela/configsrv/attest/softek"
	"patela/configsrv/httpapi"
	"patela/configsrv/store"
	"patela/internal/api"
)

func attestNew(t *testing.T, l *local) (int, api.ErrorCode, string) {
	t.Helper()
	ek, ak, err := softek.NewKeys()
	if err != nil {
		t.Fatal(err)
	}
	status, code, resp := raw(t, l.client, "POST", api.PathAttest, "", mustJSON(t, api.AttestRequest{EKPublic: ek.Public, AKPublic: ak}))
	return status, code, resp.Header.Get("Retry-After")
}

// First contacts are bounded twice: per address (a limit of its own, not
// the attestation rate) and in all (the pending cap). A refused first
// contact is 429 and writes nothing; known nodes attest as before.
func TestPendingBounds(t *testing.T) {
	l := newLocal(t, func(s *httpapi.Server) {
		s.Enroll = httpapi.NewLimiter(1.0/600, 3)
		s.Pending = store.PendingLimits{Max: 5, Expiry: 7 * 24 * time.Hour}
	})
	ek, ak, _ := softek.NewKeys()
	known := mustJSON(t, api.AttestRequest{EKPublic: ek.Public, AKPublic: ak})
	if status, code, _ := raw(t, l.client, "POST", api.PathAttest, "", known); status != 403 || code != api.CodePending {
		t.Fatalf("first contact: %d %s", status, code)
	}
	for i := 0; i < 2; i++ {
		if status, code, _ := attestNew(t, l); code != api.CodePending {
			t.Fatalf("new node %d: %d %s", i, status, code)
		}
	}
	// The address's burst of 3 is spent.
	status, code, retry := attestNew(t, l)
	if status != 429 || code != api.CodeRateLimited || retry == "" {
		t.Fatalf("4th new node from one address: %d %s Retry-After %q", status, code, retry)
	}
	if n := countRows(t, l.st, "nodes"); n != 3 {
		t.Fatalf("%d nodes, want 3", n)
	}
	// Known EKs are not creations: the limit does not apply.
	for i := 0; i < 5; i++ {
		if status, code, _ := raw(t, l.client, "POST", api.PathAttest, "", known); code != api.CodePending {
			t.Fatalf("known EK: %d %s", status, code)
		}
	}
	// An hour later the address may create more, until the cap of 5.
	l.clock.Add(time.Hour)
	for i := 0; i < 2; i++ {
		if _, code, _ := attestNew(t, l); code != api.CodePending {
			t.Fatalf("node %d after an hour: %s", i, code)
		}
	}
	status, code, retry = attestNew(t, l)
	if status != 429 || code != api.CodePendingFull || retry != strconv.Itoa(int(httpapi.PendingRetry.Seconds())) {
		t.Fatalf("over the cap: %d %s Retry-After %q", status, code, retry)
	}
	if n := countRows(t, l.st, "nodes"); n != 5 {
		t.Fatalf("%d nodes, want the cap of 5", n)
	}
	// Enabling one frees a place in the cap (the refused attempt did not
	// spend the address's third creation).
	n, _ := l.st.Nodes(context.Background())
	l.st.SetNodeState(context.Background(), n[0].ID, api.NodeEnabled)
	if _, code, _ := attestNew(t, l); code != api.CodePending {
		t.Fatalf("after an enable: %s", code)
	}
}

// Refused requests are counted one by one and audited in aggregate: one
// row per address and kind, however many.
func TestRefusalsAuditedInAggregate(t *testing.T) {
	l := newLocal(t, func(s *httpapi.Server) { s.Limiter = httpapi.NewLimiter(1, 5) })
	ek, ak, _ := softek.NewKeys()
	body := mustJSON(t, api.AttestRequest{EKPublic: ek.Public, AKPublic: ak})
	before := countRows(t, l.st, "audit")
	for i := 0; i < 50; i++ {
		raw(t, l.client, "POST", api.PathAttest, "", body)
	}
	if n := countRows(t, l.st, "audit"); n != before+1 {
		t.Errorf("%d audit rows written during the flood, want 1 (the first contact)", n-before)
	}
	l.api.CloseAudit()
	got := l.api.Refusals()
	if got["attest.pending"] != 5 || got["attest.rate_limited"] != 45 {
		t.Errorf("refusals counted: %v", got)
	}
	rows, _ := l.st.AuditLog(context.Background(), 10)
	var kinds []string
	for _, r := range rows {
		kinds = append(kinds, r.Action+" "+r.Actor+" "+r.Details)
	}
	if n := countRows(t, l.st, "audit"); n != before+3 {
		t.Errorf("audit after the flush: %v", kinds)
	}
	if n := countRows(t, l.st, "audit WHERE action = 'attest.rate_limited' AND details LIKE '45 refused since %'"); n != 1 {
		t.Errorf("no row saying 45 were rate limited: %v", kinds)
	}
}

// Each node has its own request budget on the node endpoints: one node
// spending it does not slow another.
func TestNodeRateLimit(t *testing.T) {
	l := newLocal(t, func(s *httpapi.Server) { s.NodeLimiter = httpapi.NewLimiter(1, 10) })
	a, _, _ := l.enroll(t)
	b, _, _ := l.enroll(t)
	ta, tb := l.token(t, a), l.token(t, b)
	other := l.token(t, a) // a's second token shares a's budget
	if other == ta {
		l.clock.Add(time.Second)
		other = l.token(t, a)
	}
	ok := 0
	for i := 0; i < 30; i++ {
		if status, _, _ := raw(t, l.client, "POST", api.PathStatus, ta, mustJSON(t, api.Status{BootID: "b"})); status == 204 {
			ok++
		}
	}
	if ok > 11 {
		t.Errorf("%d heartbeats of 30 accepted from one node, want at most the burst", ok)
	}
	status, code, resp := raw(t, l.client, "GET", api.PathConfig, other, nil)
	if status != 429 || code != api.CodeRateLimited || resp.Header.Get("Retry-After") == "" {
		t.Errorf("the node's other token: %d %s", status, code)
	}
	if status, _, _ := raw(t, l.client, "GET", api.PathConfig, tb, nil); status != 200 {
		t.Errorf("another node: %d", status)
	}
	l.clock.Add(2 * time.Second)
	if status, _, _ := raw(t, l.client, "GET", api.PathConfig, ta, nil); status != 200 {
		t.Errorf("after a refill: %d", status)
	}
}
