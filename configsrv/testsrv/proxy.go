package testsrv

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"sync"
	"testing"

	"patela/internal/api"
)

// Recorder keeps the body of every request that passes through a Proxy.
type Recorder struct {
	mu     sync.Mutex
	all    [][]byte
	bodies map[string][][]byte // "METHOD /path" → bodies, oldest first
}

// Bodies returns the bodies of the requests to key ("POST /v1/attest"),
// oldest first.
func (r *Recorder) Bodies(key string) [][]byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([][]byte(nil), r.bodies[key]...)
}

// Count is how many requests to key ("PUT /v1/node/keys") passed.
func (r *Recorder) Count(key string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.bodies[key])
}

// All returns every request body, oldest first.
func (r *Recorder) All() [][]byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([][]byte(nil), r.all...)
}

// Proxy returns an API client whose requests pass through a recording
// HTTPS reverse proxy (with its own certificate) on their way to s, until
// the test ends. intercept, if set, sees each request once it is recorded
// and may answer it itself (returning true) instead of forwarding it.
func (s *Server) Proxy(t testing.TB, intercept func(w http.ResponseWriter, r *http.Request) bool) (*api.Client, *Recorder) {
	t.Helper()
	target, err := url.Parse(s.URL)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(s.CA)
	rp := httputil.NewSingleHostReverseProxy(target)
	rp.Transport = &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}
	rec := &Recorder{bodies: map[string][][]byte{}}
	ts := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		rec.mu.Lock()
		k := r.Method + " " + r.URL.Path
		rec.bodies[k] = append(rec.bodies[k], body)
		rec.all = append(rec.all, body)
		rec.mu.Unlock()
		if intercept != nil && intercept(w, r) {
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		rp.ServeHTTP(w, r)
	}))
	ts.StartTLS()
	t.Cleanup(ts.Close)
	c, err := api.NewClient(ts.URL, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ts.Certificate().Raw}))
	if err != nil {
		t.Fatal(err)
	}
	return c, rec
}
