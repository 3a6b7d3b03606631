package main

import (
	"bufio"
	"context"
	"fmt"
	"log"
	"log/slog"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"patela/bench/loadgen"
	"patela/bench/srvproc"
	"patela/configsrv/pki"
	"patela/configsrv/token"
	"patela/init/netcfg"
	"patela/init/reconcile"
	"patela/init/tor"
	"patela/internal/api"
)

// LongPollRun is the configsrv binary with seeded nodes long-polling
// their config: how fast one global change reaches them, what holding
// their requests costs the server, and how many requests an idle node
// (the real reconcile loop) sends an hour.
type LongPollRun struct {
	Nodes, Relays int
	Changes       []Propagation `json:"changes"`
	// RSS of the server with Waiting requests held (3 s after the last
	// was parked, and again after RSSIdleAfter with nothing else to
	// do), and before any.
	Waiting      int           `json:"waiting"`
	RSSBefore    int64         `json:"rss_before_bytes"`
	RSSHeld      int64         `json:"rss_held_bytes"`
	RSSHeldPeak  int64         `json:"rss_peak_bytes"`
	RSSIdle      int64         `json:"rss_idle_bytes"`
	RSSIdleAfter time.Duration `json:"rss_idle_after_ns"`
	// ParkCPU is the server's CPU time (user + system) from the first
	// of the nodes beyond the pollers connecting until all are held:
	// their TLS handshakes, first fetches and parked waits, GC included.
	ParkCPU time.Duration `json:"park_cpu_ns"`
	Idle    *IdleRate     `json:"idle,omitempty"`
}

// Propagation is one global torrc change and when each long-polling node
// had the new config, from the start of the admin command.
type Propagation struct {
	Nodes int           `json:"nodes"`
	Admin time.Duration `json:"admin_ns"` // the `configsrv torrc import` process, start to exit
	P50   time.Duration `json:"p50_ns"`
	P99   time.Duration `json:"p99_ns"`
	Max   time.Duration `json:"max_ns"`
	// The same counted from the command's exit, which follows its
	// commit by a few milliseconds (an audit row).
	P50Commit time.Duration `json:"p50_from_commit_ns"`
	P99Commit time.Duration `json:"p99_from_commit_ns"`
	Wrong     int           `json:"wrong"` // answers without the change
}

// IdleRate is the real agent loop (init/reconcile, tor and network
// faked) on idle nodes against the binary, with every timer the request
// rate depends on scaled down by Scale (token lifetime, server hold,
// heartbeat interval), so a minute stands for an hour.
type IdleRate struct {
	Nodes     int            `json:"nodes"`
	Scale     int            `json:"scale"`
	Window    time.Duration  `json:"window_ns"` // measured, after a warm-up
	PerHour   float64        `json:"requests_per_node_hour"`
	ByRequest map[string]int `json:"by_request"` // "METHOD /path" → requests in the window, all nodes
}

const lpAddrBase = "127.6.0.1"

