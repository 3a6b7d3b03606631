package rollout

import (
	"reflect"
	"strings"
	"testing"
)

// on is a node running release rel in boot b, quoted with reset count r.
func on(id int64, rel, b string, r int64) Node {
	return Node{ID: id, State: Waiting, Enabled: true, BootID: b, Attest: "release", Release: rel,
		Reset: r, HasReset: true, RelaysRunning: true}
}

// asked is n asked to end its current boot.
func asked(n Node) Node {
	n.State, n.AskedBoot, n.AskedReset, n.HasAskedReset = Rebooting, n.BootID, n.Reset, n.HasReset
	return n
}

func TestDecide(t *testing.T) {
	a1, a2, a3 := on(1, "A", "b1", 7), on(2, "A", "b2", 3), on(3, "A", "b3", 9)
	back := func(n Node, rel string) Node { // n rebooted and attested as rel
		n.BootID, n.Reset, n.Release = n.BootID+"'", n.Reset+100, rel
		return n
	}
	starting := back(asked(a1), "B")
	starting.RelaysRunning = false
	unknown := back(asked(a1), "")
	unknown.Attest = "unknown"
	refused := asked(a1) // --require-release refused its new boot: no heartbeat, a new quote
	refused.Reset, refused.Attest, refused.Release = 55, "unknown", ""
	noQuote := asked(a1)
	noQuote.BootID, noQuote.Attest, noQuote.HasReset = "b1'", "unattested", false
	refresh := asked(a1) // the same boot re-attested (a token refresh): not back
	disabled := a2
	disabled.Enabled = false
	for _, c := range []struct {
		name    string
		max     int
		nodes   []Node
		want    Step
		failure string
	}{
		{"first turn", 1, []Node{a1, a2, a3}, Step{Ask: []int64{1}}, ""},
		{"two at a time", 2, []Node{a1, a2, a3}, Step{Ask: []int64{1, 2}}, ""},
		{"one rebooting: the next waits", 1, []Node{asked(a1), a2}, Step{}, ""},
		{"token refresh in the old boot", 1, []Node{refresh, a2}, Step{}, ""},
		{"back, relays starting", 1, []Node{starting, a2}, Step{}, ""},
		{"back on B, relays running: next", 1, []Node{back(asked(a1), "B"), a2}, Step{Done: []int64{1}, Ask: []int64{2}}, ""},
		{"already on B", 1, []Node{on(1, "B", "b1", 7), a2}, Step{Done: []int64{1}, Ask: []int64{2}}, ""},
		{"last one back", 1, []Node{{ID: 1, State: Done}, back(asked(a2), "B")}, Step{Done: []int64{2}, Finished: true}, ""},
		{"all done", 1, []Node{{ID: 1, State: Done}, {ID: 2, State: Done}}, Step{Finished: true}, ""},
		{"disabled nodes are not asked", 1, []Node{disabled, a3}, Step{Ask: []int64{3}}, ""},
		{"back on A", 1, []Node{back(asked(a1), "A"), a2}, Step{}, "came back on release A, not B"},
		{"back as an unknown image", 1, []Node{unknown, a2}, Step{}, "an image no release names"},
		{"refused by --require-release", 1, []Node{refused, a2}, Step{}, "an image no release names"},
		{"back without a quote", 1, []Node{noQuote, a2}, Step{}, "no quote (unattested)"},
	} {
		got := Decide("B", c.max, c.nodes)
		if c.failure != "" {
			if got.Failed == nil || !strings.Contains(got.Failed.Reason, c.failure) || got.Ask != nil {
				t.Errorf("%s: %+v, want failure %q and nobody asked", c.name, got, c.failure)
			}
			continue
		}
		if !reflect.DeepEqual(got, c.want) {
			t.Errorf("%s: %+v, want %+v", c.name, got, c.want)
		}
	}
}
