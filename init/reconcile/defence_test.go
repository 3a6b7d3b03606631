package reconcile

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	_ "github.com/mattn/go-sqlite3"

	"patela/configsrv/pki"
	"patela/init/nsexec"
	"patela/internal/api"
	"patela/internal/testutil"
)

// evilProxy is a compromised config server: it relays the agent's
// requests to the real one and appends lines to every relay's torrc in
// the config it serves, with a matching torrc_sha256.
func evilProxy(t *testing.T, w *world, extra func(r api.Relay) string) *api.Client {
	t.Helper()
	cert, err := tls.LoadX509KeyPair(filepath.Join(w.s.Dir, pki.ServerCert), filepath.Join(w.s.Dir, pki.ServerKey))
	if err != nil {
		t.Fatal(err)
	}
	up, _ := url.Parse(w.s.URL)
	rp := httputil.NewSingleHostReverseProxy(up)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(w.s.CA)
	rp.Transport = &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS13}}
	rp.ModifyResponse = func(resp *http.Response) error {
		if resp.Request.URL.Path != api.PathConfig || resp.StatusCode != http.StatusOK {
			return nil
		}
		var cfg api.NodeConfig
		b, _ := io.ReadAll(resp.Body)
		if err := json.Unmarshal(b, &cfg); err != nil {
			return err
		}
		for i, r := range cfg.Relays {
			r.Torrc += extra(r)
			sum := sha256.Sum256([]byte(r.Torrc))
			r.TorrcSHA256 = hex.EncodeToString(sum[:])
			cfg.Relays[i] = r
		}
		b, _ = json.Marshal(&cfg)
		resp.Body = io.NopCloser(bytes.NewReader(b))
		resp.ContentLength = int64(len(b))
		resp.Header.Del("Content-Length")
		return nil
	}
	srv := httptest.NewUnstartedServer(rp)
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	c, err := api.NewClient(srv.URL, w.s.CA)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// The DirPortFrontPage attack through the whole agent, by the two
// adversaries that control the config server. One edits the database
// behind the server's back: the server re-checks stored torrcs and
// refuses to serve the node (a failed round), the relay runs on. The
// other controls the server itself and serves the attack: the agent
// passes tor none of it, reports the refused options (the real server
// shows them), tor runs on, and its DirPort serves no byte of the key.
func TestDirPortFrontPageAttackThroughReconcile(t *testing.T) {
	w := newWorld(t, 1, 500*time.Millisecond)
	ctx := context.Background()
	if _, err := w.l.Once(ctx); err != nil {
		t.Fatal(err)
	}
	first := w.sup.Status()[0]
	waitFor(t, "relay running", func() bool {
		st, _ := statusOf(w.sup, first.Name)
		first = st
		return st.State == api.RelayRunning
	})
	keyFile := filepath.Join(w.root, "state", first.Name, "keys", "secret_id_key")
	attack := func(addr string) string {
		return fmt.Sprintf("DisableNetwork 0\nDirPort %s:9030\nDirPortFrontPage %s\nServerTransportPlugin x exec /bin/sh -c \"touch %s\"\n",
			addr, keyFile, filepath.Join(w.root, "pwned"))
	}

	cfg, err := w.s.Client(t).Config(ctx, mustToken(t, w.tokens))
	if err != nil || len(cfg.Relays) != 1 {
		t.Fatalf("config: %v", err)
	}
	dirPort := net.JoinHostPort(netip.MustParsePrefix(cfg.Relays[0].IPv4).Addr().String(), "9030")

	// The database, edited behind the server's back.
	db, err := sql.Open("sqlite3", w.s.DBPath)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.Exec(`UPDATE relays SET torrc = ? WHERE name = ?`, attack("0.0.0.0"), first.Name); err != nil {
		t.Fatal(err)
	}
	if _, err := w.l.Once(ctx); err == nil || !strings.Contains(err.Error(), "500") {
		t.Errorf("round against the edited database: %v; want the server's refusal", err)
	}
	if st, _ := statusOf(w.sup, first.Name); st.PID != first.PID || st.State != api.RelayRunning {
		t.Errorf("relay disturbed by the edited database: %+v", st)
	}
	if nsexec.Do(w.agent.Fd(), func() error {
		c, err := net.DialTimeout("tcp", dirPort, time.Second)
		if err == nil {
			c.Close()
		}
		return err
	}) == nil {
		t.Error("a DirPort listens after the edited database's round")
	}
	if _, err := db.Exec(`UPDATE relays SET torrc = '' WHERE name = ?`, first.Name); err != nil {
		t.Fatal(err)
	}

	// The server itself, compromised.
	var relayAddr netip.Addr
	evil := evilProxy(t, w, func(r api.Relay) string {
		relayAddr = netip.MustParsePrefix(r.IPv4).Addr()
		return attack(relayAddr.String())
	})
	l, err := New(Config{Client: evil, Tokens: w.tokens, Network: w.l.cfg.Network, Relays: w.sup, Log: w.l.log,
		Specs: w.l.cfg.Specs, PollInterval: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	l.applied = w.l.applied
	if _, err := l.Once(ctx); err != nil {
		t.Fatal(err)
	}
	st, _ := statusOf(w.sup, first.Name)
	if st.Refused != "DirPortFrontPage,ServerTransportPlugin" {
		t.Errorf("refused %q", st.Refused)
	}
	// Reloaded, not merely still running: tor reports RELOADING a moment
	// after the SIGHUP.
	waitFor(t, "relay reloaded and running again", func() bool {
		st, _ = statusOf(w.sup, first.Name)
		return st.State == api.RelayRunning && st.Reloads > first.Reloads
	})
	if st.PID != first.PID {
		t.Errorf("tor restarted (pid %d→%d); the change is reloadable", first.PID, st.PID)
	}
	out := w.s.Admin(t, "relay", "list")
	if !strings.Contains(out, "refused by the node: DirPortFrontPage, ServerTransportPlugin") {
		t.Errorf("relay list does not show the refusal:\n%s", out)
	}
	key, err := os.ReadFile(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	if dirPort != net.JoinHostPort(relayAddr.String(), "9030") {
		t.Fatalf("the relay moved: %s, %s", dirPort, relayAddr)
	}
	var body []byte
	waitFor(t, "the DirPort to answer", func() bool {
		body = nil
		return nsexec.Do(w.agent.Fd(), func() error {
			c, err := net.DialTimeout("tcp", dirPort, time.Second)
			if err != nil {
				return err
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			fmt.Fprintf(c, "GET / HTTP/1.0\r\nHost: x\r\n\r\n")
			body, err = io.ReadAll(c)
			return err
		}) == nil && len(body) > 0
	})
	if how := testutil.KeyLeak(body, key); how != "" {
		t.Fatalf("the DirPort served %s", how)
	}
	if _, err := os.Stat(filepath.Join(w.root, "pwned")); err == nil {
		t.Error("the transport plugin ran")
	}
	if st, _ := statusOf(w.sup, first.Name); st.PID != first.PID || st.State != api.RelayRunning {
		t.Errorf("tor did not keep running: %+v", st)
	}
}
