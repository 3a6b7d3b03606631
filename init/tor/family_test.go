package tor

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"patela/internal/api"
	"patela/internal/familykey"
	"patela/internal/swtpmtest"
	"patela/internal/testutil"
)

// newFamilyKey has tor make a family key, as configsrv family create does.
func newFamilyKey(t *testing.T, name string) api.FamilyKey {
	t.Helper()
	tor := testutil.RequireTool(t, "tor", "apt-get install tor")
	dir := t.TempDir()
	cmd := exec.Command(tor, "--keygen-family", "k")
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("tor --keygen-family: %v\n%s", err, out)
	}
	file, _ := os.ReadFile(filepath.Join(dir, "k"+familykey.FileSuffix))
	secret, err := familykey.Parse(file)
	if err != nil {
		t.Fatal(err)
	}
	id := regexp.MustCompile(`FamilyId (\S+)`).FindSubmatch(out)
	return api.FamilyKey{Name: name, ID: string(id[1]), Secret: secret}
}

func familySpec(name string, uid, port int, key *api.FamilyKey, family ...string) Spec {
	var extra []string
	if key != nil {
		extra = append(extra, "FamilyId "+key.ID)
	}
	for _, fp := range family {
		extra = append(extra, "MyFamily $"+fp)
	}
	s := Spec{Name: name, UID: uid, Torrc: serverTorrc(name, port, extra...)}
	if key != nil {
		s.Family = []api.FamilyKey{*key}
	}
	return s
}

// A relay starts with FamilyId and the family key the config carries
// (written 0600, the relay's, before tor starts), keeps it in the vault
// across a reboot, and takes a new key (rotation) and a new MyFamily by
// SIGHUP: same tor, tor's sandbox and all.
func TestFamilyKeys(t *testing.T) {
	needTor(t)
	swtpmtest.Require(t)
	tpmState := t.TempDir()
	ctx := context.Background()
	v, powerOff := bootVault(t, tpmState)
	h := newHarness(t, func(o *Options) { o.Keys = v })
	k1 := newFamilyKey(t, "patela-fleet")
	fp := strings.Repeat("AB", 20)
	if err := h.sup.Apply(ctx, familySpec("hotel", 20008, 39108, &k1, fp)); err != nil {
		t.Fatal(err)
	}
	st := h.waitRunning(t, "hotel")
	keyFile := filepath.Join(h.root, "state", "hotel", "keys", "patela-fleet"+familykey.FileSuffix)
	fi, err := os.Stat(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	if s := fi.Sys().(*syscall.Stat_t); fi.Mode().Perm() != 0o600 || s.Uid != 20008 {
		t.Errorf("family key file %v uid %d", fi.Mode(), s.Uid)
	}
	if b, _ := os.ReadFile(keyFile); !bytes.Equal(b, familykey.File(k1.Secret)) {
		t.Error("family key file is not tor's format of the served key")
	}
	waitFor(t, "family key in the vault", func() bool { return strings.Contains(h.logs.String(), "relay keys saved") && !v.Unsaved("hotel") })

	// MyFamily grows: a reload, not a restart.
	if err := h.sup.Apply(ctx, familySpec("hotel", 20008, 39108, &k1, fp, strings.Repeat("CD", 20))); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "reloaded", func() bool {
		s := h.status(t, "hotel")
		return s.Reloads == st.Reloads+1 && s.State == api.RelayRunning
	})
	if s := h.status(t, "hotel"); s.PID != st.PID || s.Restarts != 0 {
		t.Fatalf("MyFamily change: pid %d → %d, restarts %d", st.PID, s.PID, s.Restarts)
	}

	// Rotation: new key, same file name; tor reloads it on SIGHUP.
	k2 := newFamilyKey(t, "patela-fleet")
	if err := h.sup.Apply(ctx, familySpec("hotel", 20008, 39108, &k2, fp)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "reloaded with the new key", func() bool {
		s := h.status(t, "hotel")
		return s.Reloads == st.Reloads+2 && s.State == api.RelayRunning
	})
	time.Sleep(500 * time.Millisecond) // a tor refusing the reload would exit now
	if s := h.status(t, "hotel"); s.PID != st.PID || s.State != api.RelayRunning {
		t.Fatalf("after rotation: %+v (log: %s)", s, strings.Join(h.sup.Logs("hotel"), "\n"))
	}
	if logs := strings.Join(h.sup.Logs("hotel"), "\n"); strings.Contains(logs, "still using old keys") || strings.Contains(logs, "No key was found") {
		t.Fatalf("tor did not take the new family key:\n%s", logs)
	}
	if b, _ := os.ReadFile(keyFile); !bytes.Equal(b, familykey.File(k2.Secret)) {
		t.Fatal("the key file is not the rotated key")
	}
	waitFor(t, "rotated key in the vault", func() bool { return !v.Unsaved("hotel") })
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	h.sup.Shutdown(sctx)
	cancel()
	powerOff()

	// Next boot: the vault gives the relay its family key back with its
	// identity, before the config is applied.
	v2, powerOff2 := bootVault(t, tpmState)
	defer powerOff2()
	dir := traversableDir(t)
	if ok, err := v2.Restore("hotel", dir, 20008, 20008); err != nil || !ok {
		t.Fatalf("restore: %v %v", ok, err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "keys", "patela-fleet"+familykey.FileSuffix)); !bytes.Equal(b, familykey.File(k2.Secret)) {
		t.Fatal("the vault does not hold the rotated family key")
	}
}

