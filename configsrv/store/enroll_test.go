package store

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"database/sql"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"

	"patela/configsrv/attest/softek"
	"patela/internal/api"
	"patela/internal/ekid"
)

func randomID() ekid.ID {
	var id ekid.ID
	rand.Read(id[:])
	return id
}

// Ids are never reused, also after the highest one is removed, and every
// state change moves the token epoch.
func TestIdsNeverReusedEpochMoves(t *testing.T) {
	s := open(t)
	ctx := context.Background()
	a, b := node(t, s), node(t, s)
	if err := s.RemoveNode(ctx, b); err != nil {
		t.Fatal(err)
	}
	if c := node(t, s); c <= b {
		t.Fatalf("after removing node %d, a new node got id %d", b, c)
	}
	epoch := func() int64 {
		au, err := s.NodeAuth(ctx, a)
		if err != nil {
			t.Fatal(err)
		}
		return au.Epoch
	}
	last := epoch()
	for _, st := range []api.NodeState{api.NodeEnabled, api.NodeDisabled, api.NodeEnabled, api.NodeBanned, api.NodeEnabled, api.NodeEnabled} {
		if err := s.SetNodeState(ctx, a, st); err != nil {
			t.Fatal(err)
		}
		if e := epoch(); e <= last {
			t.Fatalf("setting %s left the epoch at %d", st, e)
		} else {
			last = e
		}
	}
	if _, err := s.NodeAuth(ctx, b); !errors.Is(err, ErrNotFound) {
		t.Fatalf("removed node: %v", err)
	}
}

// The pending cap refuses new nodes and writes nothing; known EKs are
// still found; expiry frees room, audited in one row.
func TestPendingCapAndExpiry(t *testing.T) {
	s := open(t)
	ctx := context.Background()
	now := time.Now()
	lim := PendingLimits{Max: 3, Expiry: 7 * 24 * time.Hour}
	var ids []ekid.ID
	day := 24 * time.Hour
	for i, age := range []time.Duration{10 * day, 8 * day, 6 * day} {
		id := randomID()
		ids = append(ids, id)
		if _, created, err := s.AddPending(ctx, id, []byte("ek"), now.Add(-age), lim, nil); err != nil || !created {
			t.Fatalf("node %d: %v %v", i, created, err)
		}
	}
	count := func() (n int) {
		s.DB().QueryRow(`SELECT count(*) FROM nodes`).Scan(&n)
		return n
	}
	// Full, and the sweep ran a moment ago (the third node's creation).
	if _, _, err := s.AddPending(ctx, randomID(), []byte("ek"), now.Add(-6*day), lim, nil); !errors.Is(err, ErrPendingFull) {
		t.Fatalf("over the cap: %v", err)
	}
	if count() != 3 {
		t.Fatalf("%d nodes after a refusal", count())
	}
	if n, created, err := s.AddPending(ctx, ids[2], []byte("ek"), now.Add(-6*day), lim, nil); err != nil || created {
		t.Fatalf("a known EK at the cap: %+v %v %v", n, created, err)
	}
	// An enabled node does not count and never expires.
	n, _ := s.NodeByEK(ctx, ids[0])
	s.SetNodeState(ctx, n.ID, api.NodeEnabled)
	// A week later than the youngest: the one first seen 8 days ago expires.
	if _, created, err := s.AddPending(ctx, randomID(), []byte("ek"), now, lim, nil); err != nil || !created {
		t.Fatalf("after expiry: %v %v", created, err)
	}
	if _, err := s.NodeByEK(ctx, ids[1]); !errors.Is(err, ErrNotFound) {
		t.Fatalf("expired pending node kept: %v", err)
	}
	if _, err := s.NodeByEK(ctx, ids[0]); err != nil {
		t.Fatalf("enabled node expired: %v", err)
	}
	log, _ := s.AuditLog(ctx, 10)
	if len(log) != 1 || log[0].Action != "node.pending_expired" || !strings.Contains(log[0].Details, "1 pending nodes") {
		t.Fatalf("audit: %+v", log)
	}
}

