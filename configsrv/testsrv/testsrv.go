// Package testsrv runs a real configsrv for other packages' tests: HTTPS on
// 127.0.0.1 with a fresh CA, biscuit key and SQLite database, two address
// pools (192.0.2.0/24 gw .1 and 2001:db8::/64 gw ::1) and a global torrc
// that keeps tor off the network, with its Prometheus metrics on plain
// HTTP (MetricsURL).
package testsrv

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"

	"patela/configsrv/attest"
	"patela/configsrv/attest/softek"
	"patela/configsrv/cli"
	"patela/configsrv/metrics"
	"patela/configsrv/pki"
	"patela/configsrv/store"
	"patela/configsrv/token"
	"patela/internal/api"
)

// GlobalTorrc is the global torrc level every test server starts with.
const GlobalTorrc = "DisableNetwork 1\nContactInfo patela test relays <ops@example.org>\n"

// Server is a running configsrv.
type Server struct {
	URL    string
	CA     []byte // PEM of the CA the server certificate chains to
	DBPath string
	Dir    string // key material made by `configsrv init`
	// MetricsURL is where the server's Prometheus metrics are served
	// (serve --metrics-listen), over plain HTTP.
	MetricsURL string

	addr string
	mu   sync.Mutex
	st   *store.Store
	srv  *cli.Server
	msrv *http.Server
	done chan error
	stop context.CancelFunc // the rollout stepper
}

// Start starts a server that stops at test end.
func Start(t testing.TB) *Server {
	t.Helper()
	dir := t.TempDir()
	s := &Server{Dir: dir, DBPath: filepath.Join(dir, "patela.db")}
	if _, err := pki.Init(dir, []string{"127.0.0.1", "localhost"}); err != nil {
		t.Fatal(err)
	}
	ca, err := os.ReadFile(filepath.Join(dir, pki.CACert))
	if err != nil {
		t.Fatal(err)
	}
	s.CA = ca
	torrc := filepath.Join(dir, "global.torrc")
	if err := os.WriteFile(torrc, []byte(GlobalTorrc), 0o644); err != nil {
		t.Fatal(err)
	}
	s.Admin(t, "pool", "add", "192.0.2.0/24", "--gateway", "192.0.2.1")
	s.Admin(t, "pool", "add", "2001:db8::/64", "--gateway", "2001:db8::1")
	s.Admin(t, "torrc", "import", torrc, "--default")
	s.start(t, "127.0.0.1:0")
	t.Cleanup(s.Stop)
	return s
}

func (s *Server) start(t testing.TB, addr string) {
	t.Helper()
	st, err := store.Open(s.DBPath)
	if err != nil {
		t.Fatal(err)
	}
	exp := metrics.New(st)
	srv, err := cli.NewServer(st, cli.ServeOptions{
		CertFile:   filepath.Join(s.Dir, pki.ServerCert),
		KeyFile:    filepath.Join(s.Dir, pki.ServerKey),
		BiscuitKey: filepath.Join(s.Dir, pki.BiscuitKey),
		TokenTTL:   token.DefaultTTL,
		// Generous, so agents under test never meet them; the limits'
		// own tests use tight values.
		AttestRate:  1000,
		AttestBurst: 1000,
		Observer:    exp,
		MaxPending:  cli.DefaultMaxPending, PendingExpiry: cli.DefaultPendingExpiry,
		NodeRate: 1000, NodeBurst: 1000,
	}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		st.Close()
		t.Fatal(err)
	}
	var ln net.Listener
	// On Restart the old port may linger briefly.
	for i := 0; ; i++ {
		ln, err = net.Listen("tcp", addr)
		if err == nil || i == 50 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		st.Close()
		t.Fatal(err)
	}
	mln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		ln.Close()
		st.Close()
		t.Fatal(err)
	}
	msrv := &http.Server{Handler: exp.Handler()}
	go msrv.Serve(mln)
	s.mu.Lock()
	s.st, s.srv, s.msrv, s.done = st, srv, msrv, make(chan error, 1)
	s.addr = ln.Addr().String()
	s.URL = "https://" + s.addr
	s.MetricsURL = "http://" + mln.Addr().String() + metrics.Path
	s.mu.Unlock()
	go func(done chan error) { done <- srv.ServeTLS(ln, "", "") }(s.done)
	// Rollouts step as under `configsrv serve`, a little faster.
	ctx, stop := context.WithCancel(context.Background())
	stepped := make(chan struct{})
	go func() {
		defer close(stepped)
		cli.RunRollouts(ctx, st, 200*time.Millisecond, slog.New(slog.NewTextHandler(io.Discard, nil)))
	}()
	s.stop = func() { stop(); <-stepped }
}

