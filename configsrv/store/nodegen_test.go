package store

import (
	"context"
	"slices"
	"testing"
	"time"

	"patela/internal/api"
)

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
		if _, _, err := s.Allocate(ctx, id, specs(2), time.Now()); err != nil {
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

	if _, _, err := s.Allocate(ctx, a, specs(2), time.Now()); err != nil {
		t.Fatal(err)
	}
	s.RecordStatus(ctx, a, &api.Status{BootID: "x", Relays: []api.RelayStatus{{Name: rs[0].Name, State: "running", Fingerprint: "F"}}}, time.Now())
	changed("same specs again and a heartbeat")

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
	if _, _, err := s.Allocate(ctx, b, specs(1), time.Now()); err != nil {
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
	changed("node removed", a) // its relays go with it: the same node
	if g, _ := s.NodeConfigGen(ctx, a); g != mark {
		t.Errorf("removed node's generation %d", g)
	}
	if g, _ := s.NodeConfigGen(ctx, 999); g != 0 {
		t.Errorf("unknown node's generation %d, want 0", g)
	}
}
