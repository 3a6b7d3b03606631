package main

import (
	"bytes"
	"context"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"patela/bench/loadgen"
	"patela/bench/srvproc"
	"patela/configsrv/alloc"
	"patela/configsrv/attest"
	"patela/configsrv/attest/softek"
	"patela/configsrv/pki"
	"patela/configsrv/quote/quotetest"
	"patela/configsrv/store"
	"patela/configsrv/token"
	"patela/internal/api"
	"patela/internal/ekid"
)

// ServerRun is the configsrv binary serving a seeded fleet: its memory
// and what bursts of config fetches and attestation handshakes from many
// clients get out of it, over HTTPS on loopback.
type ServerRun struct {
	Nodes, Relays int
	Clients       int           `json:"clients"` // concurrent clients, each its own connection and address
	Seed          time.Duration `json:"seed_ns"`
	DBBytes       int64         `json:"db_bytes"`
	RSSIdle       int64         `json:"rss_idle_bytes"`
	RSSAfter      int64         `json:"rss_after_bytes"`
	RSSPeak       int64         `json:"rss_peak_bytes"`
	Fetch         []Burst       `json:"fetch"`
	Handshake     Burst         `json:"handshake"`
	Reboot        Burst         `json:"reboot"`    // the same nodes again, each rebooted: new boot evidence
	Heartbeat     Burst         `json:"heartbeat"` // with a metrics summary of every relay
	// Relays with a fingerprint in the database after the heartbeats, and
	// how many distinct: every relay's, none shared.
	Fingerprints         int         `json:"fingerprints"`
	DistinctFingerprints int         `json:"distinct_fingerprints"`
	Metrics              *MetricsRun `json:"metrics"`
}

// Bursts are the run's bursts in the order they ran.
func (s *ServerRun) Bursts() []Burst {
	return slices.DeleteFunc(append(slices.Clone(s.Fetch), s.Handshake, s.Reboot, s.Heartbeat),
		func(b Burst) bool { return b.Requests == 0 })
}

// MetricsRun is /metrics (serve --metrics-listen) once every node has
// sent a heartbeat with a summary of its relays.
type MetricsRun struct {
	Scrapes   int           `json:"scrapes"`
	GzipBytes int64         `json:"gzip_bytes"` // what Prometheus fetches
	TextBytes int64         `json:"text_bytes"`
	Samples   int           `json:"samples"`
	P50       time.Duration `json:"p50_ns"` // request to last byte, gzip
	Max       time.Duration `json:"max_ns"`
	RSSAfter  int64         `json:"rss_after_bytes"`
	RSSPeak   int64         `json:"rss_peak_bytes"`
}

// Burst is one timed run of many requests.
type Burst struct {
	Name     string `json:"name"`
	Requests int    `json:"requests"`
	Errors   int    `json:"errors"`
	// FirstError is the first failed request's error, if any failed.
	FirstError string        `json:"first_error,omitempty"`
	Took       time.Duration `json:"took_ns"`
	PerSec     float64       `json:"per_s"`
	P50        time.Duration `json:"p50_ns"`
	P99        time.Duration `json:"p99_ns"`
	// CPU time per request of the server process and of this one (the
	// load generator) while the burst ran: what a request costs the
	// server alone, and what the two together cost the machine's cores.
	ServerCPU time.Duration `json:"server_cpu_ns"`
	LoadCPU   time.Duration `json:"load_cpu_ns"`
}

type seeded struct {
	ids    []int64
	ekIDs  []ekid.ID
	eks    []*softek.EK
	aks    [][]byte
	qaks   []*quotetest.AK // the same AKs, quoting in software
	relays [][]string      // each node's relay names
}

