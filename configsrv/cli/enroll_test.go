package cli

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"patela/configsrv/attest"
	"patela/configsrv/attest/softek"
	"patela/configsrv/store"
	"patela/internal/api"
)

// A database every user may read is refused, by every command, with the
// command that fixes it; one the CLI creates is 0600.
func TestWorldReadableDatabaseRefused(t *testing.T) {
	db := filepath.Join(t.TempDir(), "p.db")
	ok(t, db, "pool", "add", "192.0.2.0/24", "--gateway", "192.0.2.1")
	for _, p := range []string{db, db + "-wal", db + "-shm"} {
		if fi, err := os.Stat(p); err == nil && fi.Mode().Perm() != 0o600 {
			t.Errorf("%s created %v", p, fi.Mode().Perm())
		}
	}
	os.Chmod(db, 0o644)
	for _, args := range [][]string{{"node", "list"}, {"pool", "add", "198.51.100.0/24", "--gateway", "198.51.100.1"},
		{"serve", "--dir", t.TempDir()}} {
		fails(t, db, "run `chmod 600 "+db+"` and try again", args...)
	}
	os.Chmod(db, 0o600)
	if out := ok(t, db, "pool", "list"); !strings.Contains(out, "192.0.2.0/24") || strings.Contains(out, "198.51.100") {
		t.Fatalf("pools after the refusals:\n%s", out)
	}
}

// What a node reports reaches the terminal escaped: an escape sequence,
// a carriage return or a newline in cpu_model, boot_id or a relay's
// state cannot clear the screen or fake a line of node show, node list,
// relay list or audit.
func TestNodeStringsEscaped(t *testing.T) {
	db := filepath.Join(t.TempDir(), "p.db")
	ok(t, db, "pool", "add", "192.0.2.0/29", "--gateway", "192.0.2.1") // 5 addresses
	st, err := store.Open(db)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	ekPub, _ := softek.New()
	ek, _ := attest.NewEK(ekPub.Public)
	n, _, err := st.AddPending(ctx, ek.ID, ekPub.Public, time.Now(), store.PendingLimits{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	st.SetNodeState(ctx, n.ID, api.NodeEnabled)
	evil := "\x1b[2J\x1b[H\rnode 9\n  state        enabled\u202e"
	if a, err := st.Allocate(ctx, n.ID, &api.Specs{CPUs: 8, MemoryBytes: 64 << 30, CPUModel: evil}, time.Now()); err != nil || a.After != 5 {
		t.Fatalf("allocate: %+v %v", a, err)
	}
	if _, err := st.RecordStatus(ctx, n.ID, &api.Status{BootID: evil, Relays: []api.RelayStatus{
		{Name: "murazzano", State: api.RelayState("\x1b]0;owned\x07running"), Fingerprint: "\r" + strings.Repeat("A", 40)}}}, nil, time.Now()); err != nil {
		t.Fatal(err)
	}
	st.Audit(ctx, "client:192.0.2.9", "attest.bad_ek", "-", "last: \x1b[31mred\nline")
	st.Close()
	id := strconv.FormatInt(n.ID, 10)
	show := ok(t, db, "node", "show", id)
	for _, out := range []string{show, ok(t, db, "node", "list"), ok(t, db, "relay", "list"), ok(t, db, "audit")} {
		if strings.ContainsAny(out, "\x1b\r\x07\u202e") {
			t.Errorf("raw control characters reach the terminal:\n%q", out)
		}
		states := 0
		for _, line := range strings.Split(out, "\n") {
			if strings.HasPrefix(line, "  state ") {
				states++
			}
			if strings.HasPrefix(line, "node 9") {
				states += 2
			}
		}
		if states > 1 {
			t.Errorf("a node faked a line:\n%s", out)
		}
	}
	if !strings.Contains(show, `\x1b[2J\x1b[H\rnode 9\n  state        enabled\u202e`) {
		t.Errorf("node show does not show the escaped cpu model:\n%s", show)
	}
	// The pools held 5 of the 8 relays the node wants.
	if !strings.Contains(show, "wants 8, has 5: pool full") {
		t.Errorf("node show does not say the pools are full:\n%s", show)
	}
	if out := ok(t, db, "node", "list"); !strings.Contains(out, "5 of 8") {
		t.Errorf("node list does not show the shortfall:\n%s", out)
	}
	// JSON keeps the bytes (encoding/json escapes them).
	if out := ok(t, db, "node", "show", id, "--json"); !strings.Contains(out, `\u001b[2J`) || strings.Contains(out, "\x1b") {
		t.Errorf("node show --json:\n%s", out)
	}
}
