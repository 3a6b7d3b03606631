package attest

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"sync"
	"testing"

	"github.com/google/go-tpm/tpm2"

	srvattest "patela/configsrv/attest"
	"patela/configsrv/store"
	"patela/configsrv/testsrv"
	"patela/init/tpmkeys"
	"patela/internal/api"
	"patela/internal/swtpmtest"
	"patela/internal/testutil"
)

// recordAttest returns a client whose POST /v1/attest bodies are kept.
func recordAttest(t *testing.T, srv *testsrv.Server) (*api.Client, func() [][]byte) {
	return proxy(t, srv, nil)
}

// proxy returns a client whose requests pass through a recorder on their
// way to srv; intercept, if set, may answer a request itself.
func proxy(t *testing.T, srv *testsrv.Server, intercept func(w http.ResponseWriter, r *http.Request) bool) (*api.Client, func() [][]byte) {
	target, _ := url.Parse(srv.URL)
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(srv.CA)
	rp := httputil.NewSingleHostReverseProxy(target)
	rp.Transport = &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}
	var mu sync.Mutex
	var bodies [][]byte
	ts := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if r.URL.Path == api.PathAttest {
			mu.Lock()
			bodies = append(bodies, body)
			mu.Unlock()
		}
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
	return c, func() [][]byte {
		mu.Lock()
		defer mu.Unlock()
		return bodies
	}
}

// TestEKCertificateSent: on a TPM whose manufacturer certified only an RSA
// EK (swtpm_setup), the agent picks that EK and sends its certificate, and
// the config server's own certificate check accepts them.
func TestEKCertificateSent(t *testing.T) {
	state, caDir := swtpmtest.Manufacture(t)
	m := &machine{t: t, state: state}
	m.boot()
	srv := testsrv.Start(t)
	c, bodies := recordAttest(t, srv)

	var log testutil.SyncBuffer
	s, err := NewSession(m.Cnt, c, nil, fast)
	if err != nil {
		t.Fatal(err)
	}
	if s.o.alg != tpm2.TPMAlgRSA || len(s.ekCert) == 0 {
		t.Fatalf("EK %v with a %d-byte certificate; want the certified RSA EK", s.o.alg, len(s.ekCert))
	}
	enrollSession(t, s, srv, &log)

	got := bodies()
	if len(got) == 0 {
		t.Fatal("no attest request recorded")
	}
	var req api.AttestRequest
	if err := json.Unmarshal(got[len(got)-1], &req); err != nil {
		t.Fatal(err)
	}
	if len(req.EKCertificate) == 0 {
		t.Fatal("the EK certificate was not sent")
	}
	ek, err := tpm2.Unmarshal[tpm2.TPMTPublic](req.EKPublic)
	if err != nil {
		t.Fatal(err)
	}
	trust := &srvattest.Trust{}
	if err := trust.LoadCADir(caDir); err != nil {
		t.Fatal(err)
	}
	if err := trust.Check(req.EKPublic, ek, req.EKCertificate); err != nil {
		t.Fatalf("the server would refuse this EK: %v", err)
	}
	// And `tpm ek`'s hash is the server's node identity.
	h := tpmkeys.PublicHash(*ek)
	if !bytes.Equal(h[:], store.EKHash(req.EKPublic)) {
		t.Fatal("EK hash differs from the server's")
	}
}
