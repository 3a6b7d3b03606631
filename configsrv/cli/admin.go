package cli

import (
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"patela/configsrv/store"
	"patela/internal/cmdline"
)

func (e *env) relayTable(relays []store.Relay) error {
	return listing(e, false, relays, relayHeader, relayRow)
}

const relayHeader = "NAME\tNODE\tUID\tIPV4\tIPV6\tORPORT\tSTATE\tFINGERPRINT\tTORRC\tNOTES"

// torrcState says whether a relay runs its served torrc, by its last
// heartbeat: served, differs, or - (its agent does not say).
func torrcState(r store.Relay) string {
	switch {
	case r.TorrcApplied == "":
		return "-"
	case r.TorrcDiffers:
		return "differs"
	}
	return "served"
}

// alarm is the ALARM column: the alarms, or - for none.
func alarm(a []string) string {
	if len(a) == 0 {
		return "-"
	}
	return strings.Join(a, "; ")
}

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
		r.IPv4.String(), orDash(v6), strconv.Itoa(r.ORPort), orDash(r.State), orDash(r.Fingerprint),
		torrcState(r), orDash(relayNotes(r))}
}

// relayNotes is what the node reports of the relay's defences, worded
// for the administrator.
func relayNotes(r store.Relay) string {
	notes := append([]string(nil), r.Alarms...)
	if r.KeysUnsaved {
		notes = append(notes, "keys not saved: a reboot now would lose this relay's identity")
	}
	if len(r.RefusedOptions) > 0 {
		notes = append(notes, "refused by the node: "+strings.Join(r.RefusedOptions, ", "))
	}
	// The names come from the node (the API checks them; the database
	// might not have): no control characters reach the terminal.
	return sanitize(strings.Join(notes, "; "))
}

func (e *env) relayList(fs *flag.FlagSet, args []string) error {
	node := fs.String("node", "", "only the relays of node `ID`")
	return list(e, fs, args, func(st *store.Store) ([]store.Relay, error) {
		var id int64
		if *node != "" {
			var err error
			if id, err = nodeID(*node); err != nil {
				return nil, err
			}
			if _, err := st.Node(e.ctx, id); err != nil {
				return nil, err
			}
		}
		rs, err := st.Relays(e.ctx, id)
		if err != nil {
			return nil, err
		}
		return rs, st.Alarms(e.ctx, nil, rs)
	}, relayHeader, relayRow)
}

// parseCIDR parses the one positional argument of a pool command.
func parseCIDR(fs *flag.FlagSet, args []string) (netip.Prefix, error) {
	pos, err := parse(fs, args, 1, 1)
	if err != nil {
		return netip.Prefix{}, err
	}
	cidr, err := netip.ParsePrefix(pos[0])
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is not a CIDR prefix", pos[0])
	}
	return cidr, nil
}

func (e *env) poolAdd(fs *flag.FlagSet, args []string) error {
	gw := fs.String("gateway", "", "the gateway `IP`, inside the pool")
	cidr, err := parseCIDR(fs, args)
	if err != nil {
		return err
	}
	if *gw == "" {
		return cmdline.Usagef("pool add needs --gateway IP")
	}
	g, err := netip.ParseAddr(*gw)
	if err != nil {
		return fmt.Errorf("gateway %q is not an IP address", *gw)
	}
	if err := store.CheckPool(cidr, g); err != nil {
		return err
	}
	st, err := e.open(toWrite)
	if err != nil {
		return err
	}
	return e.done(st.AddPool(e.ctx, cidr, g, time.Now()), "pool.add", cidr.String(), "gateway "+g.String(),
		fmt.Sprintf("pool %s added (gateway %s)", cidr, g))
}

func (e *env) poolList(fs *flag.FlagSet, args []string) error {
	get := func(st *store.Store) ([]store.Pool, error) { return st.Pools(e.ctx) }
	return list(e, fs, args, get, "CIDR\tFAMILY\tGATEWAY\tUSED\tSIZE", func(p store.Pool) []string {
		size := strconv.FormatUint(p.Size, 10)
		if p.Size == 1<<63 {
			size = "huge"
		}
		return []string{p.CIDR.String(), "IPv" + strconv.Itoa(p.Family()), p.Gateway.String(),
			strconv.Itoa(p.Used), size}
	})
}

func (e *env) poolRemove(fs *flag.FlagSet, args []string) error {
	cidr, err := parseCIDR(fs, args)
	if err != nil {
		return err
	}
	cidr = cidr.Masked()
	st, err := e.open(toWrite)
	if err != nil {
		return err
	}
	err = st.RemovePool(e.ctx, cidr)
	if errors.Is(err, store.ErrInUse) {
		err = fmt.Errorf("%w; shrink or remove the nodes using it first", err)
	}
	return e.done(err, "pool.remove", cidr.String(), "", fmt.Sprintf("pool %s removed", cidr))
}

func (e *env) auditLog(fs *flag.FlagSet, args []string) error {
	limit := fs.Int("limit", 50, "show the newest `N` rows")
	return list(e, fs, args, func(st *store.Store) ([]store.AuditEntry, error) {
		if *limit < 1 {
			return nil, fmt.Errorf("--limit %d: must be at least 1", *limit)
		}
		return st.AuditLog(e.ctx, *limit)
	}, "TIME\tACTOR\tACTION\tTARGET\tDETAILS", func(r store.AuditEntry) []string {
		return []string{r.Time.Format(time.RFC3339), r.Actor, r.Action, r.Target, r.Details}
	})
}
