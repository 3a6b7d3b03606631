package store

import (
	"bytes"
	"context"
	"slices"
	"testing"
	"time"

	"patela/configsrv/settings"
	"patela/internal/api"
)

const fpA, fpB = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB"

// Each change stamps exactly the nodes it reaches, and rewriting a value
// unchanged (as every specs post and heartbeat does) stamps nothing.
func TestNodeConfigGenStamps(t *testing.T) {
	ctx := context.Background()
	s := open(t)
	pool(t, s, "192.0.2.0/24", "192.0.2.1")
	a, b := node(t, s), node(t, s)
	for _, id := range []int64{a, b} {
		if err := s.SetNodeState(ctx, id, api.NodeEnabled); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Allocate(ctx, id, specs(2), time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	_, mark, err := s.ConfigChangesSince(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	changed := func(what string, want ...int64) {
		t.Helper()
		got, top, err := s.ConfigChangesSince(ctx, mark)
		if err != nil {
			t.Fatal(err)
		}
		slices.Sort(got)
		if !slices.Equal(got, want) {
			t.Errorf("%s: nodes stamped %v, want %v", what, got, want)
		}
		mark = top
	}
	rs, _ := s.Relays(ctx, a)

	if _, err := s.Allocate(ctx, a, specs(2), time.Now()); err != nil {
		t.Fatal(err)
	}
	changed("same specs again")
	hb := &api.Status{BootID: "x", Relays: []api.RelayStatus{{Name: rs[0].Name, State: "running", Fingerprint: fpA}}}
	s.RecordStatus(ctx, a, hb, nil, time.Now())
	changed("a relay's first fingerprint (every MyFamily of its family)", a, b)
	s.RecordStatus(ctx, a, hb, nil, time.Now())
	changed("a heartbeat repeating it")
	// After a reboot the relay's tor is starting on a new DataDirectory:
	// no fingerprint yet, the same identity from the vault.
	s.RecordStatus(ctx, a, &api.Status{BootID: "y", Relays: []api.RelayStatus{{Name: rs[0].Name, State: "starting"}}}, nil, time.Now())
	changed("a reboot's heartbeat before tor wrote its fingerprint")
	if got, _ := s.Relays(ctx, a); got[0].Fingerprint != fpA {
		t.Errorf("fingerprint after a heartbeat without one: %q, want %q kept", got[0].Fingerprint, fpA)
	}
	s.RecordStatus(ctx, a, hb, nil, time.Now())
	changed("the same fingerprint once tor is up")

	s.SetNodeTorrc(ctx, a, "ContactInfo a\n")
	changed("node torrc", a)
	s.SetNodeTorrc(ctx, a, "ContactInfo a\n")
	changed("node torrc rewritten unchanged")
	s.SetRelayTorrc(ctx, rs[1].Name, "ExitRelay 0\n")
	changed("relay torrc", a)
	s.SetSetting(ctx, b, "dns", "192.0.2.53")
	changed("node setting", b)
	s.UnsetSetting(ctx, b, "dns")
	changed("node setting removed", b)
	if _, err := s.Allocate(ctx, b, specs(1), time.Now()); err != nil {
		t.Fatal(err)
	}
	changed("a relay freed", b)
	s.SetGlobalTorrc(ctx, "DisableNetwork 1\n")
	changed("global torrc", a, b)
	s.SetGlobalTorrc(ctx, "DisableNetwork 1\n")
	changed("global torrc rewritten unchanged")
	s.SetSetting(ctx, 0, "poll_interval_s", "60")
	changed("global setting", a, b)
	s.SetNodeState(ctx, b, api.NodeDisabled)
	changed("node disabled", b)
	if err := s.RemoveNode(ctx, a); err != nil {
		t.Fatal(err)
	}
	changed("node removed", a, b) // its relays go with it, one of them in b's MyFamily
	if g, _ := s.NodeConfigGen(ctx, a); g != mark {
		t.Errorf("removed node's generation %d", g)
	}
	if g, _ := s.NodeConfigGen(ctx, 999); g != 0 {
		t.Errorf("unknown node's generation %d, want 0", g)
	}
}

// The family lines' triggers (migration 0015) stamp the nodes of the
// family a change reaches: a fingerprint, a relay leaving, a family key;
// a node changing family stamps every node; the agent's features its own.
func TestFamilyGenStamps(t *testing.T) {
	ctx := context.Background()
	s := open(t)
	pool(t, s, "192.0.2.0/24", "192.0.2.1")
	a, b, c := node(t, s), node(t, s), node(t, s)
	for _, id := range []int64{a, b, c} {
		s.SetNodeState(ctx, id, api.NodeEnabled)
		if _, err := s.Allocate(ctx, id, specs(1), time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.SetSetting(ctx, c, settings.Family, "eu"); err != nil {
		t.Fatal(err)
	}
	_, mark, _ := s.ConfigChangesSince(ctx, 0)
	changed := func(what string, want ...int64) {
		t.Helper()
		got, top, err := s.ConfigChangesSince(ctx, mark)
		if err != nil {
			t.Fatal(err)
		}
		slices.Sort(got)
		if !slices.Equal(got, want) {
			t.Errorf("%s: nodes stamped %v, want %v", what, got, want)
		}
		mark = top
	}
	beat := func(id int64, fp string) {
		t.Helper()
		rs, _ := s.Relays(ctx, id)
		if _, err := s.RecordStatus(ctx, id, &api.Status{Relays: []api.RelayStatus{{Name: rs[0].Name, Fingerprint: fp}}}, nil, time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	beat(a, fpA)
	changed("a fingerprint in the default family", a, b)
	beat(c, fpB)
	changed("a fingerprint in family eu", c)
	k := &FamilyKey{Family: "eu", ID: "id-eu", Secret: make([]byte, 64), Created: time.Now(), Origin: OriginCreated}
	if _, err := s.PutFamilyKey(ctx, k, false); err != nil {
		t.Fatal(err)
	}
	changed("family eu's key", c)
	k.ID, k.Secret = "id-eu-2", bytes.Repeat([]byte{1}, 64)
	if _, err := s.PutFamilyKey(ctx, k, true); err != nil {
		t.Fatal(err)
	}
	changed("family eu's key rotated", c)
	if _, err := s.RemoveFamilyKey(ctx, "eu"); err != nil {
		t.Fatal(err)
	}
	changed("family eu's key removed", c)
	if _, err := s.Allocate(ctx, a, &api.Specs{CPUs: 1, MemoryBytes: 64 << 30, Features: []string{api.FeatureFamilyKeys}}, time.Now()); err != nil {
		t.Fatal(err)
	}
	changed("node a's agent installs family keys", a)
	if _, err := s.Allocate(ctx, a, &api.Specs{CPUs: 1, MemoryBytes: 64 << 30, Features: []string{api.FeatureFamilyKeys}}, time.Now()); err != nil {
		t.Fatal(err)
	}
	changed("the same specs again")
	s.SetSetting(ctx, b, settings.Family, "eu")
	changed("node b moves to family eu", a, b, c)
	if err := s.RemoveNode(ctx, c); err != nil {
		t.Fatal(err)
	}
	changed("node c removed, with its relay of family eu", a, b, c)
	if settings.DefaultFamily != "fleet" {
		t.Fatalf("settings.DefaultFamily %q: migration 0015's node_family view says 'fleet'", settings.DefaultFamily)
	}
}

// Family generations (migration 0018) under a global family setting: a
// fingerprint moves every member's generation to the family's stamp and
// no other node's; a key of a family with no members stamps no node but
// still moves the mark (the watcher must not read it again).
func TestFamilyGenGlobalFamily(t *testing.T) {
	ctx := context.Background()
	s := open(t)
	pool(t, s, "192.0.2.0/24", "192.0.2.1")
	a, b, c := node(t, s), node(t, s), node(t, s)
	for _, id := range []int64{a, b, c} {
		s.SetNodeState(ctx, id, api.NodeEnabled)
		if _, err := s.Allocate(ctx, id, specs(1), time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	s.SetSetting(ctx, 0, settings.Family, "na")
	s.SetSetting(ctx, c, settings.Family, "eu")
	_, mark, _ := s.ConfigChangesSince(ctx, 0)
	gens := func() []int64 {
		var g []int64
		for _, id := range []int64{a, b, c} {
			n, err := s.NodeConfigGen(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			g = append(g, n)
		}
		return g
	}
	before := gens()
	rs, _ := s.Relays(ctx, b)
	if _, err := s.RecordStatus(ctx, b, &api.Status{Relays: []api.RelayStatus{{Name: rs[0].Name, Fingerprint: fpA}}}, nil, time.Now()); err != nil {
		t.Fatal(err)
	}
	got, top, err := s.ConfigChangesSince(ctx, mark)
	slices.Sort(got)
	if err != nil || !slices.Equal(got, []int64{a, b}) || top <= mark {
		t.Fatalf("a fingerprint in the global family na: nodes %v, top %d (mark %d), %v", got, top, mark, err)
	}
	if after := gens(); after[0] != top || after[1] != top || after[2] != before[2] {
		t.Fatalf("generations %v, then %v; want a's and b's at %d, c's unchanged", before, after, top)
	}
	mark = top
	k := &FamilyKey{Family: "nobody", ID: "id-nobody", Secret: make([]byte, 64), Created: time.Now(), Origin: OriginCreated}
	if _, err := s.PutFamilyKey(ctx, k, false); err != nil {
		t.Fatal(err)
	}
	got, top, _ = s.ConfigChangesSince(ctx, mark)
	if len(got) != 0 || top <= mark {
		t.Fatalf("a memberless family's key: nodes %v, top %d (mark %d)", got, top, mark)
	}
	if again, top2, _ := s.ConfigChangesSince(ctx, top); len(again) != 0 || top2 != top {
		t.Fatalf("read again from %d: %v, %d", top, again, top2)
	}
}
