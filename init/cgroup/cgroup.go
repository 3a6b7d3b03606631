// Package cgroup gives each relay a cgroup v2 of its own, below one
// directory of the agent's: memory.max (the relay's share of the node's
// memory, internal/membudget), memory.swap.max 0, memory.oom.group 1 (an
// OOM inside the relay kills its whole cgroup, one tor, and never
// reaches the agent or another relay), and cpuset.cpus (one core per
// relay when there are no more relays than cores). tor is started
// straight into its cgroup (clone3 CLONE_INTO_CGROUP: Go's
// SysProcAttr.CgroupFD), so not one of its allocations escapes the limit.
package cgroup

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Tree is the directory below which the relays' cgroups live.
type Tree struct {
	dir    string
	cpuset bool // the cpuset controller is enabled for the relays
}

// Open makes dir (a directory in a cgroup v2 hierarchy, whose parent has
// the memory controller) the relays' tree: it enables memory, and cpuset
// where the kernel has it, for dir and below. The caller must not keep
// processes in dir itself (cgroup v2 lets only leaves hold them).
func Open(dir string) (*Tree, error) {
	parent := filepath.Dir(dir)
	var fs unix.Statfs_t
	if err := unix.Statfs(parent, &fs); err != nil {
		return nil, fmt.Errorf("cgroup: %s: %w", parent, err)
	}
	if fs.Type != unix.CGROUP2_SUPER_MAGIC {
		return nil, fmt.Errorf("cgroup: %s is not in a cgroup v2 hierarchy", parent)
	}
	avail, err := controllers(filepath.Join(parent, "cgroup.controllers"))
	if err != nil {
		return nil, err
	}
	if !slices.Contains(avail, "memory") {
		return nil, fmt.Errorf("cgroup: no memory controller in %s (controllers: %q; bound to a cgroup v1 hierarchy?)", parent, avail)
	}
	want := []string{"memory"}
	if slices.Contains(avail, "cpuset") {
		want = append(want, "cpuset")
	}
	if err := enable(parent, want); err != nil {
		return nil, err
	}
	if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return nil, fmt.Errorf("cgroup: %w", err)
	}
	if err := enable(dir, want); err != nil {
		return nil, err
	}
	return &Tree{dir: dir, cpuset: len(want) == 2}, nil
}

// Dir is the tree's directory.
func (t *Tree) Dir() string { return t.dir }

func controllers(path string) ([]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("cgroup: %w", err)
	}
	return strings.Fields(string(b)), nil
}

// enable turns controllers on for dir's children.
func enable(dir string, ctrl []string) error {
	on, err := controllers(filepath.Join(dir, "cgroup.subtree_control"))
	if err != nil {
		return err
	}
	var add []string
	for _, c := range ctrl {
		if !slices.Contains(on, c) {
			add = append(add, "+"+c)
		}
	}
	if len(add) == 0 {
		return nil
	}
	if err := write(filepath.Join(dir, "cgroup.subtree_control"), strings.Join(add, " ")); err != nil {
		return fmt.Errorf("cgroup: enabling %v in %s: %w", add, dir, err)
	}
	return nil
}

func write(path, value string) error {
	return os.WriteFile(path, []byte(value), 0)
}

// Limits are what one relay's cgroup allows.
type Limits struct {
	MemoryMax uint64 // bytes; 0: no limit
	CPU       int    // the core its tor runs on; -1: any
}

// Group is one relay's cgroup.
type Group struct {
	t    *Tree
	dir  string
	fd   int // O_PATH of dir, for CLONE_INTO_CGROUP
	name string
}

// Relay returns relay name's cgroup, creating it.
func (t *Tree) Relay(name string) (*Group, error) {
	if name == "" || strings.ContainsAny(name, "/.") {
		return nil, fmt.Errorf("cgroup: bad relay name %q", name)
	}
	dir := filepath.Join(t.dir, name)
	if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return nil, fmt.Errorf("cgroup: %w", err)
	}
	fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("cgroup: %s: %w", dir, err)
	}
	g := &Group{t: t, dir: dir, fd: fd, name: name}
	// The whole relay goes when one of its processes is killed for memory;
	// nothing of it is swapped out (swap, if the machine ever had some,
	// would hold relay memory the node meant to keep in RAM only).
	if err := write(filepath.Join(dir, "memory.oom.group"), "1"); err != nil {
		g.Close()
		return nil, fmt.Errorf("cgroup: %s: memory.oom.group: %w", name, err)
	}
	if err := write(filepath.Join(dir, "memory.swap.max"), "0"); err != nil && !errors.Is(err, os.ErrNotExist) {
		g.Close()
		return nil, fmt.Errorf("cgroup: %s: memory.swap.max: %w", name, err)
	}
	return g, nil
}

// FD is the cgroup's directory for SysProcAttr.CgroupFD.
func (g *Group) FD() int { return g.fd }

// Dir is the cgroup's directory.
func (g *Group) Dir() string { return g.dir }

// Set applies l. Lowering memory.max below what the relay uses makes the
// kernel reclaim, then kill the relay: a limit the relay outgrew.
func (g *Group) Set(l Limits) error {
	max := "max"
	if l.MemoryMax > 0 {
		max = strconv.FormatUint(l.MemoryMax, 10)
	}
	if err := write(filepath.Join(g.dir, "memory.max"), max); err != nil {
		return fmt.Errorf("cgroup: %s: memory.max %s: %w", g.name, max, err)
	}
	if !g.t.cpuset {
		return nil
	}
	cpus := "" // empty: the parent's
	if l.CPU >= 0 {
		cpus = strconv.Itoa(l.CPU)
	}
	if err := write(filepath.Join(g.dir, "cpuset.cpus"), cpus); err != nil {
		return fmt.Errorf("cgroup: %s: cpuset.cpus %q: %w", g.name, cpus, err)
	}
	return nil
}

// OOMKills is how many processes the kernel killed in the cgroup for
// memory (memory.events oom_kill).
func (g *Group) OOMKills() int {
	b, err := os.ReadFile(filepath.Join(g.dir, "memory.events"))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "oom_kill "); ok {
			n, _ := strconv.Atoi(v)
			return n
		}
	}
	return 0
}

// MemoryCurrent is what the relay uses now (memory.current), in bytes.
func (g *Group) MemoryCurrent() uint64 {
	b, err := os.ReadFile(filepath.Join(g.dir, "memory.current"))
	if err != nil {
		return 0
	}
	n, _ := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	return n
}

// Close releases the directory handle (nil: nothing).
func (g *Group) Close() {
	if g != nil && g.fd >= 0 {
		unix.Close(g.fd)
		g.fd = -1
	}
}

// Remove deletes relay name's cgroup, which must hold no process; an
// absent one is fine.
func (t *Tree) Remove(name string) error {
	dir := filepath.Join(t.dir, name)
	if err := unix.Rmdir(dir); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("cgroup: removing %s: %w", dir, err)
	}
	return nil
}