// A database the store creates is 0600, its WAL and SHM files too;
// CheckMode refuses one every user can read and says how to fix it.
func TestDatabaseMode(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "p.db")
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	node(t, s) // a write, so the WAL and SHM exist
	for _, p := range []string{path, path + "-wal", path + "-shm"} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v", p, fi.Mode().Perm())
		}
	}
	s.Close()
	if err := CheckMode(path); err != nil {
		t.Fatal(err)
	}
	os.Chmod(path, 0o644)
	err = CheckMode(path)
	if err == nil || !strings.Contains(err.Error(), "chmod 600 "+path) {
		t.Fatalf("world-readable database: %v", err)
	}
	os.Chmod(path, 0o640)
	if err := CheckMode(path); err != nil {
		t.Fatalf("group-readable database: %v", err)
	}
	if err := CheckMode(filepath.Join(dir, "missing.db")); err != nil {
		t.Fatalf("missing database: %v", err)
	}
}

// A database made by a tree without migration 0003 upgrades in place:
// one of the first wave (migrations 0001 and 0002), and one of the tree
// this landed on (every migration but 0003, which then runs after the
// later ones), each applied the way those trees' runners did. Ids and
// everything hanging off them stay, and so do the later migrations'
// columns and triggers; ek_hash becomes the EK identity, one EK sent in
// several encodings collapses into its strictest row (audited), removed
// ids stay unused, foreign keys and integrity hold, the triggers work.
func TestUpgradeFromMain(t *testing.T) {
	all, _ := fs.Glob(migrations, "migrations/*.sql")
	var later []string
	for _, n := range all {
		if n != "migrations/0003_enrollment.sql" {
			later = append(later, n)
		}
	}
	for name, applied := range map[string][]string{
		"first wave": {"migrations/0001_init.sql", "migrations/0002_config_generation.sql"},
		"main":       later,
	} {
		t.Run(name, func(t *testing.T) { upgradeFrom(t, applied) })
	}
}

