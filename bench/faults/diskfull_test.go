package faults_test

import (
	"context"
	"errors"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"patela/bench/dbcheck"
	"patela/bench/loadgen"
	"patela/bench/srvproc"
	"patela/configsrv/store"
	"patela/internal/api"
	"patela/internal/testutil"
)

// smallVolume mounts a 2 MiB tmpfs for the test and unmounts it at the end.
func smallVolume(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		testutil.SkipOrFail(t, "mounting a tmpfs needs root (CI runs as root)")
	}
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=2m,mode=0700"); err != nil {
		t.Fatalf("mount tmpfs: %v", err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, 0); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	return dir
}

// fill writes a file until the volume is full and returns its path.
func fill(t *testing.T, dir string) string {
	t.Helper()
	p := filepath.Join(dir, "filler")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 4096)
	for {
		if _, err := f.Write(buf); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatal(err)
			}
			return p
		}
	}
}

func truncateWAL(t *testing.T, db string) {
	t.Helper()
	st, err := store.Open(db)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	var busy, logPages, done int
	if err := st.DB().QueryRow(`PRAGMA wal_checkpoint(TRUNCATE)`).Scan(&busy, &logPages, &done); err != nil || busy != 0 {
		t.Fatalf("wal_checkpoint(TRUNCATE): busy=%d %v", busy, err)
	}
}

// counts is a fingerprint of the rows the failed writes must not touch.
func counts(t *testing.T, db string) string {
	t.Helper()
	st, err := store.Open(db)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	var parts []string
	for _, q := range []string{`SELECT count(*) FROM nodes`, `SELECT count(*) FROM relays`,
		`SELECT count(*) FROM nodes WHERE state = 'enabled'`, `SELECT count(*) FROM key_bundles`,
		`SELECT coalesce(sum(cpus), 0) FROM nodes`} {
		var n int
		if err := st.DB().QueryRow(q).Scan(&n); err != nil {
			t.Fatal(err)
		}
		parts = append(parts, strconv.Itoa(n))
	}
	return strings.Join(parts, "/")
}

// The database lives on a 2 MiB volume that fills up while the server
// runs: writes through the API and the CLI fail with clear errors and
// change nothing, reads keep working, and once space is freed the same
// server process works again on an intact database.
func TestDiskFull(t *testing.T) {
	vol := smallVolume(t)
	srv, err := srvproc.Setup(bin, t.TempDir(), srvproc.BenchPools)
	if err != nil {
		t.Fatal(err)
	}
	// Move the database (only) to the small volume; the log stays where
	// the test can read it.
	data, err := os.ReadFile(srv.DB)
	if err != nil {
		t.Fatal(err)
	}
	srv.DB = filepath.Join(vol, "patela.db")
	if err := os.WriteFile(srv.DB, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Kill() })
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	nodes, err := loadgen.NewNodes(srv, 6, netip.MustParseAddr("127.3.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	fleet, newcomer := nodes[:5], nodes[5]
	for _, n := range fleet {
		if err := n.FirstContact(ctx, nil); err != nil {
			t.Fatal(err)
		}
	}
	if err := loadgen.Enable(ctx, srv.DB, fleet[:4]); err != nil {
		t.Fatal(err)
	}
	for _, n := range fleet[:4] {
		if err := n.Boot(ctx, &api.Specs{CPUs: 2, MemoryBytes: 8 << 30}, nil); err != nil {
			t.Fatal(err)
		}
	}
	// Empty the WAL into the database and truncate it, so that every write
	// needs new space (a WAL keeps its size and would take a few more).
	before := counts(t, srv.DB)
	truncateWAL(t, srv.DB)
	filler := fill(t, vol)

	// API writes: a first contact (new node), an allocation, a heartbeat,
	// a key bundle. Each fails as a server error, not as a success.
	n := fleet[0]
	writes := map[string]func() error{
		"first contact": func() error { return newcomer.FirstContact(ctx, nil) },
		"specs": func() error {
			_, err := n.Client.Specs(ctx, n.Token, &api.Specs{CPUs: 4, MemoryBytes: 8 << 30})
			return err
		},
		"status": func() error { return n.Client.Status(ctx, n.Token, &api.Status{BootID: "full", UptimeS: 1}) },
		"keys": func() error {
			return n.Client.PutKeys(ctx, n.Token, &api.KeyBundle{Bundle: []byte("ciphertext"), Version: 1})
		},
	}
	for name, w := range writes {
		err := w()
		var ae *api.Error
		if !errors.As(err, &ae) || ae.Status != http.StatusInternalServerError || ae.Code != api.CodeInternal {
			t.Errorf("%s on a full disk: %v, want 500 internal", name, err)
		}
	}
	// Reads still work.
	if cfg, err := n.Client.Config(ctx, n.Token); err != nil || len(cfg.Relays) != 2 {
		t.Errorf("config on a full disk: %v (%d relays)", err, len(cfg.Relays))
	}
	// The CLI says why and claims nothing.
	for _, args := range [][]string{
		{"node", "enable", strconv.FormatInt(fleet[4].ID, 10)},
		{"pool", "add", "198.51.100.0/24", "--gateway", "198.51.100.1"},
	} {
		out, err := srv.Admin(args...)
		t.Logf("on a full disk: %v", err)
		if err == nil || !strings.Contains(err.Error(), "full") || out != "" {
			t.Errorf("configsrv %s on a full disk: out %q, err %v; want an error saying the disk is full", strings.Join(args, " "), out, err)
		}
	}
	logs, _ := srv.Logs()
	if !strings.Contains(logs, "database or disk is full") {
		t.Errorf("the server log does not say the disk is full:\n%s", logs)
	}

	// Free the space: nothing changed, nothing is corrupt, and the same
	// process serves writes again.
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	if after := counts(t, srv.DB); after != before {
		t.Errorf("rows changed by failed writes: %s -> %s (nodes/relays/enabled/bundles/cpus)", before, after)
	}
	st, err := store.Open(srv.DB)
	if err != nil {
		t.Fatal(err)
	}
	problems, err := dbcheck.Check(ctx, st)
	st.Close()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("after the disk was full: %s", p)
	}
	for name, w := range writes {
		if err := w(); err != nil && !(name == "first contact" && api.IsCode(err, api.CodePending)) {
			t.Errorf("%s after freeing space: %v", name, err)
		}
	}
	if out, err := srv.Admin("node", "enable", strconv.FormatInt(fleet[4].ID, 10)); err != nil || !strings.Contains(out, "enabled") {
		t.Errorf("node enable after freeing space: %q %v", out, err)
	}
	if pid := srv.PID(); pid == 0 {
		t.Error("the server is not running")
	} else if _, err := os.Stat("/proc/" + strconv.Itoa(pid)); err != nil {
		t.Errorf("the server process died: %v", err)
	}
}