// With heartbeats false, the heartbeat burst (the section's longest: each
// heartbeat compares every relay's served torrc, O(family)) and the
// /metrics scrape after it are left out.
func runServer(ctx context.Context, bin, work string, nodes, relays int, heartbeats bool) (*ServerRun, error) {
	dir := filepath.Join(work, "server")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	srv, err := srvproc.Setup(bin, dir, srvproc.BenchPools)
	if err != nil {
		return nil, err
	}
	r := &ServerRun{Nodes: nodes, Relays: relays, Clients: 64}
	t0 := time.Now()
	fl, err := seed(ctx, srv.DB, nodes, relays)
	if err != nil {
		return nil, fmt.Errorf("seeding: %w", err)
	}
	r.Seed = time.Since(t0)
	for _, f := range []string{srv.DB, srv.DB + "-wal"} {
		if fi, err := os.Stat(f); err == nil {
			r.DBBytes += fi.Size()
		}
	}
	// One load generator stands for the fleet: lift the per-address
	// attestation limit, which would otherwise measure the limiter.
	metricsAddr, err := freePort()
	if err != nil {
		return nil, err
	}
	if err := srv.Start("--attest-rate", "0", "--metrics-listen", metricsAddr); err != nil {
		return nil, err
	}
	defer srv.Kill()
	time.Sleep(time.Second)
	if r.RSSIdle, _, err = srv.RSS(); err != nil {
		return nil, err
	}

	key, err := token.LoadKey(filepath.Join(srv.Dir, pki.BiscuitKey))
	if err != nil {
		return nil, err
	}
	auth := token.New(key, token.DefaultTTL)
	tokens := make([]string, nodes)
	for i, id := range fl.ids {
		// Seeded nodes are at token epoch 0.
		if tokens[i], _, err = auth.Issue(token.Claims{Node: id, EK: fl.ekIDs[i]}, time.Now()); err != nil {
			return nil, err
		}
	}
	clients := make([]*api.Client, r.Clients)
	a := netip.MustParseAddr("127.5.0.1")
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
	applied := make([]map[string]string, nodes) // each relay's torrc_sha256 by name, as the agent reports it
	fetch := func(c *api.Client, i int) error {
		cfg, err := c.Config(ctx, tokens[i])
		if err == nil && (cfg.NodeID != fl.ids[i] || len(cfg.Relays) != relays) {
			err = fmt.Errorf("node %d: config of node %d with %d relays", fl.ids[i], cfg.NodeID, len(cfg.Relays))
		}
		if err == nil {
			applied[i] = map[string]string{}
			for _, r := range cfg.Relays {
				applied[i][r.Name] = r.TorrcSHA256
			}
		}
		return err
	}
	// First every node once (each token new to the server), then again.
	r.Fetch = append(r.Fetch, burst(srv, "config fetch, every node once (cold token cache)", clients, nodes, fetch))
	r.Fetch = append(r.Fetch, burst(srv, "config fetch, every node again (warm)", clients, nodes, fetch))
	hs := min(nodes, 4000)
	// A node knows its AK's name (the TPM computes it); compute it once.
	names := make([][]byte, hs)
	for i := range names {
		if _, names[i], err = attest.ParseAK(fl.aks[i]); err != nil {
			return nil, err
		}
	}
	handshake := func(reboot bool) func(c *api.Client, i int) error {
		return func(c *api.Client, i int) error {
			ch, err := c.Attest(ctx, &api.AttestRequest{EKPublic: fl.eks[i].Public, AKPublic: fl.aks[i]})
			if err != nil {
				return err
			}
			secret, err := fl.eks[i].Activate(ch.CredentialBlob, ch.EncryptedSecret, names[i])
			if err != nil {
				return err
			}
			if reboot {
				fl.qaks[i].Reboot()
			}
			q, err := fl.qaks[i].Quote(ch.Nonce, loadgen.BootPCRs(), loadgen.BootLog())
			if err != nil {
				return err
			}
			_, err = c.Complete(ctx, &api.CompleteRequest{ChallengeID: ch.ChallengeID, Secret: secret, Quote: q})
			return err
		}
	}
	// First each node's first quote (none stored: the release is
	// recorded, the node's cache entries are made), then a reboot storm
	// of the same nodes: each quote new boot evidence, written over the
	// last.
	r.Handshake = burst(srv, fmt.Sprintf("attestation handshake with a quote (attest, software ActivateCredential and Quote of a 32-event boot, complete), each node's first x %d", hs), clients, hs, handshake(false))
	r.Reboot = burst(srv, fmt.Sprintf("the same nodes rebooted: handshake with a new boot's quote x %d", hs), clients, hs, handshake(true))
	if heartbeats {
		r.Heartbeat = burst(srv, fmt.Sprintf("heartbeat with a metrics summary of %d relays and their first fingerprints, every node", relays), clients, nodes,
			func(c *api.Client, i int) error {
				return c.Status(ctx, tokens[i], benchHeartbeat(fl.relays[i], applied[i]))
			})
	}
	// A burst with errors measures refusals (as the heartbeat's did when
	// the server began to check ed25519 ids): the section fails, with the
	// figures and the first error in the report.
	for _, b := range r.Bursts() {
		if b.Errors > 0 {
			return r, fmt.Errorf("%s: %d of %d requests failed, first: %s", b.Name, b.Errors, b.Requests, b.FirstError)
		}
	}
	if r.RSSAfter, r.RSSPeak, err = srv.RSS(); err != nil {
		return nil, err
	}
	if !heartbeats {
		return r, nil
	}
	if r.Fingerprints, r.DistinctFingerprints, err = fingerprints(ctx, srv.DB); err != nil {
		return r, err
	}
	if want := nodes * relays; r.Fingerprints != want || r.DistinctFingerprints != want {
		return r, fmt.Errorf("after the heartbeats the database holds %d fingerprints (%d distinct), want %d", r.Fingerprints, r.DistinctFingerprints, want)
	}
	if r.Metrics, err = scrapeMetrics(srv, "http://"+metricsAddr+"/metrics", 5); err != nil {
		return nil, fmt.Errorf("/metrics: %w", err)
	}
	return r, nil
}

