// Package faults_test breaks the system on purpose (crashes, a missing
// server or TPM, a full disk) with the real binaries and checks it
// recovers without losing or corrupting anything.
package faults_test

import (
	"context"
	"math/rand/v2"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"patela/bench/dbcheck"
	"patela/bench/loadgen"
	"patela/bench/srvproc"
	"patela/configsrv/attest"
	"patela/configsrv/store"
	"patela/internal/api"
)

var bin string

func TestMain(m *testing.M) { srvproc.TestMain(m, &bin) }

// tracked is what one node was told, and what it had asked when the
// server died.
type tracked struct {
	*loadgen.Node
	acked    int // relay count of the last acknowledged specs (-1: none)
	inflight int // relay count asked by an unanswered specs (-1: none)
}

// configsrv is killed with SIGKILL, three times, in the middle of a burst
// of enrollments (first contacts), attestations and relay allocations
// that grow and shrink nodes. After each restart the database passes
// integrity_check, no relay is half allocated, every acknowledged node
// and allocation is there, and the fleet works again.
func TestKill9DuringEnrollmentAndAllocation(t *testing.T) {
	srv := srvproc.StartT(t, bin)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	const fleet, newcomers = 24, 24
	nodes, err := loadgen.NewNodes(srv, fleet+newcomers, netip.MustParseAddr("127.2.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	enrolled := nodes[:fleet]
	if errs := loadgen.Each(ctx, enrolled, 8, func(ctx context.Context, n *loadgen.Node) error {
		return n.FirstContact(ctx, nil)
	}); len(errs) > 0 {
		t.Fatal(errs[0])
	}
	if err := loadgen.Enable(ctx, srv.DB, enrolled); err != nil {
		t.Fatal(err)
	}
	state := make([]*tracked, fleet)
	for i, n := range enrolled {
		state[i] = &tracked{Node: n, acked: -1, inflight: -1}
	}
	pending := nodes[fleet:]
	var acknowledged sync.Map // node id → EK public, for every first contact answered

	for round := range 3 {
		var ops atomic.Int64
		var wg sync.WaitGroup
		for _, s := range state {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; ; i++ {
					if i%4 == 0 {
						if s.Attest(ctx, nil) != nil {
							return
						}
					}
					cpus := 1 + rand.IntN(6)
					s.inflight = cpus // 8 GiB at 1 GiB per relay: one relay per cpu
					r, err := s.Client.Specs(ctx, s.Token, &api.Specs{CPUs: cpus, MemoryBytes: 8 << 30})
					if err != nil {
						return
					}
					s.acked, s.inflight = r.RelayCount, -1
					ops.Add(1)
				}
			}()
		}
		for _, n := range pending {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if n.ID != 0 {
					return
				}
				if n.FirstContact(ctx, nil) == nil {
					acknowledged.Store(n.ID, n.EK.Public)
					ops.Add(1)
				}
			}()
		}
		// Kill once the burst is well under way.
		want := int64(40 + 30*round + rand.IntN(40))
		for ops.Load() < want && ctx.Err() == nil {
			time.Sleep(time.Millisecond)
		}
		if err := srv.Kill(); err != nil {
			t.Fatal(err)
		}
		wg.Wait()
		t.Logf("round %d: killed after %d acknowledged operations", round, ops.Load())

		check(t, ctx, srv.DB, state, &acknowledged)
		if t.Failed() {
			return
		}
		if err := srv.Start(); err != nil {
			t.Fatalf("restart after kill: %v", err)
		}
		// The fleet works again and sees what the database holds.
		for _, s := range state {
			s.Node.Close()
		}
		if errs := loadgen.Each(ctx, enrolled, 8, func(ctx context.Context, n *loadgen.Node) error {
			if err := n.Attest(ctx, nil); err != nil {
				return err
			}
			return n.FetchConfig(ctx, nil)
		}); len(errs) > 0 {
			t.Fatalf("after restart: %v", errs[0])
		}
		for _, s := range state {
			if got := len(s.Config.Relays); got != s.acked && got != s.inflight && !(s.acked == -1 && got == 0) {
				t.Errorf("node %d: config has %d relays, acknowledged %d, in flight %d", s.ID, got, s.acked, s.inflight)
			}
			s.acked, s.inflight = len(s.Config.Relays), -1
		}
	}
}

// check opens the database the killed server left, as the restarted one
// will, and checks it.
func check(t *testing.T, ctx context.Context, db string, state []*tracked, acknowledged *sync.Map) {
	t.Helper()
	st, err := store.Open(db)
	if err != nil {
		t.Fatalf("database after kill: %v", err)
	}
	defer st.Close()
	problems, err := dbcheck.Check(ctx, st)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("after kill: %s", p)
	}
	for _, s := range state {
		rs, err := st.Relays(ctx, s.ID)
		if err != nil {
			t.Fatal(err)
		}
		if n := len(rs); n != s.acked && n != s.inflight && !(s.acked == -1 && n == 0) {
			t.Errorf("node %d has %d relays; it was told %d and had %d in flight", s.ID, n, s.acked, s.inflight)
		}
	}
	acknowledged.Range(func(k, v any) bool {
		var id int64
		ek, err := attest.NewEK(v.([]byte))
		if err == nil {
			err = st.DB().QueryRowContext(ctx, `SELECT id FROM nodes WHERE ek_hash = ?`, ek.ID[:]).Scan(&id)
		}
		if err != nil || id != k.(int64) {
			t.Errorf("lost node %d: its first contact was answered; after the kill: id %d, %v", k, id, err)
		}
		return true
	})
}
