package reconcile

import (
	"testing"

	"patela/init/cgroup"
	"patela/internal/api"
	"patela/internal/membudget"
)

// Each relay gets its share of the node's memory, and a core of its own
// (by uid) while there are no more relays than cores.
func TestLimits(t *testing.T) {
	relays := []api.Relay{{Name: "c", UID: 10003}, {Name: "a", UID: 10001}, {Name: "b", UID: 10002}}
	l := &Loop{cfg: Config{Specs: &api.Specs{CPUs: 4, MemoryBytes: 16 << 30}}}
	share := membudget.For(16<<30, 3).PerRelay
	got := l.limits(relays)
	for name, cpu := range map[string]int{"a": 0, "b": 1, "c": 2} {
		if got[name] != (cgroup.Limits{MemoryMax: share, CPU: cpu}) {
			t.Errorf("%s: %+v, want %d bytes on cpu %d", name, got[name], share, cpu)
		}
	}
	l.cfg.Specs.CPUs = 2
	for name, lim := range l.limits(relays) {
		if lim.CPU != -1 {
			t.Errorf("3 relays on 2 cores: %s pinned to %d", name, lim.CPU)
		}
	}
	l.cfg.Specs = nil
	for name, lim := range l.limits(relays) {
		if lim != (cgroup.Limits{CPU: -1}) {
			t.Errorf("no specs: %s limited %+v", name, lim)
		}
	}
}
