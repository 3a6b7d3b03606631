package resolve

import (
	"fmt"
	"net/netip"
	"strings"

	"patela/configsrv/settings"
	"patela/configsrv/store"
	"patela/internal/publicdns"
	"patela/internal/torrc"
)

// UnsafeError is a relay configuration the server will not serve: it
// would make a relay a bad citizen of the Tor network. The message says
// what is wrong and at which level to fix it.
type UnsafeError struct {
	Relay string
	Msg   string
}

func (e *UnsafeError) Error() string {
	if e.Relay == representativeName {
		return "a relay there " + e.Msg
	}
	return "relay " + e.Relay + " " + e.Msg
}

// dnsSource is where a node's dns setting comes from, for messages.
type dnsSource struct {
	dns  []string
	from string // "the global dns setting", "node 7's dns setting", ""
}

func dnsOf(global, node map[string]string, nodeID int64) dnsSource {
	d := dnsSource{dns: settings.Resolve(global, node).DNS}
	switch {
	case node[settings.DNS] != "":
		d.from = fmt.Sprintf("node %d's dns setting (configsrv node set %d dns ...)", nodeID, nodeID)
	case global[settings.DNS] != "":
		d.from = "the global dns setting (configsrv node set --default dns ...)"
	}
	return d
}

// The safety rules, which the server applies to every relay it serves
// and every edit before it is stored:
//
//   - checkContact: every relay has a ContactInfo (the Tor network asks
//     it of operators of several relays, and of exits);
//   - checkDNS: an exit does not resolve through a big public resolver,
//     whose operator would see the DNS queries of every exit using it
//     (publicdns).
func check(levels []torrc.Level, c *torrc.Config, r *store.Relay, dns dnsSource) error {
	if err := checkContact(levels, c, r); err != nil {
		return err
	}
	return checkDNS(c, r, dns)
}

func checkContact(levels []torrc.Level, c *torrc.Config, r *store.Relay) error {
	if len(c.Values("ContactInfo")) == 0 {
		return &UnsafeError{r.Name, "has no ContactInfo, which every relay needs: " + contactWhere(levels, r)}
	}
	return nil
}

func checkDNS(c *torrc.Config, r *store.Relay, dns dnsSource) error {
	if !torrc.IsExit(c) {
		return nil
	}
	for _, s := range dns.dns {
		a, err := netip.ParseAddr(s)
		if err != nil {
			continue
		}
		if op, public := publicdns.Operator(a); public {
			return &UnsafeError{r.Name, fmt.Sprintf("is an exit and %s names %s (%s), a public resolver that would see "+
				"every DNS query of the exits using it; give the node a resolver of its own", dns.from, s, op)}
		}
	}
	return nil
}

// contactWhere says which levels lack ContactInfo, or remove it.
func contactWhere(levels []torrc.Level, r *store.Relay) string {
	var removed []string
	for _, lv := range levels {
		if lv.Config == nil {
			continue
		}
		for _, l := range lv.Config.Lines {
			if l.Key == "ContactInfo" && l.Op == torrc.OpRemove {
				removed = append(removed, levelName(lv.Name, r))
				break
			}
		}
	}
	if len(removed) > 0 {
		return "/ContactInfo at " + strings.Join(removed, " and ") + " removes it"
	}
	return fmt.Sprintf("none of %s, %s and %s sets it (set it at the global level: configsrv torrc import FILE --default)",
		levelName(LevelGlobal, r), levelName(LevelNode, r), levelName(LevelRelay, r))
}

func levelName(level string, r *store.Relay) string {
	switch level {
	case LevelNode:
		if r.NodeID == 0 {
			return "the node level"
		}
		return fmt.Sprintf("node %d's torrc", r.NodeID)
	case LevelRelay:
		if r.Name == representativeName {
			return "the relay level"
		}
		return "relay " + r.Name + "'s torrc"
	}
	return "the global torrc"
}
