package store

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestBackupWhileWriting: a backup taken while new nodes enroll is one
// snapshot: it holds every node committed before it began and none that
// is half there, passes integrity_check, and restored in place of the
// database (opened by the store like any other) serves those nodes.
func TestBackupWhileWriting(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(filepath.Join(dir, "p.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	enroll := func(i int) error {
		ek := sha256.Sum256([]byte(fmt.Sprint("ek", i)))
		_, _, err := s.AddPending(ctx, ek, ek[:], time.Now(), PendingLimits{}, nil)
		return err
	}
	for i := 0; i < 500; i++ {
		if err := enroll(i); err != nil {
			t.Fatal(err)
		}
	}
	var (
		next    atomic.Int64
		stop    = make(chan struct{})
		wg      sync.WaitGroup
		writeMu sync.Mutex
		werr    error
	)
	next.Store(500)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if err := enroll(int(next.Add(1))); err != nil {
					writeMu.Lock()
					werr = err
					writeMu.Unlock()
					return
				}
			}
		}()
	}
	time.Sleep(50 * time.Millisecond)
	var before int
	s.DB().QueryRow(`SELECT count(*) FROM nodes`).Scan(&before)
	dst := filepath.Join(dir, "backup.db")
	res, err := s.Backup(ctx, dst)
	var after int
	s.DB().QueryRow(`SELECT count(*) FROM nodes`).Scan(&after)
	close(stop)
	wg.Wait()
	if err != nil {
		t.Fatal(err)
	}
	if werr != nil {
		t.Fatalf("enrollment during the backup failed: %v", werr)
	}
	t.Logf("backup of %d nodes (%d before, %d after): %d pages, %d bytes, %v", res.Nodes, before, after, res.Pages, res.Bytes, res.Duration)
	if res.Nodes < before || res.Nodes > after || after <= before {
		t.Errorf("copy holds %d nodes; %d were committed before the backup, %d after (writers must have gone on)", res.Nodes, before, after)
	}
	left, _ := filepath.Glob(filepath.Join(dir, ".backup.db.*"))
	if len(left) != 0 {
		t.Errorf("temporary files left: %v", left)
	}

	// Restore: the copy in place of a database, opened by the store.
	restored := filepath.Join(t.TempDir(), "p.db")
	b, err := os.ReadFile(dst)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(restored, b, 0o600)
	r, err := Open(restored)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if ic, err := r.IntegrityCheck(ctx); err != nil || ic != "ok" {
		t.Fatalf("restored integrity_check: %q %v", ic, err)
	}
	nodes, err := r.Nodes(ctx)
	if err != nil || len(nodes) != res.Nodes {
		t.Fatalf("restored: %d nodes (%v), backup said %d", len(nodes), err, res.Nodes)
	}
	// Every node the copy holds is the same row, ids in one piece.
	for i, n := range nodes {
		orig, err := s.Node(ctx, n.ID)
		if err != nil || !bytes.Equal(orig.EKHash, n.EKHash) {
			t.Fatalf("restored node %d differs from the live one: %+v vs %+v (%v)", n.ID, n, orig, err)
		}
		if int(n.ID) != i+1 {
			t.Fatalf("node ids have a gap at %d: a partial transaction?", n.ID)
		}
	}
}

// TestBackupRefuses: an existing file is never overwritten, and a failed
// backup leaves nothing behind.
func TestBackupRefuses(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(filepath.Join(dir, "p.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	exists := filepath.Join(dir, "old.db")
	os.WriteFile(exists, []byte("yesterday's backup"), 0o600)
	if _, err := s.Backup(ctx, exists); err == nil {
		t.Error("overwrote an existing file")
	}
	if b, _ := os.ReadFile(exists); string(b) != "yesterday's backup" {
		t.Error("the existing file changed")
	}
	if _, err := s.Backup(ctx, filepath.Join(dir, "no/such/dir/b.db")); err == nil {
		t.Error("backup into a missing directory succeeded")
	}
	es, _ := os.ReadDir(dir)
	for _, e := range es {
		if n := e.Name(); n != "p.db" && n != "p.db-wal" && n != "p.db-shm" && n != "old.db" {
			t.Errorf("left %s behind", n)
		}
	}
}

// BenchmarkBackup backs up a fleet of 10,000 nodes x 4 relays (the
// store benchmarks' fleet) and reports the copy's size.
func BenchmarkBackup(b *testing.B) {
	s := benchFleet(b, 0)
	ctx := context.Background()
	dir := b.TempDir()
	var res *BackupResult
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		var err error
		if res, err = s.Backup(ctx, filepath.Join(dir, fmt.Sprintf("b%d.db", i))); err != nil {
			b.Fatal(err)
		}
		if res.Nodes != 10000 {
			b.Fatalf("copy holds %d nodes", res.Nodes)
		}
	}
	b.ReportMetric(float64(res.Bytes)/(1<<20), "MiB")
}
