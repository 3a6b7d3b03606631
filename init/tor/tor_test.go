package tor

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"patela/internal/api"
	"patela/internal/testutil"

	"golang.org/x/sys/unix"
)

// The tests run real tor processes (Debian's tor, DisableNetwork 1) as
// real non-root uids, started by this test process as root, exactly as
// PID 1 starts them.

func needTor(t testing.TB) {
	t.Helper()
	if os.Getuid() != 0 {
		testutil.SkipOrFail(t, "the supervisor needs root to start tor as relay uids")
	}
	testutil.RequireTool(t, "tor", "apt-get install tor")
}

// testLogger returns a logger whose output is printed if t fails.
func testLogger(t testing.TB) *slog.Logger {
	l, _ := testLog(t)
	return l
}

func testLog(t testing.TB) (*slog.Logger, *testutil.SyncBuffer) {
	buf := &testutil.SyncBuffer{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Log("supervisor log:\n" + buf.String())
		}
	})
	return slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug})), buf
}

// traversableDir is a temporary directory the relay uids can enter.
func traversableDir(t testing.TB) string {
	d := t.TempDir()
	for p := d; p != "/" && p != os.TempDir(); p = filepath.Dir(p) {
		if err := os.Chmod(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return d
}

type harness struct {
	sup  *Supervisor
	root string
	logs *testutil.SyncBuffer
}

func newHarness(t testing.TB, edit func(*Options)) *harness {
	needTor(t)
	root := traversableDir(t)
	log, logs := testLog(t)
	o := Options{
		StateDir:    filepath.Join(root, "state"),
		RunDir:      filepath.Join(root, "run"),
		Accounts:    Files{Root: root},
		Log:         log,
		StopTimeout: 10 * time.Second,
		BackoffMax:  2 * time.Second,
		KeyPoll:     200 * time.Millisecond,
	}
	if edit != nil {
		edit(&o)
	}
	if o.Keys == nil { // the real vault, on a swtpm of the test's own
		v, powerOff := bootVault(t, t.TempDir())
		t.Cleanup(powerOff)
		o.Keys = v
	}
	s, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		s.Shutdown(ctx)
	})
	return &harness{sup: s, root: root, logs: logs}
}

// serverTorrc is a relay torrc as configsrv resolves it, Debian paths and
// all (the agent must replace DataDirectory and User).
func serverTorrc(name string, port int, extra ...string) []byte {
	lines := []string{
		"DisableNetwork 1",
		"ContactInfo patela test <ops@example.org>",
		"ExitRelay 0",
		"ShutdownWaitLength 1",
		"Nickname " + name,
		fmt.Sprintf("ORPort 127.0.0.1:%d", port),
		"Address 192.0.2.10",
		"OutboundBindAddress 192.0.2.10",
		"DataDirectory /var/lib/tor-instances/" + name,
		"User _tor-" + name,
	}
	return []byte(strings.Join(append(lines, extra...), "\n") + "\n")
}

func (h *harness) status(t testing.TB, name string) Status {
	t.Helper()
	for _, st := range h.sup.Status() {
		if st.Name == name {
			return st
		}
	}
	t.Fatalf("relay %s not supervised", name)
	return Status{}
}

// waitFor polls cond until it holds; the deadline only catches a hang.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (h *harness) waitRunning(t testing.TB, name string) Status {
	t.Helper()
	var st Status
	waitFor(t, name+" running", func() bool {
		st = h.status(t, name)
		return st.State == api.RelayRunning
	})
	return st
}

// procStatus reads the fields of /proc/PID/status.
func procStatus(t testing.TB, pid int) map[string]string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok {
			m[k] = strings.TrimSpace(v)
		}
	}
	return m
}

func alive(pid int) bool { return pid > 0 && unix.Kill(pid, 0) == nil }

