package cli

import (
	"flag"
	"fmt"
	"strconv"
	"strings"
	"time"

	"patela/configsrv/store"
	"patela/internal/api"
)

// statusNode is one node of `configsrv status`, with its relays.
type statusNode struct {
	ID              int64              `json:"id"`
	State           api.NodeState      `json:"state"`
	LastSeen        time.Time          `json:"last_seen"`
	LastSeenAgeS    int64              `json:"last_seen_age_s"`
	AttestedRelease string             `json:"attested_release"` // the quote-matched release, "unknown"; "" without a quote
	ReportedRelease string             `json:"reported_release"` // what the node says it booted
	UptimeS         int64              `json:"uptime_s"`
	RelaysWanted    int                `json:"relays_wanted"`
	RelaysRunning   int                `json:"relays_running"`
	Metrics         *store.NodeMetrics `json:"metrics"` // null: the node sent no summary
	Relays          []statusRelay      `json:"relays"`
}

// statusRelay is one relay of a statusNode.
type statusRelay struct {
	Name        string              `json:"name"`
	State       string              `json:"state"`
	Fingerprint string              `json:"fingerprint"`
	Restarts    int                 `json:"restarts"`
	KeysUnsaved bool                `json:"keys_unsaved"`
	Notes       string              `json:"notes"`
	Metrics     *store.RelayMetrics `json:"metrics"` // null: no summary
}

// status is the fleet at a glance: one row per relay, after its node's
// columns (a node without relays gets one row), or the same as JSON.
func (e *env) status(fs *flag.FlagSet, args []string) error {
	asJSON := jsonFlag(fs)
	_, st, err := e.start(fs, args, 0, 0, toRead)
	if err != nil {
		return err
	}
	nodes, err := fleetStatus(e, st, time.Now())
	if err != nil {
		return err
	}
	if *asJSON {
		if nodes == nil {
			nodes = []statusNode{}
		}
		return e.json(nodes)
	}
	var rows [][]string
	for _, n := range nodes {
		release := "-"
		switch {
		case n.AttestedRelease != "":
			release = n.AttestedRelease
		case n.ReportedRelease != "":
			release = n.ReportedRelease + " (reported)"
		}
		node := []string{strconv.FormatInt(n.ID, 10), string(n.State), age(n.LastSeenAgeS),
			fmt.Sprintf("%d/%d", n.RelaysRunning, n.RelaysWanted), release}
		if len(n.Relays) == 0 {
			rows = append(rows, append(node, "-", "-", "-", "-", "-", "-", "-", "-"))
		}
		for i, r := range n.Relays {
			if i > 0 {
				node = []string{"", "", "", "", ""}
			}
			rows = append(rows, append(node, relayStatusRow(r)...))
		}
	}
	return e.table("NODE\tSTATE\tSEEN\tRUNNING\tRELEASE\tRELAY\tRUN\tREAD/s\tWRITTEN/s\tCIRCUITS\tFLAGS\tCERT\tNOTES", rows)
}

func relayStatusRow(r statusRelay) []string {
	state := r.State
	if state == "" {
		state = "-"
	}
	read, written, circuits, flags, cert := "-", "-", "-", "-", "-"
	if m := r.Metrics; m != nil && m.Error == "" {
		if m.HasRate {
			read, written = rate(m.ReadRate), rate(m.WriteRate)
		}
		circuits = strconv.FormatUint(m.Circuits, 10)
		if len(m.Flags) > 0 {
			flags = strings.Join(m.Flags, ",")
		}
		if m.SigningCertExpires > 0 {
			cert = age(m.SigningCertExpires - m.ReportedAt.Unix())
		}
	}
	notes := r.Notes
	if notes == "" {
		notes = "-"
	}
	return []string{r.Name, state, read, written, circuits, flags, cert, notes}
}

// fleetStatus gathers every node with its relays and their last figures.
func fleetStatus(e *env, st *store.Store, now time.Time) ([]statusNode, error) {
	ns, err := st.Nodes(e.ctx)
	if err != nil {
		return nil, err
	}
	rs, err := st.Relays(e.ctx, 0)
	if err != nil {
		return nil, err
	}
	nm, rm, err := st.Metrics(e.ctx)
	if err != nil {
		return nil, err
	}
	byNode := map[int64][]statusRelay{}
	running := map[int64]int{}
	for _, r := range rs {
		sr := statusRelay{Name: r.Name, State: r.State, Fingerprint: r.Fingerprint, Restarts: r.Restarts,
			KeysUnsaved: r.KeysUnsaved, Notes: relayNotes(r)}
		if m, ok := rm[r.ID]; ok {
			sr.Metrics = &m
			if m.Error != "" {
				sr.Notes = joinNotes(sr.Notes, sanitize("no figures: "+m.Error))
			}
		}
		if r.State == string(api.RelayRunning) {
			running[r.NodeID]++
		}
		byNode[r.NodeID] = append(byNode[r.NodeID], sr)
	}
	out := make([]statusNode, 0, len(ns))
	for _, n := range ns {
		sn := statusNode{ID: n.ID, State: n.State, LastSeen: n.LastSeen, LastSeenAgeS: int64(max(now.Sub(n.LastSeen), 0) / time.Second),
			AttestedRelease: n.AttestedRelease(), ReportedRelease: n.Release, UptimeS: n.UptimeS,
			RelaysWanted: n.Relays, RelaysRunning: running[n.ID], Relays: byNode[n.ID]}
		if m, ok := nm[n.ID]; ok {
			sn.Metrics = &m
		}
		if sn.Relays == nil {
			sn.Relays = []statusRelay{}
		}
		out = append(out, sn)
	}
	return out, nil
}

func joinNotes(a, b string) string {
	if a == "" {
		return b
	}
	return a + "; " + b
}

// sanitize replaces control characters (the text comes from a node).
func sanitize(s string) string {
	return strings.Map(func(c rune) rune {
		if c < 0x20 || c == 0x7f || c >= 0x80 && c < 0xa0 {
			return '?'
		}
		return c
	}, s)
}

// age words a number of seconds as the largest whole unit: 42s, 5m, 3h, 12d.
func age(s int64) string {
	switch {
	case s < 0:
		return "-" + age(-s)
	case s < 60:
		return fmt.Sprintf("%ds", s)
	case s < 3600:
		return fmt.Sprintf("%dm", s/60)
	case s < 86400:
		return fmt.Sprintf("%dh", s/3600)
	}
	return fmt.Sprintf("%dd", s/86400)
}

// rate words bytes per second in decimal units: 512 B/s, 1.2 MB/s.
func rate(bps float64) string {
	for _, u := range []struct {
		div  float64
		name string
	}{{1e9, "GB/s"}, {1e6, "MB/s"}, {1e3, "kB/s"}} {
		if bps >= u.div {
			return strconv.FormatFloat(bps/u.div, 'f', 1, 64) + " " + u.name
		}
	}
	return strconv.FormatFloat(bps, 'f', 0, 64) + " B/s"
}
