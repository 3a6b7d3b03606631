package cli

import (
	"crypto/rand"
	"crypto/sha256"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"patela/configsrv/store"
	"patela/internal/api"
	"patela/internal/ekid"
	"patela/internal/testutil"
)

// relayDB is a database with one enabled node of two relays (murazzano,
// castelmagno) and a global torrc with ContactInfo, for the import
// checks.
func relayDB(t *testing.T) (db string, write func(name, text string) string) {
	t.Helper()
	dir := t.TempDir()
	db = filepath.Join(dir, "p.db")
	st, err := store.Open(db)
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	ek := make([]byte, 32)
	rand.Read(ek)
	n, _, err := st.AddPending(ctx, ekid.ID(sha256.Sum256(ek)), ek, time.Now(), store.PendingLimits{}, nil)
	if err == nil {
		err = st.SetNodeState(ctx, n.ID, api.NodeEnabled)
	}
	if err == nil {
		err = st.AddPool(ctx, netip.MustParsePrefix("192.0.2.0/24"), netip.MustParseAddr("192.0.2.1"), time.Now())
	}
	if err == nil {
		_, err = st.Allocate(ctx, n.ID, &api.Specs{CPUs: 2, MemoryBytes: 8 << 30}, time.Now())
	}
	if err == nil {
		err = st.SetGlobalTorrc(ctx, "ContactInfo ops@example.org\nDisableNetwork 1\n")
	}
	st.Close()
	if err != nil {
		t.Fatal(err)
	}
	write = func(name, text string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	return db, write
}

// unchanged fails unless the stored global torrc and the audit log are as
// before: a refused edit stores nothing.
func unchanged(t *testing.T, db, global string, audits int) {
	t.Helper()
	if got := ok(t, db, "torrc", "show", "--default"); got != global {
		t.Fatalf("global torrc changed by a refused command:\n%s", got)
	}
	if n := auditCount(t, db); n != audits {
		t.Fatalf("a refused command wrote %d audit rows", n-audits)
	}
}

// torrc import checks the result with tor itself, as the node would run
// it, before storing anything: tor's own message for a value tor
// refuses; no tor installed is a refusal unless --no-verify.
func TestImportVerifiedByTor(t *testing.T) {
	testutil.RequireTool(t, "tor", "apt-get install tor")
	db, write := relayDB(t)
	global := ok(t, db, "torrc", "show", "--default")
	audits := auditCount(t, db)
	bad := write("bad", "ContactInfo ops@example.org\nDisableNetwork 1\nExitRelay yes\n")
	fails(t, db, "Could not parse ExitRelay: Unrecognized value yes", "torrc", "import", bad, "--default")
	fails(t, db, "nothing imported", "torrc", "import", bad, "--default")
	unchanged(t, db, global, audits)
	// At the relay level, the relay's own torrc is what tor checks.
	fails(t, db, "relay murazzano's torrc with it", "torrc", "import", write("rbad", "NumCPUs many\n"), "--relay", "murazzano")

	fails(t, db, "no tor binary found", "torrc", "import", bad, "--default", "--tor", filepath.Join(t.TempDir(), "none"))
	unchanged(t, db, global, audits)
	good := write("good", "ContactInfo ops@example.org\nDisableNetwork 1\nRelayBandwidthRate 10 MB\n")
	if out := ok(t, db, "torrc", "import", good, "--default", "--tor", filepath.Join(t.TempDir(), "none"), "--no-verify"); !strings.Contains(out, "not verified by tor") {
		t.Fatalf("--no-verify: %q", out)
	}
	if out := ok(t, db, "torrc", "import", good, "--default"); !strings.Contains(out, "verified by tor for 1 relays") {
		t.Fatalf("import: %q (two relays with the same admin levels are verified once)", out)
	}
}

// Every relay needs ContactInfo: an import leaving one without is
// refused, naming where it is missing.
func TestImportNeedsContactInfo(t *testing.T) {
	db, write := relayDB(t)
	global := ok(t, db, "torrc", "show", "--default")
	audits := auditCount(t, db)
	fails(t, db, "none of the global torrc, node 1's torrc and relay murazzano's torrc sets it",
		"torrc", "import", write("g", "DisableNetwork 1\n"), "--default", "--no-verify")
	fails(t, db, "/ContactInfo at relay castelmagno's torrc removes it",
		"torrc", "import", write("r", "/ContactInfo\n"), "--relay", "castelmagno", "--no-verify")
	unchanged(t, db, global, audits)
	// A node level may carry it instead.
	ok(t, db, "torrc", "import", write("n", "ContactInfo node-ops@example.org\n"), "--node", "1", "--no-verify")
	ok(t, db, "torrc", "import", write("g2", "DisableNetwork 1\n"), "--default", "--no-verify")
	// Bring-up: no node yet, the global level stands for every relay.
	db2 := filepath.Join(t.TempDir(), "p.db")
	fails(t, db2, "a relay there has no ContactInfo", "torrc", "import", write("g3", "DisableNetwork 1\n"), "--default", "--no-verify")
}

// An exit must not resolve through a public resolver: the dns setting and
// the torrc that makes a relay an exit are each refused given the other.
func TestExitPublicResolver(t *testing.T) {
	db, write := relayDB(t)
	global := ok(t, db, "torrc", "show", "--default")
	// Not an exit: any resolver.
	ok(t, db, "node", "set", "1", "dns", "9.9.9.9")
	fails(t, db, "is an exit and node 1's dns setting", "torrc", "import",
		write("exit", "ContactInfo ops@example.org\nDisableNetwork 1\nExitRelay 1\n"), "--default", "--no-verify")
	unchanged(t, db, global, auditCount(t, db))
	ok(t, db, "node", "set", "1", "dns", "192.0.2.53")
	ok(t, db, "torrc", "import", write("exit", "ContactInfo ops@example.org\nDisableNetwork 1\nExitPolicy accept *:443\n"), "--default", "--no-verify")
	audits := auditCount(t, db)
	for dns, op := range map[string]string{"8.8.8.8": "Google Public DNS", "192.0.2.53,1.1.1.1": "Cloudflare", "2620:fe::fe": "Quad9"} {
		fails(t, db, op, "node", "set", "1", "dns", dns)
		fails(t, db, "give the node a resolver of its own", "node", "set", "1", "dns", dns)
	}
	// The global value is what node 1 falls back to.
	ok(t, db, "node", "set", "--default", "dns", "198.51.100.53")
	st, _ := store.Open(db)
	st.SetSetting(t.Context(), 0, "dns", "208.67.222.222") // an edit by hand, past the CLI
	st.Close()
	fails(t, db, "the global dns setting", "node", "unset", "1", "dns")
	if n := auditCount(t, db); n != audits+1 {
		t.Fatalf("refusals wrote %d audit rows", n-audits-1)
	}
	if out := ok(t, db, "node", "show", "1"); !strings.Contains(out, "192.0.2.53") {
		t.Fatalf("node 1's dns changed:\n%s", out)
	}
}
