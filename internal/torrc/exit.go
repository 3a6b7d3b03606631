package torrc

import "strings"

// IsExit reports whether tor running c would be an exit relay, as tor
// decides it (policies.c): "ExitRelay 0" never is; "ExitRelay 1" is
// unless its ExitPolicy accepts nothing; with ExitRelay auto (unset) a
// relay is an exit once it sets ExitPolicy, ReducedExitPolicy 1 or
// IPv6Exit 1, and its policy accepts something. A policy accepts
// something when one of its items is an accept, or when it does not end
// in a catch-all "reject *:*" (tor then appends its default policy,
// which accepts). Being an exit is what makes the DNS rules apply, so
// every doubt counts as exit.
func IsExit(c *Config) bool {
	r := c.resolve()
	switch last(r.values("ExitRelay")) {
	case "0":
		return false
	case "1":
		return accepts(r.values("ExitPolicy"))
	}
	policy := r.values("ExitPolicy")
	reduced := lastIs(r.values("ReducedExitPolicy"), "1")
	if policy == nil && !reduced && !lastIs(r.values("IPv6Exit"), "1") {
		return false
	}
	return accepts(policy)
}

// accepts reports whether an ExitPolicy (its lines, each a comma list)
// lets anything out.
func accepts(lines []string) bool {
	var items []string
	for _, l := range lines {
		for _, it := range strings.Split(l, ",") {
			if it = strings.Join(strings.Fields(it), " "); it != "" {
				items = append(items, strings.ToLower(it))
			}
		}
	}
	for _, it := range items {
		if strings.HasPrefix(it, "accept") {
			return true
		}
	}
	if len(items) == 0 {
		return true // the default (or reduced) policy, which accepts
	}
	// Anything but a catch-all leaves room for the default or reduced
	// policy tor appends.
	return items[len(items)-1] != "reject *:*"
}

func last(v []string) string {
	if len(v) == 0 {
		return ""
	}
	return strings.TrimSpace(v[len(v)-1])
}
