package httpapi_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"patela/configsrv/alloc"
	"patela/configsrv/attest"
	"patela/configsrv/attest/softek"
	"patela/configsrv/cli"
	"patela/configsrv/pki"
	"patela/configsrv/quote/quotetest"
	"patela/configsrv/store"
	"patela/configsrv/testsrv"
	"patela/configsrv/token"
	"patela/internal/api"
	"patela/internal/ekid"
	"patela/internal/pcr"
	"patela/internal/release"
)

// Fleet size the benchmarks run against.
const (
	benchNodes     = 10000
	benchRelays    = 4
	benchTokenPool = 2000 // distinct node tokens the config benchmark cycles through
)

// fleet is a real configsrv (the `serve` code path, HTTPS on loopback)
// whose database holds benchNodes enabled nodes with benchRelays relays
// each, seeded directly into the store.
type fleet struct {
	url    string
	caPEM  []byte
	eks    []*softek.EK
	aks    [][]byte
	qaks   []*quotetest.AK // the same AKs, quoting in software
	names  [][]byte        // AK names, computed once as a node knows its own
	boot   *quotetest.Log  // what every node booted: the registered release
	pcrs   map[int]pcr.Value
	log    []byte
	ids    []int64
	ekIDs  []ekid.ID
	tokens []string
	dir    string
	warm   sync.Once

	bootOnce sync.Once // booted
	bootErr  error
}

var (
	fleetOnce sync.Once
	theFleet  *fleet
	fleetErr  error
)

func getFleet(b *testing.B) *fleet {
	b.Helper()
	fleetOnce.Do(func() { theFleet, fleetErr = newFleet() })
	if fleetErr != nil {
		b.Fatal(fleetErr)
	}
	return theFleet
}

