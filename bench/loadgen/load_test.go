package loadgen_test

import (
	"context"
	"os"
	"strconv"
	"testing"
	"time"

	"patela/bench/dbcheck"
	"patela/bench/loadgen"
	"patela/bench/srvproc"
	"patela/configsrv/store"
	"patela/internal/api"
)

var bin string

func TestMain(m *testing.M) { srvproc.TestMain(m, &bin) }

// nodeCount is the fleet size: 200 in `just test`, PATELA_LOAD_NODES
// otherwise (the bench report boots 2,000 with the same code).
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
// HTTPS on loopback, default rate limits, each node from its own
// loopback address) while an abusive client floods the attestation
// endpoint from 127.0.0.2: every node attests, gets its relays and config
// and heartbeats; nothing answers 5xx; no two relays share a name or an
// address; the abuser is refused with 429 and starves no one.
func TestFleetBootsWhileAbused(t *testing.T) {
	n := nodeCount(t)
	srv := srvproc.StartT(t, bin) // default --attest-rate 5 --attest-burst 20
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	res, err := loadgen.RunFleet(ctx, srv, n, &api.Specs{CPUs: 2, MemoryBytes: 8 << 30, CPUModel: "simulated"}, true)
	if err != nil {
		t.Fatal(err)
	}
	for i, err := range res.Failed {
		if i == 10 {
			t.Errorf("... %d failures in all", len(res.Failed))
			break
		}
		t.Errorf("boot failed: %v", err)
	}
	for _, s := range res.Ops {
		t.Logf("%-9s n=%d p50=%v p99=%v max=%v statuses=%v", s.Op, s.Count, s.P50, s.P99, s.Max, s.Statuses)
	}
	if res.ServerErrors > 0 {
		t.Errorf("%d requests answered 5xx", res.ServerErrors)
	}
	for _, d := range res.Duplicates {
		t.Errorf("duplicate %s", d)
	}
	for _, nd := range res.Nodes {
		if nd.Config != nil && len(nd.Config.Relays) != 2 {
			t.Errorf("node %d has %d relays, want 2 (2 cpus, 8 GiB)", nd.ID, len(nd.Config.Relays))
		}
	}

	t.Logf("abuser: %d requests in %v, statuses %v", res.AbuserSent, res.Boot, res.Abuser)
	for st, c := range res.Abuser {
		if st != 403 && st != 429 {
			t.Errorf("abuser got %d answers with status %d; want only 403 pending and 429", c, st)
		}
	}
	// The server's defaults: a burst of 20, then 5 per second.
	if allowed := 20 + int(5*res.Boot.Seconds()) + 5; res.Abuser[429] == 0 || res.Abuser[403] > allowed {
		t.Errorf("the rate limiter did not hold the abuser over %v (at most %d let through): %v", res.Boot, allowed, res.Abuser)
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
