// Package resolve turns the stored settings and torrc levels into a node's
// desired state: the network settings and, per relay, the torrc cascaded
// global → node → relay with the options the system owns appended.
package resolve

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"path"
	"slices"
	"strconv"

	"patela/configsrv/settings"
	"patela/configsrv/store"
	"patela/internal/api"
	"patela/internal/layout"
	"patela/internal/membudget"
	"patela/internal/torrc"
)

// Level names as Explain shows them.
const (
	LevelGlobal  = "global"
	LevelNode    = "node"
	LevelRelay   = "relay"
	LevelManaged = "managed"
)

// DataDir and ControlSocket are where a relay lives on the node (the
// image layout), for showing what tor there runs (OnNode); the agent
// writes these lines.
func DataDir(name string) string       { return path.Join(layout.StateDir, name) }
func ControlSocket(name string) string { return path.Join(layout.RunDir, name, "control") }

// Managed returns the lines the server writes for relay r: its identity
// and addresses (the options torrc.OwnerOf says are the server's).
func Managed(r *store.Relay) []torrc.Line {
	port := strconv.Itoa(r.ORPort)
	l := func(k, v string) torrc.Line {
		return torrc.Line{Op: torrc.OpSet, Key: k, Value: v, Level: LevelManaged}
	}
	out := []torrc.Line{l("Nickname", r.Name)}
	v4 := r.IPv4.Addr().String()
	out = append(out, l("ORPort", v4+":"+port))
	if r.IPv6.IsValid() {
		out = append(out, l("ORPort", "["+r.IPv6.Addr().String()+"]:"+port))
	}
	out = append(out, l("Address", v4))
	if r.IPv6.IsValid() {
		out = append(out, l("Address", r.IPv6.Addr().String()))
	}
	out = append(out, l("OutboundBindAddress", v4))
	if r.IPv6.IsValid() {
		out = append(out, l("OutboundBindAddress", r.IPv6.Addr().String()))
	}
	return out
}

// Memory returns the managed MaxMemInQueues line for a relay of a node
// with budget b (internal/membudget: the share its cgroup's memory.max
// gets on the node), unless c, the relay's merged torrc, sets the option
// itself: the administrator's value wins.
func Memory(c *torrc.Config, b membudget.Budget) []torrc.Line {
	if b.Queues == 0 || len(c.Values("MaxMemInQueues")) > 0 {
		return nil
	}
	return []torrc.Line{{Op: torrc.OpSet, Key: "MaxMemInQueues",
		Value: strconv.FormatUint(b.Queues/membudget.MiB, 10) + " MB", Level: LevelManaged}}
}

// Budget is the memory budget of node n (its reported memory, its relays).
func Budget(n *store.Node) membudget.Budget { return membudget.For(n.MemoryBytes, n.Relays) }

// OnNode is what tor on the node runs for relay r, given the torrc
// the server serves: the lines the agent keeps, then its own (level
// "agent"), as the agent builds it (torrc.ForNode).
func OnNode(served *torrc.Config, r *store.Relay) *torrc.Config {
	run, _ := torrc.ForNode(served, torrc.AgentLines(DataDir(r.Name), ControlSocket(r.Name), layout.MetricsAddr(r.UID)))
	return run
}

// Levels parses the three stored torrc texts. Stored texts were checked
// with torrc.ParseUser on import; an error here means the database was
// edited by hand.
func Levels(global, node, relay string) ([]torrc.Level, error) {
	var out []torrc.Level
	for _, lv := range []struct{ name, text string }{
		{LevelGlobal, global}, {LevelNode, node}, {LevelRelay, relay},
	} {
		c, err := torrc.ParseUser([]byte(lv.text))
		if err != nil {
			return nil, fmt.Errorf("stored %s torrc: %w", lv.name, err)
		}
		out = append(out, torrc.Level{Name: lv.name, Config: c})
	}
	return out, nil
}

// Torrc resolves relay r's torrc from the three level texts: the levels
// merged, the server's lines for the relay, its family lines, on a node
// with memory budget mem.
func Torrc(global, node, relay string, r *store.Relay, fleet *Fleet, mem membudget.Budget) (*torrc.Config, error) {
	levels, err := Levels(global, node, relay)
	if err != nil {
		return nil, err
	}
	return relayTorrc(levels, r, fleet, mem), nil
}

