package pid1

import (
	"bytes"
	"context"
	"encoding/pem"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"patela/internal/layout"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestTimeline(t *testing.T) {
	var buf bytes.Buffer
	tl := NewTimeline(slog.New(ConsoleHandler(&buf, false)))
	if err := tl.Run("dhcp", func() error { time.Sleep(20 * time.Millisecond); return nil }); err != nil {
		t.Fatal(err)
	}
	boom := errors.New("boom")
	if err := tl.Run("tpm", func() error { return boom }); err != boom {
		t.Fatalf("err = %v", err)
	}
	ps := tl.Phases()
	if len(ps) != 2 || ps[0].Name != "dhcp" || ps[0].Took < 20*time.Millisecond || ps[1].Start < ps[0].Start+ps[0].Took {
		t.Errorf("phases %+v", ps)
	}
	out := buf.String()
	if !strings.Contains(out, "msg=timeline phase=dhcp start=") || !strings.Contains(out, "took=2") ||
		!strings.Contains(out, "phase=tpm") || !strings.Contains(out, "err=boom") {
		t.Errorf("console:\n%s", out)
	}
	if strings.Contains(out, "time=") || !strings.Contains(out, "up=") {
		t.Errorf("console lines should carry uptime, not wall time:\n%s", out)
	}
}

func TestMountUnderRootOnlyCreatesDirs(t *testing.T) {
	root := t.TempDir()
	if err := Mount(root, slog.Default()); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"dev/pts", "proc", "sys/kernel/security", "run", "tmp", layout.StateDir, layout.RunDir, "etc/patela"} {
		if fi, err := os.Stat(filepath.Join(root, d)); err != nil || !fi.IsDir() {
			t.Errorf("%s: %v", d, err)
		}
	}
	if fi, _ := os.Stat(filepath.Join(root, "tmp")); fi.Mode()&os.ModeSticky == 0 && fi.Mode().Perm() != 0o1777&0o777 {
		t.Logf("tmp mode %v (umask applies outside PID 1)", fi.Mode())
	}
}

func TestWriteEtc(t *testing.T) {
	root := t.TempDir()
	if err := WriteEtc(root, "relay7"); err != nil {
		t.Fatal(err)
	}
	pw, _ := os.ReadFile(filepath.Join(root, "etc/passwd"))
	rc, _ := os.ReadFile(filepath.Join(root, "etc/resolv.conf"))
	hosts, _ := os.ReadFile(filepath.Join(root, "etc/hosts"))
	if !strings.HasPrefix(string(pw), "root:x:0:0:") || strings.Contains(string(rc), "nameserver") || !strings.Contains(string(hosts), "relay7") {
		t.Errorf("passwd=%q resolv=%q hosts=%q", pw, rc, hosts)
	}
}

func TestLoadModules(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "bogus.ko"), []byte("not an ELF module"), 0o644)
	// "kernel" is always in /sys/module: a built-in is skipped quietly.
	err := LoadModules(dir, []string{"kernel", "missing_mod"}, slog.Default())
	if err == nil || !strings.Contains(err.Error(), "module missing_mod: no missing_mod.ko in "+dir) {
		t.Errorf("err = %v", err)
	}
	if strings.Contains(err.Error(), "kernel") && strings.Contains(err.Error(), "module kernel") {
		t.Errorf("built-in reported as failure: %v", err)
	}
	if os.Geteuid() == 0 {
		err := LoadModules(dir, []string{"bogus"}, slog.Default())
		if err == nil || !strings.Contains(err.Error(), "finit_module") {
			t.Errorf("garbage module: err = %v", err)
		}
	}
}

func TestSignals(t *testing.T) {
	ch := Signals(slog.Default())
	for _, tc := range []struct {
		sig  syscall.Signal
		want Action
	}{{syscall.SIGUSR1, Reboot}, {syscall.SIGUSR2, PowerOff}, {syscall.SIGHUP, -1}, {syscall.SIGINT, Reboot}} {
		syscall.Kill(os.Getpid(), tc.sig)
		select {
		case a := <-ch:
			if a != tc.want {
				t.Errorf("%v: %v, want %v", tc.sig, a, tc.want)
			}
		case <-time.After(300 * time.Millisecond):
			if tc.want != -1 {
				t.Errorf("%v: no action", tc.sig)
			}
		}
	}
}

func TestServerTime(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer srv.Close()
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	ctx := context.Background()
	got, err := ServerTime(ctx, srv.URL, ca, ClockFloor(ca))
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Since(got); d < -2*time.Second || d > 2*time.Second {
		t.Errorf("server time %v, now %v", got, time.Now())
	}
	// A floor after the server's time: refused.
	if _, err := ServerTime(ctx, srv.URL, ca, time.Now().Add(time.Hour)); err == nil || !strings.Contains(err.Error(), "before") {
		t.Errorf("floor: err = %v", err)
	}
	// Another CA: the handshake fails, no time is believed.
	other := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer other.Close()
	_ = other
	wrong := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: mustSelfSigned(t)})
	if _, err := ServerTime(ctx, srv.URL, wrong, Epoch); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("wrong CA: err = %v", err)
	}
}

func TestMissing(t *testing.T) {
	all := ""
	for _, m := range mounts {
		all += m.source + " " + m.target + " " + m.fstype + " rw 0 0\n"
	}
	if got := Missing([]byte(all)); len(got) != 0 {
		t.Errorf("missing %v from a full table", got)
	}
	got := Missing([]byte("proc /proc proc rw 0 0\n"))
	if len(got) != len(mounts)-1 || !strings.Contains(strings.Join(got, ","), "devtmpfs on /dev") {
		t.Errorf("missing = %v", got)
	}
}
