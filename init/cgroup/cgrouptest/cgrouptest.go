// Package cgrouptest gives tests a cgroup.Tree of their own: a fresh
// directory below the root of a cgroup v2 hierarchy that has the memory
// controller, removed at the end of the test. Where the kernel offers no
// such hierarchy (a host whose memory controller is bound to cgroup v1)
// the test is skipped, also under CI, where e2e TestCgroupsInVM runs it in
// QEMU.
package cgrouptest

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"patela/init/cgroup"
	"patela/internal/testutil"
)

// Tree returns a new relays' tree for t.
func Tree(t testing.TB) *cgroup.Tree {
	t.Helper()
	if os.Getuid() != 0 {
		testutil.SkipOrFail(t, "cgroups need root")
	}
	root, why := memoryRoot()
	if root == "" {
		// Not SkipOrFail: a host whose memory controller is bound to v1
		// cannot give one, and CI covers the case anyway: e2e
		// TestCgroupsInVM runs these tests in QEMU, under a kernel of our
		// own where memory is v2, and never skips.
		t.Skip("no cgroup v2 hierarchy with the memory controller here: " + why + "; e2e TestCgroupsInVM runs this test in QEMU")
	}
	b := make([]byte, 4)
	rand.Read(b)
	dir := filepath.Join(root, "patela-test-"+hex.EncodeToString(b))
	tr, err := cgroup.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ents, _ := os.ReadDir(dir)
		for _, e := range ents {
			if e.IsDir() {
				unix.Rmdir(filepath.Join(dir, e.Name()))
			}
		}
		unix.Rmdir(dir)
	})
	return tr
}

// memoryRoot is the mount point of a cgroup2 hierarchy whose root has the
// memory controller, or "" and why there is none.
func memoryRoot() (string, string) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", err.Error()
	}
	defer f.Close()
	var seen []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// ID parent major:minor root mountpoint options ... - fstype source super
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		fields, tail := strings.Fields(pre), strings.Fields(post)
		if !ok || len(fields) < 5 || len(tail) < 1 || tail[0] != "cgroup2" || fields[3] != "/" {
			continue
		}
		mp := fields[4]
		b, err := os.ReadFile(filepath.Join(mp, "cgroup.controllers"))
		if err != nil {
			continue
		}
		ctrl := strings.Fields(string(b))
		if slices.Contains(ctrl, "memory") {
			return mp, ""
		}
		seen = append(seen, mp+" has controllers "+strings.Join(ctrl, ",")+" (memory is bound to a cgroup v1 hierarchy)")
	}
	if len(seen) == 0 {
		return "", "no cgroup2 mount"
	}
	return "", strings.Join(seen, "; ")
}