func runLongPoll(ctx context.Context, bin, work string, nodes, relays, pollers int) (*LongPollRun, error) {
	dir := filepath.Join(work, "longpoll")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	srv, err := srvproc.Setup(bin, dir, srvproc.BenchPools)
	if err != nil {
		return nil, err
	}
	fl, err := seed(ctx, srv.DB, nodes, relays)
	if err != nil {
		return nil, fmt.Errorf("seeding: %w", err)
	}
	if err := srv.Start("--attest-rate", "0"); err != nil {
		return nil, err
	}
	defer srv.Kill()
	r := &LongPollRun{Nodes: nodes, Relays: relays}
	time.Sleep(time.Second)
	if r.RSSBefore, _, err = srv.RSS(); err != nil {
		return nil, err
	}
	key, err := token.LoadKey(filepath.Join(srv.Dir, pki.BiscuitKey))
	if err != nil {
		return nil, err
	}
	auth := token.New(key, 24*time.Hour) // the server checks them with its own, 1 h: minted now, valid for the run
	f := &fleetPoll{changed: make(chan struct{})}
	lctx, stop := context.WithCancel(ctx)
	defer stop()
	start := func(from, to int) error {
		a := netip.MustParseAddr(lpAddrBase)
		for range from {
			a = a.Next()
		}
		sem := make(chan struct{}, 64)
		var wg sync.WaitGroup
		var ferr atomic.Value
		for i := from; i < to; i++ {
			tok, _, err := auth.Issue(token.Claims{Node: fl.ids[i], EK: fl.ekIDs[i]}, time.Now())
			if err != nil {
				return err
			}
			c, err := srv.Client(a)
			if err != nil {
				return err
			}
			a = a.Next()
			sem <- struct{}{}
			wg.Add(1)
			go func() {
				defer wg.Done()
				res, err := c.ConfigWait(lctx, tok, "", 0)
				<-sem
				if err == nil && res.ETag == "" {
					err = fmt.Errorf("no ETag: the server does not long-poll")
				}
				if err != nil {
					ferr.Store(fmt.Errorf("first fetch of node %d: %w", fl.ids[i], err))
					return
				}
				go f.poll(lctx, c, tok, res.ETag)
			}()
		}
		wg.Wait()
		if e, ok := ferr.Load().(error); ok {
			return e
		}
		return nil
	}
	n0 := min(pollers, nodes)
	if err := start(0, n0); err != nil {
		return nil, err
	}
	for i := range 3 {
		p, err := f.change(srv, dir, i, n0)
		if err != nil {
			return nil, err
		}
		log.Printf("  global change %d: %d nodes, p50 %v, p99 %v, max %v (admin command %v; from its exit p50 %v, p99 %v)", i+1, p.Nodes, p.P50, p.P99, p.Max, p.Admin, p.P50Commit, p.P99Commit)
		r.Changes = append(r.Changes, *p)
	}
	// Every seeded node long-polling: what holding them costs.
	cpu0, err := srv.CPU()
	if err != nil {
		return nil, err
	}
	if err := start(n0, nodes); err != nil {
		return nil, err
	}
	f.waitHeld(nodes, time.Minute)
	time.Sleep(3 * time.Second) // the last requests reach the server and are parked
	r.Waiting = nodes
	if r.RSSHeld, r.RSSHeldPeak, err = srv.RSS(); err != nil {
		return nil, err
	}
	cpu1, err := srv.CPU()
	if err != nil {
		return nil, err
	}
	r.ParkCPU = cpu1 - cpu0
	// And once the Go runtime's background scavenger has had time to
	// return what the heap no longer needs.
	r.RSSIdleAfter = 30 * time.Second
	time.Sleep(r.RSSIdleAfter)
	if r.RSSIdle, _, err = srv.RSS(); err != nil {
		return nil, err
	}
	log.Printf("  %d held: server RSS %s 3 s after (peak %s), %s %v later; CPU to park them %v", nodes, mib(r.RSSHeld), mib(r.RSSHeldPeak),
		mib(r.RSSIdle), r.RSSIdleAfter, r.ParkCPU)
	if nodes > n0 {
		p, err := f.change(srv, dir, 3, nodes)
		if err != nil {
			return nil, err
		}
		log.Printf("  global change, every node: %d nodes, p50 %v, p99 %v, max %v", p.Nodes, p.P50, p.P99, p.Max)
		r.Changes = append(r.Changes, *p)
	}
	stop()
	srv.Kill()

	if r.Idle, err = idleRate(ctx, srv, fl, relays, 100); err != nil {
		return nil, fmt.Errorf("idle request rate: %w", err)
	}
	return r, nil
}

// fleetPoll is the long-polling nodes: each waits for its config to move
// past its ETag; a global change is announced by closing changed.
type fleetPoll struct {
	mu      sync.Mutex
	marker  string    // the change the nodes wait for
	t0      time.Time // when it was started
	got     []time.Duration
	wrong   int
	changed chan struct{} // closed when all expected answers came
	want    int
	held    atomic.Int64 // nodes that sent their long poll
}

