package testsrv

import (
	"context"
	"strings"
	"testing"

	"patela/configsrv/internal/tortest"
	"patela/internal/api"
)

// The helper's promises: a software node enrolls through the real
// protocol, gets relays on both pools, and the server survives a restart
// with the same URL, keys and data.
func TestStartEnrollRestart(t *testing.T) {
	s := Start(t)
	id, tok := s.EnrollSoftwareNode(t)
	c := s.Client(t)
	ctx := context.Background()
	sp, err := c.Specs(ctx, tok, &api.Specs{CPUs: 2, MemoryBytes: 4 << 30, CPUModel: "test"})
	if err != nil || sp.RelayCount != 2 {
		t.Fatalf("specs: %+v, %v", sp, err)
	}
	cfg, err := c.Config(ctx, tok)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.NodeID != id || len(cfg.Relays) != 2 {
		t.Fatalf("config: %+v", cfg)
	}
	r := cfg.Relays[0]
	if r.IPv4 != "192.0.2.2/24" || r.IPv6 != "2001:db8::2/64" || r.UID != 10001 || r.Name != "murazzano" {
		t.Errorf("first relay: %+v", r)
	}
	for _, want := range []string{"DisableNetwork 1", "Nickname murazzano", "ORPort 192.0.2.2:9001", "ORPort [2001:db8::2]:9001"} {
		if !strings.Contains(r.Torrc, want+"\n") {
			t.Errorf("torrc lacks %q:\n%s", want, r.Torrc)
		}
	}
	// Paths and users are the agent's to write (torrc.OwnerOf).
	for _, not := range []string{"DataDirectory", "User"} {
		if strings.Contains(r.Torrc, not+" ") {
			t.Errorf("the server wrote %s:\n%s", not, r.Torrc)
		}
	}
	for _, r := range cfg.Relays {
		tortest.Verify(t, r.Torrc)
	}
	url := s.URL
	s.Restart(t)
	if s.URL != url {
		t.Fatalf("restart moved the server: %s -> %s", url, s.URL)
	}
	if _, err := c.Config(ctx, tok); err != nil {
		t.Fatalf("token after restart: %v", err)
	}
	if _, err := c.Config(ctx, s.IssueToken(t, id)); err != nil {
		t.Fatalf("IssueToken: %v", err)
	}
	s.Admin(t, "node", "disable", "1")
	if _, err := c.Config(ctx, tok); !api.IsCode(err, api.CodeDisabled) {
		t.Fatalf("disabled node: %v", err)
	}
}
