package cli

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"patela/configsrv/internal/tortest"
	"patela/configsrv/pki"
	"patela/configsrv/store"
	"patela/internal/api"
	"patela/internal/ekid"
	"patela/internal/testutil"
)

type result struct {
	out, err string
	code     int
}

func run(t *testing.T, db string, stdin string, args ...string) result {
	t.Helper()
	var out, errb bytes.Buffer
	code := Main(append([]string{"--db", db}, args...), strings.NewReader(stdin), &out, &errb)
	return result{out.String(), errb.String(), code}
}

// ok runs a command that must succeed.
func ok(t *testing.T, db string, args ...string) string {
	t.Helper()
	r := run(t, db, "", args...)
	if r.code != 0 {
		t.Fatalf("configsrv %s: exit %d: %s", strings.Join(args, " "), r.code, r.err)
	}
	return r.out
}

// fails runs a command that must fail with exit 1, print nothing on
// stdout, and say want on stderr.
func fails(t *testing.T, db, want string, args ...string) {
	t.Helper()
	r := run(t, db, "", args...)
	if r.code != 1 || r.out != "" || !strings.Contains(r.err, want) {
		t.Errorf("configsrv %s: exit %d, stdout %q, stderr %q; want exit 1 and %q",
			strings.Join(args, " "), r.code, r.out, r.err, want)
	}
}

// usageErr runs a command line that does not fit its command: exit 2,
// nothing on stdout, want and the nearest usage on stderr.
func usageErr(t *testing.T, db, want string, args ...string) {
	t.Helper()
	r := run(t, db, "", args...)
	if r.code != 2 || r.out != "" || !strings.Contains(r.err, want) || !strings.Contains(r.err, "usage: configsrv") && !strings.Contains(r.err, "commands:") {
		t.Errorf("configsrv %s: exit %d, stdout %q, stderr %q; want exit 2, %q and a usage",
			strings.Join(args, " "), r.code, r.out, r.err, want)
	}
}

func auditCount(t *testing.T, db string) int {
	t.Helper()
	var rows []store.AuditEntry
	if err := json.Unmarshal([]byte(ok(t, db, "audit", "--limit", "1000", "--json")), &rows); err != nil {
		t.Fatal(err)
	}
	return len(rows)
}

func TestInitIdempotent(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "keys")
	db := filepath.Join(t.TempDir(), "p.db")
	out := ok(t, db, "init", "--dir", dir, "--name", "cfg.example.org,192.0.2.5")
	if strings.Count(out, "created") != 5 {
		t.Fatalf("init output:\n%s", out)
	}
	for name, mode := range map[string]os.FileMode{pki.CACert: 0o644, pki.CAKey: 0o600, pki.ServerCert: 0o644, pki.ServerKey: 0o600, pki.BiscuitKey: 0o600} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil || fi.Mode().Perm() != mode {
			t.Errorf("%s: %v %v, want mode %v", name, fi.Mode(), err, mode)
		}
	}
	before := map[string][]byte{}
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		before[e.Name()], _ = os.ReadFile(filepath.Join(dir, e.Name()))
	}
	if out := ok(t, db, "init", "--dir", dir); !strings.Contains(out, "nothing to do") {
		t.Fatalf("second init: %s", out)
	}
	for n, b := range before {
		if a, _ := os.ReadFile(filepath.Join(dir, n)); !bytes.Equal(a, b) {
			t.Errorf("%s changed by a second init", n)
		}
	}
	// The server certificate chains to the CA and names what was asked.
	caPEM, _ := pem.Decode(before[pki.CACert])
	srvPEM, _ := pem.Decode(before[pki.ServerCert])
	ca, _ := x509.ParseCertificate(caPEM.Bytes)
	cert, _ := x509.ParseCertificate(srvPEM.Bytes)
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	for _, name := range []string{"cfg.example.org", "192.0.2.5"} {
		if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, DNSName: name}); err != nil {
			t.Errorf("server cert for %s: %v", name, err)
		}
	}
	// A key without its certificate is an error, not silently replaced.
	os.Remove(filepath.Join(dir, pki.ServerCert))
	fails(t, db, "exists but", "init", "--dir", dir)
	usageErr(t, db, "needs --dir", "init")
}

