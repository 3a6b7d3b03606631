package netcfg

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// ruleKey identifies one of our rules.
type ruleKey struct {
	family int
	mark   uint32 // 0: a source rule
	src    netip.Prefix
}

func (m *Manager) wantRules(p *plan) map[ruleKey]bool {
	want := map[ruleKey]bool{}
	for _, r := range p.relays {
		for _, a := range []netip.Prefix{r.v4, r.v6} {
			if !a.IsValid() {
				continue
			}
			fam := unix.AF_INET
			if a.Addr().Is6() {
				fam = unix.AF_INET6
			}
			want[ruleKey{family: fam, mark: r.uid}] = true
			want[ruleKey{family: fam, src: netip.PrefixFrom(a.Addr(), a.Addr().BitLen())}] = true
		}
	}
	return want
}

// syncRules makes the rules pointing at the relay table exactly p's: a
// fwmark rule per relay uid and a source rule per relay address, per
// family, at the configured priority.
func (m *Manager) syncRules(p *plan) error {
	want := m.wantRules(p)
	seen := map[ruleKey]bool{}
	for _, fam := range []int{unix.AF_INET, unix.AF_INET6} {
		rules, err := m.nl.RuleList(fam)
		if err != nil {
			return err
		}
		for _, r := range rules {
			if r.Table != m.opts.Table {
				continue
			}
			k := ruleKey{family: fam}
			if r.Mark != 0 {
				k.mark = r.Mark
			}
			if r.Src != nil {
				k.src = fromIPNet(r.Src)
			}
			ok := want[k] && !seen[k] && r.Priority == m.opts.Priority &&
				(k.mark == 0) != (r.Src == nil) && (r.Mask == nil || *r.Mask == 0xffffffff)
			if ok {
				seen[k] = true
				continue
			}
			r := r
			r.Family = fam
			if err := m.nl.RuleDel(&r); err != nil && !errors.Is(err, unix.ENOENT) {
				return fmt.Errorf("removing rule %v: %w", r, err)
			}
		}
	}
	for k := range want {
		if seen[k] {
			continue
		}
		r := netlink.NewRule()
		r.Family = k.family
		r.Table = m.opts.Table
		r.Priority = m.opts.Priority
		if k.mark != 0 {
			r.Mark = k.mark
			mask := uint32(0xffffffff)
			r.Mask = &mask
		} else {
			r.Src = toIPNet(k.src)
		}
		if err := m.nl.RuleAdd(r); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("adding rule %v: %w", r, err)
		}
	}
	return nil
}