func TestRelays(t *testing.T) {
	h := newHarness(t, nil)
	ctx := context.Background()
	names := []string{"alpha", "bravo", "charlie"}
	ports := map[string]int{"alpha": 39101, "bravo": 39102, "charlie": 443}
	for i, n := range names {
		if err := h.sup.Apply(ctx, Spec{Name: n, UID: 20001 + i, Torrc: serverTorrc(n, ports[n])}); err != nil {
			t.Fatal(err)
		}
	}
	pids := map[string]int{}
	for _, n := range names {
		pids[n] = h.waitRunning(t, n).PID
	}

	t.Run("setup", func(t *testing.T) {
		for i, n := range names {
			uid := strconv.Itoa(20001 + i)
			ps := procStatus(t, pids[n])
			if f := strings.Fields(ps["Uid"]); f[0] != uid || f[1] != uid || f[2] != uid {
				t.Errorf("%s: Uid %q, want %s", n, ps["Uid"], uid)
			}
			if f := strings.Fields(ps["Gid"]); f[0] != uid || ps["Groups"] != "" {
				t.Errorf("%s: Gid %q Groups %q, want %s and none", n, ps["Gid"], ps["Groups"], uid)
			}
			if ps["NoNewPrivs"] != "1" {
				t.Errorf("%s: NoNewPrivs %q", n, ps["NoNewPrivs"])
			}
			wantCap := "0000000000000000"
			if ports[n] < 1024 {
				wantCap = fmt.Sprintf("%016x", 1<<unix.CAP_NET_BIND_SERVICE)
			}
			if ps["CapEff"] != wantCap || ps["CapAmb"] != wantCap {
				t.Errorf("%s: CapEff %s CapAmb %s, want %s", n, ps["CapEff"], ps["CapAmb"], wantCap)
			}
			if pgid, _ := unix.Getpgid(pids[n]); pgid != pids[n] {
				t.Errorf("%s: pgid %d, want its own group %d", n, pgid, pids[n])
			}
			// 65536, or as close as a container without CAP_SYS_RESOURCE allows.
			var self unix.Rlimit
			unix.Getrlimit(unix.RLIMIT_NOFILE, &self)
			want := min(nofile, self.Max)
			lim, _ := os.ReadFile(fmt.Sprintf("/proc/%d/limits", pids[n]))
			if !regexpMatch(fmt.Sprintf(`Max open files\s+%d\s+`, want), string(lim)) {
				t.Errorf("%s: limits:\n%s", n, lim)
			}
			dataDir := filepath.Join(h.root, "state", n)
			fi, err := os.Stat(dataDir)
			if err != nil {
				t.Fatal(err)
			}
			st := fi.Sys().(*syscall.Stat_t)
			if fi.Mode()&(os.ModePerm|os.ModeSetgid) != 0o700|os.ModeSetgid || int(st.Uid) != 20001+i || int(st.Gid) != 20001+i {
				t.Errorf("%s: DataDirectory %v %d:%d", n, fi.Mode(), st.Uid, st.Gid)
			}
			live, _ := os.ReadFile(filepath.Join(h.root, "run", n+".torrc"))
			if bytes.Contains(live, []byte("/var/lib/tor-instances")) || bytes.Contains(live, []byte("User ")) ||
				!bytes.Contains(live, []byte("DataDirectory "+dataDir+"\n")) {
				t.Errorf("%s: live torrc keeps the server's paths or user:\n%s", n, live)
			}
			pw, _ := os.ReadFile(filepath.Join(h.root, "etc", "passwd"))
			if !bytes.Contains(pw, []byte(fmt.Sprintf("_tor-%s:x:%s:%s:", n, uid, uid))) {
				t.Errorf("%s: passwd:\n%s", n, pw)
			}
		}
		// Fingerprints come from the files tor writes.
		waitFor(t, "fingerprints", func() bool {
			for _, st := range h.sup.Status() {
				if len(st.Fingerprint) != 40 || len(st.Ed25519ID) != 43 {
					return false
				}
			}
			return true
		})
		if l := h.sup.Logs("alpha"); len(l) == 0 || !strings.Contains(strings.Join(l, "\n"), "Signaled readiness") {
			t.Errorf("alpha's log ring lacks tor's output: %q", l)
		}
	})

	t.Run("kill -9 restarts only that relay", func(t *testing.T) {
		if err := unix.Kill(pids["alpha"], unix.SIGKILL); err != nil {
			t.Fatal(err)
		}
		st := h.waitRunning(t, "alpha")
		for st.PID == pids["alpha"] {
			st = h.waitRunning(t, "alpha")
		}
		if st.Restarts != 1 {
			t.Errorf("alpha restarts = %d, want 1", st.Restarts)
		}
		for _, n := range []string{"bravo", "charlie"} {
			if o := h.status(t, n); o.PID != pids[n] || o.Restarts != 0 {
				t.Errorf("%s disturbed: pid %d→%d, restarts %d", n, pids[n], o.PID, o.Restarts)
			}
		}
		pids["alpha"] = st.PID
	})

	t.Run("reloadable change gets SIGHUP", func(t *testing.T) {
		before := h.status(t, "bravo")
		err := h.sup.Apply(ctx, Spec{Name: "bravo", UID: 20002, Torrc: serverTorrc("bravo", ports["bravo"], "ContactInfo changed <ops@example.org>")})
		if err != nil {
			t.Fatal(err)
		}
		var st Status
		waitFor(t, "RELOADING=1 then READY=1", func() bool {
			st = h.status(t, "bravo")
			return st.Reloads == before.Reloads+1 && st.State == api.RelayRunning
		})
		if st.PID != pids["bravo"] {
			t.Errorf("bravo pid %d→%d on a reloadable change", pids["bravo"], st.PID)
		}
		live, _ := os.ReadFile(filepath.Join(h.root, "run", "bravo.torrc"))
		if !bytes.Contains(live, []byte("ContactInfo changed")) {
			t.Errorf("live torrc not updated:\n%s", live)
		}
	})

	t.Run("restart-only change restarts", func(t *testing.T) {
		// ORPort moves above 1024: also drops CAP_NET_BIND_SERVICE.
		err := h.sup.Apply(ctx, Spec{Name: "charlie", UID: 20003, Torrc: serverTorrc("charlie", 39103)})
		if err != nil {
			t.Fatal(err)
		}
		var st Status
		waitFor(t, "charlie restarted", func() bool {
			st = h.status(t, "charlie")
			return st.State == api.RelayRunning && st.PID != pids["charlie"]
		})
		if alive(pids["charlie"]) {
			t.Errorf("old charlie %d still alive", pids["charlie"])
		}
		if st.Restarts != 0 || st.Reloads != 0 {
			t.Errorf("restarts %d reloads %d, want 0 0 (a config restart is not a crash)", st.Restarts, st.Reloads)
		}
		if c := procStatus(t, st.PID)["CapEff"]; c != "0000000000000000" {
			t.Errorf("CapEff %s after moving to a high port", c)
		}
		pids["charlie"] = st.PID
	})

	t.Run("invalid torrc refused", func(t *testing.T) {
		live, _ := os.ReadFile(filepath.Join(h.root, "run", "bravo.torrc"))
		err := h.sup.Apply(ctx, Spec{Name: "bravo", UID: 20002, Torrc: serverTorrc("bravo", ports["bravo"], "MaxMemInQueues lots")})
		var ve *VerifyError
		if !errors.As(err, &ve) {
			t.Fatalf("Apply = %v, want a *VerifyError", err)
		}
		t.Logf("refused: %v", err)
		time.Sleep(500 * time.Millisecond) // room for a wrong SIGHUP to land
		st := h.status(t, "bravo")
		if st.PID != pids["bravo"] || !alive(st.PID) || st.State != api.RelayRunning {
			t.Errorf("bravo after refusal: %+v (pid was %d)", st, pids["bravo"])
		}
		now, _ := os.ReadFile(filepath.Join(h.root, "run", "bravo.torrc"))
		if !bytes.Equal(now, live) {
			t.Errorf("live torrc changed by a refused config")
		}
	})

	t.Run("remove", func(t *testing.T) {
		if err := h.sup.Remove(ctx, "alpha"); err != nil {
			t.Fatal(err)
		}
		if alive(pids["alpha"]) {
			t.Errorf("alpha %d still alive after Remove", pids["alpha"])
		}
		for _, p := range []string{"state/alpha", "run/alpha", "run/alpha.torrc"} {
			if _, err := os.Stat(filepath.Join(h.root, p)); !os.IsNotExist(err) {
				t.Errorf("%s left behind (%v)", p, err)
			}
		}
		pw, _ := os.ReadFile(filepath.Join(h.root, "etc", "passwd"))
		if bytes.Contains(pw, []byte("_tor-alpha:")) {
			t.Errorf("account left behind:\n%s", pw)
		}
		if len(h.sup.Status()) != 2 {
			t.Errorf("status after remove: %+v", h.sup.Status())
		}
	})

	t.Run("shutdown", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		h.sup.Shutdown(ctx)
		for _, n := range []string{"bravo", "charlie"} {
			if alive(pids[n]) {
				t.Errorf("%s (%d) alive after Shutdown returned", n, pids[n])
			}
		}
	})
}