func (f *fleetPoll) poll(ctx context.Context, c *api.Client, tok, etag string) {
	defer c.HTTP.CloseIdleConnections()
	for ctx.Err() == nil {
		f.held.Add(1)
		res, err := c.ConfigWait(ctx, tok, etag, 30*time.Minute)
		f.held.Add(-1)
		if err != nil {
			if ctx.Err() == nil {
				time.Sleep(time.Second) // not expected; counted as missing below
			}
			continue
		}
		etag = res.ETag
		if res.Config != nil {
			f.arrived(res.Config)
		}
	}
}

func (f *fleetPoll) arrived(cfg *api.NodeConfig) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.marker == "" {
		return
	}
	if len(cfg.Relays) == 0 || !strings.Contains(cfg.Relays[0].Torrc, f.marker) {
		f.wrong++
		return
	}
	f.got = append(f.got, time.Since(f.t0))
	if len(f.got) == f.want {
		close(f.changed)
	}
}

func (f *fleetPoll) waitHeld(n int, limit time.Duration) {
	for t := time.Now(); f.held.Load() < int64(n) && time.Since(t) < limit; {
		time.Sleep(50 * time.Millisecond)
	}
}

// change imports a new global torrc and waits until n nodes have it.
func (f *fleetPoll) change(srv *srvproc.Server, dir string, i, n int) (*Propagation, error) {
	f.waitHeld(n, time.Minute)
	time.Sleep(500 * time.Millisecond) // held by the server, not only sent
	marker := fmt.Sprintf("bench change %d", i+1)
	torrc := filepath.Join(dir, fmt.Sprintf("global-%d.torrc", i))
	if err := os.WriteFile(torrc, []byte("DisableNetwork 1\nContactInfo patela "+marker+" <ops@example.org>\n"), 0o644); err != nil {
		return nil, err
	}
	f.mu.Lock()
	f.marker, f.got, f.wrong, f.want, f.changed = marker, nil, 0, n, make(chan struct{})
	f.t0 = time.Now()
	done := f.changed
	f.mu.Unlock()
	if _, err := srv.Admin("torrc", "import", torrc, "--default"); err != nil {
		return nil, err
	}
	admin := time.Since(f.t0)
	select {
	case <-done:
	case <-time.After(2 * time.Minute):
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	got := slices.Clone(f.got)
	f.marker = ""
	slices.Sort(got)
	if len(got) < n {
		return nil, fmt.Errorf("global change %d: %d of %d nodes had it after 2 minutes (%d wrong answers)", i+1, len(got), n, f.wrong)
	}
	after := make([]time.Duration, len(got))
	for i, d := range got {
		after[i] = max(0, d-admin)
	}
	return &Propagation{Nodes: n, Admin: admin, P50: loadgen.Percentile(got, 50), P99: loadgen.Percentile(got, 99),
		Max: got[len(got)-1], P50Commit: loadgen.Percentile(after, 50), P99Commit: loadgen.Percentile(after, 99), Wrong: f.wrong}, nil
}

// idleRate runs the real reconcile loop on n of the seeded nodes against
// the binary, restarted with every timer scaled down 60 times (a token
// lives 1 min instead of 1 h, a request is held at most 30 s instead of
// 30 min, a heartbeat every 10 s instead of 10 min), and counts in the
// access log what the nodes send once booted.
func idleRate(ctx context.Context, srv *srvproc.Server, fl *seeded, relays, n int) (*IdleRate, error) {
	const scale = 60
	if _, err := srv.Admin("node", "set", "--default", "heartbeat_interval_s", "10"); err != nil {
		return nil, err
	}
	access := filepath.Join(srv.Dir, "access.log")
	if err := srv.Start("--attest-rate", "0", "--token-ttl", "1m", "--max-wait", "30s", "--access-log", access); err != nil {
		return nil, err
	}
	defer srv.Kill()
	lctx, stop := context.WithCancel(ctx)
	defer stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	defer stop()
	a := netip.MustParseAddr("127.7.0.1")
	addrs := map[string]bool{}
	for i := range n {
		c, err := srv.Client(a)
		if err != nil {
			return nil, err
		}
		addrs[a.String()] = true
		a = a.Next()
		nd := &loadgen.Node{EK: fl.eks[i], AK: fl.aks[i], Client: c, ID: fl.ids[i]}
		l, err := reconcile.New(reconcile.Config{
			Client: c, Tokens: &simTokens{n: nd}, Network: noNetwork{}, Relays: &fakeRelays{m: map[string]tor.Spec{}},
			Log:   discardLog,
			Specs: &api.Specs{CPUs: relays, MemoryBytes: uint64(relays) << 30, CPUModel: "seeded"},
		})
		if err != nil {
			return nil, err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.HTTP.CloseIdleConnections()
			l.Run(lctx)
		}()
	}
	warm := 20 * time.Second
	window := 2 * time.Minute // two hours at scale
	time.Sleep(warm)
	from := time.Now()
	time.Sleep(window)
	to := time.Now()
	stop()
	byReq, total, err := countAccess(access, addrs, from, to)
	if err != nil {
		return nil, err
	}
	hours := to.Sub(from).Hours() * scale
	return &IdleRate{Nodes: n, Scale: scale, Window: to.Sub(from), PerHour: float64(total) / float64(n) / hours, ByRequest: byReq}, nil
}

// countAccess counts the access log lines of the given client addresses
// answered between from and to, by method and path.
func countAccess(path string, addrs map[string]bool, from, to time.Time) (map[string]int, int, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, err
	}
	defer f.Close()
	by := map[string]int{}
	total := 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// time client method "path" status bytes duration
		fs := strings.Fields(sc.Text())
		if len(fs) < 4 || !addrs[fs[1]] {
			continue
		}
		at, err := time.Parse(time.RFC3339Nano, fs[0])
		if err != nil || at.Before(from) || !at.Before(to) {
			continue
		}
		by[fs[2]+" "+strings.Trim(fs[3], `"`)]++
		total++
	}
	return by, total, sc.Err()
}

