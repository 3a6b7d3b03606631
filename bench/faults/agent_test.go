package faults_test

import (
	"context"
	"log/slog"
	"net"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"patela/bench/srvproc"
	"patela/init/attest"
	"patela/init/tpmdev/tpmdevtest"
	"patela/internal/api"
	"patela/internal/testutil"
)

// waitFor polls until the log matches re or the deadline passes.
func waitFor(t *testing.T, log *testutil.SyncBuffer, re string, n int) {
	t.Helper()
	rx := regexp.MustCompile(re)
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if len(rx.FindAllString(log.String(), -1)) >= n {
			return
		}
	}
	t.Fatalf("log never showed %d× %s:\n%s", n, re, log)
}

// The agent's attestation (init/attest over a real swtpm) starts while
// configsrv is not running: it retries with growing delays, then enrolls
// once the server binary starts and an administrator enables the node.
// Later the server is killed -9 while the agent needs a new token: the
// agent waits again and gets one when the server is back, as the same
// node.
func TestServerDownWhileAgentBoots(t *testing.T) {
	// Reserve an address for the server that nothing listens on yet.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	srv, err := srvproc.Setup(bin, t.TempDir(), srvproc.BenchPools)
	if err != nil {
		t.Fatal(err)
	}
	srv.Addr = addr
	t.Cleanup(func() { srv.Kill() })
	client, err := api.NewClient("https://"+addr, srv.CA)
	if err != nil {
		t.Fatal(err)
	}

	dev := tpmdevtest.New(t).Dev
	var log testutil.SyncBuffer
	sess, err := attest.NewSession(dev, client, slog.New(slog.NewTextHandler(&log, nil)),
		attest.WithBackoff(40*time.Millisecond, 320*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	type result struct {
		tok attest.Token
		err error
	}
	got := make(chan result, 1)
	go func() {
		tok, err := sess.Wait(ctx)
		got <- result{tok, err}
	}()
	waitFor(t, &log, `attestation failed, retrying" attempt=\d+ err=.*connection refused`, 4)
	checkBackoff(t, log.String())
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	// The administrator reads the console and enables the node.
	waitFor(t, &log, `waiting for an administrator: configsrv node enable \d+`, 1)
	m := regexp.MustCompile(`configsrv node enable (\d+)`).FindStringSubmatch(log.String())
	if _, err := srv.Admin("node", "enable", m[1]); err != nil {
		t.Fatal(err)
	}
	r := <-got
	if r.err != nil {
		t.Fatalf("attestation after the server came up: %v\n%s", r.err, log.String())
	}
	if strconv.FormatInt(r.tok.NodeID, 10) != m[1] || !r.tok.FirstBoot {
		t.Fatalf("token %+v, want node %s on its first boot", r.tok, m[1])
	}

	// Crash the server; the agent needs a new token while it is down.
	if err := srv.Kill(); err != nil {
		t.Fatal(err)
	}
	sess.Invalidate(r.tok.Value)
	mark := len(log.String())
	go func() {
		tok, err := sess.Wait(ctx)
		got <- result{tok, err}
	}()
	for len(regexp.MustCompile(`attestation failed, retrying`).FindAllString(log.String()[mark:], -1)) < 3 {
		if ctx.Err() != nil {
			t.Fatalf("no retries after the kill:\n%s", log.String()[mark:])
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	r2 := <-got
	if r2.err != nil {
		t.Fatalf("attestation after the restart: %v\n%s", r2.err, log.String()[mark:])
	}
	if r2.tok.NodeID != r.tok.NodeID || r2.tok.FirstBoot || r2.tok.Value == r.tok.Value {
		t.Fatalf("after restart: %+v, want a fresh token for node %d, not a first boot", r2.tok, r.tok.NodeID)
	}
	if _, err := client.Config(ctx, r2.tok.Value); err != nil {
		t.Fatalf("config with the new token: %v", err)
	}
}

// checkBackoff checks the retry delays grow (with jitter: each delay is
// drawn from [d/2, d] with d doubling up to the cap).
func checkBackoff(t *testing.T, log string) {
	t.Helper()
	var waits []time.Duration
	for _, m := range regexp.MustCompile(`attestation failed, retrying".*retry_in=(\S+)`).FindAllStringSubmatch(log, -1) {
		d, err := time.ParseDuration(m[1])
		if err != nil {
			t.Fatalf("retry_in %q: %v", m[1], err)
		}
		waits = append(waits, d)
	}
	if len(waits) < 4 {
		t.Fatalf("%d retries logged", len(waits))
	}
	// Attempt 1 waits at most 40 ms, attempt 4 at least 160 ms.
	if waits[0] > 40*time.Millisecond || waits[3] < 160*time.Millisecond || strings.Count(log, "retry_in=0s") > 0 {
		t.Errorf("retry delays %v do not back off from 40 ms", waits)
	}
}
