// Package loadgen simulates a fleet of patela nodes against a config
// server: each node has a software EK (configsrv/attest/softek), its own
// loopback source address and its own HTTPS connection, and boots the way
// the agent does (attest, activate, complete, specs, config, heartbeat).
// The load test and the bench report drive it.
package loadgen

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"patela/bench/srvproc"
	"patela/configsrv/attest"
	"patela/configsrv/attest/softek"
	"patela/configsrv/quote/quotetest"
	"patela/configsrv/store"
	"patela/internal/api"
	"patela/internal/pcr"
	"patela/internal/release"
)

// Node is one simulated machine.
type Node struct {
	EK *softek.EK
	AK []byte
	// Quoter signs the node's quotes (a software AK, the one AK names):
	// the node boots Booted, as the agent quotes its TPM.
	Quoter *quotetest.AK
	Addr   netip.Addr // source address of its connections
	Client *api.Client

	ID      int64
	Token   string
	Expires time.Time // of Token
	Config  *api.NodeConfig
}

// NewNodes makes n nodes whose connections come from consecutive
// addresses starting at first (keep them inside 127.0.0.0/8).
func NewNodes(srv *srvproc.Server, n int, first netip.Addr) ([]*Node, error) {
	nodes := make([]*Node, n)
	a := first
	for i := range nodes {
		ek, err := softek.New()
		if err != nil {
			return nil, err
		}
		qak, err := quotetest.NewAK()
		if err != nil {
			return nil, err
		}
		c, err := srv.Client(a)
		if err != nil {
			return nil, err
		}
		nodes[i] = &Node{EK: ek, AK: qak.Public, Quoter: qak, Addr: a, Client: c}
		a = a.Next()
	}
	return nodes, nil
}

// Close drops the node's idle connections.
func (n *Node) Close() { n.Client.HTTP.CloseIdleConnections() }

// FirstContact sends the node's first attestation, which the server must
// answer 403 pending with the new node's id.
func (n *Node) FirstContact(ctx context.Context, rec *Recorder) error {
	t0 := time.Now()
	_, err := n.Client.Attest(ctx, &api.AttestRequest{EKPublic: n.EK.Public, AKPublic: n.AK})
	rec.Add("first_contact", time.Since(t0), err)
	var ae *api.Error
	if err == nil {
		return fmt.Errorf("first contact from %s: answered 200, want 403 pending", n.Addr)
	}
	if !errors.As(err, &ae) || ae.Code != api.CodePending || ae.NodeID == 0 {
		return fmt.Errorf("first contact from %s: want 403 pending with a node id, got %w", n.Addr, err)
	}
	n.ID = ae.NodeID
	return nil
}

// Attest runs one handshake (attest, activate with the software EK,
// complete) and keeps the token.
func (n *Node) Attest(ctx context.Context, rec *Recorder) error {
	t0 := time.Now()
	ch, err := n.Client.Attest(ctx, &api.AttestRequest{EKPublic: n.EK.Public, AKPublic: n.AK})
	rec.Add("attest", time.Since(t0), err)
	if err != nil {
		return fmt.Errorf("attest: %w", err)
	}
	if n.ID != 0 && ch.NodeID != n.ID {
		return fmt.Errorf("attest: node id %d, want %d", ch.NodeID, n.ID)
	}
	n.ID = ch.NodeID
	_, name, err := attest.ParseAK(n.AK)
	if err != nil {
		return err
	}
	secret, err := n.EK.Activate(ch.CredentialBlob, ch.EncryptedSecret, name)
	if err != nil {
		return fmt.Errorf("activate: %w", err)
	}
	req := &api.CompleteRequest{ChallengeID: ch.ChallengeID, Secret: secret}
	if len(ch.Nonce) > 0 && n.Quoter != nil {
		if req.Quote, err = n.Quoter.Quote(ch.Nonce, bootPCRs, bootLog); err != nil {
			return err
		}
	}
	t0 = time.Now()
	done, err := n.Client.Complete(ctx, req)
	rec.Add("complete", time.Since(t0), err)
	if err != nil {
		return fmt.Errorf("complete: %w", err)
	}
	n.Token, n.Expires = done.Token, done.ExpiresAt
	return nil
}

// Booted is what every simulated node booted (an OVMF-like log of 32
// events), quoted at each attestation.
var Booted = quotetest.Boot("loadgen")

var bootPCRs, bootLog = Booted.AllPCRs(), Booted.Bytes()

// BootPCRs and BootLog are what a simulated node quotes: Booted's PCRs and
// event log.
func BootPCRs() map[int]pcr.Value { return bootPCRs }
func BootLog() []byte             { return bootLog }