// fingerprints counts the relays with a fingerprint in the database at
// path, and the distinct fingerprints among them.
func fingerprints(ctx context.Context, path string) (n, distinct int, err error) {
	st, err := store.Open(path)
	if err != nil {
		return 0, 0, err
	}
	defer st.Close()
	err = st.DB().QueryRowContext(ctx, `SELECT count(*), count(DISTINCT fingerprint) FROM relays WHERE fingerprint != ''`).Scan(&n, &distinct)
	return n, distinct, err
}

// freePort is a loopback address with a port free a moment ago.
func freePort() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// benchHeartbeat is a node's heartbeat with every relay running and a
// full summary (five flags), as the agent sends it each round: each
// relay's own keys as tor writes them (40 upper-case hex digits, 43
// characters of unpadded base64), derived from its name so no two relays
// share one, and the sha256 of the torrc it applied (applied, by relay
// name: what the node's last config fetch served).
func benchHeartbeat(names []string, applied map[string]string) *api.Status {
	st := &api.Status{BootID: "bench", UptimeS: 86400, Metrics: &api.NodeMetrics{AgentRSSBytes: 30 << 20,
		MemAvailableBytes: 6 << 30, MemTotalBytes: 8 << 30}}
	for _, n := range names {
		st.Relays = append(st.Relays, api.RelayStatus{Name: n, State: api.RelayRunning,
			Fingerprint: fmt.Sprintf("%X", sha1.Sum([]byte(n))), Ed25519ID: ed25519ID(n), TorrcSHA256: applied[n]})
		st.Metrics.Relays = append(st.Metrics.Relays, api.RelayMetrics{Name: n, BytesRead: 1 << 40, BytesWritten: 1 << 40,
			ORConns: 900, ExitConns: 3000, Circuits: 5000, OnionskinsProcessed: 1 << 30, OnionskinsDropped: 12,
			DNSQueries: 1 << 26, DNSErrors: 900, DNSTimeouts: 40, Flags: []string{"Exit", "Fast", "Running", "Stable", "V2Dir"},
			SigningCertExpires: time.Now().Add(20 * 24 * time.Hour).Unix(), UptimeS: 86000, TorRSSBytes: 150 << 20})
	}
	return st
}

