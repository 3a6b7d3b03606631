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
	"slices"
	"sort"
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

// enrollment are the migrations of issue 12; a database made before them
// has every other one.
var enrollment = map[string]bool{"migrations/0016_enrollment.sql": true, "migrations/0017_node_ids.sql": true}

// A database made by a tree without the enrollment migrations upgrades in
// place: one of the first wave (0001 and 0002; the later ones run first)
// and one of the tree this landed on (every other migration), each applied
// the way those trees' runners did and populated in every table that
// references nodes. After the upgrade every row is as it was but for what
// the migrations mean to change: ek_hash is the EK identity, the new
// columns are filled, one EK sent in several encodings collapses into its
// strictest row, and what hung off the other rows is gone exactly as
// SQLite's own cascade (and the triggers of a removal) would have left it.
// Removed ids stay unused, foreign keys and integrity hold, the triggers
// of the other migrations still work.
func TestUpgradeFromMain(t *testing.T) {
	all, _ := fs.Glob(migrations, "migrations/*.sql")
	var main []string
	for _, n := range all {
		if !enrollment[n] {
			main = append(main, n)
		}
	}
	for name, applied := range map[string][]string{
		"first wave": {"migrations/0001_init.sql", "migrations/0002_config_generation.sql"},
		"main":       main,
	} {
		t.Run(name, func(t *testing.T) { upgradeFrom(t, applied) })
	}
}

