package store

import (
	"context"
	"crypto/rand"
	"errors"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"patela/internal/api"
)

func open(t *testing.T) *Store {
	t.Helper()
	s, err := Open(filepath.Join(t.TempDir(), "patela.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func node(t *testing.T, s *Store) int64 {
	t.Helper()
	ek := make([]byte, 64)
	rand.Read(ek)
	n, created, err := s.NodeByEK(context.Background(), ek, time.Now())
	if err != nil || !created || n.State != api.NodePending {
		t.Fatalf("new node: %+v %v %v", n, created, err)
	}
	return n.ID
}

func pool(t *testing.T, s *Store, cidr, gw string) {
	t.Helper()
	if err := s.AddPool(context.Background(), netip.MustParsePrefix(cidr), netip.MustParseAddr(gw), time.Now()); err != nil {
		t.Fatal(err)
	}
}

func specs(cpus int) *api.Specs { return &api.Specs{CPUs: cpus, MemoryBytes: 64 << 30} }

type relayKey struct{ name, v4, v6 string }

func relays(t *testing.T, s *Store, id int64) []relayKey {
	t.Helper()
	rs, err := s.Relays(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	var out []relayKey
	for i, r := range rs {
		if r.UID != 10001+i {
			t.Errorf("relay %s uid %d, want %d", r.Name, r.UID, 10001+i)
		}
		k := relayKey{r.Name, r.IPv4.String(), ""}
		if r.IPv6.IsValid() {
			k.v6 = r.IPv6.String()
		}
		out = append(out, k)
	}
	return out
}

func TestMigrationsReapply(t *testing.T) {
	path := filepath.Join(t.TempDir(), "p.db")
	for i := 0; i < 2; i++ {
		s, err := Open(path)
		if err != nil {
			t.Fatal(err)
		}
		var n int
		s.DB().QueryRow(`SELECT count(*) FROM schema_migrations`).Scan(&n)
		names, _ := migrations.ReadDir("migrations")
		if n != len(names) {
			t.Fatalf("open %d: %d migrations recorded, %d embedded", i, n, len(names))
		}
		var mode string
		s.DB().QueryRow(`PRAGMA journal_mode`).Scan(&mode)
		if mode != "wal" {
			t.Errorf("journal mode %q", mode)
		}
		s.Close()
	}
}

// Relays draw the lowest free address from the first pool with room, then
// the next; exhaustion changes nothing; shrinking frees names and
// addresses for the next allocation.
func TestAllocateAcrossPoolsExhaustShrink(t *testing.T) {
	s := open(t)
	ctx := context.Background()
	pool(t, s, "192.0.2.0/29", "192.0.2.1")       // .2 .3 .4 .5 .6 (.7 broadcast)
	pool(t, s, "198.51.100.0/30", "198.51.100.2") // .1 only (.0 network, .2 gateway, .3 broadcast)
	pool(t, s, "2001:db8::/125", "2001:db8::1")   // ::2 .. ::7

	a, b, c := node(t, s), node(t, s), node(t, s)
	if _, n, err := s.Allocate(ctx, a, specs(4), time.Now()); err != nil || n != 4 {
		t.Fatalf("a: %d %v", n, err)
	}
	want := []relayKey{
		{"murazzano", "192.0.2.2/29", "2001:db8::2/125"},
		{"castelmagno", "192.0.2.3/29", "2001:db8::3/125"},
		{"raschera", "192.0.2.4/29", "2001:db8::4/125"},
		{"bra", "192.0.2.5/29", "2001:db8::5/125"},
	}
	if got := relays(t, s, a); !slices.Equal(got, want) {
		t.Fatalf("a relays:\n%v\nwant\n%v", got, want)
	}
	if _, n, err := s.Allocate(ctx, b, specs(2), time.Now()); err != nil || n != 2 {
		t.Fatalf("b: %d %v", n, err)
	}
	want = []relayKey{{"toma", "192.0.2.6/29", "2001:db8::6/125"}, {"robiola", "198.51.100.1/30", "2001:db8::7/125"}}
	if got := relays(t, s, b); !slices.Equal(got, want) {
		t.Fatalf("b relays: %v, want %v", got, want)
	}
	// Every address is taken: c gets nothing, nothing changes.
	_, _, err := s.Allocate(ctx, c, specs(1), time.Now())
	if !errors.Is(err, ErrExhausted) || !strings.Contains(err.Error(), "IPv4") {
		t.Fatalf("c: %v, want IPv4 exhaustion", err)
	}
	var total int
	s.DB().QueryRow(`SELECT count(*) FROM relays`).Scan(&total)
	if total != 6 {
		t.Fatalf("%d relays after a failed allocation, want 6", total)
	}
	// b grows beyond what is left: refused, b keeps its two.
	if _, _, err := s.Allocate(ctx, b, specs(3), time.Now()); !errors.Is(err, ErrExhausted) {
		t.Fatalf("b grow: %v", err)
	}
	if got := relays(t, s, b); len(got) != 2 {
		t.Fatalf("b after failed growth: %v", got)
	}
	// a shrinks to 1: castelmagno, raschera, bra and their addresses are free.
	if before, after, err := s.Allocate(ctx, a, specs(1), time.Now()); err != nil || before != 4 || after != 1 {
		t.Fatalf("a shrink: %d -> %d %v", before, after, err)
	}
	if _, n, err := s.Allocate(ctx, c, specs(2), time.Now()); err != nil || n != 2 {
		t.Fatalf("c after a shrank: %d %v", n, err)
	}
	want = []relayKey{{"castelmagno", "192.0.2.3/29", "2001:db8::3/125"}, {"raschera", "192.0.2.4/29", "2001:db8::4/125"}}
	if got := relays(t, s, c); !slices.Equal(got, want) {
		t.Fatalf("c relays: %v, want %v", got, want)
	}
	// The IPv6 pool can run out on its own.
	pool(t, s, "198.51.100.64/26", "198.51.100.65")
	if _, _, err := s.Allocate(ctx, c, specs(4), time.Now()); !errors.Is(err, ErrExhausted) || !strings.Contains(err.Error(), "IPv6") {
		t.Fatalf("v6 exhaustion: %v", err)
	}
	// In-use pools cannot be removed; empty ones can.
	if err := s.RemovePool(ctx, netip.MustParsePrefix("192.0.2.0/29")); !errors.Is(err, ErrInUse) {
		t.Fatalf("remove in-use pool: %v", err)
	}
	if err := s.RemovePool(ctx, netip.MustParsePrefix("198.51.100.64/26")); err != nil {
		t.Fatal(err)
	}
	// Removing a node frees everything it held.
	if err := s.RemoveNode(ctx, b); err != nil {
		t.Fatal(err)
	}
	if err := s.RemovePool(ctx, netip.MustParsePrefix("198.51.100.0/30")); err != nil {
		t.Fatalf("pool freed by node removal: %v", err)
	}
}

// max_relays and relay_memory_mb settings bound the count; a v6 pool added
// later gives existing relays an IPv6 address.
func TestAllocateSettingsAndLateV6(t *testing.T) {
	s := open(t)
	ctx := context.Background()
	pool(t, s, "192.0.2.0/24", "192.0.2.1")
	a := node(t, s)
	s.SetSetting(ctx, 0, "max_relays", "3")
	if _, n, _ := s.Allocate(ctx, a, specs(8), time.Now()); n != 3 {
		t.Fatalf("global max_relays 3: %d", n)
	}
	s.SetSetting(ctx, a, "relay_memory_mb", "4096")
	if _, n, _ := s.Allocate(ctx, a, &api.Specs{CPUs: 8, MemoryBytes: 8 << 30}, time.Now()); n != 2 {
		t.Fatalf("4 GiB per relay on 8 GiB: %d", n)
	}
	s.SetSetting(ctx, a, "max_relays", "0")
	if _, n, _ := s.Allocate(ctx, a, specs(8), time.Now()); n != 0 {
		t.Fatalf("node max_relays 0: %d", n)
	}
	s.UnsetSetting(ctx, a, "max_relays")
	if _, n, _ := s.Allocate(ctx, a, specs(2), time.Now()); n != 2 {
		t.Fatalf("back to the global value: %d", n)
	}
	if got := relays(t, s, a); got[0].v6 != "" {
		t.Fatalf("v6 without a v6 pool: %v", got)
	}
	pool(t, s, "2001:db8:1::/64", "2001:db8:1::1")
	s.Allocate(ctx, a, specs(2), time.Now())
	if got := relays(t, s, a); got[0].v6 != "2001:db8:1::2/64" || got[1].v6 != "2001:db8:1::3/64" {
		t.Fatalf("late v6: %v", got)
	}
}

func TestPoolChecks(t *testing.T) {
	s := open(t)
	ctx := context.Background()
	pool(t, s, "192.0.2.0/24", "192.0.2.1")
	for _, c := range []struct{ cidr, gw, want string }{
		{"192.0.2.0/24", "192.0.2.1", "exists"},
		{"192.0.2.128/25", "192.0.2.129", "overlaps"},
		{"198.51.100.0/24", "192.0.2.1", "not inside"},
		{"198.51.100.1/24", "198.51.100.2", "host bits"},
		{"198.51.100.0/24", "198.51.100.0", "network address"},
		{"198.51.100.0/31", "198.51.100.1", "no address left"},
		{"2001:db8::/64", "192.0.2.1", "not inside"},
	} {
		p, err := netip.ParsePrefix(c.cidr)
		if err != nil {
			t.Fatal(err)
		}
		err = s.AddPool(ctx, p, netip.MustParseAddr(c.gw), time.Now())
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("pool %s gw %s: %v, want %q", c.cidr, c.gw, err, c.want)
		}
	}
	ps, _ := s.Pools(ctx)
	if len(ps) != 1 || ps[0].Size != 253 {
		t.Fatalf("pools: %+v", ps)
	}
}

func TestKeyBundleVersions(t *testing.T) {
	s := open(t)
	ctx := context.Background()
	a := node(t, s)
	if _, err := s.KeyBundle(ctx, a); !errors.Is(err, ErrNotFound) {
		t.Fatal(err)
	}
	if err := s.PutKeyBundle(ctx, a, &api.KeyBundle{Bundle: []byte("1"), Version: 5}, time.Now()); err != nil {
		t.Fatal(err)
	}
	for _, v := range []uint64{5, 4, 1 << 63} {
		if err := s.PutKeyBundle(ctx, a, &api.KeyBundle{Bundle: []byte("x"), Version: v}, time.Now()); !errors.Is(err, ErrStale) {
			t.Errorf("version %d: %v", v, err)
		}
	}
	b, _ := s.KeyBundle(ctx, a)
	if b.Version != 5 || string(b.Bundle) != "1" {
		t.Fatalf("%+v", b)
	}
}

func TestChallengeSingleUse(t *testing.T) {
	s := open(t)
	ctx := context.Background()
	a := node(t, s)
	now := time.Now()
	c := Challenge{ID: "c1", NodeID: a, SecretHash: []byte{1}, AKName: []byte{2}, Expires: now.Add(time.Minute)}
	if err := s.AddChallenge(ctx, c, now); err != nil {
		t.Fatal(err)
	}
	got, err := s.TakeChallenge(ctx, "c1")
	if err != nil || got.NodeID != a || !got.Expires.Equal(c.Expires) {
		t.Fatalf("%+v %v", got, err)
	}
	if _, err := s.TakeChallenge(ctx, "c1"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second take: %v", err)
	}
	// Expired challenges are swept when new ones are added.
	s.AddChallenge(ctx, Challenge{ID: "old", NodeID: a, SecretHash: []byte{1}, AKName: []byte{2}, Expires: now.Add(-time.Second)}, now.Add(-2*time.Second))
	s.AddChallenge(ctx, Challenge{ID: "new", NodeID: a, SecretHash: []byte{1}, AKName: []byte{2}, Expires: now.Add(time.Minute)}, now)
	if _, err := s.TakeChallenge(ctx, "old"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("expired challenge kept: %v", err)
	}
}
