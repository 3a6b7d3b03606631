// Package tortest checks resolved torrcs with Debian's tor, for the config
// server's tests.
package tortest

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

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
