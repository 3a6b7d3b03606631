package resolve

import (
	"context"
	"net/netip"

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
	type nodeView struct {
		torrc string
		dns   dnsSource
		mem   membudget.Budget
	}
	nodes := map[int64]*nodeView{}
	seen := map[string]bool{}
	var out []Tried
	for i := range relays {
		r := &relays[i]
		nv := nodes[r.NodeID]
		if nv == nil {
			nv = &nodeView{}
			g, nd, err := st.Settings(ctx, r.NodeID)
			if err != nil {
				return nil, err
			}
			if r.NodeID != 0 {
				n, err := st.Node(ctx, r.NodeID)
				if err != nil {
					return nil, err
				}
				nv.torrc = n.Torrc
				nv.mem = Budget(n)
			}
			if e.Level == LevelNode && r.NodeID == e.Node {
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
			nv.dns = dnsOf(g, nd, r.NodeID)
			nodes[r.NodeID] = nv
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
		if key := string(torrc.Merge(levels...).Render()); !seen[key] {
			seen[key] = true
			out = append(out, Tried{Relay: r.Name, UID: r.UID, Served: c})
		}
	}
	return out, nil
}