// BootedRelease is an approved release of what Booted measures, so a
// server that holds it matches the simulated nodes' quotes.
func BootedRelease(name string) (*release.Release, error) {
	r, err := release.New(name, release.KindUKI, map[int]pcr.Value{4: Booted.PCRs[4], 11: Booted.PCRs[11], 12: {}},
		release.UKIPolicyPCRs, map[string]string{"uki": strings.Repeat("ab", 32)})
	if err != nil {
		return nil, err
	}
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	return r, r.Approve(k)
}

// Boot is what the agent does against the server at boot: attest, send
// specs, fetch the config, send a heartbeat.
func (n *Node) Boot(ctx context.Context, specs *api.Specs, rec *Recorder) error {
	if err := n.Attest(ctx, rec); err != nil {
		return err
	}
	t0 := time.Now()
	_, err := n.Client.Specs(ctx, n.Token, specs)
	rec.Add("specs", time.Since(t0), err)
	if err != nil {
		return fmt.Errorf("specs: %w", err)
	}
	if err := n.FetchConfig(ctx, rec); err != nil {
		return err
	}
	st := &api.Status{BootID: fmt.Sprintf("boot-%d", n.ID), UptimeS: 1}
	for _, r := range n.Config.Relays {
		st.Relays = append(st.Relays, api.RelayStatus{Name: r.Name, State: "running"})
	}
	t0 = time.Now()
	err = n.Client.Status(ctx, n.Token, st)
	rec.Add("status", time.Since(t0), err)
	if err != nil {
		return fmt.Errorf("status: %w", err)
	}
	return nil
}

// FetchConfig fetches and keeps the node's config.
func (n *Node) FetchConfig(ctx context.Context, rec *Recorder) error {
	t0 := time.Now()
	cfg, err := n.Client.Config(ctx, n.Token)
	rec.Add("config", time.Since(t0), err)
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	if cfg.NodeID != n.ID {
		return fmt.Errorf("config of node %d answered to node %d", cfg.NodeID, n.ID)
	}
	n.Config = cfg
	return nil
}

// Each runs f for every node with at most limit in flight (0: all at
// once) and returns the errors, one per failed node.
func Each(ctx context.Context, nodes []*Node, limit int, f func(context.Context, *Node) error) []error {
	if limit <= 0 {
		limit = len(nodes)
	}
	sem := make(chan struct{}, limit)
	var (
		mu   sync.Mutex
		errs []error
		wg   sync.WaitGroup
	)
	for _, n := range nodes {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			if err := f(ctx, n); err != nil {
				mu.Lock()
				errs = append(errs, fmt.Errorf("node %d (%s): %w", n.ID, n.Addr, err))
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return errs
}

// Recorder collects the latency and outcome of every request.
type Recorder struct {
	mu  sync.Mutex
	ops map[string]*opRec
}

type opRec struct {
	lat      []time.Duration
	statuses map[int]int // HTTP status of errors; 0 for transport errors
}

// NewRecorder returns an empty recorder.
func NewRecorder() *Recorder { return &Recorder{ops: map[string]*opRec{}} }

// Add records one request of kind op.
func (r *Recorder) Add(op string, d time.Duration, err error) {
	if r == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	o := r.ops[op]
	if o == nil {
		o = &opRec{statuses: map[int]int{}}
		r.ops[op] = o
	}
	o.lat = append(o.lat, d)
	if err != nil {
		var ae *api.Error
		if errors.As(err, &ae) {
			o.statuses[ae.Status]++
		} else {
			o.statuses[0]++
		}
	} else {
		o.statuses[http.StatusOK]++ // 2xx
	}
}

// OpStats summarizes one kind of request.
type OpStats struct {
	Op       string        `json:"op"`
	Count    int           `json:"count"`
	Errors   int           `json:"errors"`
	Statuses map[int]int   `json:"statuses"` // 200 stands for any 2xx; 0 for transport errors
	P50      time.Duration `json:"p50_ns"`
	P99      time.Duration `json:"p99_ns"`
	Max      time.Duration `json:"max_ns"`
}

// Stats returns the summaries, by op name.
func (r *Recorder) Stats() []OpStats {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []OpStats
	for name, o := range r.ops {
		lat := slices.Clone(o.lat)
		slices.Sort(lat)
		s := OpStats{Op: name, Count: len(lat), Statuses: map[int]int{}, P50: Percentile(lat, 50), P99: Percentile(lat, 99)}
		if len(lat) > 0 {
			s.Max = lat[len(lat)-1]
		}
		for st, c := range o.statuses {
			s.Statuses[st] = c
			if st != http.StatusOK {
				s.Errors += c
			}
		}
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Op < out[j].Op })
	return out
}

// ServerErrors counts the requests answered 5xx.
func (r *Recorder) ServerErrors() int {
	n := 0
	for _, s := range r.Stats() {
		for st, c := range s.Statuses {
			if st >= 500 {
				n += c
			}
		}
	}
	return n
}

// Percentile returns the p-th percentile (nearest rank) of sorted.
func Percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(p/100*float64(len(sorted))+0.999999) - 1
	return sorted[max(0, min(rank, len(sorted)-1))]
}

