package httpapi_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
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
	client *api.Client
	eks    []*softek.EK
	aks    [][]byte
	qaks   []*quotetest.AK // the same AKs, quoting in software
	names  [][]byte        // AK names, computed once as a node knows its own
	boot   *quotetest.Log  // what every node booted: the registered release
	ids    []int64
	ekIDs  []ekid.ID
	tokens []string
	dir    string
	warm   sync.Once
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
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	f.client = &api.Client{BaseURL: f.url, HTTP: &http.Client{Transport: &http.Transport{
		TLSClientConfig:     &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: pool},
		ForceAttemptHTTP2:   true,
		MaxIdleConnsPerHost: 256,
	}}}
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

// run drives op from 4 goroutines per CPU (8 concurrent clients on this
// 2-core machine) and reports ops/s, p99 latency and CPU per operation.
func run(b *testing.B, unit string, op func(i int) error) {
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
		for pb.Next() {
			i := int(next.Add(1))
			t0 := time.Now()
			if err := op(i); err != nil {
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

// BenchmarkHandshake: full attestation handshakes (POST /v1/attest,
// software ActivateCredential, POST /v1/attest/complete) by enrolled
// nodes of a 10,000-node fleet, over HTTPS on loopback.
func BenchmarkHandshake(b *testing.B) {
	f := getFleet(b)
	ctx := context.Background()
	run(b, "handshakes", func(i int) error {
		n := i % len(f.eks)
		ch, err := f.client.Attest(ctx, &api.AttestRequest{EKPublic: f.eks[n].Public, AKPublic: f.aks[n]})
		if err != nil {
			return fmt.Errorf("node %d: %w", f.ids[n], err)
		}
		secret, err := f.eks[n].Activate(ch.CredentialBlob, ch.EncryptedSecret, f.names[n])
		if err != nil {
			return fmt.Errorf("node %d: %w", f.ids[n], err)
		}
		resp, err := f.client.Complete(ctx, &api.CompleteRequest{ChallengeID: ch.ChallengeID, Secret: secret})
		if err != nil {
			return fmt.Errorf("node %d: %w", f.ids[n], err)
		}
		if resp.Token == "" || resp.FirstBoot {
			return fmt.Errorf("node %d: bad answer %+v", f.ids[n], resp)
		}
		return nil
	})
}

// BenchmarkHandshakeQuote is BenchmarkHandshake with remote attestation:
// each node also quotes (a software AK signing what TPM2_Quote signs)
// with the challenge's nonce, sending the PCRs and its firmware event log
// (32 events); the server verifies the quote, replays the log and
// matches the release, and records the evidence.
func BenchmarkHandshakeQuote(b *testing.B) {
	f := getFleet(b)
	ctx := context.Background()
	pcrs, log := f.boot.AllPCRs(), f.boot.Bytes()
	run(b, "handshakes", func(i int) error {
		n := i % len(f.eks)
		ch, err := f.client.Attest(ctx, &api.AttestRequest{EKPublic: f.eks[n].Public, AKPublic: f.aks[n]})
		if err != nil {
			return fmt.Errorf("node %d: %w", f.ids[n], err)
		}
		secret, err := f.eks[n].Activate(ch.CredentialBlob, ch.EncryptedSecret, f.names[n])
		if err != nil {
			return fmt.Errorf("node %d: %w", f.ids[n], err)
		}
		q, err := f.qaks[n].Quote(ch.Nonce, pcrs, log)
		if err != nil {
			return err
		}
		resp, err := f.client.Complete(ctx, &api.CompleteRequest{ChallengeID: ch.ChallengeID, Secret: secret, Quote: q})
		if err != nil {
			return fmt.Errorf("node %d: %w", f.ids[n], err)
		}
		if resp.Token == "" || resp.FirstBoot {
			return fmt.Errorf("node %d: bad answer %+v", f.ids[n], resp)
		}
		return nil
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
		for _, tok := range f.tokens {
			if _, err := f.client.Config(ctx, tok); err != nil {
				b.Fatal(err)
			}
		}
	})
	run(b, "fetches", func(i int) error {
		cfg, err := f.client.Config(ctx, f.tokens[i%len(f.tokens)])
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
