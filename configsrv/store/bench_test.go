package store

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"patela/configsrv/alloc"
	"patela/internal/api"
	"patela/internal/ekid"
	"patela/internal/pcr"
)

// benchFleet opens a store (closed at the end) with an IPv4 and an IPv6
// pool and 10,000 enabled nodes (ids 1-10000) of 4 relays each, named and
// addressed in order as allocation lays them out, then extra enabled
// nodes without relays (ids 10001-).
func benchFleet(b *testing.B, extra int) *Store { return benchFleetOf(b, 10000, extra) }

// benchFleetOf is benchFleet with n nodes of 4 relays.
func benchFleetOf(b *testing.B, n, extra int) *Store {
	s, err := Open(b.TempDir() + "/p.db")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	ctx := context.Background()
	s.AddPool(ctx, netip.MustParsePrefix("198.18.0.0/15"), netip.MustParseAddr("198.18.0.1"), time.Now())
	s.AddPool(ctx, netip.MustParsePrefix("2001:db8::/64"), netip.MustParseAddr("2001:db8::1"), time.Now())
	tx, _ := s.db.Begin()
	a4, a6 := netip.MustParseAddr("198.18.0.2"), netip.MustParseAddr("2001:db8::2")
	for i := 1; i <= n+extra; i++ {
		tx.Exec(`INSERT INTO nodes(id, ek_hash, ek_public, state, first_seen, last_seen) VALUES (?, ?, x'00', 'enabled', 0, 0)`, i, fmt.Sprint(i))
		if i > n {
			continue
		}
		for r := 0; r < 4; r++ {
			if _, err := tx.Exec(`INSERT INTO relays(node_id, idx, name, ipv4, ipv4_pool, ipv6, ipv6_pool, or_port, created) VALUES (?, ?, ?, ?, 1, ?, 2, 9001, 0)`,
				i, r, alloc.Name((i-1)*4+r), a4.String(), a6.String()); err != nil {
				b.Fatal(err)
			}
			a4, a6 = a4.Next(), a6.Next()
		}
	}
	if err := tx.Commit(); err != nil {
		b.Fatal(err)
	}
	return s
}

// BenchmarkRelays reads one node's state and its 4 relays from a
// 10,000-node fleet (the reads of a config fetch on a cache miss).
func BenchmarkRelays(b *testing.B) {
	s := benchFleet(b, 0)
	ctx := context.Background()
	for _, q := range []struct {
		name string
		f    func(id int64) error
	}{
		{"NodeAuth", func(id int64) error { _, err := s.NodeAuth(ctx, id); return err }},
		{"Relays", func(id int64) error {
			rs, err := s.Relays(ctx, id)
			if err == nil && len(rs) != 4 {
				err = fmt.Errorf("%d relays", len(rs))
			}
			return err
		}},
	} {
		b.Run(q.name, func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				if err := q.f(int64(i%10000 + 1)); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkAllocate sizes a new node to 4 relays in a fleet of 10,000
// nodes x 4 relays (each op allocates a node and frees it again).
func BenchmarkAllocate(b *testing.B) {
	s := benchFleet(b, 1)
	ctx := context.Background()
	grow, shrink := &api.Specs{CPUs: 4, MemoryBytes: 8 << 30}, &api.Specs{CPUs: 1, MemoryBytes: 512 << 20}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if r, err := s.Allocate(ctx, 10001, grow, time.Now()); err != nil || r.After != 4 {
			b.Fatal(r, err)
		}
		if r, err := s.Allocate(ctx, 10001, shrink, time.Now()); err != nil || r.After != 0 {
			b.Fatal(r, err)
		}
	}
}

// BenchmarkFingerprintFanout is a fleet's first heartbeats: each op is one
// node's heartbeat bringing its 4 relays' first (or new) fingerprints,
// which change the MyFamily of every relay of the family (the default
// family: the whole fleet), so every node's config generation moves.
func BenchmarkFingerprintFanout(b *testing.B) {
	for _, n := range []int{2000, 10000} {
		b.Run(fmt.Sprintf("nodes=%d", n), func(b *testing.B) {
			s := benchFleetOf(b, n, 0)
			ctx := context.Background()
			st := &api.Status{BootID: "bench", Relays: make([]api.RelayStatus, 4)}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				node := i%n + 1
				for r := range st.Relays {
					k := i*4 + r + 1
					st.Relays[r] = api.RelayStatus{Name: alloc.Name((node-1)*4 + r), State: api.RelayRunning,
						Fingerprint: fmt.Sprintf("%040X", k), Ed25519ID: fmt.Sprintf("%043d", k)}
				}
				if _, err := s.RecordStatus(ctx, int64(node), st, nil, time.Now()); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			if g, _ := s.NodeConfigGen(ctx, int64(n)); g == 0 {
				b.Fatal("the last node's generation never moved")
			}
		})
	}
}

// BenchmarkCompleteAttestation: the write transaction of a boot's
// attestation (node state, new evidence with 24 PCRs, two audit rows) by
// nodes of a 10,000-node fleet with a registered release.
func BenchmarkCompleteAttestation(b *testing.B) {
	s := benchFleet(b, 0)
	addRelease(b, s, "rel-A")
	ctx := context.Background()
	v, err := s.ReleasesVersion(ctx)
	if err != nil {
		b.Fatal(err)
	}
	eks := make([]ekid.ID, 10000)
	for i := range eks {
		au, err := s.NodeAuth(ctx, int64(i+1))
		if err != nil {
			b.Fatal(err)
		}
		eks[i] = au.EK
	}
	pcrs := map[int]pcr.Value{}
	for n := range 24 {
		pcrs[n] = pcr.Value{byte(n)}
	}
	rows := func(Attested) []AuditRow {
		return []AuditRow{{Actor: "node:1", Action: "attest.challenge", Target: "node:1", Details: "ak 0123456789abcdef, issued 2026-12-01T00:00:00Z"},
			{Actor: "node:1", Action: "attest.ok", Target: "node:1", Details: "first_boot=false"}}
	}
	b.ResetTimer()
	for i := range b.N {
		n := i % len(eks)
		_, err := s.CompleteAttestation(ctx, Completion{NodeID: int64(n + 1), EK: eks[n], AKName: []byte("0123456789abcdef0123456789abcdef"),
			At: time.Now(), Releases: v, Audit: rows,
			Evidence: &Attestation{NodeID: int64(n + 1), Status: AttestRelease, Release: "rel-A", PCRs: pcrs, PCRDigest: "ab",
				EventLog: "replayed", HasReset: true, ResetCount: int64(i), At: time.Now()}})
		if err != nil {
			b.Fatal(err)
		}
	}
}
