package main

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"patela/bench/srvproc"
	"patela/configsrv/attest/softek"
	"patela/configsrv/store"
	"patela/internal/api"
)

// FloodRun is a stranger's flood of first contacts: a fresh EK in every
// request, from many loopback addresses at once, against the binary with
// its default limits. What it wrote is what the limits let through.
type FloodRun struct {
	Binary      string         `json:"binary"` // "this tree" or the -flood-configsrv path
	Duration    time.Duration  `json:"duration_ns"`
	Addresses   int            `json:"addresses"`
	Workers     int            `json:"workers"`
	Sent        int            `json:"sent"`
	Answers     map[string]int `json:"answers"` // "403 pending", "429 pending_full", "error: ..."
	PendingRows int            `json:"pending_rows"`
	AuditRows   int            `json:"audit_rows"` // after shutdown, refusals flushed
	DBBytes     int64          `json:"db_bytes"`   // database, WAL and SHM files
}

// runFlood floods POST /v1/attest for d from addrs source addresses with
// workers concurrent requests, then stops the server (which writes its
// aggregated audit rows) and counts what the database holds.
func runFlood(ctx context.Context, bin, label, work string, d time.Duration, addrs, workers int) (*FloodRun, error) {
	dir := filepath.Join(work, "flood-"+filepath.Base(bin)+fmt.Sprint(time.Now().UnixNano()))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	srv, err := srvproc.Setup(bin, dir, srvproc.BenchPools)
	if err != nil {
		return nil, err
	}
	if err := srv.Start(); err != nil { // the default limits
		return nil, err
	}
	defer srv.Kill()
	clients := make([]*api.Client, addrs)
	a := netip.MustParseAddr("127.8.0.1")
	for i := range clients {
		if clients[i], err = srv.Client(a); err != nil {
			return nil, err
		}
		a = a.Next()
	}
	defer func() {
		for _, c := range clients {
			c.HTTP.CloseIdleConnections()
		}
	}()
	ak, err := softek.AKPublic()
	if err != nil {
		return nil, err
	}
	r := &FloodRun{Binary: label, Duration: d, Addresses: addrs, Workers: workers, Answers: map[string]int{}}
	var mu sync.Mutex
	var wg sync.WaitGroup
	end := time.Now().Add(d)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; time.Now().Before(end) && ctx.Err() == nil; i += workers {
				ek, err := softek.New()
				if err != nil {
					return
				}
				_, err = clients[i%addrs].Attest(ctx, &api.AttestRequest{EKPublic: ek.Public, AKPublic: ak})
				answer := "200"
				if ae, ok := api.AsError(err); ok {
					answer = fmt.Sprintf("%d %s", ae.Status, ae.Code)
				} else if err != nil {
					answer = "error"
				}
				mu.Lock()
				r.Sent++
				r.Answers[answer]++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if err := srv.Stop(); err != nil {
		return nil, fmt.Errorf("stopping the server: %w", err)
	}
	st, err := store.Open(srv.DB)
	if err != nil {
		return nil, err
	}
	defer st.Close()
	db := st.DB()
	if err := db.QueryRowContext(ctx, `SELECT count(*) FROM nodes WHERE state = 'pending'`).Scan(&r.PendingRows); err != nil {
		return nil, err
	}
	if err := db.QueryRowContext(ctx, `SELECT count(*) FROM audit`).Scan(&r.AuditRows); err != nil {
		return nil, err
	}
	for _, p := range []string{srv.DB, srv.DB + "-wal", srv.DB + "-shm"} {
		if fi, err := os.Stat(p); err == nil {
			r.DBBytes += fi.Size()
		}
	}
	return r, nil
}

// answers lists a flood's answers, most frequent first.
func (r *FloodRun) answers() string {
	type kv struct {
		k string
		n int
	}
	var all []kv
	for k, n := range r.Answers {
		all = append(all, kv{k, n})
	}
	sort.Slice(all, func(i, j int) bool { return all[i].n > all[j].n })
	s := ""
	for i, a := range all {
		if i > 0 {
			s += ", "
		}
		s += fmt.Sprintf("%s ×%d", a.k, a.n)
	}
	return s
}
