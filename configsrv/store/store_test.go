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

	"patela/configsrv/alloc"
	"patela/internal/api"
	"patela/internal/ekid"
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
	var id ekid.ID
	rand.Read(id[:])
	n, created, err := s.AddPending(context.Background(), id, []byte("ek"), time.Now(), PendingLimits{}, nil)
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

// alloc runs Allocate and checks the counts it reports.
func allocate(t *testing.T, s *Store, id int64, cpus, after, wanted int) Allocation {
	t.Helper()
	a, err := s.Allocate(context.Background(), id, specs(cpus), time.Now())
	if err != nil || a.After != after || a.Wanted != wanted {
		t.Fatalf("node %d, %d cpus: %+v %v; want %d of %d relays", id, cpus, a, err, after, wanted)
	}
	if (a.After < a.Wanted) != errors.Is(a.Short, ErrExhausted) {
		t.Fatalf("node %d: %d of %d relays, short %v", id, a.After, a.Wanted, a.Short)
	}
	return a
}

// Relays draw the lowest free address from the first pool with room, then
// the next; when the pools run out a node gets what fits and the rest
// later; shrinking frees names and addresses for the next allocation.
func TestAllocateAcrossPoolsExhaustShrink(t *testing.T) {
	s := open(t)
	ctx := context.Background()
	pool(t, s, "192.0.2.0/29", "192.0.2.1")       // .2 .3 .4 .5 .6 (.7 broadcast)
	pool(t, s, "198.51.100.0/30", "198.51.100.2") // .1 only (.0 network, .2 gateway, .3 broadcast)
	pool(t, s, "2001:db8::/125", "2001:db8::1")   // ::2 .. ::7

	a, b, c := node(t, s), node(t, s), node(t, s)
	allocate(t, s, a, 4, 4, 4)
	want := []relayKey{
		{"murazzano", "192.0.2.2/29", "2001:db8::2/125"},
		{"castelmagno", "192.0.2.3/29", "2001:db8::3/125"},
		{"raschera", "192.0.2.4/29", "2001:db8::4/125"},
		{"bra", "192.0.2.5/29", "2001:db8::5/125"},
	}
	if got := relays(t, s, a); !slices.Equal(got, want) {
		t.Fatalf("a relays:\n%v\nwant\n%v", got, want)
	}
	allocate(t, s, b, 2, 2, 2)
	want = []relayKey{{"toma", "192.0.2.6/29", "2001:db8::6/125"}, {"robiola", "198.51.100.1/30", "2001:db8::7/125"}}
	if got := relays(t, s, b); !slices.Equal(got, want) {
		t.Fatalf("b relays: %v, want %v", got, want)
	}
	// Every address is taken: c gets nothing and is told why.
	if r := allocate(t, s, c, 1, 0, 1); !strings.Contains(r.Short.Error(), "IPv4") {
		t.Fatalf("c: %v, want IPv4 exhaustion", r.Short)
	}
	var total, wanted int
	s.DB().QueryRow(`SELECT count(*) FROM relays`).Scan(&total)
	if total != 6 {
		t.Fatalf("%d relays after an allocation that placed none, want 6", total)
	}
	if n, _ := s.Node(ctx, c); n.RelaysWanted != 1 || n.Relays != 0 {
		t.Fatalf("node c wants %d, has %d", n.RelaysWanted, n.Relays)
	}
	// b grows beyond what is left: b keeps its two.
	allocate(t, s, b, 3, 2, 3)
	// a shrinks to 1: castelmagno, raschera, bra and their addresses are
	// free; c asking for 4 gets those 3.
	if r := allocate(t, s, a, 1, 1, 1); r.Before != 4 {
		t.Fatalf("a shrank from %d", r.Before)
	}
	allocate(t, s, c, 4, 3, 4)
	want = []relayKey{{"castelmagno", "192.0.2.3/29", "2001:db8::3/125"}, {"raschera", "192.0.2.4/29", "2001:db8::4/125"},
		{"bra", "192.0.2.5/29", "2001:db8::5/125"}}
	if got := relays(t, s, c); !slices.Equal(got, want) {
		t.Fatalf("c relays: %v, want %v", got, want)
	}
	// A new IPv4 pool places c's fourth relay; the IPv6 pool is full, so
	// it has no IPv6 address, and gets one once there is room.
	pool(t, s, "198.51.100.64/26", "198.51.100.65")
	allocate(t, s, c, 4, 4, 4)
	fourth := relayKey{alloc.Name(6), "198.51.100.66/26", ""}
	if got := relays(t, s, c); got[3] != fourth {
		t.Fatalf("c's fourth relay %v, want %v", got[3], fourth)
	}
	s.DB().QueryRow(`SELECT relays_wanted FROM nodes WHERE id = ?`, c).Scan(&wanted)
	if wanted != 4 {
		t.Fatalf("relays_wanted %d", wanted)
	}
	// In-use pools cannot be removed.
	if err := s.RemovePool(ctx, netip.MustParsePrefix("192.0.2.0/29")); !errors.Is(err, ErrInUse) {
		t.Fatalf("remove in-use pool: %v", err)
	}
	// Removing a node frees everything it held; the room goes to c.
	if err := s.RemoveNode(ctx, b); err != nil {
		t.Fatal(err)
	}
	if err := s.RemovePool(ctx, netip.MustParsePrefix("198.51.100.0/30")); err != nil {
		t.Fatalf("pool freed by node removal: %v", err)
	}
	allocate(t, s, c, 4, 4, 4)
	fourth.v6 = "2001:db8::6/125"
	if got := relays(t, s, c); got[3] != fourth {
		t.Fatalf("c's fourth relay %v, want %v", got[3], fourth)
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
	allocate(t, s, a, 8, 3, 3) // global max_relays 3
	s.SetSetting(ctx, a, "relay_memory_mb", "4096")
	if r, _ := s.Allocate(ctx, a, &api.Specs{CPUs: 8, MemoryBytes: 8 << 30}, time.Now()); r.After != 2 {
		t.Fatalf("4 GiB per relay on 8 GiB: %+v", r)
	}
	s.SetSetting(ctx, a, "max_relays", "0")
	allocate(t, s, a, 8, 0, 0) // node max_relays 0
	s.UnsetSetting(ctx, a, "max_relays")
	allocate(t, s, a, 2, 2, 2) // back to the global value
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
