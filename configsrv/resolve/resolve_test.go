package resolve

import (
	"net/netip"
	"strings"
	"testing"

	"patela/configsrv/store"
	"patela/internal/membudget"
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
	served, err := Torrc("ContactInfo ops@example.org\n", "", "", r, &Fleet{}, membudget.Budget{})
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

// The managed MaxMemInQueues follows the node's budget unless a torrc
// level sets it.
func TestMemoryLine(t *testing.T) {
	r := &store.Relay{Name: "murazzano", ORPort: 9001, IPv4: netip.MustParsePrefix("192.0.2.10/24")}
	b := membudget.For(16<<30, 8)
	c, err := Torrc("ContactInfo ops@example.org\n", "", "", r, &Fleet{}, b)
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Values("MaxMemInQueues"); len(got) != 1 || got[0] != "1440 MB" {
		t.Errorf("managed MaxMemInQueues %q, want 1440 MB (3/4 of 1920 MiB)", got)
	}
	c, err = Torrc("ContactInfo ops@example.org\n", "maxmeminqueues 512 MB\n", "", r, &Fleet{}, b)
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Values("MaxMemInQueues"); len(got) != 1 || got[0] != "512 MB" {
		t.Errorf("an administrator's MaxMemInQueues: %q", got)
	}
	if c, _ := Torrc("ContactInfo ops@example.org\n", "", "", r, &Fleet{}, membudget.For(0, 8)); len(c.Values("MaxMemInQueues")) != 0 {
		t.Error("a node that never reported its memory got a MaxMemInQueues")
	}
}
