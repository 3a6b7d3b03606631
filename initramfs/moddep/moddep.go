// Package moddep reads a kernel module tree's modules.dep and expands a list
// of module names into every module they need, in an order that loads each
// module after its dependencies (what `modprobe --show-depends` prints).
package moddep

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
)

// Module is one loadable module of a tree.
type Module struct {
	Name string // file name without ".ko", as in the tree (e.g. "virtio-rng")
	Path string // path relative to the tree root (e.g. "kernel/drivers/virtio/virtio.ko")
}

// Tree is a parsed module tree: /lib/modules/<version>.
type Tree struct {
	Dir     string
	mods    map[string]Module   // by canonical name
	deps    map[string][]string // canonical name → canonical names, as listed
	builtin map[string]bool     // canonical names built into the kernel
	softpre map[string][]string // canonical name → "softdep pre:" names (modules or aliases)
	alias   map[string][]string // alias → canonical names (modules.alias)
}

// Canonical is the name the kernel uses for a module: '-' and '_' are the same.
func Canonical(name string) string {
	return strings.ReplaceAll(strings.TrimSuffix(name, ".ko"), "-", "_")
}

// Load parses dir/modules.dep and, when present, dir/modules.builtin.
func Load(dir string) (*Tree, error) {
	f, err := os.Open(filepath.Join(dir, "modules.dep"))
	if err != nil {
		return nil, fmt.Errorf("module tree %s: %w", dir, err)
	}
	defer f.Close()
	t, err := Parse(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", f.Name(), err)
	}
	t.Dir = dir
	if b, err := os.Open(filepath.Join(dir, "modules.builtin")); err == nil {
		defer b.Close()
		if err := t.parseBuiltin(b); err != nil {
			return nil, fmt.Errorf("%s: %w", b.Name(), err)
		}
	} else if !os.IsNotExist(err) {
		return nil, err
	}
	for _, extra := range []struct {
		file  string
		parse func(io.Reader) error
	}{{"modules.softdep", t.parseSoftdep}, {"modules.alias", t.parseAlias}} {
		f, err := os.Open(filepath.Join(dir, extra.file))
		if os.IsNotExist(err) {
			continue
		}
		if err != nil {
			return nil, err
		}
		err = extra.parse(f)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", f.Name(), err)
		}
	}
	return t, nil
}

// Parse reads the modules.dep format: "path.ko: dep.ko dep.ko ...", one
// module a line, dependencies listed as depmod's transitive closure.
func Parse(r io.Reader) (*Tree, error) {
	t := &Tree{mods: map[string]Module{}, deps: map[string][]string{}, builtin: map[string]bool{},
		softpre: map[string][]string{}, alias: map[string][]string{}}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	paths := map[string][]string{}
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		p, rest, ok := strings.Cut(line, ":")
		if !ok {
			return nil, fmt.Errorf("line %d: no ':' in %q", n, line)
		}
		m, err := module(p)
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", n, err)
		}
		c := Canonical(m.Name)
		if _, dup := t.mods[c]; dup {
			return nil, fmt.Errorf("line %d: module %s listed twice", n, m.Name)
		}
		t.mods[c] = m
		paths[c] = strings.Fields(rest)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	for c, ps := range paths {
		for _, p := range ps {
			m, err := module(p)
			if err != nil {
				return nil, fmt.Errorf("dependency of %s: %w", t.mods[c].Name, err)
			}
			d := Canonical(m.Name)
			if got, ok := t.mods[d]; !ok || got.Path != m.Path {
				return nil, fmt.Errorf("%s depends on %s, which has no line of its own", t.mods[c].Name, p)
			}
			t.deps[c] = append(t.deps[c], d)
		}
	}
	return t, nil
}

func module(p string) (Module, error) {
	p = strings.TrimSpace(p)
	if !strings.HasSuffix(p, ".ko") || path.IsAbs(p) || !filepath.IsLocal(p) {
		return Module{}, fmt.Errorf("bad module path %q", p)
	}
	return Module{Name: strings.TrimSuffix(path.Base(p), ".ko"), Path: p}, nil
}

func (t *Tree) parseBuiltin(r io.Reader) error {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		if p := strings.TrimSpace(sc.Text()); p != "" {
			t.builtin[Canonical(path.Base(p))] = true
		}
	}
	return sc.Err()
}

// parseSoftdep reads "softdep MOD pre: A B post: C" lines; only pre
// matters (post modules are optional extras modprobe loads afterwards).
func (t *Tree) parseSoftdep(r io.Reader) error {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 || f[0] != "softdep" {
			continue
		}
		mod, pre := Canonical(f[1]), false
		for _, w := range f[2:] {
			switch w {
			case "pre:":
				pre = true
			case "post:":
				pre = false
			default:
				if pre {
					t.softpre[mod] = append(t.softpre[mod], w)
				}
			}
		}
	}
	return sc.Err()
}

// parseAlias reads "alias NAME MODULE" lines with a literal NAME (the
// wildcard device aliases are for hotplug, not for softdeps).
func (t *Tree) parseAlias(r io.Reader) error {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 3 && f[0] == "alias" && !strings.ContainsAny(f[1], "*?[:") {
			t.alias[f[1]] = append(t.alias[f[1]], Canonical(f[2]))
		}
	}
	return sc.Err()
}

// soft resolves a softdep name to one module of the tree: the module of
// that name, else the alias's generic implementation (it works on every
// CPU; crc32c_intel, say, needs SSE4.2), else its first module. "" if none.
func (t *Tree) soft(name string) string {
	if c := Canonical(name); t.mods[c].Name != "" {
		return c
	}
	cands := slices.Clone(t.alias[name])
	slices.Sort(cands)
	for _, c := range cands {
		if strings.HasSuffix(c, "_generic") && t.mods[c].Name != "" {
			return c
		}
	}
	for _, c := range cands {
		if t.mods[c].Name != "" {
			return c
		}
	}
	return ""
}

// Builtin reports whether name is compiled into the kernel.
func (t *Tree) Builtin(name string) bool { return t.builtin[Canonical(name)] }

// Resolve returns the modules names need, each after its dependencies, each
// once. Built-in modules are skipped (there is nothing to load); a name the
// tree does not know is an error.
func (t *Tree) Resolve(names ...string) ([]Module, error) {
	var out []Module
	seen := map[string]bool{}
	var visit func(c string)
	visit = func(c string) {
		if seen[c] {
			return
		}
		seen[c] = true
		// A "softdep pre:" module is needed at init (libcrc32c asks the
		// crypto API for crc32c, which nobody can modprobe in our image).
		for _, sd := range t.softpre[c] {
			if m := t.soft(sd); m != "" {
				visit(m)
			}
		}
		// depmod lists the closure nearest-first; walking it backwards
		// reproduces modprobe's order, and recursion makes it right even
		// if a list were incomplete.
		ds := t.deps[c]
		for i := len(ds) - 1; i >= 0; i-- {
			visit(ds[i])
		}
		out = append(out, t.mods[c])
	}
	for _, n := range names {
		c := Canonical(n)
		if c == "" {
			return nil, fmt.Errorf("empty module name")
		}
		if _, ok := t.mods[c]; !ok {
			if t.builtin[c] {
				continue
			}
			return nil, fmt.Errorf("module %q is not in the module tree %s", n, t.Dir)
		}
		visit(c)
	}
	return out, nil
}