func newFleet() (*fleet, error) {
	dir, err := os.MkdirTemp("", "configsrv-bench")
	if err != nil {
		return nil, err
	}
	f := &fleet{dir: dir}
	if _, err := pki.Init(dir, []string{"127.0.0.1"}); err != nil {
		return nil, err
	}
	st, err := store.Open(filepath.Join(dir, "patela.db"))
	if err != nil {
		return nil, err
	}
	if err := f.seed(st); err != nil {
		return nil, err
	}
	srv, err := cli.NewServer(st, cli.ServeOptions{
		CertFile:   filepath.Join(dir, pki.ServerCert),
		KeyFile:    filepath.Join(dir, pki.ServerKey),
		BiscuitKey: filepath.Join(dir, pki.BiscuitKey),
		TokenTTL:   time.Hour,
		// The per-address limit would cap a single load generator; the
		// benchmark measures the server behind it.
		AttestRate: 0,
	}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	go srv.ServeTLS(ln, "", "")
	f.url = "https://" + ln.Addr().String()
	caPEM, err := os.ReadFile(filepath.Join(dir, pki.CACert))
	if err != nil {
		return nil, err
	}
	f.caPEM = caPEM
	key, err := token.LoadKey(filepath.Join(dir, pki.BiscuitKey))
	if err != nil {
		return nil, err
	}
	auth := token.New(key, time.Hour)
	for i := 0; i < benchTokenPool; i++ {
		id := (i * 7919) % len(f.ids)
		tok, _, err := auth.Issue(token.Claims{Node: f.ids[id], EK: f.ekIDs[id]}, time.Now())
		if err != nil {
			return nil, err
		}
		f.tokens = append(f.tokens, tok)
	}
	return f, nil
}

// seed inserts the fleet in one transaction: software EKs, enabled nodes,
// and relays with addresses from 198.18.0.0/15 (the benchmarking range,
// RFC 2544) and 2001:db8::/64.
func (f *fleet) seed(st *store.Store) error {
	ctx := context.Background()
	v4 := netip.MustParsePrefix("198.18.0.0/15")
	v6 := netip.MustParsePrefix("2001:db8::/64")
	if err := st.AddPool(ctx, v4, netip.MustParseAddr("198.18.0.1"), time.Now()); err != nil {
		return err
	}
	if err := st.AddPool(ctx, v6, netip.MustParseAddr("2001:db8::1"), time.Now()); err != nil {
		return err
	}
	if err := st.SetGlobalTorrc(ctx, testsrv.GlobalTorrc+"ExitRelay 1\nExitPolicy accept *:80\nExitPolicy accept *:443\nExitPolicy reject *:*\nIPv6Exit 1\nAvoidDiskWrites 1\n"); err != nil {
		return err
	}
	tx, err := st.DB().Begin()
	if err != nil {
		return err
	}
	defer tx.Rollback()
	insNode, err := tx.Prepare(`INSERT INTO nodes(ek_hash, ek_public, state, first_seen, last_seen, attested_at, cpus, memory_bytes)
		VALUES (?, ?, 'enabled', ?, ?, ?, 4, ?)`)
	if err != nil {
		return err
	}
	insRelay, err := tx.Prepare(`INSERT INTO relays(node_id, idx, name, ipv4, ipv4_pool, ipv6, ipv6_pool, or_port, created)
		VALUES (?, ?, ?, ?, (SELECT id FROM pools WHERE cidr = ?), ?, (SELECT id FROM pools WHERE cidr = ?), ?, ?)`)
	if err != nil {
		return err
	}
	now := time.Now().Unix()
	a4 := v4.Addr().Next().Next() // after the network address and gateway
	a6 := v6.Addr().Next().Next()
	nameIdx := 0
	for i := 0; i < benchNodes; i++ {
		ek, err := softek.New()
		if err != nil {
			return err
		}
		qak, err := quotetest.NewAK()
		if err != nil {
			return err
		}
		ak := qak.Public
		f.qaks = append(f.qaks, qak)
		parsed, err := attest.NewEK(ek.Public)
		if err != nil {
			return err
		}
		res, err := insNode.Exec(parsed.ID[:], ek.Public, now, now, now, int64(8<<30))
		if err != nil {
			return err
		}
		id, _ := res.LastInsertId()
		_, name, err := attest.ParseAK(ak)
		if err != nil {
			return err
		}
		f.eks, f.aks, f.names, f.ids = append(f.eks, ek), append(f.aks, ak), append(f.names, name), append(f.ids, id)
		f.ekIDs = append(f.ekIDs, parsed.ID)
		for r := 0; r < benchRelays; r++ {
			if _, err := insRelay.Exec(id, r, alloc.Name(nameIdx), a4.String(), v4.String(), a6.String(), v6.String(), alloc.ORPort, now); err != nil {
				return err
			}
			nameIdx++
			a4, a6 = a4.Next(), a6.Next()
		}
	}
	if err := tx.Commit(); err != nil {
		return err
	}
	// The fleet booted one release on one kind of machine.
	f.boot = quotetest.Boot("fleet")
	f.pcrs, f.log = f.boot.AllPCRs(), f.boot.Bytes()
	rel, err := release.New("fleet-1", release.KindUKI, map[int]pcr.Value{4: f.boot.PCRs[4], 11: f.boot.PCRs[11], 12: {}},
		release.UKIPolicyPCRs, map[string]string{"uki": strings.Repeat("ab", 32)})
	if err != nil {
		return err
	}
	pk, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err := rel.Approve(pk); err != nil {
		return err
	}
	return st.AddRelease(ctx, rel, time.Now())
}

// latencies collects per-operation durations from parallel workers.
type latencies struct {
	mu sync.Mutex
	d  []time.Duration
}

func (l *latencies) add(d []time.Duration) {
	l.mu.Lock()
	l.d = append(l.d, d...)
	l.mu.Unlock()
}

func (l *latencies) p99() time.Duration {
	if len(l.d) == 0 {
		return 0
	}
	sort.Slice(l.d, func(i, j int) bool { return l.d[i] < l.d[j] })
	return l.d[len(l.d)*99/100]
}

// agent is a client as the agent makes one (init/main.go: api.NewClient,
// HTTP/1.1, one TLS connection kept alive).
// The CA was read by newFleet: an error here is a broken benchmark.
func (f *fleet) agent() *api.Client {
	c, err := api.NewClient(f.url, f.caPEM)
	if err != nil {
		panic(err)
	}
	return c
}

// run drives op from 4 goroutines per CPU (8 concurrent clients on this
// 2-core machine) and reports ops/s, p99 latency and CPU per operation.
// Each goroutine is one agent with its own connection, kept alive across
// its operations (token refreshes, config polls); with perBoot, each
// operation is a boot: a new agent client, whose first request makes the
// TLS handshake, closed after.
func run(b *testing.B, f *fleet, unit string, perBoot bool, op func(c *api.Client, i int) error) {
	var next atomic.Int64
	var lat latencies
	var failures atomic.Int64
	var firstErr atomic.Value
	b.SetParallelism(4)
	b.ResetTimer()
	cpu0 := cpuTime()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		var local []time.Duration
		c := f.agent()
		defer c.HTTP.CloseIdleConnections()
		for pb.Next() {
			i := int(next.Add(1))
			t0 := time.Now()
			if perBoot {
				c.HTTP.CloseIdleConnections()
				c = f.agent()
			}
			if err := op(c, i); err != nil {
				failures.Add(1)
				firstErr.CompareAndSwap(nil, err)
				continue
			}
			local = append(local, time.Since(t0))
		}
		lat.add(local)
	})
	elapsed := time.Since(start)
	cpu := cpuTime() - cpu0
	b.StopTimer()
	if n := failures.Load(); n > 0 {
		b.Fatalf("%d of %d operations failed; first: %v", n, b.N, firstErr.Load())
	}
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), unit+"/s")
	b.ReportMetric(float64(lat.p99().Microseconds())/1000, "p99-ms")
	// Server and load generator share this process and the machine's
	// cores; CPU per operation says what the rate would be on idle cores.
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/op")
}

