package resolve

import (
	"context"
	"errors"
	"strings"
	"testing"

	"patela/configsrv/settings"
	"patela/internal/membudget"
	"patela/internal/torrc"
)

// Try checks each cascade once (try.go): sound only while the server's
// own lines name no option the safety rules read.
func TestServerLinesOutsideChecks(t *testing.T) {
	f := newFleet(t, 2, 2)
	ctx := context.Background()
	fl, err := LoadFleet(ctx, f.st)
	if err != nil {
		t.Fatal(err)
	}
	rs, err := f.st.Relays(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, global := range []string{"ContactInfo ops@example.org\n", "ContactInfo ops@example.org\nExitRelay 1\nExitPolicy accept *:443\n"} {
		levels, err := Levels(global, "", "")
		if err != nil {
			t.Fatal(err)
		}
		merged := torrc.Merge(levels...)
		c := relayTorrc(levels, &rs[0], fl, membudget.For(16<<30, 2))
		if len(c.Lines) <= len(merged.Lines) {
			t.Fatalf("no server lines: %s", c.Render())
		}
		for _, l := range c.Lines[len(merged.Lines):] {
			switch l.Key {
			case "ContactInfo", "ExitRelay", "ExitPolicy", "ReducedExitPolicy", "IPv6Exit":
				t.Errorf("the server writes %s, which the safety rules read", l.Key)
			}
		}
		if torrc.IsExit(c) != torrc.IsExit(merged) {
			t.Errorf("the server's lines change whether %q is an exit", global)
		}
	}
}

// A fleet-wide edit (every node read at once) still finds the one node
// it makes unsafe, and names that node's relay.
func TestTryFleetWide(t *testing.T) {
	f := newFleet(t, 10, 2)
	ctx := context.Background()
	bad := f.nodes[6]
	if err := f.st.SetSetting(ctx, bad, settings.DNS, "8.8.8.8"); err != nil {
		t.Fatal(err)
	}
	if err := f.st.SetNodeTorrc(ctx, f.nodes[3], "ExitRelay 0\n"); err != nil {
		t.Fatal(err)
	}
	tried, err := Try(ctx, f.st, Edit{Level: LevelGlobal, Text: "ContactInfo ops@example.org\nDisableNetwork 1\n"})
	if err != nil {
		t.Fatal(err)
	}
	if len(tried) != 2 { // the global cascade, and node 3's
		t.Errorf("%d cascades tried, want 2: %+v", len(tried), tried)
	}
	_, err = Try(ctx, f.st, Edit{Level: LevelGlobal, Text: "ContactInfo ops@example.org\nExitRelay 1\nExitPolicy accept *:443\n"})
	var unsafe *UnsafeError
	if !errors.As(err, &unsafe) {
		t.Fatalf("an exit policy for a node resolving through 8.8.8.8: %v", err)
	}
	rs, _ := f.st.Relays(ctx, bad)
	if unsafe.Relay != rs[0].Name || !strings.Contains(err.Error(), "node ") {
		t.Errorf("refusal names %s (%v), want node %d's first relay %s", unsafe.Relay, err, bad, rs[0].Name)
	}
	// The same edit as a global setting: the DNS rule alone.
	if _, err := Try(ctx, f.st, Edit{Setting: settings.DNS, Value: "1.1.1.1"}); err != nil {
		t.Errorf("a public resolver for relays that are not exits: %v", err)
	}
}
