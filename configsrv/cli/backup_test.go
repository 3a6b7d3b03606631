package cli

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"patela/configsrv/attest/softek"
	"patela/configsrv/pki"
	"patela/internal/api"
	"patela/internal/testutil"
)

// TestBackupCommand: `backup FILE` writes a copy the admin CLI reads as
// the database (restore = put it in place), is audited, never overwrites,
// and refuses a database that does not exist.
func TestBackupCommand(t *testing.T) {
	dir := t.TempDir()
	db := filepath.Join(dir, "p.db")
	ok(t, db, "pool", "add", "192.0.2.0/24", "--gateway", "192.0.2.1")
	ok(t, db, "node", "set", "--default", "max_relays", "3")
	copyPath := filepath.Join(dir, "b.db")
	if out := ok(t, db, "backup", copyPath); !strings.Contains(out, "integrity ok") {
		t.Errorf("backup said %q", out)
	}
	restored := filepath.Join(t.TempDir(), "p.db")
	b, err := os.ReadFile(copyPath)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(restored, b, 0o600)
	for _, c := range [][]string{{"pool", "list", "--json"}, {"node", "show", "--json", "1"}} {
		if c[1] == "show" {
			continue // no node yet
		}
		if a, r := ok(t, db, c...), ok(t, restored, c...); a != r {
			t.Errorf("%v differs after restore:\n%s\n%s", c, a, r)
		}
	}
	if !strings.Contains(ok(t, db, "audit", "--limit", "1"), "backup") {
		t.Error("the backup is not in the audit log")
	}

	n := auditCount(t, db)
	fails(t, db, "exists", "backup", copyPath)
	fails(t, filepath.Join(dir, "missing.db"), "no such file", "backup", filepath.Join(dir, "c.db"))
	usageErr(t, db, "backup", "backup")
	if auditCount(t, db) != n {
		t.Error("a refused backup was audited")
	}
	if _, err := os.Stat(filepath.Join(dir, "c.db")); err == nil {
		t.Error("a refused backup wrote its file")
	}
}

// TestServeLogs: --log-level and --access-log. The access log gets one
// line per request with the status and never the bearer token; a bad
// level is a usage error and an access log that cannot be opened stops
// serve before it listens.
func TestServeLogs(t *testing.T) {
	dir := t.TempDir()
	db := filepath.Join(dir, "p.db")
	ok(t, db, "init", "--dir", dir)
	usageErr(t, db, "log-level", "serve", "--dir", dir, "--log-level", "chatty")
	fails(t, db, "--max-wait", "serve", "--dir", dir, "--listen", "127.0.0.1:0", "--max-wait", "0s")
	usageErr(t, db, "--max-challenges 0: must be at least 1", "serve", "--dir", dir, "--listen", "127.0.0.1:0", "--max-challenges", "0")
	fails(t, db, "--access-log", "serve", "--dir", dir, "--listen", "127.0.0.1:0", "--access-log", filepath.Join(dir, "no/such/access.log"))

	access := filepath.Join(dir, "access.log")
	var stderr testutil.SyncBuffer
	done := make(chan int, 1)
	go func() {
		done <- Main([]string{"--db", db, "serve", "--dir", dir, "--listen", "127.0.0.1:0", "--log-level", "warn", "--access-log", access},
			strings.NewReader(""), &bytes.Buffer{}, &stderr)
	}()
	re := regexp.MustCompile(`serving (https://\S+)`)
	var url string
	for i := 0; i < 500 && url == ""; i++ {
		if m := re.FindStringSubmatch(stderr.String()); m != nil {
			url = m[1]
		}
		time.Sleep(10 * time.Millisecond)
	}
	if url == "" {
		t.Fatalf("server did not start: %s", stderr.String())
	}
	ca, _ := os.ReadFile(filepath.Join(dir, pki.CACert))
	c, err := api.NewClient(url, ca)
	if err != nil {
		t.Fatal(err)
	}
	const secret = "not-a-token-but-secret"
	if _, err := c.Config(context.Background(), secret); !api.IsCode(err, api.CodeUnauthorized) {
		t.Fatalf("GET config with a bad token: %v", err)
	}
	ek, ak, err := softek.NewKeys()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Attest(context.Background(), &api.AttestRequest{EKPublic: ek.Public, AKPublic: ak}); !api.IsCode(err, api.CodePending) {
		t.Fatalf("first contact: %v", err)
	}
	if _, err := c.Attest(context.Background(), &api.AttestRequest{EKPublic: []byte("not an EK"), AKPublic: ak}); !api.IsCode(err, api.CodeBadEK) {
		t.Fatalf("bad EK: %v", err)
	}
	resp, err := c.HTTP.Get(url + "/nope?x=" + secret)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	syscall.Kill(os.Getpid(), syscall.SIGTERM)
	select {
	case code := <-done:
		if code != 0 {
			t.Fatalf("serve exited %d: %s", code, stderr.String())
		}
	case <-time.After(15 * time.Second):
		t.Fatal("serve did not stop on SIGTERM")
	}
	b, err := os.ReadFile(access)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) != 4 || !strings.Contains(lines[0], `GET "/v1/node/config" 401`) || !strings.Contains(lines[1], `POST "/v1/attest" 403`) ||
		!strings.Contains(lines[2], `POST "/v1/attest" 400`) || !strings.Contains(lines[3], `GET "/nope" 404`) ||
		!strings.Contains(lines[0], " 127.0.0.1 ") {
		t.Errorf("access log:\n%s", b)
	}
	if strings.Contains(string(b)+stderr.String(), secret) {
		t.Error("the token reached a log")
	}
	// At warn, the refusal is in the server log, the first contact (info) is not.
	if log := stderr.String(); strings.Contains(log, "level=INFO") || !strings.Contains(log, "level=WARN msg=attest.bad_ek") {
		t.Errorf("--log-level warn: want the bad EK and no info lines:\n%s", log)
	}
}
