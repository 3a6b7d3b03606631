package cli

import (
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"patela/configsrv/resolve"
	"patela/configsrv/settings"
	"patela/configsrv/store"
	"patela/internal/api"
	"patela/internal/cmdline"
	"patela/internal/membudget"
	"patela/internal/termsafe"
)

func fmtTime(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}

// nodeRow is a node with its boot evidence (`node list`).
type nodeRow struct {
	store.Node
	Attested    string             `json:"attested"` // the release, "unknown" or "unattested"
	Attestation *store.Attestation `json:"attestation,omitempty"`
}

func (e *env) nodeList(fs *flag.FlagSet, args []string) error {
	get := func(st *store.Store) ([]nodeRow, error) {
		nodes, err := st.Nodes(e.ctx)
		if err != nil {
			return nil, err
		}
		if err := st.Alarms(e.ctx, nodes, nil); err != nil {
			return nil, err
		}
		atts, err := st.Attestations(e.ctx)
		if err != nil {
			return nil, err
		}
		rows := make([]nodeRow, len(nodes))
		for i, n := range nodes {
			a := atts[n.ID]
			rows[i] = nodeRow{Node: n, Attested: a.Summary(), Attestation: a}
		}
		return rows, nil
	}
	return list(e, fs, args, get, "ID\tSTATE\tEK\tRELAYS\tSEALING\tATTESTED\tFIRST SEEN\tLAST SEEN\tALARM", func(n nodeRow) []string {
		relays := strconv.Itoa(n.Relays)
		if n.RelaysWanted > n.Relays {
			relays = fmt.Sprintf("%d of %d", n.Relays, n.RelaysWanted)
		}
		return []string{strconv.FormatInt(n.ID, 10), string(n.State), hex.EncodeToString(n.EKHash)[:16],
			relays, sealingView(n.Node), attestedView(n.Attestation), fmtTime(n.FirstSeen), fmtTime(n.LastSeen), alarm(n.Alarms)}
	})
}

// attestedView is the ATTESTED column: the release the last quote showed,
// "unknown" for an image no release names, "unattested" without a
// quote; a firmware log that did not replay is flagged.
func attestedView(a *store.Attestation) string {
	s := a.Summary()
	if a != nil && a.EventLog == "failed" {
		s += " (event log failed)"
	}
	return s
}

// nodeState is the command that moves a node to state.
func nodeState(state api.NodeState) func(*env, *flag.FlagSet, []string) error {
	return func(e *env, fs *flag.FlagSet, args []string) error {
		id, st, err := e.startNode(fs, args, toWrite)
		if err != nil {
			return err
		}
		return e.done(st.SetNodeState(e.ctx, id, state), "node."+strings.TrimPrefix(fs.Name(), "node "),
			nodeTarget(id), "", fmt.Sprintf("node %d %s", id, state))
	}
}

func (e *env) nodeRemove(fs *flag.FlagSet, args []string) error {
	id, st, err := e.startNode(fs, args, toWrite)
	if err != nil {
		return err
	}
	return e.done(st.RemoveNode(e.ctx, id), "node.remove", nodeTarget(id), "",
		fmt.Sprintf("node %d removed (its relays, addresses and key bundle freed)", id))
}

// settingArgs is the (--default | ID) KEY [VALUE] of node set and unset.
type settingArgs struct {
	id            int64 // 0: the global default
	key, value    string
	scope, target string // for the output and the audit log
}

// parseSetting parses node set (withValue) or node unset arguments.
func parseSetting(fs *flag.FlagSet, args []string, withValue bool) (*settingArgs, error) {
	def := fs.Bool("default", false, "the global default instead of a node's value")
	pos, err := parse(fs, args, 1, 3)
	if err != nil {
		return nil, err
	}
	form := "ID KEY"
	if *def {
		form = "--default KEY"
	}
	if withValue {
		form += " VALUE"
	}
	if len(pos) != len(strings.Fields(strings.TrimPrefix(form, "--default"))) {
		return nil, cmdline.Usagef("usage: %s %s", fs.Name(), form)
	}
	s := &settingArgs{scope: "default", target: "global"}
	if !*def {
		if s.id, err = nodeID(pos[0]); err != nil {
			return nil, err
		}
		pos = pos[1:]
		s.scope, s.target = fmt.Sprintf("node %d", s.id), nodeTarget(s.id)
	}
	s.key = pos[0]
	if withValue {
		s.value = pos[1]
	}
	return s, nil
}

