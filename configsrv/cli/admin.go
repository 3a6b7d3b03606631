package cli

import (
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"patela/configsrv/settings"
	"patela/configsrv/store"
	"patela/internal/api"
)

func fmtTime(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}

func (e *env) cmdNode(sub string, args []string) error {
	fs := flag.NewFlagSet("node "+sub, flag.ContinueOnError)
	switch sub {
	case "list":
		asJSON := fs.Bool("json", false, "JSON output")
		if _, err := parse(fs, args, 0, 0); err != nil {
			return err
		}
		st, err := e.openExisting()
		if err != nil {
			return err
		}
		nodes, err := st.Nodes(e.ctx)
		if err != nil {
			return err
		}
		return listing(e, *asJSON, nodes, "ID\tSTATE\tEK\tRELAYS\tFIRST SEEN\tLAST SEEN", func(n store.Node) []string {
			return []string{strconv.FormatInt(n.ID, 10), string(n.State), hex.EncodeToString(n.EKHash)[:16],
				strconv.Itoa(n.Relays), fmtTime(n.FirstSeen), fmtTime(n.LastSeen)}
		})

	case "show":
		asJSON := fs.Bool("json", false, "JSON output")
		id, err := parseNodeID(fs, args)
		if err != nil {
			return err
		}
		return e.nodeShow(id, *asJSON)

	case "enable", "disable", "ban", "remove":
		id, err := parseNodeID(fs, args)
		if err != nil {
			return err
		}
		st, err := e.open()
		if err != nil {
			return err
		}
		target := fmt.Sprintf("node:%d", id)
		if sub == "remove" {
			if err := st.RemoveNode(e.ctx, id); err != nil {
				return err
			}
			if err := e.audit("node.remove", target, ""); err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "node %d removed (its relays, addresses and key bundle freed)\n", id)
			return nil
		}
		state := map[string]api.NodeState{"enable": api.NodeEnabled, "disable": api.NodeDisabled, "ban": api.NodeBanned}[sub]
		if err := st.SetNodeState(e.ctx, id, state); err != nil {
			return err
		}
		if err := e.audit("node."+sub, target, ""); err != nil {
			return err
		}
		fmt.Fprintf(e.stdout, "node %d %s\n", id, state)
		return nil

	case "set", "unset":
		def := fs.Bool("default", false, "set the global default instead of a node's value")
		pos, err := parse(fs, args, 1, 3)
		if err != nil {
			return err
		}
		form := "ID KEY"
		if *def {
			form = "--default KEY"
		}
		if sub == "set" {
			form += " VALUE"
		}
		if len(pos) != len(strings.Fields(strings.TrimPrefix(form, "--default"))) {
			return usagef("usage: node %s %s", sub, form)
		}
		var id int64
		if !*def {
			if id, err = nodeID(pos[0]); err != nil {
				return err
			}
			pos = pos[1:]
		}
		key := pos[0]
		scope, target := "default", "global"
		if id != 0 {
			scope, target = fmt.Sprintf("node %d", id), fmt.Sprintf("node:%d", id)
		}
		if sub == "unset" {
			if _, err := settings.Normalize(key, ""); err != nil && strings.HasPrefix(err.Error(), "unknown setting") {
				return err
			}
			st, err := e.open()
			if err != nil {
				return err
			}
			if err := st.UnsetSetting(e.ctx, id, key); err != nil {
				return err
			}
			if err := e.audit("setting.unset", target, key); err != nil {
				return err
			}
			fmt.Fprintf(e.stdout, "%s: %s unset\n", scope, key)
			return nil
		}
		val, err := settings.Normalize(key, pos[1])
		if err != nil {
			return err
		}
		st, err := e.open()
		if err != nil {
			return err
		}
		if err := st.SetSetting(e.ctx, id, key, val); err != nil {
			return err
		}
		if err := e.audit("setting.set", target, key+"="+val); err != nil {
			return err
		}
		fmt.Fprintf(e.stdout, "%s: %s = %s\n", scope, key, val)
		return nil
	}
	return usagef("unknown command node %s", sub)
}