// A relay whose tor dies at start (a ConnLimit above what the process
// may open: tor --verify-config passes, start fails) is marked failed
// after CrashLimit exits and not restarted again until its configuration
// changes. (A FamilyId without its key, the other such case, never
// reaches tor: TestFamilyKeyMissing.)
func TestCrashLoop(t *testing.T) {
	h := newHarness(t, func(o *Options) { o.CrashLimit = 3 })
	ctx := context.Background()
	bad := serverTorrc("delta", 39104, "ConnLimit 100000000")
	if err := h.sup.Apply(ctx, Spec{Name: "delta", UID: 20004, Torrc: bad}); err != nil {
		t.Fatal(err)
	}
	var st Status
	waitFor(t, "failed", func() bool {
		st = h.status(t, "delta")
		return st.State == api.RelayFailed
	})
	if st.Restarts != 2 {
		t.Errorf("restarts = %d, want 2 (3 runs)", st.Restarts)
	}
	if !strings.Contains(st.Error, "crash loop") {
		t.Errorf("error %q", st.Error)
	}
	t.Logf("failed: %s", st.Error)
	time.Sleep(3 * time.Second) // longer than BackoffMax: no more restarts
	if again := h.status(t, "delta"); again.Restarts != st.Restarts || again.State != api.RelayFailed || again.PID != 0 {
		t.Errorf("failed relay kept spinning: %+v", again)
	}
	if err := h.sup.Apply(ctx, Spec{Name: "delta", UID: 20004, Torrc: serverTorrc("delta", 39104)}); err != nil {
		t.Fatal(err)
	}
	h.waitRunning(t, "delta")
}