// Enable enables the nodes the way `configsrv node enable` does, through
// the store on the server's database, in one process instead of one per
// node.
func Enable(ctx context.Context, dbPath string, nodes []*Node) error {
	st, err := store.Open(dbPath)
	if err != nil {
		return err
	}
	defer st.Close()
	for _, n := range nodes {
		if err := st.SetNodeState(ctx, n.ID, api.NodeEnabled); err != nil {
			return fmt.Errorf("enabling node %d: %w", n.ID, err)
		}
	}
	return nil
}

// Duplicates returns the relay names and addresses that the nodes'
// configs give to more than one relay.
func Duplicates(nodes []*Node) []string {
	seen := map[string]int64{}
	var dups []string
	for _, n := range nodes {
		if n.Config == nil {
			continue
		}
		for _, r := range n.Config.Relays {
			for _, k := range []string{"name " + r.Name, "ipv4 " + r.IPv4, "ipv6 " + r.IPv6} {
				if k == "ipv6 " {
					continue
				}
				if other, ok := seen[k]; ok {
					dups = append(dups, fmt.Sprintf("%s: nodes %d and %d", k, other, n.ID))
				}
				seen[k] = n.ID
			}
		}
	}
	return dups
}

// FleetResult is what a fleet boot measured and found.
type FleetResult struct {
	Nodes        []*Node
	Boot         time.Duration // wall time of the concurrent boot
	Failed       []error       // one per node whose boot failed
	Ops          []OpStats     // the fleet's requests (first contact excluded)
	ServerErrors int           // fleet requests answered 5xx
	Duplicates   []string      // relay names or addresses given twice
	Abuser       map[int]int   // the abuser's answers by HTTP status (0: transport error)
	AbuserSent   int
}

// AbuserAddr is where the abusive client's connections come from; the
// fleet's start at FleetAddr.
var (
	AbuserAddr = netip.MustParseAddr("127.0.0.2")
	FleetAddr  = netip.MustParseAddr("127.1.0.1")
)

// RunFleet enrolls n nodes (first contact, then enabled by the
// administrator), then boots them all at once with specs while, if abuse
// is set, one client floods POST /v1/attest from AbuserAddr.
func RunFleet(ctx context.Context, srv *srvproc.Server, n int, specs *api.Specs, abuse bool) (*FleetResult, error) {
	nodes, err := NewNodes(srv, n, FleetAddr)
	if err != nil {
		return nil, err
	}
	res := &FleetResult{Nodes: nodes, Abuser: map[int]int{}}
	if errs := Each(ctx, nodes, 64, func(ctx context.Context, nd *Node) error { return nd.FirstContact(ctx, nil) }); len(errs) > 0 {
		return nil, fmt.Errorf("%d first contacts failed, first: %w", len(errs), errs[0])
	}
	if err := Enable(ctx, srv.DB, nodes); err != nil {
		return nil, err
	}
	stop := make(chan struct{})
	var abusers sync.WaitGroup
	if abuse {
		c, err := srv.Client(AbuserAddr)
		if err != nil {
			return nil, err
		}
		defer c.HTTP.CloseIdleConnections()
		ek, ak, err := softek.NewKeys()
		if err != nil {
			return nil, err
		}
		var mu sync.Mutex
		for range 8 {
			abusers.Add(1)
			go func() {
				defer abusers.Done()
				for {
					select {
					case <-stop:
						return
					default:
					}
					_, err := c.Attest(ctx, &api.AttestRequest{EKPublic: ek.Public, AKPublic: ak})
					st := http.StatusOK
					var ae *api.Error
					if errors.As(err, &ae) {
						st = ae.Status
					} else if err != nil {
						st = 0
					}
					mu.Lock()
					res.Abuser[st]++
					res.AbuserSent++
					mu.Unlock()
				}
			}()
		}
	}
	rec := NewRecorder()
	t0 := time.Now()
	res.Failed = Each(ctx, nodes, 0, func(ctx context.Context, nd *Node) error { return nd.Boot(ctx, specs, rec) })
	res.Boot = time.Since(t0)
	close(stop)
	abusers.Wait()
	for _, nd := range nodes {
		nd.Close()
	}
	res.Ops = rec.Stats()
	res.ServerErrors = rec.ServerErrors()
	res.Duplicates = Duplicates(nodes)
	return res, nil
}