// simTokens is a node's attest.Session over a software EK: a token,
// renewed a twelfth of its life before it expires (the agent's five
// minutes of an hour).
type simTokens struct {
	n         *loadgen.Node
	mu        sync.Mutex
	refreshAt time.Time
}

func (s *simTokens) Token(ctx context.Context) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.n.Token != "" && time.Now().Before(s.refreshAt) {
		return s.n.Token, nil
	}
	if err := s.n.Attest(ctx, nil); err != nil {
		return "", err
	}
	s.refreshAt = s.n.Expires.Add(-time.Until(s.n.Expires) / 12)
	return s.n.Token, nil
}

func (s *simTokens) Invalidate(tok string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.n.Token == tok {
		s.n.Token = ""
	}
}

func (s *simTokens) RefreshAt() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.refreshAt
}

var discardLog = slog.New(slog.DiscardHandler)

// noNetwork and fakeRelays stand for the node's network and tor: the
// request rate is the loop's, not theirs.
type noNetwork struct{}

func (noNetwork) Apply(context.Context, netcfg.Relays) error { return nil }

type fakeRelays struct {
	mu sync.Mutex
	m  map[string]tor.Spec
}

func (f *fakeRelays) Apply(_ context.Context, s tor.Spec) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.m[s.Name] = s
	return nil
}

func (f *fakeRelays) Remove(_ context.Context, name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.m, name)
	return nil
}

func (f *fakeRelays) Stop(ctx context.Context, name string) error { return f.Remove(ctx, name) }

func (f *fakeRelays) Status() []tor.Status {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []tor.Status
	for _, n := range slices.Sorted(maps.Keys(f.m)) {
		out = append(out, tor.Status{Name: n, UID: f.m[n].UID, State: api.RelayRunning})
	}
	return out
}

func (f *fakeRelays) Changes() <-chan struct{} { return nil }

func (f *fakeRelays) Metrics(context.Context) []api.RelayMetrics { return nil }
