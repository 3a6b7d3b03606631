package vault

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"patela/configsrv/testsrv"
	"patela/init/tpmkeys"
)

// mirrorState is `configsrv keys show N --json`, run by the admin CLI on
// the real server's database.
type mirrorState struct {
	Present bool   `json:"present"`
	Version uint64 `json:"version"`
	Size    int    `json:"size"`
}

func adminKeysShow(t *testing.T, srv *testsrv.Server, id int64) mirrorState {
	t.Helper()
	var s mirrorState
	out := srv.Admin(t, "keys", "show", strconv.FormatInt(id, 10), "--json")
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		t.Fatalf("keys show --json: %v\n%s", err, out)
	}
	return s
}

// checkRecoveryMessage: the refusal tells the operator both commands and
// what they cost.
func checkRecoveryMessage(t *testing.T, err error) {
	t.Helper()
	for _, want := range []string{"refusing to replace", "init tpm clear-vault --yes", "configsrv keys drop N --yes", "NEW identity"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("the refusal does not say %q:\n%v", want, err)
		}
	}
}

// savedToMirror opens a fresh vault on m with NV capped so the bundle
// goes to the server's mirror, and saves the relays of dirs (names[i]
// from dirs[i]) once per relay, so the mirror ends at version len(dirs).
func savedToMirror(t *testing.T, m *machine, srv *testsrv.Server, names, dirs []string) int64 {
	t.Helper()
	c := srv.Client(t)
	sess := attested(t, m, srv, c)
	v := m.mustOpen(mirrorOptions(sess, c))
	for i, d := range dirs {
		if _, err := v.Capture(names[i], d); err != nil {
			t.Fatal(err)
		}
		if err := v.Save(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	id := sess.NodeID()
	if s := adminKeysShow(t, srv, id); !s.Present || s.Version != uint64(len(dirs)) || s.Size == 0 {
		t.Fatalf("mirror before the clear: %+v", s)
	}
	if st, err := Inspect(m.Dev); err != nil || st.Location != "mirror" || !st.Sealed {
		t.Fatalf("vault before the clear: %+v %v", st, err)
	}
	return id
}

// reopen reboots m, attests again (the same node: the EK survives) and
// opens the vault with the mirror.
func reopen(t *testing.T, m *machine, srv *testsrv.Server, id int64) (*Vault, error) {
	t.Helper()
	m.boot()
	c := srv.Client(t)
	sess := attested(t, m, srv, c)
	if sess.NodeID() != id {
		t.Fatalf("after the clear the machine is node %d, was %d", sess.NodeID(), id)
	}
	return m.open(mirrorOptions(sess, c))
}

// TestRecoverAfterTPMClear: a real TPM2_Clear on swtpm takes the sealed
// vault key and the vault's NV (owner hierarchy) but keeps the EK, so the
// machine is the same node and the server still mirrors its old bundle.
// The vault refuses to start over and says how; after the operator runs
// `configsrv keys drop N --yes` (and clear-vault on the node) the vault
// opens empty, the relays get new keys, the mirror accepts them at
// version 1 (below the dropped version), and they come back on the next
// boot.
func TestRecoverAfterTPMClear(t *testing.T) {
	names := []string{"murazzano", "bra"}
	dirs, fps := torKeys(t, 2)
	srv := testsrv.Start(t)
	m := newMachine(t)
	id := savedToMirror(t, m, srv, names, dirs)
	ek := bytes.Clone(m.EK)

	if _, err := (tpm2.Clear{AuthHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHLockout, Auth: tpm2.PasswordAuth(nil)}}).Execute(m.Dev); err != nil {
		t.Fatalf("TPM2_Clear: %v", err)
	}
	if st, err := Inspect(m.Dev); err != nil || st.Sealed || st.Header || st.NVIndices != 0 {
		t.Fatalf("vault after TPM2_Clear: %+v %v", st, err)
	}

	_, err := reopen(t, m, srv, id)
	if !bytes.Equal(m.EK, ek) {
		t.Fatal("TPM2_Clear changed the EK")
	}
	if !errors.Is(err, ErrOrphaned) {
		t.Fatalf("open after TPM2_Clear with the old bundle mirrored: %v, want ErrOrphaned", err)
	}
	checkRecoveryMessage(t, err)
	if s := adminKeysShow(t, srv, id); !s.Present || s.Version != 2 {
		t.Fatalf("the refusal changed the mirror: %+v", s)
	}
	// Refused again on the next boot: nothing was replaced.
	if _, err := reopen(t, m, srv, id); !errors.Is(err, ErrOrphaned) {
		t.Fatalf("second boot: %v", err)
	}

	// The operator's way out, as the message says.
	node := strconv.FormatInt(id, 10)
	if _, err := srv.AdminErr("keys", "drop", node); err == nil || !strings.Contains(err.Error(), "--yes") {
		t.Fatalf("keys drop without --yes: %v", err)
	}
	if s := adminKeysShow(t, srv, id); !s.Present {
		t.Fatal("keys drop without --yes dropped the bundle")
	}
	srv.Admin(t, "keys", "drop", node, "--yes")
	if err := Clear(m.Dev); err != nil { // init tpm clear-vault --yes
		t.Fatal(err)
	}
	if s := adminKeysShow(t, srv, id); s.Present {
		t.Fatalf("mirror after keys drop: %+v", s)
	}
	if out := srv.Admin(t, "audit", "--limit", "5"); !strings.Contains(out, "keys.drop") || !strings.Contains(out, "node:"+node) {
		t.Fatalf("no keys.drop audit row:\n%s", out)
	}

	v, err := reopen(t, m, srv, id)
	if err != nil {
		t.Fatalf("open after keys drop: %v", err)
	}
	if r := v.Relays(); len(r) != 0 {
		t.Fatalf("the new vault holds %v", r)
	}
	if ok, err := v.Restore(names[0], filepath.Join(t.TempDir(), "data"), os.Getuid(), os.Getgid()); ok || err != nil {
		t.Fatalf("restore from the new vault: %v %v, want a fresh start", ok, err)
	}
	// Tor makes new keys; the vault keeps them, the mirror takes version 1.
	newDirs, newFps := torKeys(t, 1)
	if newFps[0] == fps[0] {
		t.Fatal("tor made the same keys twice")
	}
	if changed, err := v.Capture(names[0], newDirs[0]); !changed || err != nil {
		t.Fatalf("capture: %v %v", changed, err)
	}
	if err := v.Save(context.Background()); err != nil {
		t.Fatalf("first save after keys drop: %v", err)
	}
	if s := adminKeysShow(t, srv, id); !s.Present || s.Version != 1 {
		t.Fatalf("mirror after the first save of the new vault: %+v", s)
	}

	v, err = reopen(t, m, srv, id)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "data")
	if ok, err := restoreIssued(t, v, names[0], dir, os.Getuid(), os.Getgid()); !ok || err != nil {
		t.Fatalf("restore after reboot: %v %v", ok, err)
	}
	if got := fingerprints(t, dir); got != newFps[0] {
		t.Fatalf("relay after reboot: %q, want the new identity %q (old %q)", got, newFps[0], fps[0])
	}
	if r := v.Relays(); len(r) != 1 {
		t.Fatalf("vault after reboot holds %v", r)
	}
}

