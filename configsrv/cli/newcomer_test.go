package cli

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"patela/configsrv/store"
	"patela/internal/ekid"
)

// TestInitCreatesDatabase: init also creates the database, so the read
// commands work right after it; a second init changes nothing; a database
// that could not be created stops init before it writes any key.
func TestInitCreatesDatabase(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "keys")
	db := filepath.Join(t.TempDir(), "p.db")
	out := ok(t, db, "init", "--dir", dir)
	if strings.Count(out, "created") != 5 || !strings.Contains(out, "new database "+db+", schema applied") {
		t.Fatalf("init output:\n%s", out)
	}
	if out := ok(t, db, "node", "list", "--json"); strings.TrimSpace(out) != "[]" {
		t.Fatalf("node list --json after init: %q", out)
	}
	if out := ok(t, db, "node", "list"); strings.Count(out, "\n") != 1 || !strings.HasPrefix(out, "ID ") {
		t.Fatalf("node list after init: %q", out)
	}
	for _, args := range [][]string{{"pool", "list", "--json"}, {"relay", "list", "--json"}, {"audit", "--json"}} {
		if out := ok(t, db, args...); strings.TrimSpace(out) != "[]" {
			t.Errorf("%s after init: %q", args, out)
		}
	}
	if out := ok(t, db, "init", "--dir", dir); !strings.Contains(out, "nothing to do") || !strings.Contains(out, "database "+db+" is up to date") {
		t.Fatalf("second init:\n%s", out)
	}

	// The database may live in the directory init creates for the keys.
	keys := filepath.Join(t.TempDir(), "state")
	if out := ok(t, filepath.Join(keys, "patela.db"), "init", "--dir", keys); !strings.Contains(out, "new database") {
		t.Fatalf("init with the database in its key directory:\n%s", out)
	}

	nowhere := filepath.Join(t.TempDir(), "missing", "p.db")
	dir2 := filepath.Join(t.TempDir(), "keys2")
	fails(t, nowhere, "its directory does not exist", "init", "--dir", dir2)
	if _, err := os.Stat(dir2); err == nil {
		t.Error("init wrote key material for a database it could not create")
	}
}

// TestNodeShowDefault: node show --default prints the global settings and
// where each value comes from; the relay NIC defaults to eth1.
func TestNodeShowDefault(t *testing.T) {
	db := filepath.Join(t.TempDir(), "p.db")
	ok(t, db, "init", "--dir", t.TempDir())
	ok(t, db, "node", "set", "--default", "max_relays", "4")
	ok(t, db, "node", "set", "--default", "dns", "192.0.2.53")
	out := ok(t, db, "node", "show", "--default")
	for _, re := range []string{`max_relays\s+4\s+\(global\)`, `dns\s+192\.0\.2\.53\s+\(global\)`,
		`relay_interface\s+eth1\s+\(default\)`, `poll_interval_s\s+300\s+\(default\)`} {
		if !regexpMatch(re, out) {
			t.Errorf("node show --default lacks %s:\n%s", re, out)
		}
	}
	var v defaultView
	if err := json.Unmarshal([]byte(ok(t, db, "node", "show", "--default", "--json")), &v); err != nil {
		t.Fatal(err)
	}
	if len(v.Settings) != 2 || v.Settings["max_relays"] != "4" || v.Effective["max_relays"] != "4" ||
		v.Effective["relay_interface"] != "eth1" || v.Effective["relay_memory_mb"] != "1024" {
		t.Fatalf("node show --default --json: %+v", v)
	}
	usageErr(t, db, "give --default or a node ID", "node", "show")
	usageErr(t, db, "give --default or a node ID", "node", "show", "--default", "1")

	// A node without its own relay_interface gets the default, and says so.
	st, err := store.Open(db)
	if err != nil {
		t.Fatal(err)
	}
	st.AddPending(context.Background(), ekid.ID(sha256.Sum256([]byte("ek"))), []byte("ek"), time.Now(), store.PendingLimits{}, nil)
	st.Close()
	if out := ok(t, db, "node", "show", "1"); !regexpMatch(`relay_interface\s+eth1\s+\(default\)`, out) {
		t.Errorf("node show 1:\n%s", out)
	}
	ok(t, db, "node", "set", "--default", "relay_interface", "ens4")
	if out := ok(t, db, "node", "show", "1"); !regexpMatch(`relay_interface\s+ens4\s+\(global\)`, out) {
		t.Errorf("node show 1 with a global relay_interface:\n%s", out)
	}
}

// TestTorrcShowJSON: torrc show --json gives the level, the text as
// stored and its option lines; an empty level has no lines, not null.
func TestTorrcShowJSON(t *testing.T) {
	db := filepath.Join(t.TempDir(), "p.db")
	ok(t, db, "init", "--dir", t.TempDir())
	text := "# exits\nExitRelay 1\n+ExitPolicy accept *:443\n/MaxMemInQueues\nContactInfo ops@example.org\n"
	r := run(t, db, text, "torrc", "import", "-", "--default")
	if r.code != 0 {
		t.Fatal(r.err)
	}
	var v torrcView
	if err := json.Unmarshal([]byte(ok(t, db, "torrc", "show", "--default", "--json")), &v); err != nil {
		t.Fatal(err)
	}
	want := []lineView{{2, "set", "ExitRelay", "1"}, {3, "append", "ExitPolicy", "accept *:443"}, {4, "remove", "MaxMemInQueues", ""},
		{5, "set", "ContactInfo", "ops@example.org"}}
	if v.Level != "global" || v.Text != text || len(v.Lines) != len(want) {
		t.Fatalf("torrc show --default --json: %+v", v)
	}
	for i := range want {
		if v.Lines[i] != want[i] {
			t.Errorf("line %d: %+v, want %+v", i, v.Lines[i], want[i])
		}
	}
	if out := ok(t, db, "torrc", "show", "--default"); out != text {
		t.Errorf("torrc show --default: %q", out)
	}
	st, err := store.Open(db)
	if err != nil {
		t.Fatal(err)
	}
	st.AddPending(context.Background(), ekid.ID(sha256.Sum256([]byte("ek"))), []byte("ek"), time.Now(), store.PendingLimits{}, nil)
	st.Close()
	out := ok(t, db, "torrc", "show", "--node", "1", "--json")
	if !strings.Contains(out, `"lines": []`) || !strings.Contains(out, `"level": "node:1"`) {
		t.Errorf("empty node level: %s", out)
	}
	fails(t, db, "node 2: not found", "torrc", "show", "--node", "2", "--json")
	fails(t, db, `relay "nosuch": not found`, "torrc", "show", "--relay", "nosuch", "--json")
}

func regexpMatch(re, s string) bool { return regexp.MustCompile(re).MatchString(s) }
