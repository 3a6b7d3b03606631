package torrc

import (
	"strings"
	"testing"
)

// cascades are global → node → relay torrcs as an admin would import them,
// optionally with the system's own managed lines, and the resolved torrc
// Merge must give.
var cascades = []struct {
	name                string
	system              string // managed lines the server adds (parsed with Parse)
	global, node, relay string // admin levels (parsed with ParseUser)
	want                string
}{
	{name: "global only",
		global: "ContactInfo ops@example.org\nExitRelay 1\nExitPolicy accept *:80\nExitPolicy accept *:443\nExitPolicy reject *:*\n",
		want:   "ContactInfo ops@example.org\nExitRelay 1\nExitPolicy accept *:80\nExitPolicy accept *:443\nExitPolicy reject *:*\n"},
	{name: "all levels empty", want: ""},
	{name: "node replaces a single option",
		global: "ContactInfo ops@example.org\nExitRelay 1\n", node: "ContactInfo rack7@example.org\n",
		want: "ContactInfo rack7@example.org\nExitRelay 1\n"},
	{name: "relay replaces a list",
		global: "ExitPolicy accept *:80\nExitPolicy reject *:*\n", relay: "ExitPolicy reject *:*\n",
		want: "ExitPolicy reject *:*\n"},
	{name: "relay appends to a list",
		global: "ExitPolicy accept *:80\n", relay: "+ExitPolicy accept *:443\n",
		want: "ExitPolicy accept *:80\nExitPolicy accept *:443\n"},
	{name: "node removes, relay untouched",
		global: "ExitPolicy accept *:80\nContactInfo a@example.org\n", node: "/ExitPolicy\n",
		want: "ContactInfo a@example.org\n"},
	{name: "node removes, relay sets again",
		global: "ExitPolicy accept *:80\nContactInfo a@example.org\n", node: "/ExitPolicy\n", relay: "ExitPolicy reject *:*\n",
		want: "ExitPolicy reject *:*\nContactInfo a@example.org\n"},
	{name: "lines of one level add up, next level replaces them all",
		global: "ExitPolicy accept *:22\nExitPolicy accept *:80\n", node: "ExitPolicy accept *:443\nExitPolicy reject *:*\n",
		want: "ExitPolicy accept *:443\nExitPolicy reject *:*\n"},
	{name: "append then plain in one level: both add",
		global: "ExitPolicy accept *:22\n", node: "+ExitPolicy accept *:80\nExitPolicy reject *:*\n",
		want: "ExitPolicy accept *:22\nExitPolicy accept *:80\nExitPolicy reject *:*\n"},
	{name: "plain then append in one level: replace then add",
		global: "ExitPolicy accept *:22\n", node: "ExitPolicy accept *:80\n+ExitPolicy reject *:*\n",
		want: "ExitPolicy accept *:80\nExitPolicy reject *:*\n"},
	{name: "append at every level",
		global: "MyFamily $0123456789ABCDEF0123456789ABCDEF01234567\n",
		node:   "+MyFamily $1123456789ABCDEF0123456789ABCDEF01234567\n",
		relay:  "+MyFamily $2123456789ABCDEF0123456789ABCDEF01234567\n",
		want: "MyFamily $0123456789ABCDEF0123456789ABCDEF01234567\nMyFamily $1123456789ABCDEF0123456789ABCDEF01234567\n" +
			"MyFamily $2123456789ABCDEF0123456789ABCDEF01234567\n"},
	{name: "replace in node, append in relay",
		global: "ExitPolicy accept *:22\n", node: "ExitPolicy accept *:80\n", relay: "+ExitPolicy reject *:*\n",
		want: "ExitPolicy accept *:80\nExitPolicy reject *:*\n"},
	{name: "remove and set again within one level",
		global: "ContactInfo a@example.org\n", node: "/ContactInfo\nContactInfo b@example.org\n",
		want: "ContactInfo b@example.org\n"},
	{name: "remove something never set",
		global: "ExitRelay 1\n", relay: "/ExitPolicy\n", want: "ExitRelay 1\n"},
	{name: "alias and canonical name are one option",
		global: "MaxConn 8192\n", relay: "ConnLimit 4096\n", want: "ConnLimit 4096\n"},
	{name: "case-insensitive names are one option",
		global: "contactinfo a@example.org\n", node: "CONTACTINFO b@example.org\n", want: "ContactInfo b@example.org\n"},
	{name: "NumCPU alias",
		global: "NumCPU 2\n", node: "NumCPUs 1\n", want: "NumCPUs 1\n"},
	{name: "SearchDomains alias",
		global: "SearchDomains 1\n", want: "ServerDNSSearchDomains 1\n"},
	{name: "order is first appearance across levels",
		global: "ExitRelay 1\nContactInfo a@example.org\n", node: "NumCPUs 2\n", relay: "ContactInfo c@example.org\nExitRelay 0\n",
		want: "ExitRelay 0\nContactInfo c@example.org\nNumCPUs 2\n"},
	{name: "bandwidth per node",
		global: "RelayBandwidthRate 10 MBytes\nRelayBandwidthBurst 20 MBytes\n", node: "RelayBandwidthRate 15 MBytes\n",
		want: "RelayBandwidthRate 15 MBytes\nRelayBandwidthBurst 20 MBytes\n"},
	{name: "accounting",
		global: "AccountingMax 10 TBytes\nAccountingStart month 1 00:00\n", relay: "AccountingRule sum\nAccountingMax 2 TBytes\n",
		want: "AccountingMax 2 TBytes\nAccountingStart month 1 00:00\nAccountingRule sum\n"},
	{name: "IPv6 exit",
		global: "ExitRelay 1\nIPv6Exit 1\nExitPolicy accept6 *:443\nExitPolicy accept *:443\nExitPolicy reject *:*\n",
		node:   "IPv6Exit 0\n",
		want:   "ExitRelay 1\nIPv6Exit 0\nExitPolicy accept6 *:443\nExitPolicy accept *:443\nExitPolicy reject *:*\n"},
	{name: "reduced exit policy, relay overrides with its own",
		global: "ExitRelay 1\nReducedExitPolicy 1\n", relay: "ReducedExitPolicy 0\nExitPolicy accept *:443, reject *:*\n",
		want: "ExitRelay 1\nReducedExitPolicy 0\nExitPolicy accept *:443, reject *:*\n"},
	{name: "non-exit relay",
		global: "ExitRelay 1\nExitPolicy accept *:*\n", relay: "ExitRelay 0\nExitPolicy reject *:*\n",
		want: "ExitRelay 0\nExitPolicy reject *:*\n"},
	{name: "quoted value with a hash",
		global: "ContactInfo \"ops # team <ops@example.org>\" # who to call\n",
		want:   "ContactInfo \"ops # team <ops@example.org>\"\n"},
	{name: "continued exit policy",
		global: "ExitPolicy accept *:53,\\\n  accept *:80,\\\n  # TLS\n  accept *:443,\\\n  reject *:*\n",
		want:   "ExitPolicy accept *:53,  accept *:80,    accept *:443,  reject *:*\n"},
	{name: "comments and blank lines everywhere",
		global: "# global defaults\n\nExitRelay 1 # exits\n\n# policy\nExitPolicy reject *:25\n",
		node:   "\n# nothing but a comment\n",
		relay:  "   # relay\n+ExitPolicy accept *:*\n",
		want:   "ExitRelay 1\nExitPolicy reject *:25\nExitPolicy accept *:*\n"},
	{name: "memory per relay",
		global: "MaxMemInQueues 512 MB\nAvoidDiskWrites 1\n", relay: "MaxMemInQueues 256 MB\n",
		want: "MaxMemInQueues 256 MB\nAvoidDiskWrites 1\n"},
	{name: "booleans stay as written",
		global: "AvoidDiskWrites 1\nExitPolicyRejectPrivate 1\nExitPolicyRejectLocalInterfaces 0\n", node: "AvoidDiskWrites 0\n",
		want: "AvoidDiskWrites 0\nExitPolicyRejectPrivate 1\nExitPolicyRejectLocalInterfaces 0\n"},
	{name: "statistics",
		global: "OverloadStatistics 0\nHeartbeatPeriod 1 hour\n", node: "HeartbeatPeriod 30 minutes\n",
		want: "OverloadStatistics 0\nHeartbeatPeriod 30 minutes\n"},
	{name: "DirPort everywhere but one relay",
		global: "DirPort 9030\n", relay: "DirPort 80\n", want: "DirPort 80\n"},
	{name: "system lines with one v4 relay",
		system: "Nickname relay1\nORPort 192.0.2.10:9001\nAddress 192.0.2.10\nOutboundBindAddress 192.0.2.10\n",
		global: "ContactInfo ops@example.org\nExitRelay 1\n", relay: "ExitPolicy accept *:443\n",
		want: "Nickname relay1\nORPort 192.0.2.10:9001\nAddress 192.0.2.10\nOutboundBindAddress 192.0.2.10\n" +
			"ContactInfo ops@example.org\nExitRelay 1\nExitPolicy accept *:443\n"},
	{name: "system lines with v4 and v6",
		system: "Nickname relay2\nORPort 192.0.2.11:9001\nORPort [2001:db8::11]:9001\nAddress 192.0.2.11\nAddress 2001:db8::11\n" +
			"OutboundBindAddress 192.0.2.11\nOutboundBindAddress [2001:db8::11]\n",
		global: "IPv6Exit 1\n", node: "ExitPolicy accept6 *:*\n",
		want: "Nickname relay2\nORPort 192.0.2.11:9001\nORPort [2001:db8::11]:9001\nAddress 192.0.2.11\nAddress 2001:db8::11\n" +
			"OutboundBindAddress 192.0.2.11\nOutboundBindAddress [2001:db8::11]\nIPv6Exit 1\nExitPolicy accept6 *:*\n"},
	{name: "relay with DirCache off and a family id list",
		system: "Nickname relay3\nORPort 198.51.100.3:443\n",
		global: "DirCache 0\nMyFamily $0123456789ABCDEF0123456789ABCDEF01234567\n", relay: "/MyFamily\n",
		want: "Nickname relay3\nORPort 198.51.100.3:443\nDirCache 0\n"},
	{name: "tabs and odd case in names",
		global: "\tEXITRELAY\t1\n", node: "exitpolicy\treject *:*\n", want: "ExitRelay 1\nExitPolicy reject *:*\n"},
	{name: "UTF-8 contact",
		global: "ContactInfo Zoë <zoe@example.org>\n", want: "ContactInfo Zoë <zoe@example.org>\n"},
}

