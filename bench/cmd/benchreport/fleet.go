package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"patela/bench/dbcheck"
	"patela/bench/loadgen"
	"patela/bench/srvproc"
	"patela/configsrv/store"
	"patela/internal/api"
)

// FleetRun is a fleet of simulated nodes booting at once against the
// configsrv binary (default rate limits) while an abuser floods it.
type FleetRun struct {
	Nodes        int                `json:"nodes"`
	Boot         time.Duration      `json:"boot_ns"` // wall time until every node had booted
	Failed       int                `json:"failed"`
	FirstFailure string             `json:"first_failure,omitempty"`
	ServerErrors int                `json:"server_errors"`
	Duplicates   int                `json:"duplicates"`
	DBProblems   []string           `json:"db_problems,omitempty"`
	Ops          []loadgen.OpStats  `json:"ops"`
	Abuser       map[int]int        `json:"abuser_statuses"`
	AbuserSent   int                `json:"abuser_requests"`
	ServerRSS    int64              `json:"server_rss_bytes"`
	ServerPeak   int64              `json:"server_peak_rss_bytes"`
	Specs        api.Specs          `json:"specs"`
	Extra        map[string]float64 `json:"extra,omitempty"`
}

func runFleet(ctx context.Context, bin, work string, n int) (*FleetRun, error) {
	dir := filepath.Join(work, "fleet")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	srv, err := srvproc.Setup(bin, dir, srvproc.BenchPools)
	if err != nil {
		return nil, err
	}
	// A whole fleet enrolls at once here: more pending nodes than the
	// default cap, as when an administrator racks a new fleet.
	if err := srv.Start("--max-pending", strconv.Itoa(n+1)); err != nil {
		return nil, err
	}
	defer srv.Kill()
	ctx, cancel := context.WithTimeout(ctx, 20*time.Minute)
	defer cancel()
	specs := api.Specs{CPUs: 2, MemoryBytes: 8 << 30, CPUModel: "simulated"}
	res, err := loadgen.RunFleet(ctx, srv, n, &specs, true)
	if err != nil {
		return nil, err
	}
	fr := &FleetRun{Nodes: n, Boot: res.Boot, Failed: len(res.Failed), ServerErrors: res.ServerErrors,
		Duplicates: len(res.Duplicates), Ops: res.Ops, Abuser: res.Abuser, AbuserSent: res.AbuserSent, Specs: specs}
	if len(res.Failed) > 0 {
		fr.FirstFailure = res.Failed[0].Error()
	}
	if fr.ServerRSS, fr.ServerPeak, err = srv.RSS(); err != nil {
		return nil, err
	}
	st, err := store.Open(srv.DB)
	if err != nil {
		return nil, err
	}
	defer st.Close()
	if fr.DBProblems, err = dbcheck.Check(ctx, st); err != nil {
		return nil, fmt.Errorf("checking the database: %w", err)
	}
	return fr, nil
}
