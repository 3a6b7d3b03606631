package cli

import (
	"crypto/sha256"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"patela/configsrv/internal/tortest"
	"patela/configsrv/resolve"
	"patela/configsrv/store"
	"patela/internal/api"
	"patela/internal/ekid"
	"patela/internal/familykey"
	"patela/internal/testutil"
)

// The README's bring-up exit setup works as written: its exit.torrc
// imports (checked by tor), the family key is made, the DNS setting is
// taken and a public resolver refused, and a relay of the fleet gets an
// exit torrc with ContactInfo and FamilyId that tor starts with the key.
func TestREADMEExitSetup(t *testing.T) {
	testutil.RequireTool(t, "tor", "apt-get install tor")
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile("(?s)with `exit.torrc`[^\n]*\n.*?```torrc\n(.*?)```").FindSubmatch(readme)
	if m == nil {
		t.Fatal("README has no exit.torrc block")
	}
	dir := t.TempDir()
	db := filepath.Join(dir, "p.db")
	exit := filepath.Join(dir, "exit.torrc")
	os.WriteFile(exit, m[1], 0o600)
	ok(t, db, "init", "--dir", filepath.Join(dir, "keys"), "--name", "cfg.example.org,192.0.2.5")
	ok(t, db, "pool", "add", "192.0.2.0/24", "--gateway", "192.0.2.1")
	ok(t, db, "pool", "add", "2001:db8::/64", "--gateway", "2001:db8::1")
	ok(t, db, "node", "set", "--default", "relay_interface", "eth1")
	ok(t, db, "node", "set", "--default", "dns", "192.0.2.53,2001:db8::53")
	ok(t, db, "family", "create")
	if out := ok(t, db, "torrc", "import", exit, "--default"); !strings.Contains(out, "verified by tor") {
		t.Fatalf("import: %s", out)
	}
	fails(t, db, "Quad9", "node", "set", "--default", "dns", "9.9.9.9")

	// A node of the fleet, its agent installing family keys; tests keep
	// tor off the network at its level.
	st, err := store.Open(db)
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	n, _, err := st.AddPending(ctx, ekid.ID(sha256.Sum256([]byte("an EK"))), []byte("an EK"), time.Now(), store.PendingLimits{}, nil)
	if err == nil {
		err = st.SetNodeState(ctx, n.ID, api.NodeEnabled)
	}
	if err == nil {
		_, err = st.Allocate(ctx, n.ID, &api.Specs{CPUs: 1, MemoryBytes: 4 << 30, Features: []string{api.FeatureFamilyKeys}}, time.Now())
	}
	if err == nil {
		err = st.SetNodeTorrc(ctx, n.ID, "DisableNetwork 1\n")
	}
	if err != nil {
		t.Fatal(err)
	}
	fleet, err := resolve.LoadFleet(ctx, st)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := resolve.NodeConfig(ctx, st, n.ID, fleet)
	st.Close()
	if err != nil {
		t.Fatal(err)
	}
	text := cfg.Relays[0].Torrc
	for _, want := range []string{"ContactInfo email:tor-ops[]example.org", "ExitRelay 1\n", "ReducedExitPolicy 1\n", "FamilyId " + cfg.FamilyKeys[0].ID + "\n"} {
		if !strings.Contains(text, want) {
			t.Errorf("served torrc lacks %q:\n%s", want, text)
		}
	}
	if len(cfg.Network.DNS) != 2 || cfg.Network.DNS[0] != "192.0.2.53" {
		t.Errorf("dns %v", cfg.Network.DNS)
	}
	k := cfg.FamilyKeys[0]
	if log, err := tortest.Start(t, text, map[string][]byte{k.Name + familykey.FileSuffix: familykey.File(k.Secret)}); err != nil {
		t.Fatalf("tor on the README's exit: %v\n%s", err, log)
	}
}
