package torrc

import (
	"slices"
	"testing"
)

func mustParse(t testing.TB, src string) *Config {
	t.Helper()
	c, err := Parse([]byte(src))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestMergeRecordsLevelsAndLeavesInputsAlone(t *testing.T) {
	g := mustParse(t, "ContactInfo a@example.org\nExitPolicy accept *:80\n")
	n := mustParse(t, "\n+ExitPolicy reject *:*\n")
	gBefore, nBefore := slices.Clone(g.Lines), slices.Clone(n.Lines)
	m := Merge(Level{"global", g}, Level{"empty", nil}, Level{"node", n})
	want := []Line{
		{OpSet, "ContactInfo", "a@example.org", 1, "global"},
		{OpSet, "ExitPolicy", "accept *:80", 2, "global"},
		{OpSet, "ExitPolicy", "reject *:*", 2, "node"},
	}
	if !slices.Equal(m.Lines, want) {
		t.Errorf("Merge =\n%v\nwant\n%v", m.Lines, want)
	}
	if !slices.Equal(g.Lines, gBefore) || !slices.Equal(n.Lines, nBefore) {
		t.Errorf("Merge changed its inputs")
	}
	if got := Merge(); len(got.Lines) != 0 {
		t.Errorf("Merge() = %v", got.Lines)
	}
}

// An onion service's lines are one list in tor: their interleaving is kept
// and a level that sets them replaces all of them.
func TestMergeKeepsOptionGroupsTogether(t *testing.T) {
	g := mustParse(t, "HiddenServiceDir /a\nHiddenServicePort 80 127.0.0.1:8080\nContactInfo x\n"+
		"HiddenServiceDir /b\nHiddenServicePort 22 127.0.0.1:22\n")
	if got, want := string(Merge(Level{"g", g}).Render()),
		"HiddenServiceDir /a\nHiddenServicePort 80 127.0.0.1:8080\nHiddenServiceDir /b\nHiddenServicePort 22 127.0.0.1:22\nContactInfo x\n"; got != want {
		t.Errorf("one level:\n%s\nwant\n%s", got, want)
	}
	n := mustParse(t, "HiddenServiceDir /c\nHiddenServicePort 443 127.0.0.1:8443\n")
	if got, want := string(Merge(Level{"g", g}, Level{"n", n}).Render()),
		"HiddenServiceDir /c\nHiddenServicePort 443 127.0.0.1:8443\nContactInfo x\n"; got != want {
		t.Errorf("replaced:\n%s\nwant\n%s", got, want)
	}
	a := mustParse(t, "+HiddenServicePort 8443 127.0.0.1:8443\n")
	if got, want := string(Merge(Level{"n", n}, Level{"a", a}).Render()),
		"HiddenServiceDir /c\nHiddenServicePort 443 127.0.0.1:8443\nHiddenServicePort 8443 127.0.0.1:8443\n"; got != want {
		t.Errorf("appended:\n%s\nwant\n%s", got, want)
	}
	r := mustParse(t, "/HiddenServicePort\n")
	if got := string(Merge(Level{"g", g}, Level{"r", r}).Render()); got != "ContactInfo x\n" {
		t.Errorf("removed:\n%s", got)
	}
}

func TestRenderAndExplain(t *testing.T) {
	c := mustParse(t, "contactinfo \"a # b\"  # who\n+exitpolicy accept *:80\n/NumCPUs\n")
	if got, want := string(c.Render()), "ContactInfo \"a # b\"\n+ExitPolicy accept *:80\n/NumCPUs\n"; got != want {
		t.Errorf("Render:\n%s\nwant\n%s", got, want)
	}
	g := mustParse(t, "ContactInfo ops@example.org\nExitPolicy accept *:443\n")
	r := mustParse(t, "\n\n+ExitPolicy reject *:*\n")
	want := "" +
		"ContactInfo ops@example.org  # global, line 1\n" +
		"ExitPolicy accept *:443      # global, line 2\n" +
		"ExitPolicy reject *:*        # relay, line 3\n"
	e := Merge(Level{"global", g}, Level{"relay", r}).Explain()
	if string(e) != want {
		t.Errorf("Explain:\n%s\nwant\n%s", e, want)
	}
	// The explanation is itself a torrc that reads as the rendering.
	if again := mustParse(t, string(e)); string(again.Render()) != string(Merge(Level{"global", g}, Level{"relay", r}).Render()) {
		t.Errorf("Explain does not read back as Render")
	}
	if got := string(c.Explain()); got != "ContactInfo \"a # b\"      # -, line 1\n+ExitPolicy accept *:80  # -, line 2\n/NumCPUs                 # -, line 3\n" {
		t.Errorf("Explain without levels:\n%s", got)
	}
}

func TestValues(t *testing.T) {
	c := mustParse(t, "ExitPolicy accept *:22\nMaxConn 100\n/ExitPolicy\nExitPolicy accept *:80\n+ExitPolicy reject *:*\nConnLimit 200\n")
	for _, tc := range []struct {
		key  string
		want []string
	}{
		{"exitpolicy", []string{"accept *:80", "reject *:*"}},
		{"MaxConn", []string{"100", "200"}},
		{"ContactInfo", nil},
		{"NoSuchOption", nil},
	} {
		if got := c.Values(tc.key); !slices.Equal(got, tc.want) {
			t.Errorf("Values(%q) = %q, want %q", tc.key, got, tc.want)
		}
	}
	var nilConfig *Config
	if v := nilConfig.Values("ORPort"); v != nil {
		t.Errorf("nil config has values %q", v)
	}
}

func TestNeedsRestart(t *testing.T) {
	const base = "Nickname r1\nORPort 192.0.2.10:9001\nAddress 192.0.2.10\nOutboundBindAddress 192.0.2.10\n" +
		"DataDirectory /var/lib/tor-instances/r1\nUser _tor-r1\nContactInfo a@example.org\nExitPolicy accept *:443\nConnLimit 1000\n"
	for _, tc := range []struct {
		name, old, new string
		want           bool
	}{
		{"same", base, base, false},
		{"same, other spelling and order", base, "maxconn 1000\n" + base[:len(base)-len("ConnLimit 1000\n")], false},
		{"comments only", base, "# hi\n" + base, false},
		{"contact changed", base, base + "ContactInfo b@example.org\n", false},
		{"exit policy changed", base, base + "+ExitPolicy reject *:*\n", false},
		{"nickname changed", base, base + "Nickname r2\n", false},
		{"conn limit without sandbox", base, base + "ConnLimit 2000\n", false},
		{"data directory", base, base + "DataDirectory /var/lib/tor-instances/r2\n", true},
		{"user", base, base + "User _tor-r2\n", true},
		{"or port changed", base, base + "ORPort 192.0.2.10:443\n", true},
		{"or port added", base, base + "+ORPort [2001:db8::10]:9001\n", true},
		{"or port removed", base, base + "/ORPort\n", true},
		{"address", base, base + "Address 192.0.2.11\n", true},
		{"outbound bind", base, base + "+OutboundBindAddress [2001:db8::10]\n", true},
		{"outbound bind exit", base, base + "OutboundBindAddressExit 192.0.2.12\n", true},
		{"sandbox turned on", base, base + "Sandbox 1\n", true},
		{"no exec", base, base + "NoExec 1\n", true},
		{"key directory", base, base + "KeyDirectory /keys\n", true},
		{"pid file", base, base + "PidFile /run/tor.pid\n", true},
		{"disable all swap", base, base + "DisableAllSwap 1\n", true},
		{"refill interval", base, base + "TokenBucketRefillInterval 10 msec\n", true},
		{"conn limit under sandbox", base + "Sandbox 1\n", base + "Sandbox 1\nConnLimit 2000\n", true},
		{"log under sandbox", base + "Sandbox 1\nLog notice stdout\n", base + "Sandbox 1\nLog info stdout\n", true},
		{"resolv.conf under sandbox", base + "Sandbox 1\n", base + "Sandbox 1\nServerDNSResolvConfFile /etc/r\n", true},
		{"log without sandbox", base + "Log notice stdout\n", base + "Log info stdout\n", false},
		{"exit policy under sandbox", base + "Sandbox 1\n", base + "Sandbox 1\nExitPolicy reject *:*\n", false},
		{"sandbox off explicitly", base + "Sandbox 0\n", base + "Sandbox 0\nConnLimit 2000\n", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := NeedsRestart(mustParse(t, tc.old), mustParse(t, tc.new)); got != tc.want {
				t.Errorf("NeedsRestart = %v, want %v", got, tc.want)
			}
			if got := NeedsRestart(mustParse(t, tc.new), mustParse(t, tc.old)); got != tc.want {
				t.Errorf("NeedsRestart reversed = %v, want %v", got, tc.want)
			}
		})
	}
	if !NeedsRestart(nil, mustParse(t, base)) || NeedsRestart(nil, nil) || NeedsRestart(nil, mustParse(t, "ContactInfo x\n")) {
		t.Errorf("NeedsRestart with a nil config")
	}
}