func levels(t testing.TB, system, global, node, relay string) []Level {
	t.Helper()
	var out []Level
	if system != "" {
		c, err := Parse([]byte(system))
		if err != nil {
			t.Fatalf("system: %v", err)
		}
		out = append(out, Level{"system", c})
	}
	for _, l := range []struct{ name, src string }{{"global", global}, {"node", node}, {"relay", relay}} {
		c, err := ParseUser([]byte(l.src))
		if err != nil {
			t.Fatalf("%s: %v", l.name, err)
		}
		out = append(out, Level{l.name, c})
	}
	return out
}

// Each cascade resolves as written, tor accepts the result, and tor's own
// layering (defaults torrc < torrc < command line) of the same three levels
// ends up with exactly the configuration Merge gives.
func TestCascadesWithTor(t *testing.T) {
	if len(cascades) < 30 {
		t.Fatalf("only %d cascades", len(cascades))
	}
	for _, tc := range cascades {
		t.Run(tc.name, func(t *testing.T) {
			lv := levels(t, tc.system, tc.global, tc.node, tc.relay)
			m := Merge(lv...)
			if got := string(m.Render()); got != tc.want {
				t.Fatalf("Merge rendered\n%s\nwant\n%s", got, tc.want)
			}
			base, dir := baseLevel(t)
			verifyConfig(t, dir, Merge(append(lv, base)...).Render())

			// tor's layering: system lines and the harness's go on the
			// command line after the relay level; they share no option
			// with the admin levels, so where they go does not matter.
			n := len(lv)
			extra := cmdline(base.Config)
			if tc.system != "" {
				extra = append(cmdline(lv[0].Config), extra...)
			}
			layered := dumpConfig(t, dir, lv[n-3].Config.Render(), lv[n-2].Config.Render(),
				append(cmdline(lv[n-1].Config), extra...)...)
			merged := dumpConfig(t, dir, nil, Merge(lv[n-3:]...).Render(), extra...)
			if layered != merged {
				t.Errorf("tor's layering differs from Merge:\n%s", diffLines(layered, merged))
			}
		})
	}
}

// diffLines lists the lines only one of two texts has.
func diffLines(a, b string) string {
	in := func(s string) map[string]bool {
		m := map[string]bool{}
		for _, l := range strings.Split(s, "\n") {
			m[l] = true
		}
		return m
	}
	ma, mb := in(a), in(b)
	var out strings.Builder
	for _, l := range strings.Split(a, "\n") {
		if !mb[l] {
			out.WriteString("- " + l + "\n")
		}
	}
	for _, l := range strings.Split(b, "\n") {
		if !ma[l] {
			out.WriteString("+ " + l + "\n")
		}
	}
	return out.String()
}
