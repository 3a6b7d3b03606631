package store

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"patela/internal/api"
)

// A burst of many times the pool's size in readers and writers, on a
// freshly opened store (so statements are first prepared under it,
// inside write transactions too), completes: the pool never deadlocks.
// Run at the pool's size and at 2, the least the store's use of it
// needs (a writer preparing a statement inside its transaction), where
// the burst certainly fills it.
func TestPoolBurst(t *testing.T) {
	for _, size := range []int{maxOpenConns, 2} {
		t.Run(fmt.Sprint(size), func(t *testing.T) { poolBurst(t, size) })
	}
}

func poolBurst(t *testing.T, size int) {
	path := filepath.Join(t.TempDir(), "patela.db")
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	pool(t, s, "198.51.100.0/24", "198.51.100.1")
	ids := make([]int64, 2*maxOpenConns)
	for i := range ids {
		ids[i] = node(t, s)
		if err := s.SetNodeState(context.Background(), ids[i], api.NodeEnabled); err != nil {
			t.Fatal(err)
		}
	}
	s.Close()
	if s, err = Open(path); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.db.SetMaxOpenConns(size)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute) // a deadlock, not a speed limit
	defer cancel()
	// At size 2 a burst fills the pool almost always; the scheduler may
	// still run it in an order that does not, so it is sent again until
	// one request waited.
	for round := 0; round < 20; round++ {
		burst(t, ctx, s, ids)
		if size != 2 || s.db.Stats().WaitCount > 0 {
			break
		}
	}
	st := s.db.Stats()
	if st.OpenConnections > size {
		t.Errorf("pool: %d open, want at most %d", st.OpenConnections, size)
	}
	if size == 2 && st.WaitCount == 0 {
		t.Errorf("no request waited for a connection: 20 bursts did not fill the pool (%+v)", st)
	}
	for i := 0; i < len(ids); i += 5 { // the nodes case 0 allocated
		id := ids[i]
		rs, err := s.Relays(context.Background(), id)
		if err != nil || len(rs) == 0 {
			t.Errorf("node %d after the burst: %d relays, %v", id, len(rs), err)
		}
	}
}

// burst sends 8 pool sizes of readers and writers at once.
func burst(t *testing.T, ctx context.Context, s *Store, ids []int64) {
	var wg sync.WaitGroup
	errs := make(chan error, 16*maxOpenConns)
	for g := range 8 * maxOpenConns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := ids[g%len(ids)]
			var err error
			switch g % 5 {
			case 0: // writer: wmu, a transaction
				_, err = s.Allocate(ctx, id, &api.Specs{CPUs: 1 + g%2, MemoryBytes: 8 << 30}, time.Now())
			case 4: // writer preparing its statements (stmt) inside its transaction
				_, err = s.RecordAttestation(ctx, &Attestation{NodeID: id, Status: AttestUnknown, At: time.Now()})
			case 1:
				_, err = s.NodeAuth(ctx, id)
			case 2:
				_, err = s.Relays(ctx, id)
			case 3:
				if _, err = s.NodeConfigGen(ctx, id); err == nil {
					err = s.Audit(ctx, "test", "burst", fmt.Sprint(id), "")
				}
			}
			if err != nil {
				errs <- fmt.Errorf("goroutine %d (node %d): %w", g, id, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}