// Metrics scrapes the server's metrics and parses them with Prometheus'
// text parser.
func (s *Server) Metrics(t testing.TB) map[string]*dto.MetricFamily {
	t.Helper()
	s.mu.Lock()
	u := s.MetricsURL
	s.mu.Unlock()
	resp, err := http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("GET %s: %s: %s", u, resp.Status, b)
	}
	var p expfmt.TextParser
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parsing %s: %v", u, err)
	}
	return fams
}

// Stop stops the server; the database and keys stay for Restart.
func (s *Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.srv == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s.srv.Shutdown(ctx)
	s.msrv.Close()
	<-s.done
	s.stop()
	s.st.Close()
	s.srv, s.msrv, s.st = nil, nil, nil
}

// Restart stops the server and starts it again on the same address with
// the same database and keys.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	s.Stop()
	s.start(t, s.addr)
}

// Client returns an API client trusting the server's CA.
func (s *Server) Client(t testing.TB) *api.Client {
	t.Helper()
	c, err := api.NewClient(s.URL, s.CA)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// Admin runs the admin CLI in-process on the server's database and
// returns its standard output; a failing command fails the test.
func (s *Server) Admin(t testing.TB, args ...string) string {
	t.Helper()
	out, err := s.AdminErr(args...)
	if err != nil {
		t.Fatalf("configsrv %s: %v", strings.Join(args, " "), err)
	}
	return out
}

// AdminErr runs the admin CLI and returns its output, or an error with
// its standard error when it exits non-zero.
func (s *Server) AdminErr(args ...string) (string, error) {
	var out, errb bytes.Buffer
	code := cli.Main(append([]string{"--db", s.DBPath}, args...), strings.NewReader(""), &out, &errb)
	if code != 0 {
		return out.String(), errors.New(strings.TrimSpace(errb.String()))
	}
	return out.String(), nil
}

// IssueToken returns a token for nodeID signed with the server's key,
// naming the node's EK identity and token epoch as they are now, as POST
// /v1/attest/complete would hand out.
func (s *Server) IssueToken(t testing.TB, nodeID int64) string {
	t.Helper()
	key, err := token.LoadKey(filepath.Join(s.Dir, pki.BiscuitKey))
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(s.DBPath)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	au, err := st.NodeAuth(context.Background(), nodeID)
	if err != nil {
		t.Fatal(err)
	}
	tok, _, err := token.New(key, token.DefaultTTL).Issue(token.Claims{Node: nodeID, EK: au.EK, Epoch: au.Epoch}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// EnrollSoftwareNode runs the real attestation protocol with a software
// EK (first contact, admin enable, challenge, activation) and returns the
// enabled node's id and token.
func (s *Server) EnrollSoftwareNode(t testing.TB) (int64, string) {
	t.Helper()
	id, ek, ak, c := s.EnableSoftwareNode(t)
	tok, err := Activate(context.Background(), c, ek, ak)
	if err != nil {
		t.Fatal(err)
	}
	return id, tok.Token
}

// EnableSoftwareNode makes a fresh software EK and AK, sends their first
// contact (which must be answered 403 pending with a node id) and enables
// the node as an administrator would. It returns the node's id, its keys
// and the client it used; it does not attest again.
func (s *Server) EnableSoftwareNode(t testing.TB) (int64, *softek.EK, []byte, *api.Client) {
	t.Helper()
	ek, ak, err := softek.NewKeys()
	if err != nil {
		t.Fatal(err)
	}
	c := s.Client(t)
	_, err = c.Attest(context.Background(), &api.AttestRequest{EKPublic: ek.Public, AKPublic: ak})
	var ae *api.Error
	if !errors.As(err, &ae) || ae.Code != api.CodePending || ae.NodeID == 0 {
		t.Fatalf("first contact: want 403 pending with a node id, got %v", err)
	}
	s.Admin(t, "node", "enable", strconv.FormatInt(ae.NodeID, 10))
	return ae.NodeID, ek, ak, c
}

// Activate runs one attestation handshake for a software EK and AK.
func Activate(ctx context.Context, c *api.Client, ek *softek.EK, ak []byte) (*api.CompleteResponse, error) {
	resp, err := c.Attest(ctx, &api.AttestRequest{EKPublic: ek.Public, AKPublic: ak})
	if err != nil {
		return nil, err
	}
	_, name, err := attest.ParseAK(ak)
	if err != nil {
		return nil, err
	}
	secret, err := ek.Activate(resp.CredentialBlob, resp.EncryptedSecret, name)
	if err != nil {
		return nil, err
	}
	return c.Complete(ctx, &api.CompleteRequest{ChallengeID: resp.ChallengeID, Secret: secret})
}

// Waiting is the number of config requests the server holds.
func (s *Server) Waiting() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.srv == nil {
		return 0
	}
	return s.srv.Waiting()
}