// A tor that ignores SIGINT for longer than StopTimeout gets SIGKILL.
func TestStopTimeoutKills(t *testing.T) {
	h := newHarness(t, func(o *Options) { o.StopTimeout = 500 * time.Millisecond })
	ctx := context.Background()
	if err := h.sup.Apply(ctx, Spec{Name: "echo", UID: 20005, Torrc: serverTorrc("echo", 39105, "ShutdownWaitLength 60")}); err != nil {
		t.Fatal(err)
	}
	pid := h.waitRunning(t, "echo").PID
	if err := h.sup.Remove(ctx, "echo"); err != nil {
		t.Fatal(err)
	}
	if alive(pid) {
		t.Fatalf("tor %d survived Remove", pid)
	}
}

func TestApplyRefusesBadInput(t *testing.T) {
	h := newHarness(t, nil)
	ctx := context.Background()
	for _, s := range []Spec{
		{Name: "", UID: 20006, Torrc: serverTorrc("x", 1)},
		{Name: "has-dash", UID: 20006, Torrc: serverTorrc("x", 1)},
		{Name: "foxtrot", UID: 0, Torrc: serverTorrc("foxtrot", 39106)},
		{Name: "foxtrot", UID: 20006, Torrc: []byte("NoSuchOption 1\n")},
		{Name: "foxtrot", UID: 20006, Torrc: serverTorrc("foxtrot", 39106, "ConnLimit many")},
	} {
		if err := h.sup.Apply(ctx, s); err == nil {
			t.Errorf("Apply(%q, uid %d) accepted", s.Name, s.UID)
		} else {
			t.Logf("refused: %v", err)
		}
	}
	if st := h.sup.Status(); len(st) != 0 {
		t.Errorf("refused relays are supervised: %+v", st)
	}
	if pw, _ := os.ReadFile(filepath.Join(h.root, "etc", "passwd")); len(pw) != 0 {
		t.Errorf("accounts left behind by refusals:\n%s", pw)
	}
	for _, d := range []string{"state", "run"} {
		if ents, _ := os.ReadDir(filepath.Join(h.root, d)); len(ents) != 0 {
			t.Errorf("%s not empty after refusals: %v", d, ents)
		}
	}
}

// A relay whose uid changes is stopped and set up anew under the new uid:
// tor runs as it, its DataDirectory and account are its, and the keys
// stay (the same fingerprint).
func TestUIDChange(t *testing.T) {
	h := newHarness(t, nil)
	ctx := context.Background()
	torrc := serverTorrc("kilo", 39110)
	if err := h.sup.Apply(ctx, Spec{Name: "kilo", UID: 20010, Torrc: torrc}); err != nil {
		t.Fatal(err)
	}
	var before Status
	waitFor(t, "kilo's fingerprint", func() bool {
		before = h.status(t, "kilo")
		return before.State == api.RelayRunning && before.Fingerprint != ""
	})
	if err := h.sup.Apply(ctx, Spec{Name: "kilo", UID: 20011, Torrc: torrc}); err != nil {
		t.Fatal(err)
	}
	st := h.waitRunning(t, "kilo")
	if st.PID == before.PID || alive(before.PID) {
		t.Errorf("old tor %d still runs (now %d)", before.PID, st.PID)
	}
	if f := strings.Fields(procStatus(t, st.PID)["Uid"]); f[0] != "20011" {
		t.Errorf("tor runs as uid %s, want 20011", f[0])
	}
	fi, err := os.Stat(filepath.Join(h.root, "state", "kilo"))
	if err != nil {
		t.Fatal(err)
	}
	if s := fi.Sys().(*syscall.Stat_t); s.Uid != 20011 || s.Gid != 20011 {
		t.Errorf("DataDirectory owned by %d:%d, want 20011:20011", s.Uid, s.Gid)
	}
	pw, _ := os.ReadFile(filepath.Join(h.root, "etc", "passwd"))
	if !bytes.Contains(pw, []byte("_tor-kilo:x:20011:20011:")) || bytes.Contains(pw, []byte(":20010:")) {
		t.Errorf("passwd after the uid change:\n%s", pw)
	}
	waitFor(t, "kilo's fingerprint again", func() bool { return h.status(t, "kilo").Fingerprint != "" })
	if fp := h.status(t, "kilo").Fingerprint; fp != before.Fingerprint {
		t.Errorf("fingerprint %s → %s: the keys did not stay", before.Fingerprint, fp)
	}
}
