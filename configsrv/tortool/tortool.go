// Package tortool runs tor on the config server host, for the two things
// the server asks of tor itself: making a Happy Families key (`tor
// --keygen-family`) and checking a torrc as the node would run it (`tor
// --verify-config`), so a value tor refuses is refused at import with
// tor's own words, not at the node.
package tortool

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"patela/internal/familykey"
	"patela/internal/layout"
	"patela/internal/torrc"
)

// Timeout bounds one tor run.
const Timeout = 30 * time.Second

// ErrNoTor means no tor binary was found.
var ErrNoTor = errors.New("no tor binary found (install Debian's tor: apt-get install tor; or name one with --tor PATH)")

// Find resolves the tor binary: path as given, or "tor" on PATH.
func Find(path string) (string, error) {
	if path == "" {
		path = "tor"
	}
	p, err := exec.LookPath(path)
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrNoTor, err)
	}
	return p, nil
}

// run runs tor with args in dir and returns its combined output.
func run(ctx context.Context, tor, dir string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, Timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, tor, args...)
	cmd.Dir = dir
	cmd.Env = []string{"HOME=" + dir} // tor reads nothing of the admin's
	return cmd.CombinedOutput()
}

var familyIDLine = regexp.MustCompile(`(?m)^FamilyId (\S+)\s*$`)

// KeygenFamily makes a new family key with `tor --keygen-family` in a
// private temporary directory, which it removes, and returns the secret
// and its family id. The id tor prints must be the id of the secret it
// wrote.
func KeygenFamily(ctx context.Context, tor string) (secret []byte, id string, err error) {
	dir, err := os.MkdirTemp("", "patela-family-")
	if err != nil {
		return nil, "", err
	}
	defer os.RemoveAll(dir)
	out, err := run(ctx, tor, dir, "--keygen-family", "key")
	if err != nil {
		return nil, "", fmt.Errorf("tor --keygen-family: %v\n%s", err, out)
	}
	m := familyIDLine.FindSubmatch(out)
	if m == nil {
		return nil, "", fmt.Errorf("tor --keygen-family printed no FamilyId line:\n%s", out)
	}
	file, err := os.ReadFile(filepath.Join(dir, "key"+familykey.FileSuffix))
	if err != nil {
		return nil, "", fmt.Errorf("tor --keygen-family: %w", err)
	}
	secret, err = familykey.Parse(file)
	clear(file)
	if err != nil {
		return nil, "", fmt.Errorf("the key tor wrote: %w", err)
	}
	if id, _ = familykey.ID(secret); id != string(m[1]) {
		return nil, "", fmt.Errorf("tor printed FamilyId %s for a key whose id is %s", m[1], id)
	}
	return secret, id, nil
}

// VerifyError is a torrc tor refused, with what tor said.
type VerifyError struct {
	Said string // tor's complaint: its [warn] and [err] lines
}

func (e *VerifyError) Error() string { return "tor --verify-config refused it: " + e.Said }

// Verify runs `tor --verify-config` on what tor on a node runs for the
// served torrc of the relay with uid: the lines the agent keeps and its
// own (torrc.ForNode), with the agent's paths in a temporary directory of
// this host.
func Verify(ctx context.Context, tor string, served *torrc.Config, uid int) error {
	dir, err := os.MkdirTemp("", "patela-verify-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	data := filepath.Join(dir, "data")
	if err := os.Mkdir(data, 0o700); err != nil {
		return err
	}
	onNode, _ := torrc.ForNode(served, torrc.AgentLines(data, filepath.Join(dir, "control"), layout.MetricsAddr(uid)))
	f := filepath.Join(dir, "torrc")
	if err := os.WriteFile(f, onNode.Render(), 0o600); err != nil {
		return err
	}
	out, err := run(ctx, tor, dir, "--verify-config", "--defaults-torrc", "/dev/null", "-f", f)
	if err == nil && bytes.Contains(out, []byte("Configuration was valid")) {
		return nil
	}
	if ctx.Err() != nil || errors.Is(err, exec.ErrNotFound) {
		return fmt.Errorf("running tor --verify-config: %w", err)
	}
	return &VerifyError{Said: complaint(out, err)}
}

// complaint keeps tor's warnings and errors, less their timestamps.
func complaint(out []byte, err error) string {
	var lines []string
	for _, l := range strings.Split(string(out), "\n") {
		if i := strings.Index(l, "[warn] "); i >= 0 {
			l = l[i+len("[warn] "):]
		} else if i := strings.Index(l, "[err] "); i >= 0 {
			l = l[i+len("[err] "):]
		} else {
			continue
		}
		if strings.Contains(l, "You are running Tor as root") {
			continue
		}
		lines = append(lines, l)
	}
	if len(lines) == 0 {
		return fmt.Sprintf("%v: %s", err, bytes.TrimSpace(out))
	}
	return strings.Join(lines, "; ")
}
