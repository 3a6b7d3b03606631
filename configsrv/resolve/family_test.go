package resolve

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"patela/configsrv/internal/tortest"
	"patela/configsrv/settings"
	"patela/configsrv/store"
	"patela/internal/api"
	"patela/internal/ekid"
	"patela/internal/torrc"
)

// fleet is a store with nodes of relays that reported fingerprints.
type fleet struct {
	st    *store.Store
	nodes []int64
	fp    map[string]string // relay name → fingerprint
}

func newFleet(tb testing.TB, nodes, relaysPer int) *fleet {
	tb.Helper()
	ctx := context.Background()
	st, err := store.Open(filepath.Join(tb.TempDir(), "patela.db"))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { st.Close() })
	if err := st.AddPool(ctx, netip.MustParsePrefix("198.18.0.0/16"), netip.MustParseAddr("198.18.0.1"), time.Now()); err != nil {
		tb.Fatal(err)
	}
	if err := st.SetGlobalTorrc(ctx, "ContactInfo ops@example.org\nDisableNetwork 1\n"); err != nil {
		tb.Fatal(err)
	}
	f := &fleet{st: st, fp: map[string]string{}}
	for i := 0; i < nodes; i++ {
		f.addNode(tb, relaysPer)
	}
	return f
}

// addNode enrolls a node with n relays and reports their fingerprints.
func (f *fleet) addNode(tb testing.TB, n int) int64 {
	tb.Helper()
	ctx := context.Background()
	ek := make([]byte, 32)
	rand.Read(ek)
	nd, _, err := f.st.AddPending(ctx, ekid.ID(sha256.Sum256(ek)), ek, time.Now(), store.PendingLimits{}, nil)
	if err != nil {
		tb.Fatal(err)
	}
	if err := f.st.SetNodeState(ctx, nd.ID, api.NodeEnabled); err != nil {
		tb.Fatal(err)
	}
	if _, err := f.st.Allocate(ctx, nd.ID, &api.Specs{CPUs: n, MemoryBytes: 64 << 30, Features: []string{api.FeatureFamilyKeys}}, time.Now()); err != nil {
		tb.Fatal(err)
	}
	f.nodes = append(f.nodes, nd.ID)
	f.report(tb, nd.ID)
	return nd.ID
}

// report sends a heartbeat giving each relay of node id a fingerprint.
func (f *fleet) report(tb testing.TB, id int64) {
	tb.Helper()
	rs, err := f.st.Relays(context.Background(), id)
	if err != nil {
		tb.Fatal(err)
	}
	st := &api.Status{}
	for _, r := range rs {
		fp, ok := f.fp[r.Name]
		if !ok {
			b := make([]byte, 20)
			rand.Read(b)
			fp = strings.ToUpper(fmt.Sprintf("%x", b))
			f.fp[r.Name] = fp
		}
		st.Relays = append(st.Relays, api.RelayStatus{Name: r.Name, Fingerprint: fp, State: api.RelayRunning})
	}
	if _, err := f.st.RecordStatus(context.Background(), id, st, nil, time.Now()); err != nil {
		tb.Fatal(err)
	}
}

// configs resolves every node's config, by relay name.
func (f *fleet) configs(tb testing.TB) map[string]api.Relay {
	tb.Helper()
	ctx := context.Background()
	fl, err := LoadFleet(ctx, f.st)
	if err != nil {
		tb.Fatal(err)
	}
	out := map[string]api.Relay{}
	for _, id := range f.nodes {
		c, err := NodeConfig(ctx, f.st, id, fl)
		if err != nil {
			tb.Fatal(err)
		}
		for _, r := range c.Relays {
			out[r.Name] = r
		}
	}
	return out
}

// myFamily is the set of fingerprints a served torrc lists.
func myFamily(tb testing.TB, text string) []string {
	tb.Helper()
	c, err := torrc.Parse([]byte(text))
	if err != nil {
		tb.Fatal(err)
	}
	var out []string
	for _, v := range c.Values("MyFamily") {
		out = append(out, strings.TrimPrefix(v, "$"))
	}
	slices.Sort(out)
	return out
}

