package tor

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// countingTor is a tor that records every invocation's arguments, one
// line each, before running Debian's tor.
func countingTor(t *testing.T, dir string) (bin, calls string) {
	calls = filepath.Join(dir, "calls")
	bin = filepath.Join(dir, "tor")
	script := fmt.Sprintf("#!/bin/sh\necho \"$*\" >> %s\nexec /usr/bin/tor \"$@\"\n", calls)
	if err := os.WriteFile(bin, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(calls, nil, 0o666); err != nil {
		t.Fatal(err)
	}
	os.Chmod(calls, 0o666) // the relay uids append to it
	return bin, calls
}

// Relays applied at once from several goroutines all come up, each with
// its own account (the passwd rewrites do not lose one another), and
// each torrc is verified exactly once before its tor starts.
func TestParallelApply(t *testing.T) {
	needTor(t)
	dir := traversableDir(t)
	bin, calls := countingTor(t, dir)
	h := newHarness(t, func(o *Options) { o.Tor = bin })
	const n = 6
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			name := fmt.Sprintf("par%d", i)
			errs[i] = h.sup.Apply(context.Background(), Spec{Name: name, UID: 20001 + i, Torrc: serverTorrc(name, 19101+i)})
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("relay %d: %v", i, err)
		}
	}
	for i := range n {
		h.waitRunning(t, fmt.Sprintf("par%d", i))
	}
	passwd, _ := os.ReadFile(filepath.Join(h.root, "etc/passwd"))
	group, _ := os.ReadFile(filepath.Join(h.root, "etc/group"))
	b, _ := os.ReadFile(calls)
	for i := range n {
		name := fmt.Sprintf("par%d", i)
		if !strings.Contains(string(passwd), "_tor-"+name+":x:") || !strings.Contains(string(group), "_tor-"+name+":x:") {
			t.Errorf("account of %s missing:\n%s\n%s", name, passwd, group)
		}
		torrc := filepath.Join(h.root, "run", name+".torrc")
		verifies, starts := 0, 0
		for _, l := range strings.Split(string(b), "\n") {
			switch {
			case strings.Contains(l, "--verify-config") && strings.Contains(l, torrc+".new"):
				verifies++
			case strings.Contains(l, "--verify-config") && strings.Contains(l, torrc):
				t.Errorf("%s: the live torrc verified again before its first start: %s", name, l)
			case strings.Contains(l, "-f "+torrc+" "):
				starts++
			}
		}
		if verifies != 1 || starts != 1 {
			t.Errorf("%s: %d verifies of its candidate, %d starts; want 1 and 1\n%s", name, verifies, starts, b)
		}
	}
}