func TestAdminRoundTrip(t *testing.T) {
	db := filepath.Join(t.TempDir(), "p.db")
	tmp := t.TempDir()
	ctx := context.Background()
	fails(t, db, "no such file", "node", "list")
	if _, err := os.Stat(db); err == nil {
		t.Fatal("a listing created the database")
	}
	st, err := store.Open(db)
	if err != nil {
		t.Fatal(err)
	}
	if out := ok(t, db, "node", "list", "--json"); strings.TrimSpace(out) != "[]" {
		t.Fatalf("empty node list: %q", out)
	}
	n1, _, _ := st.AddPending(ctx, ekid.ID(sha256.Sum256([]byte("ek-one"))), []byte("ek-one"), time.Now(), store.PendingLimits{}, nil)
	st.AddPending(ctx, ekid.ID(sha256.Sum256([]byte("ek-two"))), []byte("ek-two"), time.Now(), store.PendingLimits{}, nil)
	st.Close()

	if out := ok(t, db, "node", "list"); !regexp.MustCompile(`(?m)^1\s+pending`).MatchString(out) {
		t.Fatalf("node list:\n%s", out)
	}
	audits := auditCount(t, db)
	fails(t, db, "node 99: not found", "node", "enable", "99")
	fails(t, db, "not a node id", "node", "enable", "abc")
	usageErr(t, db, "takes 1 argument", "node", "enable")
	fails(t, db, "max_relays", "node", "set", "1", "max_relays", "65")
	fails(t, db, "unknown setting", "node", "set", "1", "colour", "blue")
	fails(t, db, "node 99: not found", "node", "set", "99", "max_relays", "2")
	usageErr(t, db, "usage: node set ID KEY VALUE", "node", "set", "1", "max_relays")
	fails(t, db, "ipv4_gateway", "node", "set", "--default", "ipv4_gateway", "2001:db8::1")
	fails(t, db, "not found", "node", "unset", "1", "dns")
	fails(t, db, "not a CIDR", "pool", "add", "192.0.2.0/33", "--gateway", "192.0.2.1")
	fails(t, db, "not inside", "pool", "add", "192.0.2.0/24", "--gateway", "198.51.100.1")
	usageErr(t, db, "needs --gateway", "pool", "add", "192.0.2.0/24")
	fails(t, db, "not found", "pool", "remove", "203.0.113.0/24")
	usageErr(t, db, "unknown command", "frobnicate")
	fails(t, db, "--limit 0", "audit", "--limit", "0")
	if n := auditCount(t, db); n != audits {
		t.Fatalf("failed commands wrote %d audit rows", n-audits)
	}

	ok(t, db, "node", "enable", "1")
	ok(t, db, "node", "set", "1", "max_relays", "2")
	ok(t, db, "node", "set", "--default", "dns", "192.0.2.53,2001:db8::53")
	ok(t, db, "node", "set", "1", "relay_interface", "eth1")
	ok(t, db, "pool", "add", "192.0.2.0/24", "--gateway", "192.0.2.1")
	ok(t, db, "pool", "add", "2001:db8::/64", "--gateway", "2001:db8::1")
	var pools []store.Pool
	json.Unmarshal([]byte(ok(t, db, "pool", "list", "--json")), &pools)
	if len(pools) != 2 || pools[0].Gateway.String() != "192.0.2.1" {
		t.Fatalf("pools: %+v", pools)
	}
	st, _ = store.Open(db)
	if a, err := st.Allocate(ctx, n1.ID, &api.Specs{CPUs: 4, MemoryBytes: 8 << 30}, time.Now()); err != nil || a.After != 2 {
		t.Fatalf("allocate: %+v %v", a, err)
	}
	st.Close()
	fails(t, db, "in use", "pool", "remove", "192.0.2.0/24")

	var show struct {
		State     string            `json:"state"`
		Effective map[string]string `json:"effective"`
		RelayList []store.Relay     `json:"relay_list"`
		Memory    struct {
			PerRelay uint64 `json:"per_relay_bytes"`
			Queues   uint64 `json:"max_mem_in_queues_bytes"`
		} `json:"memory_budget"`
	}
	if err := json.Unmarshal([]byte(ok(t, db, "node", "show", "1", "--json")), &show); err != nil {
		t.Fatal(err)
	}
	if show.State != "enabled" || show.Effective["max_relays"] != "2" || show.Effective["dns"] != "192.0.2.53,2001:db8::53" ||
		show.Effective["relay_interface"] != "eth1" || len(show.RelayList) != 2 ||
		show.Effective["heartbeat_interval_s"] != "600" {
		t.Fatalf("node show: %+v", show)
	}
	// 8 GiB: 512 MiB reserved, the rest halved; tor's queues 3/4 of that.
	if show.Memory.PerRelay != 3840<<20 || show.Memory.Queues != 2880<<20 {
		t.Fatalf("node show: memory budget %+v", show.Memory)
	}
	if out := ok(t, db, "node", "show", "1"); !strings.Contains(out, "max_relays") || !strings.Contains(out, "murazzano") ||
		!strings.Contains(out, "3840 MiB per relay (cgroup memory.max): 8192 MiB - 512 MiB reserved") || !strings.Contains(out, "MaxMemInQueues 2880 MB") {
		t.Fatalf("node show:\n%s", out)
	}

	// torrc levels.
	write := func(name, text string) string {
		p := filepath.Join(tmp, name)
		os.WriteFile(p, []byte(text), 0o644)
		return p
	}
	global := write("global", "DisableNetwork 1\nContactInfo ops@example.org\nExitRelay 1\nExitPolicy reject *:25\n")
	ok(t, db, "torrc", "import", global, "--default")
	managed := write("managed", "Nickname evil\n")
	fails(t, db, "line 1", "torrc", "import", managed, "--default")
	if out := ok(t, db, "torrc", "show", "--default"); !strings.Contains(out, "ExitRelay 1") || strings.Contains(out, "evil") {
		t.Fatalf("global torrc after a refused import:\n%s", out)
	}
	ok(t, db, "torrc", "import", write("node", "+ExitPolicy accept *:*\nRelayBandwidthRate 10 MB\n"), "--node", "1")
	r := run(t, db, "/ExitPolicy\nExitPolicy reject *:*\n", "torrc", "import", "-", "--relay", "castelmagno")
	if r.code != 0 {
		t.Fatalf("import from stdin: %s", r.err)
	}
	fails(t, db, "relay \"nosuch\": not found", "torrc", "import", global, "--relay", "nosuch")
	usageErr(t, db, "exactly one of", "torrc", "import", global, "--default", "--node", "1")
	fails(t, db, "node 7: not found", "torrc", "import", global, "--node", "7")
	fails(t, db, "no such file", "torrc", "import", filepath.Join(tmp, "missing"), "--default")

	res := ok(t, db, "torrc", "resolve", "--relay", "murazzano")
	for _, want := range []string{"ExitPolicy reject *:25\nExitPolicy accept *:*\n", "Nickname murazzano\n", "ORPort 192.0.2.2:9001\n",
		"ORPort [2001:db8::2]:9001\n", "DataDirectory /var/lib/tor-instances/murazzano\n", "RelayBandwidthRate 10 MB\n"} {
		if !strings.Contains(res, want) {
			t.Errorf("resolved murazzano lacks %q:\n%s", want, res)
		}
	}
	tortest.Verify(t, res)
	if res := ok(t, db, "torrc", "resolve", "--relay", "castelmagno"); strings.Contains(res, "ExitPolicy reject *:25") ||
		!strings.Contains(res, "ExitPolicy reject *:*") {
		t.Errorf("relay level did not replace ExitPolicy:\n%s", res)
	} else {
		tortest.Verify(t, res)
	}
	exp := ok(t, db, "torrc", "resolve", "--relay", "castelmagno", "--explain")
	for _, lv := range []string{"# global, line 1", "# node, line 2", "# relay, line 2", "# managed"} {
		if !strings.Contains(exp, lv) {
			t.Errorf("explain lacks %q:\n%s", lv, exp)
		}
	}
	// An administrator's MaxMemInQueues replaces the managed one.
	if !strings.Contains(res, "MaxMemInQueues 2880 MB\n") {
		t.Errorf("resolved murazzano lacks the managed MaxMemInQueues:\n%s", res)
	}
	diff := ok(t, db, "torrc", "diff", "--relay", "murazzano", write("d", "MaxMemInQueues 512 MB\n"))
	if !strings.Contains(diff, "+ MaxMemInQueues 512 MB\n") || !strings.Contains(diff, "- MaxMemInQueues 2880 MB") ||
		strings.Count(diff, "\n- ") != 1 {
		t.Errorf("diff:\n%s", diff)
	}
	diff = ok(t, db, "torrc", "diff", "--relay", "murazzano", write("d2", "ExitPolicy reject *:*\n"))
	if !strings.Contains(diff, "- ExitPolicy accept *:*\n") || !strings.Contains(diff, "+ ExitPolicy reject *:*\n") {
		t.Errorf("diff:\n%s", diff)
	}
	if out := ok(t, db, "torrc", "diff", "--relay", "murazzano", write("empty", "")); !strings.Contains(out, "would not change") {
		t.Errorf("empty diff: %s", out)
	}
	fails(t, db, "line 1", "torrc", "diff", "--relay", "murazzano", managed)

	var relays []store.Relay
	json.Unmarshal([]byte(ok(t, db, "relay", "list", "--node", "1", "--json")), &relays)
	if len(relays) != 2 || relays[1].Name != "castelmagno" || relays[1].UID != 10002 {
		t.Fatalf("relay list: %+v", relays)
	}
	fails(t, db, "node 9: not found", "relay", "list", "--node", "9")

	var entries []store.AuditEntry
	json.Unmarshal([]byte(ok(t, db, "audit", "--limit", "3", "--json")), &entries)
	if len(entries) != 3 || entries[0].Action != "torrc.import" || !strings.HasPrefix(entries[0].Actor, "admin") {
		t.Fatalf("audit: %+v", entries)
	}
	ok(t, db, "node", "ban", "2")
	ok(t, db, "node", "disable", "1")
	ok(t, db, "node", "remove", "1")
	fails(t, db, "not found", "node", "show", "1")
	ok(t, db, "pool", "remove", "192.0.2.0/24") // freed by the removal
	out := ok(t, db, "audit")
	for _, a := range []string{"node.enable", "node.ban", "node.disable", "node.remove", "setting.set", "pool.add", "pool.remove", "torrc.import"} {
		if !strings.Contains(out, a) {
			t.Errorf("audit lacks %s", a)
		}
	}
}