// cpuTime is the process's user+system CPU time.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// boot is what a benchmark's handshake sends of the node's boot.
type boot int

const (
	noQuote  boot = iota // an agent older than remote attestation
	sameBoot             // a token refresh: the boot evidence the server last stored
	newBoot              // a reboot: the TPM's reset count moved, so the evidence is written
)

// handshake is one attestation handshake of node n: POST /v1/attest,
// software ActivateCredential, POST /v1/attest/complete, with a quote (a
// software AK signing what TPM2_Quote signs, with the challenge's nonce,
// the PCRs and a 32-event firmware log) unless q is noQuote.
func (f *fleet) handshake(ctx context.Context, c *api.Client, n int, q boot) error {
	ch, err := c.Attest(ctx, &api.AttestRequest{EKPublic: f.eks[n].Public, AKPublic: f.aks[n]})
	if err != nil {
		return fmt.Errorf("node %d: %w", f.ids[n], err)
	}
	secret, err := f.eks[n].Activate(ch.CredentialBlob, ch.EncryptedSecret, f.names[n])
	if err != nil {
		return fmt.Errorf("node %d: %w", f.ids[n], err)
	}
	req := &api.CompleteRequest{ChallengeID: ch.ChallengeID, Secret: secret}
	if q == newBoot {
		f.qaks[n].Reboot()
	}
	if q != noQuote {
		if req.Quote, err = f.qaks[n].Quote(ch.Nonce, f.pcrs, f.log); err != nil {
			return err
		}
	}
	resp, err := c.Complete(ctx, req)
	if err != nil {
		return fmt.Errorf("node %d: %w", f.ids[n], err)
	}
	if resp.Token == "" || resp.FirstBoot {
		return fmt.Errorf("node %d: bad answer %+v", f.ids[n], resp)
	}
	return nil
}

