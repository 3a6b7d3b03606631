// Package systemd_test checks contrib/systemd: the config server's unit
// with systemd's own analyzer (offline: no running systemd needed), its
// command line against the real binary, and the sysusers.d file with
// systemd-sysusers in a scratch root.
package systemd_test

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"patela/bench/srvproc"
	"patela/internal/testutil"
)

var bin string

func TestMain(m *testing.M) { srvproc.TestMain(m, &bin) }

const unitFile = "configsrv.service"

// unit reads the unit's [Service] section as key → values, in order.
func unit(t *testing.T) map[string][]string {
	t.Helper()
	b, err := os.ReadFile(unitFile)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]string{}
	section := ""
	for _, l := range strings.Split(string(b), "\n") {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		if strings.HasPrefix(l, "[") {
			section = l
			continue
		}
		if k, v, ok := strings.Cut(l, "="); ok && section == "[Service]" {
			out[k] = append(out[k], v)
		}
	}
	return out
}

// verify runs `systemd-analyze verify` on text installed as a unit file
// and returns everything it said; the unit's binary is replaced by the
// built configsrv (verify checks that ExecStart is executable).
func verify(t *testing.T, text string) (string, error) {
	t.Helper()
	sa := testutil.RequireTool(t, "systemd-analyze", "apt-get install systemd")
	d := t.TempDir()
	p := filepath.Join(d, unitFile)
	if err := os.WriteFile(p, []byte(strings.ReplaceAll(text, "/usr/local/bin/configsrv", bin)), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(sa, "verify", "--man=no", p).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// TestVerify: systemd's analyzer finds nothing to say about the unit (it
// exits 0 even for unknown keys and bad values, so any output is a
// finding), and it does speak up for a unit with a typo: the check can
// fail.
func TestVerify(t *testing.T) {
	b, err := os.ReadFile(unitFile)
	if err != nil {
		t.Fatal(err)
	}
	if out, err := verify(t, string(b)); err != nil || out != "" {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
	typo := strings.Replace(string(b), "ProtectSystem=strict", "ProtectSytem=strict", 1)
	if out, _ := verify(t, typo); !strings.Contains(out, "ProtectSytem") {
		t.Errorf("systemd-analyze verify said nothing of an unknown key: %q", out)
	}
}

// TestHardening: the sandbox the issue asks for is there (a dedicated
// user, nothing writable but the database's state directory, no new
// privileges, no capabilities), the database lives in that directory,
// and systemd's own exposure score rates it OK.
func TestHardening(t *testing.T) {
	u := unit(t)
	want := map[string]string{
		"User": "patela-configsrv", "Group": "patela-configsrv", "NoNewPrivileges": "yes", "ProtectSystem": "strict",
		"StateDirectory": "patela-configsrv", "ReadWritePaths": "/var/lib/patela-configsrv", "ProtectHome": "yes",
		"PrivateTmp": "yes", "PrivateDevices": "yes", "CapabilityBoundingSet": "", "AmbientCapabilities": "",
		"RestrictSUIDSGID": "yes", "MemoryDenyWriteExecute": "yes", "KillSignal": "SIGTERM",
	}
	for k, v := range want {
		if got := u[k]; len(got) != 1 || got[0] != v {
			t.Errorf("%s=%q, want exactly %q", k, got, v)
		}
	}
	if slices.Contains(u["User"], "root") || u["DynamicUser"] != nil {
		t.Error("the service must run as its own static user")
	}
	if env := u["Environment"]; len(env) != 1 || env[0] != "PATELA_DB=/var/lib/patela-configsrv/patela.db" {
		t.Errorf("Environment=%q: the database must be in the state directory", env)
	}

	sa := testutil.RequireTool(t, "systemd-analyze", "apt-get install systemd")
	d := t.TempDir()
	b, _ := os.ReadFile(unitFile)
	os.WriteFile(filepath.Join(d, unitFile), bytes.ReplaceAll(b, []byte("/usr/local/bin/configsrv"), []byte(bin)), 0o644)
	out, err := exec.Command(sa, "security", "--offline=yes", "--no-pager", filepath.Join(d, unitFile)).CombinedOutput()
	m := regexp.MustCompile(`Overall exposure level for \S+: ([0-9.]+) (\S+)`).FindSubmatch(out)
	if err != nil || m == nil {
		t.Fatalf("systemd-analyze security: %v\n%s", err, out)
	}
	score, _ := strconv.ParseFloat(string(m[1]), 64)
	t.Logf("systemd-analyze security --offline: exposure %.1f %s", score, m[2])
	if score > 2.0 {
		t.Errorf("exposure %.1f (%s): want at most 2.0\n%s", score, m[2], out)
	}
}

// TestCommandLine: the unit's ExecStart and Environment, with their
// paths moved into a scratch directory, run the real server: it serves,
// and on the unit's KillSignal it stops cleanly (status 0) well within
// TimeoutStopSec.
func TestCommandLine(t *testing.T) {
	u := unit(t)
	d := t.TempDir()
	move := strings.NewReplacer("/usr/local/bin/configsrv", bin, "/etc/patela-configsrv", filepath.Join(d, "etc"),
		"/var/lib/patela-configsrv", filepath.Join(d, "state"), ":8443", "127.0.0.1:0")
	// init with the unit's environment: the database goes to the state
	// directory, never into the working directory.
	os.Mkdir(filepath.Join(d, "state"), 0o700)
	initCmd := exec.Command(bin, "init", "--dir", filepath.Join(d, "etc"), "--name", "127.0.0.1")
	initCmd.Env = append(os.Environ(), move.Replace(u["Environment"][0]))
	if out, err := initCmd.CombinedOutput(); err != nil {
		t.Fatalf("configsrv init: %v\n%s", err, out)
	}
	args := strings.Fields(move.Replace(u["ExecStart"][0]))
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Env = append(os.Environ(), move.Replace(u["Environment"][0]))
	stderr, _ := cmd.StderrPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	sc := bufio.NewScanner(stderr)
	serving := false
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "configsrv: serving https://") {
			serving = true
			break
		}
	}
	if !serving {
		t.Fatal("the unit's command line never served")
	}
	go func() {
		for sc.Scan() {
		}
	}()
	if _, err := os.Stat(filepath.Join(d, "state", "patela.db")); err != nil {
		t.Errorf("database not in the state directory: %v", err)
	}
	stop, _ := time.ParseDuration(u["TimeoutStopSec"][0] + "s")
	cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("stopped with %v, want status 0", err)
		}
	case <-time.After(stop):
		t.Errorf("still running %v after SIGTERM", stop)
	}
}

// TestSysusers: systemd-sysusers creates the service's user in a scratch
// root from the sysusers.d file: a system user that cannot log in, with
// the state directory as its home.
func TestSysusers(t *testing.T) {
	su := testutil.RequireTool(t, "systemd-sysusers", "apt-get install systemd")
	root := t.TempDir()
	os.Mkdir(filepath.Join(root, "etc"), 0o755)
	conf, _ := filepath.Abs("patela-configsrv.sysusers")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(ctx, su, "--root="+root, conf).CombinedOutput(); err != nil {
		t.Fatalf("systemd-sysusers: %v\n%s", err, out)
	}
	pw, err := os.ReadFile(filepath.Join(root, "etc/passwd"))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(pw), "\n") {
		f := strings.Split(l, ":")
		if len(f) == 7 && f[0] == "patela-configsrv" {
			uid, _ := strconv.Atoi(f[2])
			if uid == 0 || uid >= 1000 || f[5] != "/var/lib/patela-configsrv" || f[6] != "/usr/sbin/nologin" {
				t.Errorf("passwd line %q: want a system uid, home in the state directory, nologin", l)
			}
			return
		}
	}
	t.Fatalf("no patela-configsrv in passwd:\n%s", pw)
}
