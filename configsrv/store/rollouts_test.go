package store

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"patela/internal/api"
	"patela/internal/pcr"
	"patela/internal/release"
)

func addRelease(t testing.TB, s *Store, name string) {
	t.Helper()
	r, err := release.New(name, release.KindUKI, map[int]pcr.Value{4: sha256.Sum256([]byte(name)), 11: {1}, 12: {}},
		release.UKIPolicyPCRs, map[string]string{"uki": strings.Repeat("ab", 32)})
	if err != nil {
		t.Fatal(err)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err := r.Approve(key); err != nil {
		t.Fatal(err)
	}
	if err := s.AddRelease(context.Background(), r, time.Now()); err != nil {
		t.Fatal(err)
	}
}

// fleetNode is an enabled node with one relay.
func fleetNode(t *testing.T, s *Store) int64 {
	t.Helper()
	id := node(t, s)
	ctx := context.Background()
	if err := s.SetNodeState(ctx, id, api.NodeEnabled); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Allocate(ctx, id, &api.Specs{CPUs: 1, MemoryBytes: 1 << 30}, time.Now()); err != nil {
		t.Fatal(err)
	}
	return id
}

// boots records node id attesting rel (reset count reset) then a
// heartbeat of boot with its relays in state.
func boots(t *testing.T, s *Store, id int64, rel string, reset int64, boot string, state api.RelayState) {
	t.Helper()
	ctx := context.Background()
	a := &Attestation{NodeID: id, Status: AttestRelease, Release: rel, ResetCount: reset, HasReset: true, At: time.Now(),
		PCRs: map[int]pcr.Value{4: {}}, EventLog: "replayed"}
	if rel == "" {
		a.Status = AttestUnknown
	}
	if _, err := s.RecordAttestation(ctx, a); err != nil {
		t.Fatal(err)
	}
	rs, err := s.Relays(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	st := &api.Status{BootID: boot}
	for _, r := range rs {
		st.Relays = append(st.Relays, api.RelayStatus{Name: r.Name, State: state})
	}
	if _, err := s.RecordStatus(ctx, id, st, nil, time.Now()); err != nil {
		t.Fatal(err)
	}
}

// TestRollout drives a rollout through the store as serve does: one node
// at a time, the reboot request in the config, the next node only when
// the previous attests the release with its relays running, a node back
// on the wrong release stopping it.
func TestRollout(t *testing.T) { rolloutScenario(t, open(t)) }

// TestRolloutUpgradedDatabase opens a database made by the schema before
// issue 14 (every migration but 0005, 0014 and the later 0019, with a node
// and a pending challenge in it): 0005 and 0014 then run after 0015, and
// the rollout behaves as on a new database; the old node is unattested,
// the old challenge is gone with its table (0019: challenges are held in
// memory since).
func TestRolloutUpgradedDatabase(t *testing.T) {
	path := filepath.Join(t.TempDir(), "old.db")
	db, err := sql.Open("sqlite3", "file:"+path+"?_foreign_keys=on")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`CREATE TABLE schema_migrations (name TEXT PRIMARY KEY, applied INTEGER NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	names, _ := fs.Glob(migrations, "migrations/*.sql")
	sort.Strings(names)
	for _, name := range names {
		if strings.Contains(name, "/0005_") || strings.Contains(name, "/0014_") || strings.Contains(name, "/0019_") {
			continue
		}
		body, _ := migrations.ReadFile(name)
		if _, err := db.Exec(string(body)); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		db.Exec(`INSERT INTO schema_migrations(name, applied) VALUES (?, 0)`, name)
	}
	var old int64
	if err := db.QueryRow(`INSERT INTO nodes(ek_hash, ek_public, state, first_seen, last_seen) VALUES (x'01', x'01', 'pending', 0, 0) RETURNING id`).Scan(&old); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`INSERT INTO challenges(id, node_id, secret_hash, ak_name, expires) VALUES ('c1', ?, x'02', x'03', ?)`,
		old, time.Now().Add(time.Hour).UnixNano()); err != nil {
		t.Fatal(err)
	}
	db.Close()

	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	ctx := context.Background()
	var tables int
	if err := s.DB().QueryRow(`SELECT count(*) FROM sqlite_schema WHERE name LIKE 'challenges%'`).Scan(&tables); err != nil || tables != 0 {
		t.Fatalf("challenges table and index: %d left, %v", tables, err)
	}
	atts, err := s.Attestations(ctx)
	if err != nil || atts[old].Summary() != "unattested" {
		t.Fatalf("old node: %v %v", atts[old], err)
	}
	rolloutScenario(t, s)
}

func rolloutScenario(t *testing.T, s *Store) {
	t.Helper()
	ctx := context.Background()
	pool(t, s, "192.0.2.0/24", "192.0.2.1")
	addRelease(t, s, "A")
	addRelease(t, s, "B")
	n1, n2 := fleetNode(t, s), fleetNode(t, s)
	boots(t, s, n1, "A", 1, "boot-1", api.RelayRunning)
	boots(t, s, n2, "A", 7, "boot-2", api.RelayRunning)

	for _, c := range []struct {
		name, release string
		max           int
		want          string
	}{
		{"unknown release", "C", 1, "not found"},
		{"zero at a time", "B", 0, "at least 1"},
		{"everyone on it already", "A", 1, "nothing to roll out"},
	} {
		if _, err := s.StartRollout(ctx, c.release, c.max, time.Now()); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", c.name, err, c.want)
		}
	}
	if _, err := s.StopRollout(ctx, time.Now()); !errors.Is(err, ErrNoRollout) {
		t.Errorf("stop with none running: %v", err)
	}
	ro, err := s.StartRollout(ctx, "B", 1, time.Now())
	if err != nil || len(ro.Nodes) != 2 || ro.Nodes[0].FromRelease != "A" {
		t.Fatalf("start: %+v %v", ro, err)
	}
	if _, err := s.StartRollout(ctx, "B", 1, time.Now()); !errors.Is(err, ErrExists) {
		t.Errorf("a second rollout: %v", err)
	}
	reboot := func(id int64) string {
		t.Helper()
		r, err := s.RebootRequest(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if r == nil {
			return "-"
		}
		return r.BootID + ">" + r.Release
	}
	step := func(want string) {
		t.Helper()
		// A node's config generation (what wakes its long poll and
		// renders its config again) moves exactly when its request does.
		type seen struct {
			gen    int64
			reboot string
		}
		look := func() (m [2]seen) {
			for i, id := range []int64{n1, n2} {
				g, err := s.NodeConfigGen(ctx, id)
				if err != nil {
					t.Fatal(err)
				}
				m[i] = seen{g, reboot(id)}
			}
			return m
		}
		before := look()
		st, err := s.StepRollout(ctx, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		got := ""
		if st != nil {
			got = strings.TrimSpace(strings.Join([]string{ids("ask", st.Ask), ids("done", st.Done)}, " "))
			if st.Failed != nil {
				got += " failed: " + st.Failed.Reason
			}
			if st.Finished {
				got += " finished"
			}
		}
		if strings.TrimSpace(got) != want {
			t.Errorf("step: %q, want %q", got, want)
		}
		for i, after := range look() {
			if (after.gen != before[i].gen) != (after.reboot != before[i].reboot) {
				t.Errorf("step %q: node %d: request %s -> %s, config generation %d -> %d",
					want, i+1, before[i].reboot, after.reboot, before[i].gen, after.gen)
			}
		}
	}
	step("ask " + itoa(n1))
	if reboot(n1) != "boot-1>B" || reboot(n2) != "-" {
		t.Fatalf("requests: %s %s", reboot(n1), reboot(n2))
	}
	step("")                                            // nothing moved
	boots(t, s, n1, "A", 1, "boot-1", api.RelayRunning) // a token refresh in the old boot
	step("")
	boots(t, s, n1, "B", 2, "boot-1b", api.RelayStarting) // back, relays starting
	step("")
	boots(t, s, n1, "B", 2, "boot-1b", api.RelayRunning)
	step("ask " + itoa(n2) + " done " + itoa(n1))
	if reboot(n1) != "-" || reboot(n2) != "boot-2>B" {
		t.Fatalf("requests: %s %s", reboot(n1), reboot(n2))
	}
	boots(t, s, n2, "A", 8, "boot-2b", api.RelayStarting) // the hypervisor booted A again
	step("failed: node " + itoa(n2) + " came back on release A, not B")
	ro, err = s.LatestRollout(ctx)
	if err != nil || ro.State != RolloutFailed || ro.Nodes[0].State != "done" || ro.Nodes[1].State != "failed" || ro.Nodes[1].Now != "A" {
		t.Fatalf("after the failure: %+v %v", ro, err)
	}
	if reboot(n2) != "-" {
		t.Error("a failed rollout still asks for a reboot")
	}
	step("") // no running rollout: nothing

	// Again: only node 2 is not on B; stopped while it is asked.
	ro, err = s.StartRollout(ctx, "B", 1, time.Now())
	if err != nil || len(ro.Nodes) != 1 || ro.Nodes[0].NodeID != n2 {
		t.Fatalf("second rollout: %+v %v", ro, err)
	}
	step("ask " + itoa(n2))
	g1, _ := s.NodeConfigGen(ctx, n1)
	g2, _ := s.NodeConfigGen(ctx, n2)
	if _, err := s.StopRollout(ctx, time.Now()); err != nil {
		t.Fatal(err)
	}
	if reboot(n2) != "-" {
		t.Error("a stopped rollout still asks for a reboot")
	}
	if a1, _ := s.NodeConfigGen(ctx, n1); a1 != g1 {
		t.Errorf("stop: node 1 (not asked) stamped %d -> %d", g1, a1)
	}
	if a2, _ := s.NodeConfigGen(ctx, n2); a2 == g2 {
		t.Errorf("stop: node 2's withdrawn request left its config generation at %d", g2)
	}
	if err := s.RetireRelease(ctx, "A", time.Now()); err != nil {
		t.Fatal(err)
	}
	if _, err := s.StartRollout(ctx, "A", 1, time.Now()); err == nil || !strings.Contains(err.Error(), "retired") {
		t.Errorf("rollout to a retired release: %v", err)
	}
}

func itoa(n int64) string { return fmt.Sprint(n) }

func ids(label string, v []int64) string {
	if len(v) == 0 {
		return ""
	}
	return strings.TrimSpace(label + " " + strings.Trim(fmt.Sprint(v), "[]"))
}
