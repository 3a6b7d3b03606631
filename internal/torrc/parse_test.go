package torrc

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

// kv is a compact expected line: op prefix + key, value, source line.
type kv struct {
	key, value string
	line       int
}

func lines(c *Config) []kv {
	var out []kv
	for _, l := range c.Lines {
		out = append(out, kv{l.Op.prefix() + l.Key, l.Value, l.Line})
	}
	return out
}

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		name, src string
		want      []kv
	}{
		{"empty", "", nil},
		{"only comments and blanks", "# a\n\n   # b\n\t\n", nil},
		{"keys are case-insensitive and canonicalised",
			"contactinfo me@example.org\nEXITRELAY 1\nexitPolicy accept *:80\n",
			[]kv{{"ContactInfo", "me@example.org", 1}, {"ExitRelay", "1", 2}, {"ExitPolicy", "accept *:80", 3}}},
		{"values verbatim, booleans as written",
			"ContactInfo Mixed CASE  two  spaces\nIPv6Exit 1\nAvoidDiskWrites 0\n",
			[]kv{{"ContactInfo", "Mixed CASE  two  spaces", 1}, {"IPv6Exit", "1", 2}, {"AvoidDiskWrites", "0", 3}}},
		{"trailing comment and blanks",
			"ExitPolicy accept *:443   # https\nNumCPUs 2\t\n",
			[]kv{{"ExitPolicy", "accept *:443", 1}, {"NumCPUs", "2", 2}}},
		{"comment glued to the value", "ContactInfo a#b\n", []kv{{"ContactInfo", "a", 1}}},
		{"leading blanks and tabs", "   \tExitRelay\t\t1\n", []kv{{"ExitRelay", "1", 1}}},
		{"CRLF line ends", "ExitRelay 1\r\nContactInfo x\r\n", []kv{{"ExitRelay", "1", 1}, {"ContactInfo", "x", 2}}},
		{"no final newline", "ExitRelay 1", []kv{{"ExitRelay", "1", 1}}},
		{"ops", "+ExitPolicy accept *:80\n/ContactInfo\n/ExitPolicy   # clear\n",
			[]kv{{"+ExitPolicy", "accept *:80", 1}, {"/ContactInfo", "", 2}, {"/ExitPolicy", "", 3}}},
		{"aliases map to tor's option",
			"MaxConn 5000\nNumCPU 2\nExitNode {us}\nResolvConf /etc/resolv.conf\nBandwidthRateBytes 1 MB\n",
			[]kv{{"ConnLimit", "5000", 1}, {"NumCPUs", "2", 2}, {"ExitNodes", "{us}", 3},
				{"ServerDNSResolvConfFile", "/etc/resolv.conf", 4}, {"BandwidthRate", "1 MB", 5}}},
		{"quoted value kept with its quotes",
			"ContactInfo \"a # not a comment\" # a comment\nContactInfo \"tab\\there \\x41\\101 \\\"q\\\"\"\n",
			[]kv{{"ContactInfo", `"a # not a comment"`, 1}, {"ContactInfo", `"tab\there \x41\101 \"q\""`, 2}}},
		{"continuation joins lines",
			"ExitPolicy accept *:80,\\\n  accept *:443,\\\n  reject *:*\nNumCPUs 1\n",
			[]kv{{"ExitPolicy", "accept *:80,  accept *:443,  reject *:*", 1}, {"NumCPUs", "1", 4}}},
		{"comment lines inside a continuation are dropped",
			"ExitPolicy accept *:80,\\\n# web only for now\n  reject *:*\nNumCPUs 1\n",
			[]kv{{"ExitPolicy", "accept *:80,  reject *:*", 1}, {"NumCPUs", "1", 4}}},
		// tor quirk: once a value continues, a comment swallows its newline,
		// so the line after it continues the value too.
		{"a comment after a continuation continues the value",
			"ContactInfo a \\\nb # note\nc\nNumCPUs 1\n",
			[]kv{{"ContactInfo", "a b c", 1}, {"NumCPUs", "1", 4}}},
		{"continuation right after the name", "ContactInfo\\\n x\nNumCPUs 1\n",
			[]kv{{"ContactInfo", "x", 1}, {"NumCPUs", "1", 3}}},
		{"backslash not before a newline is kept", `ContactInfo a\b` + "\n", []kv{{"ContactInfo", `a\b`, 1}}},
		{"line numbers count every newline", "\n\n# c\nExitRelay 1\n \t\n\nContactInfo x\\\ny\nNumCPUs 1",
			[]kv{{"ExitRelay", "1", 4}, {"ContactInfo", "xy", 7}, {"NumCPUs", "1", 9}}},
		{"managed options are fine for the system",
			"Nickname relay1\nORPort 192.0.2.10:9001\nDataDirectory /var/lib/tor-instances/relay1\nUser _tor-relay1\nLog notice stdout\n",
			[]kv{{"Nickname", "relay1", 1}, {"ORPort", "192.0.2.10:9001", 2}, {"DataDirectory", "/var/lib/tor-instances/relay1", 3},
				{"User", "_tor-relay1", 4}, {"Log", "notice stdout", 5}}},
		{"UTF-8 values", "ContactInfo Zoë <zoe@example.org> ✓\n", []kv{{"ContactInfo", "Zoë <zoe@example.org> ✓", 1}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse([]byte(tc.src))
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if got := lines(c); !slices.Equal(got, tc.want) {
				t.Errorf("Parse(%q)\n got %v\nwant %v", tc.src, got, tc.want)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	for _, tc := range []struct {
		name, src string
		user      bool
		line      int
		msg       string
	}{
		{"no value", "ExitRelay 1\nContactInfo\n", false, 2, "ContactInfo has no value"},
		{"empty quoted value", "ContactInfo \"\"  # none\n", false, 1, "ContactInfo has no value"},
		{"byte order mark", "\ufeffContactInfo x\n", false, 1, "byte order mark before \"ContactInfo\""},
		{"no value but a comment", "ContactInfo   # later\n", false, 1, "ContactInfo has no value"},
		{"no value after continuation", "NumCPUs 1\nContactInfo \\\n# c\n\n", false, 2, "ContactInfo has no value"},
		{"continuation at the start of a line", "NumCPUs 1\n\\\nContactInfo x\n", false, 2, "missing option name"},
		{"unknown option", "ExitRelay 1\n\nExitRelays 1\n", false, 3, `unknown option "ExitRelays"`},
		{"prefix abbreviations are not taken", "ContactInf x\n", false, 1, `unknown option "ContactInf"`},
		{"command-line-only alias", "l notice stdout\n", false, 1, "command-line abbreviation of Log"},
		{"internal option", "__ControlPort 9051\n", false, 1, "__ControlPort is an internal tor option"},
		{"internal option appended", "+__OwningControllerProcess 1\n", false, 1, "internal tor option"},
		{"include", "ExitRelay 1\n%include /etc/tor/torrc.d\n", false, 2, "%include is not supported"},
		{"obsolete alias", "AllowUnverifiedNodes middle\n", false, 1, "obsolete"},
		{"remove with a value", "/ExitPolicy accept *:80\n", false, 1, "/ExitPolicy takes no value"},
		{"missing name", "+ 1\n", false, 1, "missing option name"},
		{"non-UTF-8 in a value", "ExitRelay 1\nContactInfo caf\xe9\n", false, 2, "not valid UTF-8"},
		{"non-UTF-8 in a comment", "# ok\n# caf\xe9\nExitRelay 1\n", false, 2, "not valid UTF-8"},
		{"NUL byte", "ExitRelay 1\nContactInfo a\x00b\n", false, 2, "NUL byte"},
		{"control character", "ContactInfo a\x1bb\n", false, 1, "control character"},
		{"vertical tab", "ContactInfo a\vb\n", false, 1, "control character"},
		{"unterminated quote", "ExitRelay 1\nContactInfo \"abc\n", false, 2, "no closing quote"},
		{"quote continued with backslash", "ContactInfo \"abc\\\ndef\"\n", false, 1, "bad escape"},
		{"bad escape", `ContactInfo "a\qb"` + "\n", false, 1, "bad escape"},
		{"bad hex escape", `ContactInfo "a\xZ1"` + "\n", false, 1, `bad \x escape`},
		{"octal escape too big", `ContactInfo "\777"` + "\n", false, 1, "octal escape"},
		{"NUL escape", `ContactInfo "a\000"` + "\n", false, 1, "NUL byte"},
		{"data after quote", "ContactInfo \"a\" b\n", false, 1, "data after the closing quote"},
		{"value ends with backslash", "ContactInfo a \\", false, 1, `ends with '\'`},
		{"continuation into a blank line", "ContactInfo \\\n\n", false, 1, `ends with '\'`},
		{"continued value starting with a quote", "ContactInfo \\\n\"a\"\n", false, 1, "begins with a quote"},
		{"managed option", "ExitRelay 1\nNickname relay1\n", true, 2, "Nickname is managed"},
		{"managed option, other case", "orport 9001\n", true, 1, "ORPort is managed"},
		{"forbidden option appended", "+Log notice stdout\n", true, 1, "Log is refused: it names a file"},
		{"agent option appended", "+SocksPort 0\n", true, 1, "SocksPort is managed"},
		{"managed option removed", "/DataDirectory\n", true, 1, "DataDirectory is managed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			parse := Parse
			if tc.user {
				parse = ParseUser
			}
			c, err := parse([]byte(tc.src))
			var pe *ParseError
			if !errors.As(err, &pe) {
				t.Fatalf("parse(%q) = %v, %v; want a *ParseError", tc.src, c, err)
			}
			if pe.Line != tc.line || !strings.Contains(pe.Msg, tc.msg) {
				t.Errorf("parse(%q) error %q; want line %d and %q", tc.src, err, tc.line, tc.msg)
			}
			if !strings.HasPrefix(err.Error(), "line ") {
				t.Errorf("error %q does not start with the line", err)
			}
			if c != nil {
				t.Errorf("parse returned a config with its error")
			}
		})
	}
}

// Every option the admin does not own, in any spelling tor accepts, is
// refused on import, and every admin option is taken: the allowlist is
// exactly the admin entries of the table.
func TestParseUserRefusesEveryManagedOption(t *testing.T) {
	if len(ownerSet) != len(owners) {
		t.Fatalf("owned names not all known to tor %s: %d of %d", TorVersion, len(ownerSet), len(owners))
	}
	admin := 0
	for _, k := range torOptions {
		o := OwnerOf(k)
		for _, sp := range []string{k, strings.ToLower(k), "+" + k} {
			src := "ExitRelay 1\n" + sp + " 1\n"
			_, err := ParseUser([]byte(src))
			if o == OwnerAdmin {
				var pe *ParseError
				if errors.As(err, &pe) && strings.Contains(pe.Msg, "refused") {
					t.Errorf("ParseUser(%q) = %v; an admin option", src, err)
				}
				continue
			}
			var pe *ParseError
			if !errors.As(err, &pe) || pe.Line != 2 || !(strings.Contains(pe.Msg, "managed") || strings.Contains(pe.Msg, "refused")) {
				t.Errorf("ParseUser(%q) = %v; want a managed or refused option error on line 2", src, err)
			}
			if _, err := Parse([]byte(src)); err != nil {
				t.Errorf("Parse(%q) = %v; the system may write it", src, err)
			}
		}
		if o == OwnerAdmin {
			admin++
		}
	}
	if admin != len(Allowlist()) {
		t.Errorf("%d admin options, Allowlist has %d", admin, len(Allowlist()))
	}
	for a, target := range aliases {
		c, ok := Canonical(target)
		if !ok {
			continue
		}
		if got := OwnerOf(a); got != OwnerOf(c) {
			t.Errorf("OwnerOf(alias %q) = %s, OwnerOf(%q) = %s", a, got, c, OwnerOf(c))
		}
	}
	for _, k := range []string{"ExitPolicy", "ContactInfo", "MyFamily", "DirPort", "AccountingMax"} {
		if o := OwnerOf(k); o != OwnerAdmin {
			t.Errorf("OwnerOf(%q) = %s, want admin", k, o)
		}
	}
	// FamilyId comes with its key, which only the server has.
	if o, why := OwnerOf("FamilyId"), Refusal("FamilyId"); o != OwnerServer || !strings.Contains(why, "configsrv family") {
		t.Errorf("FamilyId: owner %s, refusal %q", o, why)
	}
	for _, k := range []string{"Nosuchoption", "__ORPort", "DirPortFrontPage", "GeoIPFile", "SocksPolicy"} {
		if o := OwnerOf(k); o != OwnerForbidden {
			t.Errorf("OwnerOf(%q) = %s, want forbidden", k, o)
		}
	}
}

// Each class of forbidden option is refused at import with the reason
// the allowlist review names for it.
func TestRefusalClasses(t *testing.T) {
	for opt, why := range map[string]string{
		"ServerTransportPlugin x exec /bin/sh":             "runs a program",
		"ClientTransportPlugin x exec /bin/sh":             "runs a program",
		"DirPortFrontPage /var/lib/tor/keys/secret_id_key": "names a file",
		"KeyDirectory /tmp/k":                              "names a file",
		"CacheDirectory /tmp/c":                            "names a file",
		"FamilyKeyDirectory /tmp/f":                        "names a file",
		"Log notice file /tmp/log":                         "names a file",
		"GeoIPFile /etc/passwd":                            "names a file",
		"ServerDNSResolvConfFile /etc/shadow":              "names a file",
		"PidFile /tmp/pid":                                 "names a file",
		"HiddenServiceDir /tmp/hs":                         "no onion services",
		"HiddenServicePort 80 127.0.0.1:80":                "no onion services",
		"ControlPort 9051":                                 "opens a listener",
		"DNSPort 53":                                       "opens a listener",
		"TransPort 9040":                                   "opens a listener",
		"ExtORPort 9999":                                   "opens a listener",
		"HTTPTunnelPort 8080":                              "opens a listener",
		"User root":                                        "identity, keys, user",
		"OutboundBindAddressExit 203.0.113.1":              "identity, keys, user",
		"KeepBindCapabilities 1":                           "identity, keys, user",
		"TestingTorNetwork 1":                              "not on the node's allowlist",
		"DirAuthority x 127.0.0.1:1 0000":                  "not on the node's allowlist",
		"Socks5Proxy 127.0.0.1:1":                          "not on the node's allowlist",
	} {
		_, err := ParseUser([]byte(opt + "\n"))
		if err == nil || !strings.Contains(err.Error(), "is refused: ") || !strings.Contains(err.Error(), why) {
			t.Errorf("ParseUser(%q) = %v; want refused: ...%s", opt, err, why)
		}
	}
	for _, opt := range []string{"SocksPort 9050", "SigningKeyLifetime 1 day", "NoExec 0", "Sandbox 0", "OfflineMasterKey 0", "DataDirectory /tmp",
		"MetricsPort 0.0.0.0:9035", "MetricsPortPolicy accept *"} {
		if _, err := ParseUser([]byte(opt + "\n")); err == nil || !strings.Contains(err.Error(), "the agent on the node writes it") {
			t.Errorf("ParseUser(%q) = %v; want the agent's", opt, err)
		}
	}
}

func TestCanonical(t *testing.T) {
	for in, want := range map[string]string{
		"contactinfo": "ContactInfo", "CONTACTINFO": "ContactInfo", "orport": "ORPort",
		"maxconn": "ConnLimit", "NumCPU": "NumCPUs", "ExitNode": "ExitNodes", "exitnodes": "ExitNodes",
		"AutomapHostSuffixes": "AutomapHostsSuffixes", "_HSLayer2Nodes": "HSLayer2Nodes",
		"TestingClientDownloadSchedule": "TestingClientDownloadInitialDelay",
	} {
		if got, ok := Canonical(in); !ok || got != want {
			t.Errorf("Canonical(%q) = %q, %v; want %q", in, got, ok, want)
		}
	}
	for _, in := range []string{"", "l", "\u212AeepalivePeriod", strings.Repeat("x", 65), "Contact", "__ControlPort", "__SocksPort", "%include", "AllowInvalidNodes", "AllowUnverifiedNodes", "ExitPolicy "} {
		if got, ok := Canonical(in); ok {
			t.Errorf("Canonical(%q) = %q, true; want unknown", in, got)
		}
	}
	// Every name in the table is its own canonical form, and the option
	// sets name only real options (a typo would silently do nothing).
	for _, n := range torOptions {
		if got, ok := Canonical(n); !ok || got != n {
			t.Errorf("Canonical(%q) = %q, %v", n, got, ok)
		}
	}
	owned := []string{}
	for n := range owners {
		owned = append(owned, n)
	}
	for _, set := range [][]string{owned, immutable, sandboxImmutable} {
		for _, n := range set {
			if c, ok := Canonical(n); !ok || c != n {
				t.Errorf("%q in an option set is not one of tor's options", n)
			}
		}
	}
	for k := range groups {
		if c, ok := Canonical(k); !ok || c != k {
			t.Errorf("group member %q is not one of tor's options", k)
		}
	}
	for a := range aliases {
		if _, real := Canonical(a); real && strings.EqualFold(a, canonical[lower(a)]) {
			t.Errorf("alias %q shadows a real option", a)
		}
	}
}

// The agent's lines are the agent's; ForNode keeps the admin's and the
// server's lines in order, drops the rest, and ends with the agent's.
func TestForNode(t *testing.T) {
	agent := AgentLines("/var/lib/tor-instances/r1", "/run/tor-instances/r1/control", netip.MustParseAddrPort("127.66.39.17:9035"))
	for _, l := range agent {
		if o := OwnerOf(l.Key); o != OwnerAgent {
			t.Errorf("agent line %s is owned by %s", l.Key, o)
		}
	}
	server, err := Parse([]byte("ContactInfo a@example.org\nNickname r1\nDataDirectory /elsewhere\n" +
		"ORPort 192.0.2.10:9001\nKeyDirectory /tmp/k\nControlPort 9051\nExitRelay 0\nMetricsPort 0.0.0.0:9035\n"))
	if err != nil {
		t.Fatal(err)
	}
	run, dropped := ForNode(server, agent)
	want := "ContactInfo a@example.org\nNickname r1\nORPort 192.0.2.10:9001\nExitRelay 0\n" +
		"DataDirectory /var/lib/tor-instances/r1\nControlSocket /run/tor-instances/r1/control\n" +
		"CookieAuthentication 1\nRunAsDaemon 0\nSocksPort 0\nNoExec 1\nSandbox 1\nOfflineMasterKey 1\n" +
		"MetricsPort 127.66.39.17:9035\nMetricsPortPolicy accept 127.0.0.1\n"
	if got := string(run.Render()); got != want {
		t.Errorf("ForNode:\n%s\nwant:\n%s", got, want)
	}
	var keys []string
	for _, l := range dropped {
		keys = append(keys, l.Key)
	}
	if strings.Join(keys, " ") != "DataDirectory KeyDirectory ControlPort MetricsPort" {
		t.Errorf("dropped %v", keys)
	}
}
