// Package dbcheck checks a configsrv database for the damage a crash, a
// full disk or a race could do: SQLite-level corruption, dangling rows,
// relays with a missing or duplicate address or name, and nodes whose
// relay count does not follow from the specs they reported.
package dbcheck

import (
	"context"
	"fmt"
	"net/netip"
	"strings"

	"patela/configsrv/alloc"
	"patela/configsrv/settings"
	"patela/configsrv/store"
)

// Check returns every problem it finds in st (nil: none), or an error
// when it cannot read the database at all.
func Check(ctx context.Context, st *store.Store) ([]string, error) {
	db := st.DB()
	var problems []string
	bad := func(format string, a ...any) { problems = append(problems, fmt.Sprintf(format, a...)) }

	rows, err := db.QueryContext(ctx, `PRAGMA integrity_check`)
	if err != nil {
		return nil, err
	}
	var lines []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			rows.Close()
			return nil, err
		}
		lines = append(lines, s)
	}
	rows.Close()
	if len(lines) != 1 || lines[0] != "ok" {
		bad("integrity_check: %s", strings.Join(lines, "; "))
	}
	var fk int
	if err := db.QueryRowContext(ctx, `SELECT count(*) FROM pragma_foreign_key_check`).Scan(&fk); err != nil {
		return nil, err
	}
	if fk != 0 {
		bad("foreign_key_check: %d dangling rows", fk)
	}

	pools, err := st.Pools(ctx)
	if err != nil {
		return nil, err
	}
	byID := map[int64]store.Pool{}
	hasV6 := false
	for _, p := range pools {
		byID[p.ID] = p
		hasV6 = hasV6 || p.Family() == 6
	}
	type relay struct {
		node     int64
		idx      int
		name, v4 string
		v6       *string
		p4       int64
		p6       *int64
	}
	rows, err = db.QueryContext(ctx, `SELECT node_id, idx, name, ipv4, ipv6, ipv4_pool, ipv6_pool FROM relays ORDER BY node_id, idx`)
	if err != nil {
		return nil, err
	}
	var relays []relay
	for rows.Next() {
		var r relay
		if err := rows.Scan(&r.node, &r.idx, &r.name, &r.v4, &r.v6, &r.p4, &r.p6); err != nil {
			rows.Close()
			return nil, err
		}
		relays = append(relays, r)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	seen := map[string]string{}
	unique := func(kind, v, name string) {
		if other, ok := seen[kind+v]; ok {
			bad("%s %s held by relays %s and %s", kind, v, other, name)
		}
		seen[kind+v] = name
	}
	perNode := map[int64][]int{}
	for _, r := range relays {
		perNode[r.node] = append(perNode[r.node], r.idx)
		unique("name", r.name, r.name)
		if a, err := netip.ParseAddr(r.v4); err != nil || !a.Is4() || !byID[r.p4].CIDR.Contains(a) {
			bad("relay %s: IPv4 %q is not an address of its pool %d", r.name, r.v4, r.p4)
		}
		unique("ipv4", r.v4, r.name)
		switch {
		case r.v6 == nil && hasV6:
			bad("relay %s has no IPv6 address although an IPv6 pool exists", r.name)
		case r.v6 != nil:
			a, err := netip.ParseAddr(*r.v6)
			if err != nil || r.p6 == nil || !byID[*r.p6].CIDR.Contains(a) {
				bad("relay %s: IPv6 %q is not an address of its pool", r.name, *r.v6)
			}
			unique("ipv6", *r.v6, r.name)
		}
	}

	nodes, err := st.Nodes(ctx)
	if err != nil {
		return nil, err
	}
	// A node may have fewer relays than the rules give only while every
	// IPv4 address is taken (allocation places what fits).
	v4full := true
	for _, p := range pools {
		if p.Family() == 4 && uint64(p.Used) < p.Size {
			v4full = false
		}
	}
	for _, n := range nodes {
		idx := perNode[n.ID]
		for i, x := range idx {
			if x != i {
				bad("node %d: relay indices %v are not 0..%d", n.ID, idx, len(idx)-1)
				break
			}
		}
		want := 0
		if n.CPUs > 0 {
			g, nd, err := st.Settings(ctx, n.ID)
			if err != nil {
				return nil, err
			}
			eff := settings.Resolve(g, nd)
			want = alloc.RelayCount(n.CPUs, n.MemoryBytes, eff.RelayMemoryMB, eff.MaxRelays)
		}
		if len(idx) > want || len(idx) < want && !v4full {
			bad("node %d reported %d cpus, %d bytes: has %d relays, the rules give %d", n.ID, n.CPUs, n.MemoryBytes, len(idx), want)
		}
		if n.CPUs > 0 && n.RelaysWanted != want {
			bad("node %d: relays_wanted %d, the rules give %d", n.ID, n.RelaysWanted, want)
		}
		delete(perNode, n.ID)
	}
	for id := range perNode {
		bad("relays of node %d, which does not exist", id)
	}
	return problems, nil
}
