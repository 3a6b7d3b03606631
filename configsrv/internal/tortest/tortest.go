// Package tortest checks resolved torrcs with Debian's tor, for the config
// server's tests.
package tortest

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"patela/internal/layout"
	"patela/internal/testutil"
	"patela/internal/torrc"
)

// Verify runs `tor --verify-config --defaults-torrc /dev/null` on what
// tor on a node would run for a served torrc (torrc.ForNode: the agent's
// filter and its own lines, with its paths in a temp dir). It skips where
// tor is not installed, except in CI.
func Verify(t testing.TB, text string) {
	t.Helper()
	tor := testutil.RequireTool(t, "tor", "apt-get install tor")
	served, err := torrc.Parse([]byte(text))
	if err != nil {
		t.Fatalf("served torrc: %v\n%s", err, text)
	}
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	if err := os.Mkdir(data, 0o700); err != nil {
		t.Fatal(err)
	}
	run, _ := torrc.ForNode(served, torrc.AgentLines(data, filepath.Join(dir, "control"), layout.MetricsAddr(10001)))
	f := filepath.Join(dir, "torrc")
	if err := os.WriteFile(f, run.Render(), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(tor, "--verify-config", "--defaults-torrc", "/dev/null", "-f", f).CombinedOutput()
	if err != nil {
		t.Fatalf("tor --verify-config: %v\n%s\ntorrc:\n%s", err, out, run.Render())
	}
}

// Start runs tor for real on what a node would run for a served torrc,
// with files (name → contents) in its key directory, until tor has
// loaded its keys (it logs its identity fingerprint once every key,
// family keys included, is loaded) or exits. It returns tor's output and
// nil, or why tor did not get there. The served torrc must carry
// DisableNetwork 1.
func Start(t testing.TB, text string, keys map[string][]byte) (string, error) {
	t.Helper()
	tor := testutil.RequireTool(t, "tor", "apt-get install tor")
	served, err := torrc.Parse([]byte(text))
	if err != nil {
		t.Fatalf("served torrc: %v\n%s", err, text)
	}
	if len(served.Values("DisableNetwork")) == 0 {
		t.Fatal("tortest.Start needs DisableNetwork 1")
	}
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	if err := os.MkdirAll(filepath.Join(data, "keys"), 0o700); err != nil {
		t.Fatal(err)
	}
	runDir := filepath.Join(dir, "run") // the control socket's, private
	if err := os.Mkdir(runDir, 0o700); err != nil {
		t.Fatal(err)
	}
	for name, b := range keys {
		if err := os.WriteFile(filepath.Join(data, "keys", name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// The agent's lines, less what this host cannot give: the signing
	// key an OfflineMasterKey tor needs comes from the node's vault, and
	// the metrics address is the node's (tor makes its own keys here).
	var agent []torrc.Line
	for _, l := range torrc.AgentLines(data, filepath.Join(runDir, "control"), layout.MetricsAddr(10001)) {
		switch l.Key {
		case "OfflineMasterKey", "MetricsPort", "MetricsPortPolicy":
		default:
			agent = append(agent, l)
		}
	}
	run, _ := torrc.ForNode(served, agent)
	f := filepath.Join(dir, "torrc")
	if err := os.WriteFile(f, run.Render(), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(tor, "--defaults-torrc", "/dev/null", "-f", f)
	out := &testutil.SyncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	deadline := time.After(30 * time.Second)
	for {
		select {
		case err := <-exited:
			return out.String(), fmt.Errorf("tor exited: %v", err)
		case <-deadline:
			cmd.Process.Kill()
			<-exited
			return out.String(), errors.New("tor did not load its keys in 30 s")
		case <-time.After(20 * time.Millisecond):
		}
		if strings.Contains(out.String(), "Your Tor server's identity key fingerprint is") {
			// It got there; nothing of its state is wanted. (A SIGTERM
			// this early in its start can go unhandled.)
			cmd.Process.Kill()
			<-exited
			return out.String(), nil
		}
	}
}