func (e *env) nodeSet(fs *flag.FlagSet, args []string) error {
	s, err := parseSetting(fs, args, true)
	if err != nil {
		return err
	}
	val, err := settings.Normalize(s.key, s.value)
	if err != nil {
		return err
	}
	st, err := e.open(toWrite)
	if err != nil {
		return err
	}
	if s.key == settings.DNS {
		// An exit must not resolve through a public resolver.
		if _, err := resolve.Try(e.ctx, st, resolve.Edit{Node: s.id, Setting: s.key, Value: val}); err != nil {
			return fmt.Errorf("%w; nothing set", err)
		}
	}
	return e.done(st.SetSetting(e.ctx, s.id, s.key, val), "setting.set", s.target, s.key+"="+val,
		fmt.Sprintf("%s: %s = %s", s.scope, s.key, val))
}

func (e *env) nodeUnset(fs *flag.FlagSet, args []string) error {
	s, err := parseSetting(fs, args, false)
	if err != nil {
		return err
	}
	if _, err := settings.Normalize(s.key, ""); err != nil && strings.HasPrefix(err.Error(), "unknown setting") {
		return err
	}
	st, err := e.open(toWrite)
	if err != nil {
		return err
	}
	if s.key == settings.DNS && s.id != 0 {
		// The global value the node falls back to must do for its exits.
		if _, err := resolve.Try(e.ctx, st, resolve.Edit{Node: s.id, Setting: s.key}); err != nil {
			return fmt.Errorf("%w; nothing unset", err)
		}
	}
	return e.done(st.UnsetSetting(e.ctx, s.id, s.key), "setting.unset", s.target, s.key,
		fmt.Sprintf("%s: %s unset", s.scope, s.key))
}

type nodeView struct {
	*store.Node
	EKHashHex string            `json:"ek_sha256"`
	Settings  map[string]string `json:"settings"`  // node overrides
	Effective map[string]string `json:"effective"` // resolved values
	RelayList []store.Relay     `json:"relay_list"`
	// Attestation is the boot evidence of its last attestation (nil:
	// unattested since remote attestation came in).
	Attestation *store.Attestation `json:"attestation,omitempty"`
	// Memory is how the node's memory is shared among its relays
	// (internal/membudget), as the agent sets each relay's cgroup and the
	// server tor's MaxMemInQueues.
	Memory membudget.Budget `json:"memory_budget"`
}

// defaultView is `node show --default --json`.
type defaultView struct {
	Settings  map[string]string `json:"settings"`  // the global level
	Effective map[string]string `json:"effective"` // global, else built-in default
}

func (e *env) nodeShow(fs *flag.FlagSet, args []string) error {
	def := fs.Bool("default", false, "the global settings instead of a node")
	asJSON := jsonFlag(fs)
	pos, err := parse(fs, args, 0, 1)
	if err != nil {
		return err
	}
	if *def == (len(pos) == 1) {
		return cmdline.Usagef("give --default or a node ID")
	}
	st, err := e.open(toRead)
	if err != nil {
		return err
	}
	if *def {
		g, _, err := st.Settings(e.ctx, 0)
		if err != nil {
			return err
		}
		if *asJSON {
			return e.json(defaultView{Settings: g, Effective: effective(g, nil)})
		}
		e.printSettings("default settings (global, else built-in):", g, nil)
		return nil
	}
	id, err := nodeID(pos[0])
	if err != nil {
		return err
	}
	return e.showNode(st, id, *asJSON)
}

func (e *env) showNode(st *store.Store, id int64, asJSON bool) error {
	n, err := st.Node(e.ctx, id)
	if err != nil {
		return err
	}
	g, nd, err := st.Settings(e.ctx, id)
	if err != nil {
		return err
	}
	relays, err := st.Relays(e.ctx, id)
	if err != nil {
		return err
	}
	if err := st.Alarms(e.ctx, nil, relays); err != nil {
		return err
	}
	att, err := st.Attestation(e.ctx, id)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return err
	}
	pools, err := st.Pools(e.ctx)
	if err != nil {
		return err
	}
	v := nodeView{Node: n, EKHashHex: hex.EncodeToString(n.EKHash), Settings: nd, RelayList: relays,
		Effective: effective(g, nd), Attestation: att, Memory: resolve.Budget(n)}
	if v.RelayList == nil {
		v.RelayList = []store.Relay{}
	}
	if asJSON {
		return e.json(v)
	}
	e.printNode(&v, pools)
	e.printSettings("settings (node override, else default):", g, nd)
	fmt.Fprintf(e.stdout, "relays (%d):\n", len(relays))
	return e.relayTable(relays)
}

