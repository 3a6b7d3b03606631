package loadgen_test

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"patela/bench/dbcheck"
	"patela/bench/loadgen"
	"patela/bench/srvproc"
	"patela/configsrv/attest/softek"
	"patela/configsrv/store"
	"patela/internal/api"
)

var bin string

func TestMain(m *testing.M) {
	var cleanup func()
	bin, cleanup = srvproc.BuildForTests()
	code := m.Run()
	cleanup()
	os.Exit(code)
}

// nodeCount is the fleet size: small in `just test`, PATELA_LOAD_NODES
// (the bench report uses 2,000) otherwise.
func nodeCount(t *testing.T) int {
	if s := os.Getenv("PATELA_LOAD_NODES"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			t.Fatalf("PATELA_LOAD_NODES=%q: want a positive count", s)
		}
		return n
	}
	return 200
}

// A fleet boots at once against one real configsrv (the binary, over
// HTTPS on loopback, default rate limits) while an abusive client floods
// the attestation endpoint from its own address: every node attests,
// gets its relays and config and heartbeats; nothing answers 5xx; no two
// relays share a name or an address; the abuser is refused with 429 and
// starves no one.
func TestFleetBootsWhileAbused(t *testing.T) {
	n := nodeCount(t)
	srv := srvproc.StartT(t, bin) // default --attest-rate 5 --attest-burst 20
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	// Each node its own source address, as a fleet has: 127.1.0.1, ...
	nodes, err := loadgen.NewNodes(srv, n, netip.MustParseAddr("127.1.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		for _, nd := range nodes {
			nd.Close()
		}
	}()
	rec := loadgen.NewRecorder()
	if errs := loadgen.Each(ctx, nodes, 64, func(ctx context.Context, nd *loadgen.Node) error {
		return nd.FirstContact(ctx, rec)
	}); len(errs) > 0 {
		t.Fatalf("%d first contacts failed, first: %v", len(errs), errs[0])
	}
	if err := loadgen.Enable(ctx, srv.DB, nodes); err != nil {
		t.Fatal(err)
	}

	// The abuser: one address, as many attestation requests as it can
	// send until the fleet is up.
	abuser, err := srv.Client(netip.MustParseAddr("127.0.0.2"))
	if err != nil {
		t.Fatal(err)
	}
	ek, _ := softek.New()
	ak, _ := softek.AKPublic()
	var abuse struct {
		sync.Mutex
		statuses map[int]int
	}
	abuse.statuses = map[int]int{}
	stop := make(chan struct{})
	var abuserDone sync.WaitGroup
	var sent atomic.Int64
	for range 8 {
		abuserDone.Add(1)
		go func() {
			defer abuserDone.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				_, err := abuser.Attest(ctx, &api.AttestRequest{EKPublic: ek.Public, AKPublic: ak})
				sent.Add(1)
				var ae *api.Error
				st := 0
				if errors.As(err, &ae) {
					st = ae.Status
				} else if err == nil {
					st = 200
				}
				abuse.Lock()
				abuse.statuses[st]++
				abuse.Unlock()
			}
		}()
	}

	specs := &api.Specs{CPUs: 2, MemoryBytes: 8 << 30, CPUModel: "simulated"}
	abuseStart := time.Now()
	errs := loadgen.Each(ctx, nodes, 0, func(ctx context.Context, nd *loadgen.Node) error {
		return nd.Boot(ctx, specs, rec)
	})
	close(stop)
	abuserDone.Wait()
	abused := time.Since(abuseStart)
	abuser.HTTP.CloseIdleConnections()

	for i, err := range errs {
		if i == 10 {
			t.Errorf("... %d failures in all", len(errs))
			break
		}
		t.Errorf("boot failed: %v", err)
	}
	for _, s := range rec.Stats() {
		t.Logf("%-13s n=%d p50=%v p99=%v max=%v statuses=%v", s.Op, s.Count, s.P50, s.P99, s.Max, s.Statuses)
	}
	if k := rec.ServerErrors(); k > 0 {
		t.Errorf("%d requests answered 5xx", k)
	}
	for _, d := range loadgen.Duplicates(nodes) {
		t.Errorf("duplicate %s", d)
	}
	for _, nd := range nodes {
		if nd.Config != nil && len(nd.Config.Relays) != 2 {
			t.Errorf("node %d has %d relays, want 2 (2 cpus, 8 GiB)", nd.ID, len(nd.Config.Relays))
		}
	}

	t.Logf("abuser: %d requests, statuses %v", sent.Load(), abuse.statuses)
	for st, c := range abuse.statuses {
		if st != 403 && st != 429 {
			t.Errorf("abuser got %d answers with status %d; want only 403 pending and 429", c, st)
		}
	}
	// The server's defaults: burst 20, then 5 per second.
	if allowed := 20 + int(5*abused.Seconds()) + 5; abuse.statuses[429] == 0 || abuse.statuses[403] > allowed {
		t.Errorf("the rate limiter did not hold the abuser over %v (at most %d let through): %v", abused, allowed, abuse.statuses)
	}

	// The database agrees with what the nodes were told.
	st, err := store.Open(srv.DB)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	problems, err := dbcheck.Check(ctx, st)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Error(p)
	}
	var relays int
	st.DB().QueryRow(`SELECT count(*) FROM relays`).Scan(&relays)
	if relays != 2*n {
		t.Errorf("%d relays in the database, want %d", relays, 2*n)
	}
}