type nodeView struct {
	*store.Node
	EKHashHex string            `json:"ek_sha256"`
	Settings  map[string]string `json:"settings"`  // node overrides
	Effective map[string]string `json:"effective"` // resolved values
	RelayList []store.Relay     `json:"relay_list"`
}

func (e *env) nodeShow(id int64, asJSON bool) error {
	st, err := e.openExisting()
	if err != nil {
		return err
	}
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
	eff := settings.Resolve(g, nd)
	v := nodeView{Node: n, EKHashHex: hex.EncodeToString(n.EKHash), Settings: nd, RelayList: relays,
		Effective: map[string]string{
			settings.RelayInterface: eff.RelayInterface, settings.IPv4Gateway: eff.IPv4Gateway,
			settings.IPv6Gateway: eff.IPv6Gateway, settings.DNS: strings.Join(eff.DNS, ","),
			settings.RelayMemoryMB: strconv.Itoa(eff.RelayMemoryMB), settings.MaxRelays: strconv.Itoa(eff.MaxRelays),
			settings.PollIntervalS: strconv.Itoa(eff.PollIntervalS),
		}}
	if v.RelayList == nil {
		v.RelayList = []store.Relay{}
	}
	if asJSON {
		return e.json(v)
	}
	w := e.stdout
	fmt.Fprintf(w, "node %d\n  state        %s\n  ek sha256    %s\n", n.ID, n.State, v.EKHashHex)
	fmt.Fprintf(w, "  ak name      %x\n  first seen   %s\n  last seen    %s\n  attested     %s\n",
		n.AKName, fmtTime(n.FirstSeen), fmtTime(n.LastSeen), fmtTime(n.AttestedAt))
	fmt.Fprintf(w, "  boot id      %s\n  uptime       %ds\n  specs        %d cpus, %d MiB, %s\n",
		n.BootID, n.UptimeS, n.CPUs, n.MemoryBytes>>20, n.CPUModel)
	fmt.Fprintln(w, "settings (node override, else default):")
	keys := settings.Keys()
	for _, k := range keys {
		src := "default"
		if _, ok := nd[k]; ok {
			src = "node"
		} else if _, ok := g[k]; ok {
			src = "global"
		}
		fmt.Fprintf(w, "  %-16s %-24s (%s)\n", k, v.Effective[k], src)
	}
	fmt.Fprintf(w, "relays (%d):\n", len(relays))
	return e.relayTable(relays)
}

func (e *env) relayTable(relays []store.Relay) error {
	return listing(e, false, relays, relayHeader, relayRow)
}

const relayHeader = "NAME\tNODE\tUID\tIPV4\tIPV6\tORPORT\tSTATE\tFINGERPRINT"

func relayRow(r store.Relay) []string {
	orDash := func(s string) string {
		if s == "" {
			return "-"
		}
		return s
	}
	v6 := ""
	if r.IPv6.IsValid() {
		v6 = r.IPv6.String()
	}
	return []string{r.Name, strconv.FormatInt(r.NodeID, 10), strconv.Itoa(r.UID),
		r.IPv4.String(), orDash(v6), strconv.Itoa(r.ORPort), orDash(r.State), orDash(r.Fingerprint)}
}

func (e *env) cmdRelayList(args []string) error {
	fs := flag.NewFlagSet("relay list", flag.ContinueOnError)
	asJSON := fs.Bool("json", false, "JSON output")
	node := fs.String("node", "", "only this node's relays")
	if _, err := parse(fs, args, 0, 0); err != nil {
		return err
	}
	var id int64
	var err error
	if *node != "" {
		if id, err = nodeID(*node); err != nil {
			return err
		}
	}
	st, err := e.openExisting()
	if err != nil {
		return err
	}
	if id != 0 {
		if _, err := st.Node(e.ctx, id); err != nil {
			return err
		}
	}
	relays, err := st.Relays(e.ctx, id)
	if err != nil {
		return err
	}
	return listing(e, *asJSON, relays, relayHeader, relayRow)
}

