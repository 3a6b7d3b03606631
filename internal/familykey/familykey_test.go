package familykey

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"testing"

	"patela/internal/testutil"
)

// The id of a key tor made is the id tor printed for it, and the file
// renders back to tor's bytes.
func TestTorKey(t *testing.T) {
	tor := testutil.RequireTool(t, "tor", "apt-get install tor")
	dir := t.TempDir()
	cmd := exec.Command(tor, "--keygen-family", "fam")
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("tor --keygen-family: %v\n%s", err, out)
	}
	m := regexp.MustCompile(`(?m)^FamilyId (\S+)$`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("no FamilyId in tor's output:\n%s", out)
	}
	file, err := os.ReadFile(filepath.Join(dir, "fam"+FileSuffix))
	if err != nil {
		t.Fatal(err)
	}
	secret, err := Parse(file)
	if err != nil {
		t.Fatal(err)
	}
	id, err := ID(secret)
	if err != nil || id != string(m[1]) {
		t.Fatalf("ID = %q, %v; tor says %s", id, err, m[1])
	}
	if err := CheckID(id); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(File(secret), file) {
		t.Fatal("File does not give tor's bytes back")
	}
	pub, _ := os.ReadFile(filepath.Join(dir, "fam.public_family_id"))
	if string(bytes.TrimSpace(pub)) != id {
		t.Fatalf("public_family_id %q, ID %q", pub, id)
	}
}

func TestBadInput(t *testing.T) {
	good := File(bytes.Repeat([]byte{7}, SecretSize))
	for name, f := range map[string][]byte{
		"empty":        nil,
		"short":        good[:90],
		"long":         append(bytes.Clone(good), 0),
		"other header": append([]byte("== ed25519v1-secret: type0 ==\x00\x00\x00"), good[32:]...),
		"junk padding": append(append([]byte(Header), 'x'), good[len(Header)+1:]...),
	} {
		if _, err := Parse(f); err == nil {
			t.Errorf("%s: parsed", name)
		}
	}
	for _, id := range []string{"", "short", "GgAr87nA6sloDoAClGn3glKS84czTamNBCig0iXh3VM=", "GgAr87nA6sloDoAClGn3glKS84czTamNBCig0iXh3V!",
		"GgAr87nA6sloDoAClGn3glKS84czTamNBCig0iXh3VN"} {
		if CheckID(id) == nil {
			t.Errorf("CheckID(%q) accepted", id)
		}
	}
	if _, err := ID(make([]byte, 32)); err == nil {
		t.Error("ID of a 32-byte secret")
	}
	for _, n := range []string{"", ".", "..", "a/b", "a b", string(bytes.Repeat([]byte("a"), 65))} {
		if ValidName(n) {
			t.Errorf("ValidName(%q)", n)
		}
	}
}
