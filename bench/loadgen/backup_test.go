package loadgen_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"sync"
	"testing"
	"time"

	"patela/bench/loadgen"
	"patela/bench/srvproc"
	"patela/configsrv/store"
	"patela/internal/api"
)

// TestBackupDuringEnrollment: `configsrv backup` runs against the real
// server's database while 200 nodes enroll at once (first contact,
// enable, boot with specs), backups taken back to back while three
// quarters of them enroll. Each copy is one snapshot: restored in place
// of the database, the server knows every node that had enrolled before
// the copy began, under the same id, with integrity_check ok; the copy
// taken after the burst loses no node, relay or address.
func TestBackupDuringEnrollment(t *testing.T) {
	n := nodeCount(t)
	srv := srvproc.StartT(t, bin, "--attest-rate", "0")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	nodes, err := loadgen.NewNodes(srv, n, loadgen.FleetAddr)
	if err != nil {
		t.Fatal(err)
	}

	// The burst: a quarter enrolls, then the rest enrolls, two at a time,
	// while `configsrv backup` runs back to back until the burst is over.
	var (
		mu       sync.Mutex
		enrolled = map[int64]bool{}
	)
	first := func(ctx context.Context, nd *loadgen.Node) error {
		if err := nd.FirstContact(ctx, nil); err != nil {
			return err
		}
		mu.Lock()
		enrolled[nd.ID] = true
		mu.Unlock()
		return nil
	}
	for _, err := range loadgen.Each(ctx, nodes[:n/4], 16, first) {
		t.Fatal(err)
	}
	type snap struct {
		path   string
		before map[int64]bool // enrolled before the backup began
		nodes  int            // in the copy
	}
	var snaps []snap
	stop := make(chan struct{})
	backups := make(chan error, 1)
	go func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				backups <- nil
				return
			default:
			}
			sn := snap{path: filepath.Join(t.TempDir(), fmt.Sprintf("during-%d.db", i)), before: map[int64]bool{}}
			mu.Lock()
			for id := range enrolled {
				sn.before[id] = true
			}
			mu.Unlock()
			out, err := srv.Admin("backup", sn.path)
			if err != nil {
				backups <- err
				return
			}
			m := regexp.MustCompile(`: (\d+) nodes`).FindStringSubmatch(out)
			if m == nil {
				backups <- fmt.Errorf("backup said %q", out)
				return
			}
			sn.nodes, _ = strconv.Atoi(m[1])
			snaps = append(snaps, sn)
		}
	}()
	errs := loadgen.Each(ctx, nodes[n/4:], 2, first)
	close(stop)
	if err := <-backups; err != nil {
		t.Fatalf("backup during the burst: %v", err)
	}
	for _, err := range errs {
		t.Error(err)
	}
	var mid *snap
	for i := range snaps {
		sn := &snaps[i]
		t.Logf("backup %d during the burst: %d nodes in the copy, %d enrolled when it began, %d in all", i, sn.nodes, len(sn.before), n)
		if sn.nodes < len(sn.before) {
			t.Errorf("backup %d holds %d nodes, but %d had enrolled before it began", i, sn.nodes, len(sn.before))
		}
		if mid == nil && sn.nodes < n {
			mid = sn
		}
	}
	if mid == nil {
		t.Fatalf("none of the %d backups was taken while nodes were still enrolling", len(snaps))
	}

	// Enable and boot them all (specs allocate relays), then back up again.
	if err := loadgen.Enable(ctx, srv.DB, nodes); err != nil {
		t.Fatal(err)
	}
	specs := &api.Specs{CPUs: 2, MemoryBytes: 8 << 30, CPUModel: "simulated"}
	if errs := loadgen.Each(ctx, nodes, 64, func(ctx context.Context, nd *loadgen.Node) error { return nd.Boot(ctx, specs, nil) }); len(errs) > 0 {
		t.Fatalf("%d boots failed, first: %v", len(errs), errs[0])
	}
	after := filepath.Join(t.TempDir(), "after.db")
	if out, err := srv.Admin("backup", after); err != nil {
		t.Fatal(err)
	} else {
		t.Logf("backup after the burst: %s", out)
	}
	live := rowsOf(t, ctx, srv.DB)

	// Restore the first copy taken while nodes were still enrolling.
	restore(t, srv, mid.path)
	got := rowsOf(t, ctx, srv.DB)
	for id := range mid.before {
		if !got.nodes[id] {
			t.Errorf("node %d had enrolled before the backup began but is not in the restored database", id)
		}
	}
	if len(got.nodes) != mid.nodes {
		t.Errorf("restored mid-burst copy: %d nodes, the backup said %d", len(got.nodes), mid.nodes)
	}
	// The server on the restored database knows them: their next first
	// contact answers with their own id, not a new one.
	for _, nd := range nodes {
		if !mid.before[nd.ID] {
			continue
		}
		old := nd.ID
		if err := nd.FirstContact(ctx, nil); err != nil {
			t.Fatalf("node %d on the restored server: %v", old, err)
		}
		if nd.ID != old {
			t.Errorf("node %d came back as node %d after the restore", old, nd.ID)
		}
	}

	// Restore the copy taken after the burst: nothing lost.
	restore(t, srv, after)
	got = rowsOf(t, ctx, srv.DB)
	if len(got.nodes) != n || got.relays != live.relays || got.addrs != live.addrs {
		t.Errorf("restored after-burst copy: %d nodes, %d relays, %d addresses; live had %d, %d, %d", len(got.nodes), got.relays, got.addrs, n, live.relays, live.addrs)
	}
	for _, nd := range nodes {
		if err := nd.FetchConfig(ctx, nil); err != nil {
			t.Errorf("node %d after the restore: %v", nd.ID, err)
			break
		}
	}
}

type rows struct {
	nodes         map[int64]bool
	relays, addrs int
}

// rowsOf opens the database as the store does and checks its integrity.
func rowsOf(t *testing.T, ctx context.Context, db string) rows {
	t.Helper()
	st, err := store.Open(db)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if ic, err := st.IntegrityCheck(ctx); err != nil || ic != "ok" {
		t.Fatalf("integrity_check of %s: %q %v", db, ic, err)
	}
	r := rows{nodes: map[int64]bool{}}
	ns, err := st.Nodes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range ns {
		r.nodes[n.ID] = true
	}
	st.DB().QueryRow(`SELECT count(*), count(DISTINCT ipv4) FROM relays`).Scan(&r.relays, &r.addrs)
	return r
}

// restore is configsrv/README.md's restore: stop the server, move the
// database and its WAL files aside, copy the backup in its place, start.
func restore(t *testing.T, srv *srvproc.Server, backup string) {
	t.Helper()
	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	aside := srv.DB + fmt.Sprintf(".before-restore-%d", time.Now().UnixNano())
	os.Mkdir(aside, 0o700)
	for _, sfx := range []string{"", "-wal", "-shm"} {
		if err := os.Rename(srv.DB+sfx, filepath.Join(aside, filepath.Base(srv.DB)+sfx)); err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
	}
	b, err := os.ReadFile(backup)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(srv.DB, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := srv.Start("--attest-rate", "0"); err != nil {
		t.Fatal(err)
	}
}
