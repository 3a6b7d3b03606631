package torrc

import (
	"slices"
	"strings"
)

// Merge cascades levels, lowest first (global → node → relay), with tor's
// semantics for layered configuration: the first plain line of an option in a
// level replaces that option's lines from lower levels and later ones in the
// same level add to it; "+Option" adds to them; "/Option" removes them.
//
// The result is resolved: every line is OpSet and carries the name of the
// level it came from. Options appear in the order they were first seen, and
// an option's lines in the order tor would apply them, so the same input
// always gives the same text. Options tor keeps in one list (an onion
// service's HiddenService* lines) cascade as one.
func Merge(levels ...Level) *Config {
	var r resolver
	for i, lv := range levels {
		if lv.Config == nil {
			continue
		}
		for _, l := range lv.Config.Lines {
			l.Level = lv.Name
			r.apply(i, l)
		}
	}
	return r.config()
}

// resolver applies lines to an ordered set of option groups.
type resolver struct {
	slots []slot
	index map[string]int // group → slots index
}

type slot struct {
	lines []Line
	level int // level that last touched the slot; -1 for none
}

func (r *resolver) apply(level int, l Line) {
	g := group(l.Key)
	n, ok := r.index[g]
	if !ok {
		if r.index == nil {
			r.index = map[string]int{}
		}
		n = len(r.slots)
		r.index[g] = n
		r.slots = append(r.slots, slot{level: -1})
	}
	s := &r.slots[n]
	switch l.Op {
	case OpRemove:
		s.lines = s.lines[:0]
	case OpSet:
		if s.level != level {
			s.lines = s.lines[:0]
		}
		fallthrough
	default:
		l.Op = OpSet
		s.lines = append(s.lines, l)
	}
	s.level = level
}

func (r *resolver) config() *Config {
	n := 0
	for _, s := range r.slots {
		n += len(s.lines)
	}
	c := &Config{Lines: make([]Line, 0, n)}
	for _, s := range r.slots {
		c.Lines = append(c.Lines, s.lines...)
	}
	return c
}

// resolve applies c's lines as one level.
func (c *Config) resolve() *Config {
	if c == nil {
		return &Config{}
	}
	return Merge(Level{Config: c})
}

// Values returns the values the option key (any spelling tor accepts) ends up
// with in c, in order, after c's own "+" and "/" lines are applied; nil if
// it has none.
func (c *Config) Values(key string) []string {
	k, ok := Canonical(key)
	if !ok || c == nil {
		return nil
	}
	return c.resolve().values(k)
}

// values returns a resolved config's values of canonical key k.
func (c *Config) values(k string) []string {
	var v []string
	for _, l := range c.Lines {
		if l.Key == k {
			v = append(v, l.Value)
		}
	}
	return v
}

// NeedsRestart reports whether tor running with old must be restarted, not
// sent SIGHUP, to run with new: an option tor cannot change while running
// differs (DataDirectory, User, Sandbox, ... and, to be safe, the listener
// and address options ORPort, Address, OutboundBindAddress*), or Sandbox is
// on and an option tor freezes under the sandbox differs.
func NeedsRestart(old, new *Config) bool {
	o, n := old.resolve(), new.resolve()
	sandbox := lastIs(o.values("Sandbox"), "1")
	changed := map[string]bool{}
	for _, c := range []*Config{o, n} {
		for _, l := range c.Lines {
			changed[l.Key] = true
		}
	}
	for k := range changed {
		if !immutableSet[k] && !(sandbox && sandboxImmSet[k]) {
			continue
		}
		if !slices.Equal(o.values(k), n.values(k)) {
			return true
		}
	}
	return false
}

func lastIs(v []string, want string) bool {
	return len(v) > 0 && strings.TrimSpace(v[len(v)-1]) == want
}
