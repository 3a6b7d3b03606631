package httpapi_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"crypto/ed25519"
	"crypto/rand"

	"patela/configsrv/attest"
	"patela/configsrv/attest/softek"
	"patela/configsrv/httpapi"
	"patela/configsrv/internal/tortest"
	"patela/configsrv/store"
	"patela/configsrv/token"
	"patela/internal/api"
)

// clock is a settable time source.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// local is an API server built from its parts, for tests that need to
// control time, the rate limiter or the pools.
type local struct {
	api    *httpapi.Server
	st     *store.Store
	auth   *token.Authority
	clock  *clock
	client *api.Client
	url    string
}

func newLocal(t *testing.T, configure func(*httpapi.Server)) *local {
	t.Helper()
	st, err := store.Open(filepath.Join(t.TempDir(), "patela.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	// Every relay needs a ContactInfo to be served (resolve's safety rules).
	if err := st.SetGlobalTorrc(context.Background(), "ContactInfo ops@example.org\nDisableNetwork 1\n"); err != nil {
		t.Fatal(err)
	}
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	clk := &clock{t: time.Now()}
	l := &local{st: st, clock: clk, auth: token.New(key, time.Hour)}
	l.api = &httpapi.Server{Store: st, Tokens: l.auth, Trust: &attest.Trust{}, Now: clk.Now,
		Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	if configure != nil {
		configure(l.api)
	}
	srv := httptest.NewUnstartedServer(l.api.Handler())
	srv.EnableHTTP2 = true
	srv.StartTLS()
	t.Cleanup(srv.Close)
	l.url = srv.URL
	l.client = &api.Client{BaseURL: srv.URL, HTTP: srv.Client()}
	return l
}

// enroll creates an enabled node with a software EK on a local server.
func (l *local) enroll(t *testing.T) (id int64, ek *softek.EK, ak []byte) {
	t.Helper()
	ek, err := softek.New()
	if err != nil {
		t.Fatal(err)
	}
	ak, err = softek.AKPublic()
	if err != nil {
		t.Fatal(err)
	}
	parsed, err := attest.NewEK(ek.Public)
	if err != nil {
		t.Fatal(err)
	}
	n, _, err := l.st.AddPending(context.Background(), parsed.ID, ek.Public, time.Now(), store.PendingLimits{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.st.SetNodeState(context.Background(), n.ID, api.NodeEnabled); err != nil {
		t.Fatal(err)
	}
	return n.ID, ek, ak
}

// token issues a token for node id naming its EK identity and epoch as
// they are now, as a completed attestation would.
func (l *local) token(t *testing.T, id int64) string {
	t.Helper()
	return issueAt(t, l.auth, l.st, id, l.clock.Now())
}

func issueAt(t *testing.T, auth *token.Authority, st *store.Store, id int64, at time.Time) string {
	t.Helper()
	au, err := st.NodeAuth(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	tok, _, err := auth.Issue(token.Claims{Node: id, EK: au.EK, Epoch: au.Epoch}, at)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// raw sends a request and returns the status, the error code (if any) and
// the response.
func raw(t *testing.T, c *api.Client, method, path, tok string, body []byte) (int, api.ErrorCode, *http.Response) {
	t.Helper()
	var r io.Reader
	if body != nil {
		r = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, c.BaseURL+path, r)
	if err != nil {
		t.Fatal(err)
	}
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.HTTP.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	data, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var e api.Error
	json.Unmarshal(data, &e)
	return resp.StatusCode, e.Code, resp
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func countRows(t *testing.T, st *store.Store, table string) int {
	t.Helper()
	var n int
	if err := st.DB().QueryRow(`SELECT count(*) FROM ` + table).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func verifyTorrc(t *testing.T, text string) { t.Helper(); tortest.Verify(t, text) }

func mustPrefix(s string) netip.Prefix { return netip.MustParsePrefix(s) }
func mustAddr(s string) netip.Addr     { return netip.MustParseAddr(s) }