// serve answers HTTPS with the init material and stops cleanly on SIGTERM.
func TestServeStopsOnSIGTERM(t *testing.T) {
	dir := t.TempDir()
	db := filepath.Join(dir, "p.db")
	ok(t, db, "init", "--dir", dir)
	var stderr testutil.SyncBuffer
	done := make(chan int, 1)
	go func() {
		done <- Main([]string{"--db", db, "serve", "--dir", dir, "--listen", "127.0.0.1:0"}, strings.NewReader(""), &bytes.Buffer{}, &stderr)
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
	if _, err := c.Config(context.Background(), ""); !api.IsCode(err, api.CodeUnauthorized) {
		t.Fatalf("GET config without a token: %v", err)
	}
	resp, err := c.HTTP.Get(url + "/nope")
	if err != nil || resp.StatusCode != http.StatusNotFound {
		t.Fatalf("unknown path: %v %v", resp, err)
	}
	resp.Body.Close()
	syscall.Kill(os.Getpid(), syscall.SIGTERM)
	select {
	case code := <-done:
		if code != 0 || !strings.Contains(stderr.String(), "stopped") {
			t.Fatalf("serve exited %d: %s", code, stderr.String())
		}
	case <-time.After(15 * time.Second):
		t.Fatal("serve did not stop on SIGTERM")
	}
	usageErr(t, db, "needs --dir", "serve")
}