// relayTorrc is the one road from parsed levels to a relay's served
// torrc.
func relayTorrc(levels []torrc.Level, r *store.Relay, fleet *Fleet, mem membudget.Budget) *torrc.Config {
	c := torrc.Merge(levels...)
	fam := fleet.Lines(c, r)
	c.Lines = slices.Grow(c.Lines, 9+len(fam))
	c.Lines = append(c.Lines, Managed(r)...)
	c.Lines = append(c.Lines, fam...)
	c.Lines = append(c.Lines, Memory(c, mem)...)
	return c
}

// Relay resolves one relay by name, for the admin CLI.
func Relay(ctx context.Context, st *store.Store, name string) (*torrc.Config, *store.Relay, error) {
	r, err := st.RelayByName(ctx, name)
	if err != nil {
		return nil, nil, err
	}
	g, err := st.GlobalTorrc(ctx)
	if err != nil {
		return nil, nil, err
	}
	n, err := st.Node(ctx, r.NodeID)
	if err != nil {
		return nil, nil, err
	}
	fleet, err := LoadFleet(ctx, st)
	if err != nil {
		return nil, nil, err
	}
	c, err := Torrc(g, n.Torrc, r.Torrc, r, fleet, Budget(n))
	return c, r, err
}

// NodeConfig builds the document GET /v1/node/config returns, with the
// fleet as loaded for the current generation. A relay the safety rules
// refuse (safety.go) fails the whole document with an *UnsafeError: the
// node keeps running what it has. It only reads: allocation happens on
// POST /v1/node/specs.
func NodeConfig(ctx context.Context, st *store.Store, nodeID int64, fleet *Fleet) (*api.NodeConfig, error) {
	n, err := st.Node(ctx, nodeID)
	if err != nil {
		return nil, err
	}
	g, nd, err := st.Settings(ctx, nodeID)
	if err != nil {
		return nil, err
	}
	eff := settings.Resolve(g, nd)
	global, err := st.GlobalTorrc(ctx)
	if err != nil {
		return nil, err
	}
	relays, err := st.Relays(ctx, nodeID)
	if err != nil {
		return nil, err
	}
	out := &api.NodeConfig{
		NodeID: nodeID,
		Network: api.Network{
			RelayInterface: eff.RelayInterface,
			IPv4Gateway:    eff.IPv4Gateway,
			IPv6Gateway:    eff.IPv6Gateway,
			DNS:            eff.DNS,
		},
		PollIntervalS:      eff.PollIntervalS,
		HeartbeatIntervalS: eff.HeartbeatIntervalS,
		Relays:             []api.Relay{},
	}
	// Without an explicit gateway, the gateway of the pool the node's
	// first relay draws from is the natural one.
	if len(relays) > 0 {
		if out.Network.IPv4Gateway == "" {
			out.Network.IPv4Gateway = relays[0].IPv4Gateway.String()
		}
		if out.Network.IPv6Gateway == "" && relays[0].IPv6Gateway.IsValid() {
			out.Network.IPv6Gateway = relays[0].IPv6Gateway.String()
		}
		out.FamilyKeys = fleet.Keys(nodeID)
	}
	levels, err := Levels(global, n.Torrc, "")
	if err != nil {
		return nil, err
	}
	dns := dnsOf(g, nd, nodeID)
	mem := membudget.For(n.MemoryBytes, len(relays))
	for i := range relays {
		r := &relays[i]
		lv := levels
		if r.Torrc != "" {
			c, err := torrc.ParseUser([]byte(r.Torrc))
			if err != nil {
				return nil, fmt.Errorf("stored relay torrc of %s: %w", r.Name, err)
			}
			lv = append(levels[:2:2], torrc.Level{Name: LevelRelay, Config: c})
		}
		c := relayTorrc(lv, r, fleet, mem)
		if err := check(lv, c, r, dns); err != nil {
			return nil, err
		}
		text := c.Render()
		sum := sha256.Sum256(text)
		ar := api.Relay{
			Name:        r.Name,
			IPv4:        r.IPv4.String(),
			ORPort:      r.ORPort,
			UID:         r.UID,
			Torrc:       string(text),
			TorrcSHA256: hex.EncodeToString(sum[:]),
		}
		if r.IPv6.IsValid() {
			ar.IPv6 = r.IPv6.String()
		}
		out.Relays = append(out.Relays, ar)
	}
	// A rollout's turn travels with the config (store: a step bumps the
	// config generation, so the node's next fetch carries it).
	if out.Reboot, err = st.RebootRequest(ctx, nodeID); err != nil {
		return nil, err
	}
	return out, nil
}