// booted has every node of the fleet attest once with its quote, untimed,
// so the server has stored what each booted (the release): the
// benchmarks' nodes are rebooting or refreshing, not attesting for the
// first time since remote attestation came in.
func (f *fleet) booted(b *testing.B) {
	f.bootOnce.Do(func() {
		var next atomic.Int64
		errs := make(chan error, 4)
		for w := 0; w < 4; w++ {
			go func() {
				c := f.agent()
				defer c.HTTP.CloseIdleConnections()
				for n := int(next.Add(1)) - 1; n < len(f.eks); n = int(next.Add(1)) - 1 {
					if err := f.handshake(context.Background(), c, n, sameBoot); err != nil {
						errs <- err
						return
					}
				}
				errs <- nil
			}()
		}
		for w := 0; w < 4; w++ {
			if err := <-errs; err != nil && f.bootErr == nil {
				f.bootErr = err
			}
		}
	})
	if f.bootErr != nil {
		b.Fatal(f.bootErr)
	}
}

// BenchmarkHandshake: full attestation handshakes by enrolled nodes of a
// 10,000-node fleet, over HTTPS on loopback, without quotes (older
// agents).
func BenchmarkHandshake(b *testing.B) {
	f := getFleet(b)
	run(b, f, "handshakes", false, func(c *api.Client, i int) error {
		return f.handshake(context.Background(), c, i%len(f.eks), noQuote)
	})
}

// BenchmarkHandshakeQuote is BenchmarkHandshake with remote attestation,
// as current agents do it at boot, the fleet rebooting: the server
// verifies the quote, replays the log, matches the release and records
// the new boot's evidence.
func BenchmarkHandshakeQuote(b *testing.B) {
	f := getFleet(b)
	f.booted(b)
	run(b, f, "handshakes", false, func(c *api.Client, i int) error {
		return f.handshake(context.Background(), c, i%len(f.eks), newBoot)
	})
}

// BenchmarkHandshakeQuoteRefresh is BenchmarkHandshakeQuote for the
// handshake that renews an agent's token within its boot (hourly): the
// evidence is what the server stored, so it is not written again.
func BenchmarkHandshakeQuoteRefresh(b *testing.B) {
	f := getFleet(b)
	f.booted(b)
	run(b, f, "handshakes", false, func(c *api.Client, i int) error {
		return f.handshake(context.Background(), c, i%len(f.eks), sameBoot)
	})
}

// BenchmarkHandshakeQuoteBoot is BenchmarkHandshakeQuote where every
// handshake is also the agent's first connection, so a full TLS
// handshake (no session to resume) precedes the attestation.
func BenchmarkHandshakeQuoteBoot(b *testing.B) {
	f := getFleet(b)
	f.booted(b)
	run(b, f, "handshakes", true, func(c *api.Client, i int) error {
		return f.handshake(context.Background(), c, i%len(f.eks), newBoot)
	})
}

// BenchmarkConfigFetch: GET /v1/node/config (4 relays, torrc resolved
// each time) by nodes of a 10,000-node fleet, over HTTPS on loopback.
func BenchmarkConfigFetch(b *testing.B) {
	f := getFleet(b)
	ctx := context.Background()
	// Agents poll with the same token for its whole hour, so the server's
	// verified-token cache is warm in steady state: warm it here, untimed.
	f.warm.Do(func() {
		c := f.agent()
		defer c.HTTP.CloseIdleConnections()
		for _, tok := range f.tokens {
			if _, err := c.Config(ctx, tok); err != nil {
				b.Fatal(err)
			}
		}
	})
	run(b, f, "fetches", false, func(c *api.Client, i int) error {
		cfg, err := c.Config(ctx, f.tokens[i%len(f.tokens)])
		if err != nil {
			return err
		}
		if len(cfg.Relays) != benchRelays {
			return fmt.Errorf("node %d: %d relays", cfg.NodeID, len(cfg.Relays))
		}
		return nil
	})
}

func TestMain(m *testing.M) {
	code := m.Run()
	if theFleet != nil {
		os.RemoveAll(theFleet.dir)
	}
	os.Exit(code)
}