// effective is every setting's resolved value, as text.
func effective(global, node map[string]string) map[string]string {
	eff := settings.Resolve(global, node)
	return map[string]string{
		settings.RelayInterface: eff.RelayInterface, settings.IPv4Gateway: eff.IPv4Gateway,
		settings.IPv6Gateway: eff.IPv6Gateway, settings.DNS: strings.Join(eff.DNS, ","),
		settings.RelayMemoryMB: strconv.Itoa(eff.RelayMemoryMB), settings.MaxRelays: strconv.Itoa(eff.MaxRelays),
		settings.PollIntervalS: strconv.Itoa(eff.PollIntervalS), settings.Family: eff.Family,
		settings.HeartbeatIntervalS: strconv.Itoa(eff.HeartbeatIntervalS),
	}
}

// printNode prints the node's fields; what the node reported (boot id,
// CPU model) is escaped for the terminal.
func (e *env) printNode(v *nodeView, pools []store.Pool) {
	w, n := e.stdout, v.Node
	fmt.Fprintf(w, "node %d\n  state        %s (token epoch %d)\n  ek identity  %s\n", n.ID, n.State, n.TokenEpoch, v.EKHashHex)
	fmt.Fprintf(w, "  ak name      %x\n  first seen   %s\n  last seen    %s\n  attested     %s\n",
		n.AKName, fmtTime(n.FirstSeen), fmtTime(n.LastSeen), fmtTime(n.AttestedAt))
	fmt.Fprintf(w, "  boot id      %s\n  uptime       %ds\n  specs        %d cpus, %d MiB, %s\n",
		termsafe.String(n.BootID), n.UptimeS, n.CPUs, n.MemoryBytes>>20, termsafe.String(n.CPUModel))
	if n.RelaysWanted > n.Relays {
		fmt.Fprintf(w, "  allocation   wants %d, has %d: %s\n", n.RelaysWanted, n.Relays, shortfall(pools))
	}
	m := v.Memory
	switch {
	case m.Total == 0:
		fmt.Fprintf(w, "  memory       no budget: the node has not reported its memory\n")
	case m.PerRelay == 0:
		fmt.Fprintf(w, "  memory       no budget: %d MiB, %d MiB reserved, %d relays\n", m.Total>>20, m.Reserve>>20, m.Relays)
	default:
		fmt.Fprintf(w, "  memory       %d MiB per relay (cgroup memory.max): %d MiB - %d MiB reserved for kernel, agent and tmpfs, / %d relays\n",
			m.PerRelay>>20, m.Total>>20, m.Reserve>>20, m.Relays)
		fmt.Fprintf(w, "  tor queues   MaxMemInQueues %d MB per relay, unless a torrc level sets it\n", m.Queues>>20)
	}
	a := v.Attestation
	fmt.Fprintf(w, "  boot         %s\n", attestedView(a))
	if a == nil || a.Status == store.AttestUnattested {
		return
	}
	fmt.Fprintf(w, "  quoted since %s (PCR digest %s)\n  event log    %s: %s\n", fmtTime(a.At), a.PCRDigest, a.EventLog, termsafe.String(a.LogDetail))
	for _, k := range slices.Sorted(maps.Keys(a.PCRs)) {
		fmt.Fprintf(w, "    pcr %-2d     %s\n", k, a.PCRs[k])
	}
}

// shortfall says why a node has fewer relays than it wants: allocation
// places a relay wherever an IPv4 address is free.
func shortfall(pools []store.Pool) string {
	for _, p := range pools {
		if p.Family() == 4 {
			return "pool full (add one: configsrv pool add CIDR --gateway IP)"
		}
	}
	return "no IPv4 pool (configsrv pool add CIDR --gateway IP)"
}

// printSettings prints each setting's effective value and where it comes
// from: the node, the global level or the built-in default.
func (e *env) printSettings(header string, global, node map[string]string) {
	eff := effective(global, node)
	fmt.Fprintln(e.stdout, header)
	for _, k := range settings.Keys() {
		src := "default"
		if _, ok := node[k]; ok {
			src = "node"
		} else if _, ok := global[k]; ok {
			src = "global"
		}
		fmt.Fprintf(e.stdout, "  %-20s %-24s (%s)\n", k, eff[k], src)
	}
}

// sealingView is the node list's SEALING column: how the agent said it
// seals its vault ("unmeasured" stands out: its relay keys are not
// protected from whoever holds the machine).
func sealingView(n store.Node) string {
	switch {
	case n.Sealing == "":
		return "-"
	case n.Release != "":
		return n.Sealing + " (" + n.Release + ")"
	}
	return n.Sealing
}
