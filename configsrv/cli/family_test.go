package cli

import (
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"patela/configsrv/store"
	"patela/internal/familykey"
	"patela/internal/testutil"
)

func familyKeys(t *testing.T, db string) map[string]store.FamilyKey {
	t.Helper()
	st, err := store.Open(db)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ks, err := st.FamilyKeys(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]store.FamilyKey{}
	for _, k := range ks {
		m[k.Family] = k
	}
	return m
}

// family create runs tor on this host; import takes tor's file; rotate
// replaces the key; each is audited, none prints the secret; refusals
// change nothing.
func TestFamilyCommands(t *testing.T) {
	tor := testutil.RequireTool(t, "tor", "apt-get install tor")
	db := filepath.Join(t.TempDir(), "p.db")
	out := ok(t, db, "family", "create")
	keys := familyKeys(t, db)
	k, have := keys["fleet"]
	if !have || k.Origin != store.OriginCreated || familykey.CheckID(k.ID) != nil || !strings.Contains(out, k.ID) {
		t.Fatalf("create: %q, keys %+v", out, keys)
	}
	if id, err := familykey.ID(k.Secret); err != nil || id != k.ID {
		t.Fatalf("stored secret's id %s, stored id %s (%v)", id, k.ID, err)
	}
	n := auditCount(t, db)
	fails(t, db, "has a key already", "family", "create")
	if familyKeys(t, db)["fleet"].ID != k.ID || auditCount(t, db) != n {
		t.Fatal("a refused create changed something")
	}

	// A key made elsewhere, for another family.
	dir := t.TempDir()
	cmd := exec.Command(tor, "--keygen-family", "eu")
	cmd.Dir = dir
	tout, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("tor --keygen-family: %v\n%s", err, tout)
	}
	file := filepath.Join(dir, "eu"+familykey.FileSuffix)
	ok(t, db, "family", "import", file, "--family", "eu")
	eu := familyKeys(t, db)["eu"]
	if eu.Origin != store.OriginImported || !strings.Contains(string(tout), "FamilyId "+eu.ID) {
		t.Fatalf("import: %+v, tor said %s", eu, tout)
	}
	fails(t, db, "is family \"eu\"'s", "family", "rotate", "--import", file)
	fails(t, db, "a secret family key file is 96 bytes", "family", "import", db, "--family", "us")
	master := filepath.Join(dir, "master")
	os.WriteFile(master, append([]byte("== ed25519v1-secret: type0 ==\x00\x00\x00"), make([]byte, 64)...), 0o600)
	fails(t, db, "not a secret family key file", "family", "import", master, "--family", "us")
	fails(t, db, "not a family name", "family", "import", file, "--family", "Bad/Name")
	fails(t, db, "has no key to replace", "family", "rotate", "--family", "us")
	if _, have := familyKeys(t, db)["us"]; have {
		t.Fatal("a refused import stored a key")
	}

	out = ok(t, db, "family", "rotate")
	k2 := familyKeys(t, db)["fleet"]
	if k2.ID == k.ID || !strings.Contains(out, k.ID) || !strings.Contains(out, k2.ID) {
		t.Fatalf("rotate: %q, key %s -> %s", out, k.ID, k2.ID)
	}
	audit := ok(t, db, "audit")
	for _, want := range []string{"family.create", "family.import", "family.rotate"} {
		if !strings.Contains(audit, want) {
			t.Errorf("audit lacks %s:\n%s", want, audit)
		}
	}
	var views []familyView
	if err := json.Unmarshal([]byte(ok(t, db, "family", "list", "--json")), &views); err != nil {
		t.Fatal(err)
	}
	if len(views) != 2 || views[0].ID != eu.ID || views[1].ID != k2.ID {
		t.Fatalf("family list: %+v", views)
	}
	// The secret is printed nowhere.
	for _, args := range [][]string{{"family", "list"}, {"family", "list", "--json"}, {"audit", "--json"}} {
		o := ok(t, db, args...)
		for _, sec := range [][]byte{k2.Secret, eu.Secret} {
			if strings.Contains(o, string(sec)) || strings.Contains(o, base64.StdEncoding.EncodeToString(sec)) || strings.Contains(o, hex.EncodeToString(sec)) {
				t.Fatalf("%v prints a secret", args)
			}
		}
	}
	usageErr(t, db, "--yes", "family", "remove")
	ok(t, db, "family", "remove", "--family", "eu", "--yes")
	if _, have := familyKeys(t, db)["eu"]; have {
		t.Fatal("remove left the key")
	}
	fails(t, db, "has no key", "family", "remove", "--family", "eu", "--yes")
}

// Without tor, create says how to get one and stores nothing.
func TestFamilyCreateNoTor(t *testing.T) {
	db := filepath.Join(t.TempDir(), "p.db")
	fails(t, db, "no tor binary found", "family", "create", "--tor", filepath.Join(t.TempDir(), "nothing"))
	if len(familyKeys(t, db)) != 0 {
		t.Fatal("a key without tor")
	}
}