func (e *env) cmdPool(sub string, args []string) error {
	fs := flag.NewFlagSet("pool "+sub, flag.ContinueOnError)
	switch sub {
	case "add":
		gw := fs.String("gateway", "", "gateway address inside the pool")
		pos, err := parse(fs, args, 1, 1)
		if err != nil {
			return err
		}
		cidr, err := netip.ParsePrefix(pos[0])
		if err != nil {
			return fmt.Errorf("%q is not a CIDR prefix", pos[0])
		}
		if *gw == "" {
			return usagef("pool add needs --gateway IP")
		}
		g, err := netip.ParseAddr(*gw)
		if err != nil {
			return fmt.Errorf("gateway %q is not an IP address", *gw)
		}
		if err := store.CheckPool(cidr, g); err != nil {
			return err
		}
		st, err := e.open()
		if err != nil {
			return err
		}
		if err := st.AddPool(e.ctx, cidr, g, time.Now()); err != nil {
			return err
		}
		if err := e.audit("pool.add", cidr.String(), "gateway "+g.String()); err != nil {
			return err
		}
		fmt.Fprintf(e.stdout, "pool %s added (gateway %s)\n", cidr, g)
		return nil

	case "list":
		asJSON := fs.Bool("json", false, "JSON output")
		if _, err := parse(fs, args, 0, 0); err != nil {
			return err
		}
		st, err := e.openExisting()
		if err != nil {
			return err
		}
		pools, err := st.Pools(e.ctx)
		if err != nil {
			return err
		}
		return listing(e, *asJSON, pools, "CIDR\tFAMILY\tGATEWAY\tUSED\tSIZE", func(p store.Pool) []string {
			size := strconv.FormatUint(p.Size, 10)
			if p.Size == 1<<63 {
				size = "huge"
			}
			return []string{p.CIDR.String(), "IPv" + strconv.Itoa(p.Family()), p.Gateway.String(),
				strconv.Itoa(p.Used), size}
		})

	case "remove":
		pos, err := parse(fs, args, 1, 1)
		if err != nil {
			return err
		}
		cidr, err := netip.ParsePrefix(pos[0])
		if err != nil {
			return fmt.Errorf("%q is not a CIDR prefix", pos[0])
		}
		st, err := e.open()
		if err != nil {
			return err
		}
		if err := st.RemovePool(e.ctx, cidr.Masked()); err != nil {
			if errors.Is(err, store.ErrInUse) {
				return fmt.Errorf("%w; shrink or remove the nodes using it first", err)
			}
			return err
		}
		if err := e.audit("pool.remove", cidr.Masked().String(), ""); err != nil {
			return err
		}
		fmt.Fprintf(e.stdout, "pool %s removed\n", cidr.Masked())
		return nil
	}
	return usagef("unknown command pool %s", sub)
}

func (e *env) cmdAudit(args []string) error {
	fs := flag.NewFlagSet("audit", flag.ContinueOnError)
	asJSON := fs.Bool("json", false, "JSON output")
	limit := fs.Int("limit", 50, "rows to show, newest first")
	if _, err := parse(fs, args, 0, 0); err != nil {
		return err
	}
	if *limit < 1 {
		return fmt.Errorf("--limit %d: must be at least 1", *limit)
	}
	st, err := e.openExisting()
	if err != nil {
		return err
	}
	rows, err := st.AuditLog(e.ctx, *limit)
	if err != nil {
		return err
	}
	return listing(e, *asJSON, rows, "TIME\tACTOR\tACTION\tTARGET\tDETAILS", func(r store.AuditEntry) []string {
		return []string{r.Time.Format(time.RFC3339), r.Actor, r.Action, r.Target, r.Details}
	})
}