// Every relay lists every other relay of the fleet, never itself; tor
// takes the result; a relay joining changes every other relay's torrc.
func TestFleetFamily(t *testing.T) {
	f := newFleet(t, 3, 2)
	check := func(cfgs map[string]api.Relay) {
		t.Helper()
		for name, r := range cfgs {
			var want []string
			for other, fp := range f.fp {
				if other != name {
					want = append(want, fp)
				}
			}
			slices.Sort(want)
			if got := myFamily(t, r.Torrc); !slices.Equal(got, want) {
				t.Fatalf("%s: MyFamily %v, want %v", name, got, want)
			}
		}
	}
	before := f.configs(t)
	if len(before) != 6 {
		t.Fatalf("%d relays", len(before))
	}
	check(before)
	for _, r := range before {
		tortest.Verify(t, r.Torrc)
		break
	}

	f.addNode(t, 1)
	after := f.configs(t)
	check(after)
	for name, r := range before {
		if after[name].TorrcSHA256 == r.TorrcSHA256 {
			t.Errorf("%s: torrc unchanged after a relay joined", name)
		}
	}
	// A relay leaving (its node removed) leaves every MyFamily.
	gone := f.nodes[0]
	rs, _ := f.st.Relays(context.Background(), gone)
	if err := f.st.RemoveNode(context.Background(), gone); err != nil {
		t.Fatal(err)
	}
	f.nodes = f.nodes[1:]
	for _, r := range rs {
		delete(f.fp, r.Name)
	}
	check(f.configs(t))
}

// The admin's own MyFamily lines (another operator's relays of the
// family) stay, and a fleet relay they name is not listed twice.
func TestAdminMyFamilyKept(t *testing.T) {
	f := newFleet(t, 2, 1)
	ctx := context.Background()
	var names []string
	for n := range f.fp {
		names = append(names, n)
	}
	slices.Sort(names)
	outside := strings.Repeat("AB", 20)
	admin := "ContactInfo ops@example.org\nDisableNetwork 1\nMyFamily $" + outside + ",$" + f.fp[names[1]] + "\n"
	if err := f.st.SetGlobalTorrc(ctx, admin); err != nil {
		t.Fatal(err)
	}
	r := f.configs(t)[names[0]]
	if !strings.Contains(r.Torrc, "MyFamily $"+outside+",$"+f.fp[names[1]]+"\n") {
		t.Fatalf("admin's MyFamily line lost:\n%s", r.Torrc)
	}
	if n := strings.Count(r.Torrc, f.fp[names[1]]); n != 1 {
		t.Fatalf("fleet relay listed %d times:\n%s", n, r.Torrc)
	}
	tortest.Verify(t, r.Torrc)
}

// A family setting splits the fleet: each family lists only its own.
func TestFamilySplit(t *testing.T) {
	f := newFleet(t, 3, 1)
	ctx := context.Background()
	if err := f.st.SetSetting(ctx, f.nodes[2], settings.Family, "eu"); err != nil {
		t.Fatal(err)
	}
	rsEU, _ := f.st.Relays(ctx, f.nodes[2])
	cfgs := f.configs(t)
	for name, r := range cfgs {
		fam := myFamily(t, r.Torrc)
		if name == rsEU[0].Name {
			if len(fam) != 0 {
				t.Errorf("the only relay of family eu lists %v", fam)
			}
			continue
		}
		if len(fam) != 1 || slices.Contains(fam, f.fp[rsEU[0].Name]) {
			t.Errorf("%s (family fleet): MyFamily %v", name, fam)
		}
	}
}

// BenchmarkFleetFamily resolves the configs of a 100-relay fleet (25
// nodes of 4): the fleet load once per config generation, then each
// node's config with its relays' MyFamily of 99 lines.
func BenchmarkFleetFamily(b *testing.B) {
	f := newFleet(b, 25, 4)
	ctx := context.Background()
	b.Run("LoadFleet", func(b *testing.B) {
		for b.Loop() {
			if _, err := LoadFleet(ctx, f.st); err != nil {
				b.Fatal(err)
			}
		}
	})
	fl, err := LoadFleet(ctx, f.st)
	if err != nil {
		b.Fatal(err)
	}
	b.Run("NodeConfig", func(b *testing.B) {
		i := 0
		for b.Loop() {
			c, err := NodeConfig(ctx, f.st, f.nodes[i%len(f.nodes)], fl)
			if err != nil || len(c.Relays) != 4 || strings.Count(c.Relays[0].Torrc, "MyFamily") != 99 {
				b.Fatalf("%v", err)
			}
			i++
		}
		b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N)/4, "µs/relay")
	})
}
