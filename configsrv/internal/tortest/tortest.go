// Package tortest checks resolved torrcs with Debian's tor, for the config
// server's tests.
package tortest

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"patela/internal/testutil"
)

var (
	dataDirRE = regexp.MustCompile(`(?m)^DataDirectory .*$`)
	userRE    = regexp.MustCompile(`(?m)^User .*\n`)
)

// Verify runs `tor --verify-config --defaults-torrc /dev/null` on a
// resolved torrc, with its DataDirectory moved to a temp dir and its User
// line dropped (the _tor-<name> users exist on nodes, not here). It skips
// where tor is not installed, except in CI.
func Verify(t testing.TB, text string) {
	t.Helper()
	tor := testutil.RequireTool(t, "tor", "apt-get install tor")
	if !strings.Contains(text, "\nUser _tor-") || !dataDirRE.MatchString(text) {
		t.Fatalf("torrc lacks the managed User/DataDirectory lines:\n%s", text)
	}
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	if err := os.Mkdir(data, 0o700); err != nil {
		t.Fatal(err)
	}
	text = dataDirRE.ReplaceAllLiteralString(text, "DataDirectory "+data)
	text = userRE.ReplaceAllString(text, "")
	f := filepath.Join(dir, "torrc")
	if err := os.WriteFile(f, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(tor, "--verify-config", "--defaults-torrc", "/dev/null", "-f", f).CombinedOutput()
	if err != nil {
		t.Fatalf("tor --verify-config: %v\n%s\ntorrc:\n%s", err, out, text)
	}
}
