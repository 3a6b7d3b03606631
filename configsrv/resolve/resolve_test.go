package resolve

import (
	"net/netip"
	"strings"
	"testing"

	"patela/configsrv/store"
	"patela/internal/torrc"
)

// The server writes only the options the ownership table gives it, and
// OnNode shows the relay as the agent will run it.
func TestManagedAndOnNode(t *testing.T) {
	r := &store.Relay{Name: "murazzano", ORPort: 9001, UID: 10001,
		IPv4: netip.MustParsePrefix("192.0.2.10/24"), IPv6: netip.MustParsePrefix("2001:db8::10/64")}
	for _, l := range Managed(r) {
		if o := torrc.OwnerOf(l.Key); o != torrc.OwnerServer {
			t.Errorf("the server writes %s, owned by %s", l.Key, o)
		}
	}
	served, err := Torrc("ContactInfo ops@example.org\n", "", "", r, &Fleet{})
	if err != nil {
		t.Fatal(err)
	}
	got := string(OnNode(served, r).Explain())
	for _, want := range []string{
		"ORPort 192.0.2.10:9001", "ORPort [2001:db8::10]:9001",
		"DataDirectory /var/lib/tor-instances/murazzano", "ControlSocket /run/tor-instances/murazzano/control",
		"MetricsPort 127.66.39.17:9035", "MetricsPortPolicy accept 127.0.0.1",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("OnNode lacks %q:\n%s", want, got)
		}
	}
	if !strings.Contains(got, torrc.LevelAgent) || strings.Contains(got, "User ") {
		t.Errorf("agent lines not marked, or a User line:\n%s", got)
	}
}