// TestRecoverAfterSealedKeyLost: only the sealed key is gone (evicted, a
// partial clear); the NV header still says the bundle is on the server.
// Both copies must go: clear-vault alone turns ErrKeyLost into
// ErrOrphaned, and only keys drop lets the vault start over.
func TestRecoverAfterSealedKeyLost(t *testing.T) {
	dirs, _ := torKeys(t, 1)
	srv := testsrv.Start(t)
	m := newMachine(t)
	id := savedToMirror(t, m, srv, []string{"murazzano"}, dirs)
	if err := tpmkeys.Evict(m.Dev, tpmkeys.SealHandle); err != nil {
		t.Fatal(err)
	}
	_, err := reopen(t, m, srv, id)
	if !errors.Is(err, ErrKeyLost) {
		t.Fatalf("open with the sealed key evicted: %v, want ErrKeyLost", err)
	}
	checkRecoveryMessage(t, err)

	if err := Clear(m.Dev); err != nil { // init tpm clear-vault --yes
		t.Fatal(err)
	}
	_, err = reopen(t, m, srv, id)
	if !errors.Is(err, ErrOrphaned) {
		t.Fatalf("open after clear-vault, mirror not dropped: %v, want ErrOrphaned", err)
	}
	checkRecoveryMessage(t, err)

	srv.Admin(t, "keys", "drop", strconv.FormatInt(id, 10), "--yes")
	v, err := reopen(t, m, srv, id)
	if err != nil {
		t.Fatalf("open after clear-vault and keys drop: %v", err)
	}
	if r := v.Relays(); len(r) != 0 {
		t.Fatalf("the new vault holds %v", r)
	}
}
