package main

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"patela/bench/loadgen"
	"patela/bench/srvproc"
	"patela/configsrv/alloc"
	"patela/configsrv/attest"
	"patela/configsrv/attest/softek"
	"patela/configsrv/pki"
	"patela/configsrv/store"
	"patela/configsrv/token"
	"patela/internal/api"
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
}

// Burst is one timed run of many requests.
type Burst struct {
	Name     string        `json:"name"`
	Requests int           `json:"requests"`
	Errors   int           `json:"errors"`
	Took     time.Duration `json:"took_ns"`
	PerSec   float64       `json:"per_s"`
	P50      time.Duration `json:"p50_ns"`
	P99      time.Duration `json:"p99_ns"`
}

type seeded struct {
	ids []int64
	eks []*softek.EK
	aks [][]byte
}

func runServer(ctx context.Context, bin, work string, nodes, relays int) (*ServerRun, error) {
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
	if err := srv.Start("--attest-rate", "0"); err != nil {
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
		if tokens[i], _, err = auth.Issue(id, time.Now()); err != nil {
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
	fetch := func(c *api.Client, i int) error {
		cfg, err := c.Config(ctx, tokens[i])
		if err == nil && (cfg.NodeID != fl.ids[i] || len(cfg.Relays) != relays) {
			err = fmt.Errorf("node %d: config of node %d with %d relays", fl.ids[i], cfg.NodeID, len(cfg.Relays))
		}
		return err
	}
	// First every node once (each token new to the server), then again.
	r.Fetch = append(r.Fetch, burst("config fetch, every node once (cold token cache)", clients, nodes, fetch))
	r.Fetch = append(r.Fetch, burst("config fetch, every node again (warm)", clients, nodes, fetch))
	hs := min(nodes, 4000)
	r.Handshake = burst(fmt.Sprintf("attestation handshake (attest, software ActivateCredential, complete) x %d", hs), clients, hs,
		func(c *api.Client, i int) error {
			ch, err := c.Attest(ctx, &api.AttestRequest{EKPublic: fl.eks[i].Public, AKPublic: fl.aks[i]})
			if err != nil {
				return err
			}
			_, name, err := attest.ParseAK(fl.aks[i])
			if err != nil {
				return err
			}
			secret, err := fl.eks[i].Activate(ch.CredentialBlob, ch.EncryptedSecret, name)
			if err != nil {
				return err
			}
			_, err = c.Complete(ctx, &api.CompleteRequest{ChallengeID: ch.ChallengeID, Secret: secret})
			return err
		})
	if r.RSSAfter, r.RSSPeak, err = srv.RSS(); err != nil {
		return nil, err
	}
	return r, nil
}

// burst runs n operations over the clients, each client one at a time.
func burst(name string, clients []*api.Client, n int, op func(*api.Client, int) error) Burst {
	var next, errs atomic.Int64
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
				if op(c, i) != nil {
					errs.Add(1)
					continue
				}
				lat[ci] = append(lat[ci], time.Since(s))
			}
		}()
	}
	wg.Wait()
	took := time.Since(t0)
	all := slices.Concat(lat...)
	slices.Sort(all)
	return Burst{Name: name, Requests: n, Errors: int(errs.Load()), Took: took, PerSec: float64(n) / took.Seconds(),
		P50: loadgen.Percentile(all, 50), P99: loadgen.Percentile(all, 99)}
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
		ek, ak, err := softek.NewKeys()
		if err != nil {
			return nil, err
		}
		// k cpus and 1 GiB per relay: the allocation rules give k relays.
		res, err := insNode.ExecContext(ctx, store.EKHash(ek.Public), ek.Public, now, now, now, k, int64(k)<<30)
		if err != nil {
			return nil, err
		}
		id, err := res.LastInsertId()
		if err != nil {
			return nil, err
		}
		for idx := range k {
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
		s.ids, s.eks, s.aks = append(s.ids, id), append(s.eks, ek), append(s.aks, ak)
	}
	return s, tx.Commit()
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