func ed25519ID(name string) string {
	id := sha256.Sum256([]byte(name))
	return base64.RawStdEncoding.EncodeToString(id[:])
}

// scrapeMetrics fetches url n times as Prometheus does (gzip), then once
// as text, and reads the server's memory after.
func scrapeMetrics(srv *srvproc.Server, url string, n int) (*MetricsRun, error) {
	m := &MetricsRun{Scrapes: n}
	get := func(gz bool) ([]byte, time.Duration, error) {
		req, err := http.NewRequest(http.MethodGet, url, nil)
		if err != nil {
			return nil, 0, err
		}
		if gz {
			req.Header.Set("Accept-Encoding", "gzip")
		} else {
			req.Header.Set("Accept-Encoding", "identity")
		}
		t0 := time.Now()
		resp, err := (&http.Transport{DisableCompression: true}).RoundTrip(req)
		if err != nil {
			return nil, 0, err
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		took := time.Since(t0)
		if err == nil && resp.StatusCode != http.StatusOK {
			err = fmt.Errorf("%s: %.200s", resp.Status, body)
		}
		return body, took, err
	}
	var times []time.Duration
	for range n {
		body, took, err := get(true)
		if err != nil {
			return nil, err
		}
		m.GzipBytes, times = int64(len(body)), append(times, took)
	}
	slices.Sort(times)
	m.P50, m.Max = times[len(times)/2], times[len(times)-1]
	text, _, err := get(false)
	if err != nil {
		return nil, err
	}
	m.TextBytes = int64(len(text))
	for _, l := range bytes.Split(text, []byte("\n")) {
		if len(l) > 0 && l[0] != '#' {
			m.Samples++
		}
	}
	if m.RSSAfter, m.RSSPeak, err = srv.RSS(); err != nil {
		return nil, err
	}
	return m, nil
}

// burst runs n operations over the clients, each client one at a time.
func burst(srv *srvproc.Server, name string, clients []*api.Client, n int, op func(*api.Client, int) error) Burst {
	srv0, srvErr := srv.CPU()
	self0 := selfCPU()
	var next, errs atomic.Int64
	var first sync.Once
	var firstErr string
	lat := make([][]time.Duration, len(clients))
	var wg sync.WaitGroup
	t0 := time.Now()
	for ci, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				s := time.Now()
				if err := op(c, i); err != nil {
					errs.Add(1)
					first.Do(func() { firstErr = err.Error() })
					continue
				}
				lat[ci] = append(lat[ci], time.Since(s))
			}
		}()
	}
	wg.Wait()
	took := time.Since(t0)
	b := Burst{Name: name, Requests: n, Errors: int(errs.Load()), FirstError: firstErr, Took: took, PerSec: float64(n) / took.Seconds(),
		LoadCPU: (selfCPU() - self0) / time.Duration(n)}
	if srv1, err := srv.CPU(); err == nil && srvErr == nil {
		b.ServerCPU = (srv1 - srv0) / time.Duration(n)
	}
	all := slices.Concat(lat...)
	slices.Sort(all)
	b.P50, b.P99 = loadgen.Percentile(all, 50), loadgen.Percentile(all, 99)
	return b
}

