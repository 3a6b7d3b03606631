package resolve

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"strings"

	"patela/configsrv/alloc"
	"patela/configsrv/store"
	"patela/internal/membudget"
	"patela/internal/torrc"
)

// Edit is a change an administrator is about to store: a torrc at one
// level (Level, with Node or Relay, and Text), or a setting of a node or
// the global level (Setting, Value; "" unsets it).
type Edit struct {
	Level string // LevelGlobal, LevelNode, LevelRelay; "" for a setting
	Node  int64  // the node of a node-level torrc or setting; 0: global
	Relay string // the relay of a relay-level torrc
	Text  string

	Setting, Value string
}

// Tried is a relay's served torrc as it would be after an edit.
type Tried struct {
	Relay  string
	UID    int
	Served *torrc.Config
}

const representativeName = "representative"

// representative stands in for the relays of a level that has none yet
// (bring-up: the global torrc before any node): a relay with the
// server's lines of a real one.
func representative(node int64) store.Relay {
	return store.Relay{Name: representativeName, NodeID: node, ORPort: alloc.ORPort, UID: alloc.FirstUID,
		IPv4: netip.MustParsePrefix("198.51.100.10/24"), IPv6: netip.MustParsePrefix("2001:db8::10/64")}
}

// Try resolves every relay the edit affects as the server would serve it
// after the edit, and applies the safety rules to each: all of them for
// a torrc edit, the DNS rule for a setting (a setting cannot take a
// ContactInfo away). It returns one relay per distinct administrator
// cascade (relays that differ only in the server's own lines stand for
// each other), for tor --verify-config, or the first *UnsafeError. Where
// the edit affects no relay yet, a representative one stands in.
// Nothing is stored.
func Try(ctx context.Context, st *store.Store, e Edit) ([]Tried, error) {
	fleet, err := LoadFleet(ctx, st)
	if err != nil {
		return nil, err
	}
	global, err := st.GlobalTorrc(ctx)
	if err != nil {
		return nil, err
	}
	if e.Level == LevelGlobal {
		global = e.Text
	}
	var relays []store.Relay
	switch {
	case e.Level == LevelRelay:
		r, err := st.RelayByName(ctx, e.Relay)
		if err != nil {
			return nil, err
		}
		r.Torrc = e.Text
		relays = []store.Relay{*r}
	case e.Node != 0:
		if _, err := st.Node(ctx, e.Node); err != nil {
			return nil, err
		}
		relays, err = st.Relays(ctx, e.Node)
	default:
		relays, err = st.Relays(ctx, 0)
	}
	if err != nil {
		return nil, err
	}
	if len(relays) == 0 {
		relays = []store.Relay{representative(e.Node)}
	}
	nodes, err := nodeViews(ctx, st, e, relays)
	if err != nil {
		return nil, err
	}
	// The safety rules read only what the levels merge to (ContactInfo,
	// the exit options) and the node's DNS: the server's own lines name
	// none of those options (TestServerLinesOutsideChecks). Relays with
	// the same three levels and DNS therefore pass or fail together, and
	// once one has passed the others need not be resolved again: a
	// fleet-wide edit resolves a few cascades, not every relay.
	type cascade struct{ node, relay, dns string }
	passed := map[cascade]bool{}
	seen := map[string]bool{}
	var out []Tried
	for i := range relays {
		r := &relays[i]
		nv := nodes[r.NodeID]
		key := cascade{nv.torrc, r.Torrc, nv.dnsKey}
		if passed[key] {
			continue
		}
		levels, err := Levels(global, nv.torrc, r.Torrc)
		if err != nil {
			return nil, err
		}
		c := relayTorrc(levels, r, fleet, nv.mem)
		if e.Setting != "" {
			err = checkDNS(c, r, nv.dns)
		} else {
			err = check(levels, c, r, nv.dns)
		}
		if err != nil {
			return nil, err
		}
		passed[key] = true
		if key := string(torrc.Merge(levels...).Render()); !seen[key] {
			seen[key] = true
			out = append(out, Tried{Relay: r.Name, UID: r.UID, Served: c})
		}
	}
	return out, nil
}

// nodeView is what Try needs of a node: its torrc as the edit leaves it,
// its DNS and memory budget.
type nodeView struct {
	torrc  string
	dns    dnsSource
	dnsKey string // dns, as a map key
	mem    membudget.Budget
}

// nodeViews reads the nodes of relays as the edit leaves them: node by
// node when they are few, else every node and every node's settings in
// three queries (a fleet-wide edit would otherwise make two per node).
func nodeViews(ctx context.Context, st *store.Store, e Edit, relays []store.Relay) (map[int64]*nodeView, error) {
	ids := map[int64]bool{}
	for _, r := range relays {
		ids[r.NodeID] = true
	}
	var all map[int64]*store.Node
	var global map[string]string
	var allSettings map[int64]map[string]string
	if len(ids) > 8 {
		ns, err := st.Nodes(ctx)
		if err != nil {
			return nil, err
		}
		all = make(map[int64]*store.Node, len(ns))
		for i := range ns {
			all[ns[i].ID] = &ns[i]
		}
		if global, _, err = st.Settings(ctx, 0); err != nil {
			return nil, err
		}
		if allSettings, err = st.NodeSettings(ctx); err != nil {
			return nil, err
		}
	}
	out := make(map[int64]*nodeView, len(ids))
	for id := range ids {
		var g, nd map[string]string
		var err error
		if all == nil {
			if g, nd, err = st.Settings(ctx, id); err != nil {
				return nil, err
			}
		} else { // copies: the edit below changes them
			g, nd = maps.Clone(global), maps.Clone(allSettings[id])
			if nd == nil {
				nd = map[string]string{}
			}
		}
		nv := &nodeView{}
		if id != 0 {
			n := all[id]
			if all == nil {
				if n, err = st.Node(ctx, id); err != nil {
					return nil, err
				}
			} else if n == nil {
				return nil, fmt.Errorf("node %d: %w", id, store.ErrNotFound)
			}
			nv.torrc = n.Torrc
			nv.mem = Budget(n)
		}
		if e.Level == LevelNode && id == e.Node {
			nv.torrc = e.Text
		}
		if e.Setting != "" {
			m := g
			if e.Node != 0 {
				m = nd
			}
			if e.Value == "" {
				delete(m, e.Setting)
			} else {
				m[e.Setting] = e.Value
			}
		}
		nv.dns = dnsOf(g, nd, id)
		nv.dnsKey = strings.Join(nv.dns.dns, " ") + "\x00" + nv.dns.from
		out[id] = nv
	}
	return out, nil
}