// A FamilyId without its key (or with another key) is refused before tor
// starts: no tor, no account, no crash loop; a running relay keeps its
// configuration and its key.
func TestFamilyKeyMissing(t *testing.T) {
	h := newHarness(t, nil)
	ctx := context.Background()
	k := newFamilyKey(t, "patela-fleet")
	other := newFamilyKey(t, "patela-fleet")

	noKey := familySpec("india", 20009, 39109, &k)
	noKey.Family = nil
	wrong := familySpec("india", 20009, 39109, &k)
	wrong.Family = []api.FamilyKey{{Name: "patela-fleet", ID: k.ID, Secret: other.Secret}}
	badName := familySpec("india", 20009, 39109, &k)
	badName.Family[0].Name = "../../etc/x"
	for name, spec := range map[string]Spec{"no key": noKey, "another key": wrong, "bad name": badName} {
		err := h.sup.Apply(ctx, spec)
		var fe *FamilyError
		if !errors.As(err, &fe) {
			t.Fatalf("%s: %v", name, err)
		}
		if len(h.sup.Status()) != 0 {
			t.Fatalf("%s: a relay is supervised: %+v", name, h.sup.Status())
		}
		if pw, _ := os.ReadFile(filepath.Join(h.root, "etc", "passwd")); bytes.Contains(pw, []byte("_tor-india")) {
			t.Fatalf("%s: account left behind", name)
		}
		if _, err := os.Stat(filepath.Join(h.root, "state", "india")); !os.IsNotExist(err) {
			t.Fatalf("%s: DataDirectory left behind: %v", name, err)
		}
	}
	if !strings.Contains(h.sup.Apply(ctx, noKey).Error(), "FamilyId "+k.ID+" has no family key") {
		t.Error("the refusal does not name the FamilyId")
	}

	// Running with its key, then a config naming a key it does not carry.
	if err := h.sup.Apply(ctx, familySpec("india", 20009, 39109, &k)); err != nil {
		t.Fatal(err)
	}
	st := h.waitRunning(t, "india")
	next := familySpec("india", 20009, 39109, &other)
	next.Family = nil
	var fe *FamilyError
	if err := h.sup.Apply(ctx, next); !errors.As(err, &fe) {
		t.Fatalf("running relay, missing key: %v", err)
	}
	time.Sleep(300 * time.Millisecond)
	if s := h.status(t, "india"); s.PID != st.PID || s.Reloads != st.Reloads || s.Restarts != 0 {
		t.Fatalf("refused config disturbed the relay: %+v → %+v", st, s)
	}
	if b, _ := os.ReadFile(filepath.Join(h.root, "state", "india", "keys", "patela-fleet"+familykey.FileSuffix)); !bytes.Equal(b, familykey.File(k.Secret)) {
		t.Fatal("the running relay's key was touched")
	}
}
