package store

import (
	"context"
	"errors"
	"math/rand/v2"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"patela/configsrv/alloc"
	"patela/internal/api"
)

// Two Store handles on one database (the server and the CLI) allocate,
// shrink and remove nodes at random. The server keeps allocation state in
// memory between transactions; whatever the other handle changed, every
// allocation must still take the lowest free names and addresses.
func TestAllocationStateAcrossHandles(t *testing.T) {
	path := filepath.Join(t.TempDir(), "p.db")
	a, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	ctx := context.Background()
	pool(t, a, "192.0.2.0/26", "192.0.2.1")
	pool(t, a, "2001:db8::/120", "2001:db8::1")
	rng := rand.New(rand.NewPCG(1, 2))
	var nodes []int64
	for i := 0; i < 12; i++ {
		nodes = append(nodes, node(t, a))
	}
	for step := 0; step < 400; step++ {
		s := a
		if rng.IntN(3) == 0 {
			s = b
		}
		id := nodes[rng.IntN(len(nodes))]
		switch op := rng.IntN(10); {
		case op == 0 && len(nodes) > 4:
			if err := s.RemoveNode(ctx, id); err != nil {
				t.Fatal(err)
			}
			for i, n := range nodes {
				if n == id {
					nodes = append(nodes[:i], nodes[i+1:]...)
					break
				}
			}
			nodes = append(nodes, node(t, s))
			continue
		case op == 1:
			if _, err := s.exec(ctx, `INSERT INTO global_settings(key, value) VALUES ('max_relays', ?)
				ON CONFLICT(key) DO UPDATE SET value = excluded.value`, rng.IntN(6)); err != nil {
				t.Fatal(err)
			}
			continue
		}
		before, err := s.Relays(ctx, 0)
		if err != nil {
			t.Fatal(err)
		}
		r, err := s.Allocate(ctx, id, &api.Specs{CPUs: rng.IntN(6), MemoryBytes: 8 << 30}, time.Now())
		if err != nil || (r.After < r.Wanted) != isExhausted(r.Short) {
			t.Fatalf("step %d: %+v %v", step, r, err)
		}
		after, err := s.Relays(ctx, 0)
		if err != nil {
			t.Fatal(err)
		}
		checkLowest(t, step, before, after)
	}
}

func isExhausted(err error) bool { return err != nil && errors.Is(err, ErrExhausted) }

// checkLowest: every relay that appeared took the lowest names and
// addresses free at the time, so below the highest one taken nothing is free.
func checkLowest(t *testing.T, step int, before, after []Relay) {
	t.Helper()
	old := map[string]bool{}
	for _, r := range before {
		old[r.Name] = true
	}
	names := map[string]bool{}
	addrs := map[netip.Addr]bool{}
	for _, r := range after {
		names[r.Name] = true
		addrs[r.IPv4.Addr()] = true
		if r.IPv6.IsValid() {
			addrs[r.IPv6.Addr()] = true
		}
	}
	for _, r := range after {
		if old[r.Name] {
			continue
		}
		n, ok := alloc.NameIndex(r.Name)
		if !ok {
			t.Fatalf("step %d: name %q not from the list", step, r.Name)
		}
		for i := 0; i < n; i++ {
			if !names[alloc.Name(i)] {
				t.Fatalf("step %d: %s allocated while %s was free", step, r.Name, alloc.Name(i))
			}
		}
		for _, p := range []netip.Prefix{r.IPv4, r.IPv6} {
			if !p.IsValid() {
				t.Fatalf("step %d: %s lacks an address", step, r.Name)
			}
			pfx := p.Masked()
			gw := pfx.Addr().Next()
			for x := gw.Next(); x.Less(p.Addr()); x = x.Next() {
				if !addrs[x] {
					t.Fatalf("step %d: %s got %s while %s was free", step, r.Name, p.Addr(), x)
				}
			}
		}
	}
}