func upgradeFrom(t *testing.T, applied []string) {
	dir := t.TempDir()
	path := filepath.Join(dir, "main.db")
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
	variant := func(b []byte) []byte { // the same key, noDA flipped: a new node before the identity
		p, _ := tpm2.Unmarshal[tpm2.TPMTPublic](b)
		p.ObjectAttributes.NoDA = true
		return tpm2.Marshal(*p)
	}
	garbage := []byte("not a TPMT_PUBLIC")
	rows := []struct {
		id    int64
		pub   []byte
		state string
	}{
		{1, k1.Public, "enabled"}, {2, variant(k1.Public), "pending"}, {3, k2.Public, "banned"},
		{4, k3.Public, "pending"}, {5, variant(k2.Public), "enabled"}, {6, garbage, "disabled"},
	}
	merged := []int64{2, 5} // 2 is k1 (enabled: 1 wins), 5 is k2 (banned: 3 wins)
	for _, r := range rows {
		h := sha256.Sum256(r.pub)
		must(`INSERT INTO nodes(id, ek_hash, ek_public, ak_name, state, first_seen, last_seen, attested_at, boot_id, uptime_s, cpus, memory_bytes, cpu_model, torrc)
			VALUES (?, ?, ?, x'000b01', ?, 100, 200, 150, 'boot-' || ?, 60, 4, 8000000000, 'EPYC', 'ContactInfo n' || ?)`,
			r.id, h[:], r.pub, r.state, r.id, r.id)
	}
	must(`INSERT INTO pools(id, cidr, family, gateway, created) VALUES (1, '192.0.2.0/24', 4, '192.0.2.1', 0),
		(2, '2001:db8::/64', 6, '2001:db8::1', 0)`)
	for i, r := range []struct {
		node int64
		name string
	}{{1, "murazzano"}, {1, "castelmagno"}, {5, "raschera"}, {2, "bra"}} {
		must(`INSERT INTO relays(id, node_id, idx, name, ipv4, ipv4_pool, ipv6, ipv6_pool, or_port, torrc, created, fingerprint, ed25519_id, run_state, restarts, reported_at)
			VALUES (?, ?, ?, ?, ?, 1, ?, 2, 9001, 'Nickname x', 0, ?, 'ed' || ?, 'running', 1, 300)`,
			i+1, r.node, i, r.name, "192.0.2."+string(rune('2'+i)), "2001:db8::"+string(rune('2'+i)),
			strings.Repeat(string(rune('A'+i)), 40), i)
	}
	must(`INSERT INTO global_settings(key, value) VALUES ('max_relays', '4')`)
	must(`INSERT INTO global_torrc(id, torrc) VALUES (1, 'ExitRelay 1')`)
	must(`INSERT INTO node_settings(node_id, key, value) VALUES (1, 'max_relays', '2'), (5, 'max_relays', '1'), (2, 'family', 'b')`)
	must(`INSERT INTO key_bundles(node_id, version, bundle, updated) VALUES (1, 3, x'0102', 0), (5, 7, x'0304', 0)`)
	must(`INSERT INTO audit(time, actor, action, target) VALUES (1, 'admin', 'node.remove', 'node:9')`)
	has := func(table string) bool {
		var n int
		db.QueryRow(`SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = ?`, table).Scan(&n)
		return n == 1
	}
	// The tables later migrations added (or dropped: challenges, 0019),
	// where this database has them.
	for table, q := range map[string]string{
		"challenges": `INSERT INTO challenges(id, node_id, secret_hash, ak_name, expires) VALUES ('c1', 1, x'01', x'02', 9000000000000000000),
			('c2', 2, x'03', x'04', 9000000000000000000)`,
		"releases":     `INSERT INTO releases(id, name, kind, record, added) VALUES (1, 'patela-1', 'uki', x'7b7d', 10)`,
		"node_agent":   `INSERT INTO node_agent(node_id, features) VALUES (1, 'family-key'), (5, 'family-key')`,
		"family_keys":  `INSERT INTO family_keys(family, family_id, secret, created, origin) VALUES ('fleet', 'fid', zeroblob(64), 1, 'created')`,
		"attestations": `INSERT INTO attestations(node_id, status, release, pcrs, at) VALUES (1, 'release', 'patela-1', '{}', 5), (5, 'unknown', '', '{}', 5)`,
		"rollout_nodes": `INSERT INTO rollouts(id, release, max_unavailable, state, started) VALUES (1, 'patela-1', 1, 'running', 1);
			INSERT INTO rollout_nodes(rollout_id, node_id, seq) VALUES (1, 1, 0), (1, 5, 1), (1, 3, 2)`,
		"node_metrics": `INSERT INTO node_metrics VALUES (1, 300, 1, 2, 3), (5, 300, 4, 5, 6)`,
		"relay_metrics": `INSERT INTO relay_metrics VALUES (1, 300, '', 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 'Exit', 0, 0, 60, 11, 1.5, 2.5),
			(3, 300, '', 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 'Exit', 0, 0, 60, 11, NULL, NULL)`,
	} {
		if has(table) {
			must(q)
		}
	}
	if has("nodes") {
		var n int
		db.QueryRow(`SELECT count(*) FROM pragma_table_info('nodes') WHERE name = 'sealing'`).Scan(&n)
		if n == 1 {
			must(`UPDATE nodes SET sealing = 'release', booted_release = 'patela-1' WHERE id IN (1, 5)`)
			must(`UPDATE relays SET refused_options = 'Sandbox', keys_unsaved = 1, torrc_applied = 'ab', torrc_differs = 1 WHERE id IN (1, 3)`)
		}
	}
	// Every table that references nodes, directly or through another
	// (relay_metrics through relays), has rows here; a migration that adds
	// one adds its rows above.
	refs := map[string]bool{"nodes": true}
	for grew := true; grew; {
		grew = false
		r, err := db.Query(`SELECT m.name, f."table" FROM sqlite_schema m, pragma_foreign_key_list(m.name) f WHERE m.type = 'table'`)
		if err != nil {
			t.Fatal(err)
		}
		for r.Next() {
			var child, parent string
			r.Scan(&child, &parent)
			if refs[parent] && !refs[child] {
				refs[child], grew = true, true
			}
		}
		r.Close()
	}
	for table := range refs {
		var n int
		db.QueryRow(`SELECT count(*) FROM "` + table + `"`).Scan(&n)
		if n == 0 {
			t.Errorf("table %s references nodes but the test gave it no rows", table)
		}
	}
	// What the upgrade must leave: this database with the migrations it
	// lacks but the enrollment ones applied, then the merged rows removed
	// by SQLite itself, foreign keys on.
	wantPath := filepath.Join(dir, "want.db")
	must(`VACUUM INTO ?`, wantPath)
	db.Close()
	wdb, err := sql.Open("sqlite3", "file:"+wantPath+"?_foreign_keys=on")
	if err != nil {
		t.Fatal(err)
	}
	defer wdb.Close()
	all, _ := fs.Glob(migrations, "migrations/*.sql")
	for _, name := range all {
		if enrollment[name] || slices.Contains(applied, name) {
			continue
		}
		body, _ := migrations.ReadFile(name)
		if _, err := wdb.Exec(string(body)); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}
	for _, id := range merged {
		if _, err := wdb.Exec(`DELETE FROM nodes WHERE id = ?`, id); err != nil {
			t.Fatal(err)
		}
	}

	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()

	// Row by row: every table but nodes and audit as SQLite's cascade
	// left it (config_generation and node_config_gen included: the
	// removals fired the same triggers); nodes with every column it had
	// but ek_hash; audit with one merge row per merged node added.
	var tables []string
	tr, _ := wdb.Query(`SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT IN ('sqlite_sequence', 'schema_migrations') ORDER BY name`)
	for tr.Next() {
		var n string
		tr.Scan(&n)
		tables = append(tables, n)
	}
	tr.Close()
	for _, table := range tables {
		var cols []string
		cr, _ := wdb.Query(`SELECT name FROM pragma_table_info(?) ORDER BY cid`, table)
		for cr.Next() {
			var c string
			cr.Scan(&c)
			if !(table == "nodes" && c == "ek_hash") && !(table == "audit" && c == "id") {
				cols = append(cols, "quote("+c+")")
			}
		}
		cr.Close()
		q := `SELECT ` + strings.Join(cols, " || ',' || ") + ` FROM "` + table + `"`
		if table == "audit" {
			q += ` WHERE action != 'node.merge'`
		}
		want, have := dump(t, wdb, q), dump(t, s.DB(), q)
		if strings.Join(want, "\n") != strings.Join(have, "\n") {
			t.Errorf("table %s after the upgrade:\n%s\nwant:\n%s", table, strings.Join(have, "\n"), strings.Join(want, "\n"))
		}
	}
	var merges int
	s.DB().QueryRow(`SELECT count(*) FROM audit WHERE action = 'node.merge' AND actor = 'migration:0016' AND target IN ('node:2', 'node:5')`).Scan(&merges)
	if merges != len(merged) {
		t.Errorf("%d merges audited, want %d", merges, len(merged))
	}
	// What the migrations mean to change: the identity, the new columns.
	for id, pub := range map[int64][]byte{1: k1.Public, 3: k2.Public, 4: k3.Public, 6: garbage} {
		want := sha256.Sum256(pub) // a public area that does not parse keeps its hash
		if p, err := tpm2.Unmarshal[tpm2.TPMTPublic](pub); err == nil {
			ident, _ := ekid.Of(p)
			want = ident
		}
		var hash []byte
		var epoch, wanted int64
		s.DB().QueryRow(`SELECT ek_hash, token_epoch, relays_wanted FROM nodes WHERE id = ?`, id).Scan(&hash, &epoch, &wanted)
		var relays int64
		s.DB().QueryRow(`SELECT count(*) FROM relays WHERE node_id = ?`, id).Scan(&relays)
		if string(hash) != string(want[:]) || epoch != 0 || wanted != relays {
			t.Errorf("node %d: ek_hash %x (want %x), epoch %d, relays_wanted %d (has %d)", id, hash, want, epoch, wanted, relays)
		}
		if id == 6 {
			continue
		}
		n, err := s.NodeByEK(ctx, ekid.ID(want))
		if err != nil || n.ID != id {
			t.Errorf("EK of node %d found as %+v %v", id, n, err)
		}
	}
	var create string
	s.DB().QueryRow(`SELECT sql FROM sqlite_schema WHERE name = 'nodes'`).Scan(&create)
	if !strings.Contains(create, "AUTOINCREMENT") {
		t.Errorf("nodes after the upgrade: %s", create)
	}
	integrity(t, s.DB())

	// The other migrations' triggers on nodes and on the tables that
	// reference it still work.
	gen := func() (n int64) { n, _ = s.ConfigGeneration(ctx); return n }
	if has0010 := len(applied) > 2; has0010 {
		before, _ := s.NodeConfigGen(ctx, 1)
		if err := s.SetNodeState(ctx, 1, api.NodeDisabled); err != nil {
			t.Fatal(err)
		}
		after, _ := s.NodeConfigGen(ctx, 1)
		if after == before {
			t.Errorf("a later migration's trigger on nodes: generation %d -> %d", before, after)
		}
		s.SetNodeState(ctx, 1, api.NodeEnabled)
	}
	g := gen()
	if err := s.SetNodeTorrc(ctx, 1, "ContactInfo x\n"); err != nil || gen() == g {
		t.Errorf("node torrc edit did not bump the generation (%v)", err)
	}
	// A removal still cascades into every table that references nodes.
	g = gen()
	if err := s.RemoveNode(ctx, 1); err != nil || gen() == g {
		t.Errorf("node removal did not bump the generation (%v)", err)
	}
	for table := range refs {
		var n int
		s.DB().QueryRow(`SELECT count(*) FROM pragma_foreign_key_list(?) f WHERE f."table" = 'nodes'`, table).Scan(&n)
		if n == 0 || table == "nodes" {
			continue
		}
		var left int
		s.DB().QueryRow(`SELECT count(*) FROM "` + table + `" WHERE node_id = 1`).Scan(&left)
		if left != 0 {
			t.Errorf("%s keeps %d rows of removed node 1", table, left)
		}
	}
	integrity(t, s.DB())
	// Removed ids (9, from the audit log) and merged ones stay unused.
	if id := node(t, s); id != 10 {
		t.Errorf("first node after the upgrade got id %d, want 10", id)
	}
}

// dump returns the rows of q, one string each, sorted.
func dump(t *testing.T, db *sql.DB, q string) []string {
	t.Helper()
	r, err := db.Query(q)
	if err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	defer r.Close()
	var out []string
	for r.Next() {
		var s string
		if err := r.Scan(&s); err != nil {
			t.Fatal(err)
		}
		out = append(out, s)
	}
	sort.Strings(out)
	return out
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
