// Package swtpmtest starts a real software TPM (swtpm) for tests: one
// process per test, its state in a directory the test owns, reached over a
// unix socket so parallel tests never collide on ports.
package swtpmtest

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"patela/internal/testutil"

	"github.com/google/go-tpm/tpm2/transport"
	"github.com/google/go-tpm/tpm2/transport/linuxudstpm"
)

// TPM is a running swtpm.
type TPM struct {
	StateDir string
	Socket   string
	cmd      *exec.Cmd
}

// Require skips the test when swtpm is not installed, and fails it in CI,
// where it must be.
func Require(t testing.TB) {
	t.Helper()
	testutil.RequireTool(t, "swtpm", "apt-get install swtpm swtpm-tools")
}

// Start runs swtpm on a fresh state directory and stops it at test end.
func Start(t testing.TB) *TPM {
	t.Helper()
	return StartState(t, t.TempDir())
}

// StartState runs swtpm on stateDir, which may hold state from an earlier
// run (a "reboot" of the same TPM).
func StartState(t testing.TB, stateDir string) *TPM {
	t.Helper()
	Require(t)
	tp, err := Launch(stateDir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(tp.Stop)
	return tp
}

// Launch starts swtpm outside a test (benchmarks, the demo harness).
func Launch(stateDir string) (*TPM, error) {
	// Socket paths are limited to 108 bytes; keep them short.
	sockDir, err := os.MkdirTemp("", "swtpm")
	if err != nil {
		return nil, err
	}
	tp := &TPM{StateDir: stateDir, Socket: filepath.Join(sockDir, "s")}
	tp.cmd = exec.Command("swtpm", "socket", "--tpm2",
		"--tpmstate", "dir="+stateDir,
		"--server", "type=unixio,path="+tp.Socket,
		"--ctrl", "type=unixio,path="+filepath.Join(sockDir, "c"),
		"--flags", "not-need-init,startup-clear")
	tp.cmd.Stderr = os.Stderr
	if err := tp.cmd.Start(); err != nil {
		os.RemoveAll(sockDir)
		return nil, fmt.Errorf("starting swtpm: %w", err)
	}
	// The socket file appears before swtpm listens on it: wait until a
	// connection is accepted.
	for i := 0; i < 300; i++ {
		if c, err := net.Dial("unix", tp.Socket); err == nil {
			c.Close()
			return tp, nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	tp.Stop()
	return nil, fmt.Errorf("swtpm did not create %s", tp.Socket)
}

// Open returns a transport to the TPM.
func (tp *TPM) Open() (transport.TPMCloser, error) {
	return linuxudstpm.Open(tp.Socket)
}

// Stop kills swtpm and waits for it; the state directory is kept.
func (tp *TPM) Stop() {
	if tp.cmd != nil && tp.cmd.Process != nil {
		tp.cmd.Process.Kill()
		tp.cmd.Wait()
		tp.cmd = nil
	}
	os.RemoveAll(filepath.Dir(tp.Socket))
}

// Manufacture provisions a swtpm state the way a TPM vendor does: `swtpm_setup
// --tpm2 --create-ek-cert` makes the EKs and their certificates from a
// private swtpm-localca configuration (XDG_CONFIG_HOME in a temp dir, so
// the host's /var/lib/swtpm-localca is never touched). It returns the
// state directory, not yet started (StartState), and a directory holding
// the local CA's root and intermediate certificates
// (swtpm-localca-rootca-cert.pem, issuercert.pem).
func Manufacture(t testing.TB) (state, caDir string) {
	t.Helper()
	Require(t)
	testutil.RequireTool(t, "swtpm_setup", "apt-get install swtpm-tools")
	cfg, state := t.TempDir(), t.TempDir()
	env := append(os.Environ(), "XDG_CONFIG_HOME="+cfg)
	flags := "skip-if-exist"
	if os.Geteuid() == 0 {
		flags = "root," + flags // root must say it means to shadow /etc
	}
	for _, args := range [][]string{
		{"--create-config-files", flags},
		{"--tpm2", "--tpmstate", state, "--create-ek-cert"},
	} {
		cmd := exec.Command("swtpm_setup", args...)
		cmd.Env = env
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("swtpm_setup %v: %v\n%s", args, err, out)
		}
	}
	caDir = t.TempDir()
	localca := filepath.Join(cfg, "var/lib/swtpm-localca")
	for _, f := range []string{"swtpm-localca-rootca-cert.pem", "issuercert.pem"} {
		b, err := os.ReadFile(filepath.Join(localca, f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(caDir, f), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return state, caDir
}
