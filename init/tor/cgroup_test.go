package tor

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"patela/init/cgroup"
	"patela/init/cgroup/cgrouptest"
	"patela/internal/api"
)

// Each relay's tor runs in a cgroup of its own with its share of memory.
// A relay over its limit (here: the limit lowered below what tor uses) is
// killed by the kernel and restarted alone; the other relays, and the
// agent, run on untouched. A limit that fits again brings it back.
func TestCgroupOOM(t *testing.T) {
	needTor(t)
	tree := cgrouptest.Tree(t)
	h := newHarness(t, func(o *Options) { o.Cgroups = tree; o.BackoffMax = time.Second })
	ctx := context.Background()
	fits := cgroup.Limits{MemoryMax: 256 << 20, CPU: -1}
	names := []string{"oomone", "oomtwo", "oomthree"}
	spec := func(i int, l cgroup.Limits) Spec {
		return Spec{Name: names[i], UID: 20101 + i, Torrc: serverTorrc(names[i], 19201+i), Limits: l}
	}
	for i := range names {
		if err := h.sup.Apply(ctx, spec(i, fits)); err != nil {
			t.Fatal(err)
		}
	}
	before := map[string]Status{}
	for _, n := range names {
		st := h.waitRunning(t, n)
		before[n] = st
		cg, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", st.PID))
		if want := "/" + filepath.Base(tree.Dir()) + "/" + n + "\n"; !strings.HasSuffix(string(cg), want) {
			t.Errorf("%s's tor is in cgroup %q, want …%s", n, cg, want)
		}
		dir := filepath.Join(tree.Dir(), n)
		for file, want := range map[string]string{"memory.max": "268435456", "memory.oom.group": "1"} {
			if b, _ := os.ReadFile(filepath.Join(dir, file)); strings.TrimSpace(string(b)) != want {
				t.Errorf("%s %s = %q, want %s", n, file, b, want)
			}
		}
	}

	// oomone's limit drops to 2 MiB, far below what tor holds.
	if err := h.sup.Apply(ctx, spec(0, cgroup.Limits{MemoryMax: 2 << 20, CPU: -1})); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "oomone killed for memory", func() bool {
		st := h.status(t, names[0])
		return st.PID != before[names[0]].PID && strings.Contains(st.Error, "killed for memory")
	})
	events, _ := os.ReadFile(filepath.Join(tree.Dir(), names[0], "memory.events"))
	if !strings.Contains(string(events), "oom_kill ") || strings.Contains(string(events), "oom_kill 0") {
		t.Errorf("oomone's memory.events:\n%s", events)
	}
	// Its limit fits again: it runs anew, restarted alone.
	if err := h.sup.Apply(ctx, spec(0, fits)); err != nil {
		t.Fatal(err)
	}
	h.waitRunning(t, names[0])
	if st := h.status(t, names[0]); st.Restarts == 0 && st.PID == before[names[0]].PID {
		t.Errorf("oomone was not restarted: %+v", st)
	}
	for _, n := range names[1:] {
		st := h.status(t, n)
		if st.PID != before[n].PID || st.State != api.RelayRunning || st.Restarts != 0 || !alive(st.PID) {
			t.Errorf("%s disturbed by oomone's OOM: %+v, was %+v", n, st, before[n])
		}
		if b, _ := os.ReadFile(filepath.Join(tree.Dir(), n, "memory.events")); strings.Contains(string(b), "oom_kill 1") {
			t.Errorf("%s saw an OOM kill:\n%s", n, b)
		}
	}

	// Removing a relay removes its cgroup.
	if err := h.sup.Remove(ctx, names[2]); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(tree.Dir(), names[2])); !os.IsNotExist(err) {
		t.Errorf("removed relay's cgroup: %v", err)
	}
}