func upgradeFrom(t *testing.T, applied []string) {
	path := filepath.Join(t.TempDir(), "main.db")
	db, err := sql.Open("sqlite3", "file:"+path+"?_foreign_keys=on&_journal_mode=WAL")
	if err != nil {
		t.Fatal(err)
	}
	must := func(q string, args ...any) {
		t.Helper()
		if _, err := db.Exec(q, args...); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	must(`CREATE TABLE IF NOT EXISTS schema_migrations (name TEXT PRIMARY KEY, applied INTEGER NOT NULL)`)
	for _, name := range applied {
		body, _ := migrations.ReadFile(name)
		must(string(body))
		must(`INSERT INTO schema_migrations(name, applied) VALUES (?, 1)`, name)
	}
	k1, _ := softek.New()
	k2, _ := softek.New()
	k3, _ := softek.New()
	variant := func(b []byte) []byte { // the same key, noDA flipped: a new node before 0003
		p, _ := tpm2.Unmarshal[tpm2.TPMTPublic](b)
		p.ObjectAttributes.NoDA = true
		return tpm2.Marshal(*p)
	}
	rows := []struct {
		id    int64
		pub   []byte
		state string
	}{
		{1, k1.Public, "enabled"}, {2, variant(k1.Public), "pending"}, {3, k2.Public, "banned"},
		{4, k3.Public, "pending"}, {5, variant(k2.Public), "enabled"},
	}
	for _, r := range rows {
		h := sha256.Sum256(r.pub)
		must(`INSERT INTO nodes(id, ek_hash, ek_public, state, first_seen, last_seen, cpu_model) VALUES (?, ?, ?, ?, 100, 200, 'EPYC')`,
			r.id, h[:], r.pub, r.state)
	}
	must(`INSERT INTO pools(id, cidr, family, gateway, created) VALUES (1, '192.0.2.0/24', 4, '192.0.2.1', 0)`)
	for i, r := range []struct {
		node int64
		name string
	}{{1, "murazzano"}, {1, "castelmagno"}, {5, "raschera"}} {
		must(`INSERT INTO relays(node_id, idx, name, ipv4, ipv4_pool, or_port, created) VALUES (?, ?, ?, ?, 1, 9001, 0)`,
			r.node, i, r.name, "192.0.2."+string(rune('2'+i)))
	}
	must(`INSERT INTO node_settings(node_id, key, value) VALUES (1, 'max_relays', '2'), (5, 'max_relays', '1')`)
	must(`INSERT INTO key_bundles(node_id, version, bundle, updated) VALUES (1, 3, x'0102', 0)`)
	must(`INSERT INTO audit(time, actor, action, target) VALUES (1, 'admin', 'node.remove', 'node:9')`)
	var columns int
	db.QueryRow(`SELECT count(*) FROM pragma_table_info('nodes') WHERE name = 'sealing'`).Scan(&columns)
	later := columns == 1 // a database of the tree this landed on
	if later {
		must(`UPDATE nodes SET sealing = 'release', booted_release = 'patela-1' WHERE id = 1`)
	}
	db.Close()

	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	nodes, err := s.Nodes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	type got struct {
		id            int64
		state         api.NodeState
		relays, want  int
		model         string
		first, second int64
	}
	var have []got
	for _, n := range nodes {
		have = append(have, got{n.ID, n.State, n.Relays, n.RelaysWanted, n.CPUModel, n.FirstSeen.Unix(), n.LastSeen.Unix()})
	}
	want := []got{
		{1, api.NodeEnabled, 2, 2, "EPYC", 100, 200},
		{3, api.NodeBanned, 0, 0, "EPYC", 100, 200},
		{4, api.NodePending, 0, 0, "EPYC", 100, 200},
	}
	if len(have) != len(want) {
		t.Fatalf("nodes after the upgrade: %+v", have)
	}
	for i := range want {
		if have[i] != want[i] {
			t.Errorf("node %+v, want %+v", have[i], want[i])
		}
	}
	for id, k := range map[int64]*softek.EK{1: k1, 3: k2, 4: k3} {
		p, _ := tpm2.Unmarshal[tpm2.TPMTPublic](k.Public)
		ident, _ := ekid.Of(p)
		n, err := s.NodeByEK(ctx, ident)
		if err != nil || n.ID != id {
			t.Errorf("EK of node %d found as %+v %v", id, n, err)
		}
	}
	if b, err := s.KeyBundle(ctx, 1); err != nil || b.Version != 3 {
		t.Errorf("node 1's key bundle: %+v %v", b, err)
	}
	if _, n, _ := s.Settings(ctx, 1); n["max_relays"] != "2" {
		t.Errorf("node 1's settings: %v", n)
	}
	var orphans, merges int
	s.DB().QueryRow(`SELECT (SELECT count(*) FROM relays WHERE node_id NOT IN (SELECT id FROM nodes)) +
		(SELECT count(*) FROM node_settings WHERE node_id NOT IN (SELECT id FROM nodes))`).Scan(&orphans)
	s.DB().QueryRow(`SELECT count(*) FROM audit WHERE action = 'node.merge'`).Scan(&merges)
	if orphans != 0 || merges != 2 {
		t.Errorf("%d orphan rows, %d merges audited (want 0, 2)", orphans, merges)
	}
	integrity(t, s.DB())
	if later {
		if n, _ := s.Node(ctx, 1); n.Sealing != "release" || n.Release != "patela-1" {
			t.Errorf("a later migration's columns lost: %+v", n)
		}
		var trig int
		s.DB().QueryRow(`SELECT count(*) FROM sqlite_schema WHERE type = 'trigger' AND tbl_name = 'nodes' AND name GLOB 'nodegen_*'`).Scan(&trig)
		before, _ := s.NodeConfigGen(ctx, 1)
		if err := s.SetNodeState(ctx, 1, api.NodeDisabled); err != nil {
			t.Fatal(err)
		}
		after, _ := s.NodeConfigGen(ctx, 1)
		if trig != 2 || after == before {
			t.Errorf("a later migration's triggers on nodes: %d, generation %d -> %d", trig, before, after)
		}
		s.SetNodeState(ctx, 1, api.NodeEnabled)
	}
	// Removed ids (9, from the audit log) and merged ones stay unused.
	if id := node(t, s); id != 10 {
		t.Errorf("first node after the upgrade got id %d, want 10", id)
	}
	gen := func() (n int64) { n, _ = s.ConfigGeneration(ctx); return n }
	g := gen()
	if err := s.SetNodeTorrc(ctx, 1, "ContactInfo x\n"); err != nil || gen() == g {
		t.Errorf("node torrc edit did not bump the generation (%v)", err)
	}
	g = gen()
	if err := s.RemoveNode(ctx, 4); err != nil || gen() == g {
		t.Errorf("node removal did not bump the generation (%v)", err)
	}
}

// integrity runs SQLite's integrity and foreign key checks.
func integrity(t *testing.T, db *sql.DB) {
	t.Helper()
	var ok string
	if err := db.QueryRow(`PRAGMA integrity_check`).Scan(&ok); err != nil || ok != "ok" {
		t.Errorf("integrity_check: %q %v", ok, err)
	}
	rows, err := db.Query(`PRAGMA foreign_key_check`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	if rows.Next() {
		t.Error("foreign_key_check found violations")
	}
}