// selfCPU is this process's user and system CPU time.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// seed inserts n enabled nodes with software EKs and k relays each
// straight into the database, in one transaction, the way allocation
// would lay them out (names in order, lowest free addresses, uids from
// idx). Going through the API would take a handshake and an allocation
// per node; what is measured here is the server holding them.
func seed(ctx context.Context, db string, n, k int) (*seeded, error) {
	st, err := store.Open(db)
	if err != nil {
		return nil, err
	}
	defer st.Close()
	pools, err := st.Pools(ctx)
	if err != nil {
		return nil, err
	}
	var p4, p6 store.Pool
	for _, p := range pools {
		if p.Family() == 4 {
			p4 = p
		} else {
			p6 = p
		}
	}
	if !p4.CIDR.IsValid() || !p6.CIDR.IsValid() {
		return nil, fmt.Errorf("want one IPv4 and one IPv6 pool, have %v", pools)
	}
	tx, err := st.DB().BeginTx(ctx, nil)
	if err != nil {
		return nil, err
	}
	defer tx.Rollback()
	insNode, err := tx.PrepareContext(ctx, `INSERT INTO nodes(ek_hash, ek_public, state, first_seen, last_seen, attested_at, cpus, memory_bytes, cpu_model)
		VALUES (?, ?, 'enabled', ?, ?, ?, ?, ?, 'seeded')`)
	if err != nil {
		return nil, err
	}
	insRelay, err := tx.PrepareContext(ctx, `INSERT INTO relays(node_id, idx, name, ipv4, ipv4_pool, ipv6, ipv6_pool, or_port, created)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`)
	if err != nil {
		return nil, err
	}
	now := time.Now().Unix()
	c4, c6 := &cursor{p: p4, next: p4.CIDR.Addr().Next()}, &cursor{p: p6, next: p6.CIDR.Addr().Next()}
	s := &seeded{}
	name := 0
	for range n {
		ek, err := softek.New()
		if err != nil {
			return nil, err
		}
		qak, err := quotetest.NewAK()
		if err != nil {
			return nil, err
		}
		ak := qak.Public
		// k cpus and 1 GiB per relay: the allocation rules give k relays.
		parsed, err := attest.NewEK(ek.Public)
		if err != nil {
			return nil, err
		}
		res, err := insNode.ExecContext(ctx, parsed.ID[:], ek.Public, now, now, now, k, int64(k)<<30)
		if err != nil {
			return nil, err
		}
		id, err := res.LastInsertId()
		if err != nil {
			return nil, err
		}
		var names []string
		for idx := range k {
			names = append(names, alloc.Name(name))
			a4, ok4 := c4.take()
			a6, ok6 := c6.take()
			if !ok4 || !ok6 {
				return nil, fmt.Errorf("pools full after %d relays", name)
			}
			if _, err := insRelay.ExecContext(ctx, id, idx, alloc.Name(name), a4.String(), p4.ID, a6.String(), p6.ID, alloc.ORPort, now); err != nil {
				return nil, err
			}
			name++
		}
		s.ids, s.eks, s.aks, s.qaks = append(s.ids, id), append(s.eks, ek), append(s.aks, ak), append(s.qaks, qak)
		s.relays = append(s.relays, names)
		s.ekIDs = append(s.ekIDs, parsed.ID)
	}
	if err := tx.Commit(); err != nil {
		return nil, err
	}
	// The fleet booted one approved release: quotes match it.
	rel, err := loadgen.BootedRelease("bench-1")
	if err != nil {
		return nil, err
	}
	return s, st.AddRelease(ctx, rel, time.Now())
}

// cursor hands out a pool's addresses in order, as allocation does on an
// empty pool: never the network address, the gateway or the broadcast.
type cursor struct {
	p    store.Pool
	next netip.Addr
}

func (c *cursor) take() (netip.Addr, bool) {
	for a := c.next; a.IsValid() && c.p.CIDR.Contains(a); a = a.Next() {
		if a == c.p.Gateway || a.Is4() && !c.p.CIDR.Contains(a.Next()) {
			continue
		}
		c.next = a.Next()
		return a, true
	}
	return netip.Addr{}, false
}
