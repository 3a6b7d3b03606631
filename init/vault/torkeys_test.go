package vault

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"patela/internal/testutil"
)

// fingerprints runs tor offline on dataDir (creating any missing keys) and
// returns its RSA and ed25519 fingerprints. Safe to call from goroutines:
// failures are reported with Errorf and an empty result.
func fingerprints(t testing.TB, dataDir string) string {
	rc := filepath.Join(dataDir, "torrc")
	if err := os.WriteFile(rc, nil, 0o600); err != nil {
		t.Error(err)
		return ""
	}
	defer os.Remove(rc)
	args := []string{"--list-fingerprint", "--DisableNetwork", "1",
		"--DataDirectory", dataDir, "--ORPort", "127.0.0.1:auto",
		"--defaults-torrc", rc, "-f", rc, "--Log", "err stderr"}
	_, noMaster := os.Stat(filepath.Join(dataDir, "keys", fileEd25519Master))
	if _, err := os.Stat(filepath.Join(dataDir, "keys", "ed25519_signing_cert")); err == nil && noMaster != nil {
		args = append(args, "--OfflineMasterKey", "1") // restored by the vault: no master secret
	}
	out, err := exec.Command("tor", args...).CombinedOutput()
	if err != nil {
		t.Errorf("tor %v: %v\n%s", args, err, out)
		return ""
	}
	rsa, err1 := os.ReadFile(filepath.Join(dataDir, "fingerprint"))
	ed, err2 := os.ReadFile(filepath.Join(dataDir, "fingerprint-ed25519"))
	if err := errors.Join(err1, err2); err != nil {
		t.Error(err)
		return ""
	}
	return strings.TrimSpace(string(rsa)) + " " + strings.TrimSpace(string(ed))
}

// torKeys makes n relays' real key sets with tor, in parallel; the first
// gets a family key too. It returns the data directories and fingerprints.
func torKeys(t testing.TB, n int) (dirs, fps []string) {
	t.Helper()
	testutil.RequireTool(t, "tor", "apt-get install tor")
	dirs, fps = make([]string, n), make([]string, n)
	var wg sync.WaitGroup
	for i := range n {
		dirs[i] = t.TempDir()
		wg.Go(func() { fps[i] = fingerprints(t, dirs[i]) })
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	cmd := exec.Command("tor", "--keygen-family", "fam", "--defaults-torrc", "/dev/null", "--Log", "err stderr")
	cmd.Dir = filepath.Join(dirs[0], "keys")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("tor --keygen-family: %v\n%s", err, out)
	}
	return dirs, fps
}

func TestCaptureRealTorKeys(t *testing.T) {
	dirs, _ := torKeys(t, 1)
	e, err := captureEntry(filepath.Join(dirs[0], "keys"))
	if err != nil {
		t.Fatal(err)
	}
	if e.Ntor == nil || len(e.Family) != 1 || e.Family[0].Name != "fam" || len(e.RSAIdentity) != 128 {
		t.Fatalf("entry: ntor %d B, family %v, p‖q %d B", len(e.Ntor), e.Family, len(e.RSAIdentity))
	}
	files, err := keyFiles(e)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"ed25519_master_id_public_key", fileNtor, "fam" + familySuffix} {
		orig, _ := os.ReadFile(filepath.Join(dirs[0], "keys", name))
		if !bytes.Equal(orig, files[name]) {
			t.Errorf("%s not reproduced byte for byte", name)
		}
	}
	if _, ok := files[fileEd25519Master]; ok {
		t.Error("the master secret is among the files restored for tor")
	}
	// The TAP onion key comes back as the same RSA key, and tor takes it
	// as it is: started on the restored keys, it makes no new one.
	onion, _ := os.ReadFile(filepath.Join(dirs[0], "keys", fileOnion))
	if len(e.Onion) != 128 || !bytes.Equal(mustPQ(t, onion), mustPQ(t, files[fileOnion])) {
		t.Fatalf("TAP onion key: %d B captured, restored %q", len(e.Onion), files[fileOnion])
	}
	again := t.TempDir()
	if err := restoreEntry(e, again, os.Getuid(), os.Getgid()); err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string][]byte{fileEd25519Master: master0(t, dirs[0])} {
		os.WriteFile(filepath.Join(again, "keys", name), data, 0o600) // tor signs with its master here, as a test's key set
	}
	restored, _ := os.ReadFile(filepath.Join(again, "keys", fileOnion))
	if fps := fingerprints(t, again); fps == "" {
		t.Fatal("tor did not start on the restored keys")
	}
	if after, _ := os.ReadFile(filepath.Join(again, "keys", fileOnion)); !bytes.Equal(after, restored) {
		t.Error("tor replaced the restored TAP onion key")
	}
	master, _ := os.ReadFile(filepath.Join(dirs[0], "keys", fileEd25519Master))
	if !bytes.Equal(master[32:], e.Ed25519Master) {
		t.Error("the captured master secret is not tor's")
	}
}

func mustPQ(t *testing.T, pemData []byte) []byte {
	t.Helper()
	pq, err := rsaToPQ("key", pemData)
	if err != nil {
		t.Fatal(err)
	}
	return pq
}

func master0(t *testing.T, dir string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "keys", fileEd25519Master))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// restoreIssued restores a relay's keys and issues its signing key, as
// the supervisor does before tor starts.
func restoreIssued(t testing.TB, v *Vault, name, dir string, uid, gid int) (bool, error) {
	t.Helper()
	ok, err := v.Restore(name, dir, uid, gid)
	if ok && err == nil {
		_, err = v.Issue(name, dir, uid, gid, time.Now().Add(30*24*time.Hour))
	}
	return ok, err
}

func TestCaptureNotReady(t *testing.T) {
	if _, err := captureEntry(t.TempDir()); err != ErrNoKeys {
		t.Fatalf("empty dir: %v", err)
	}
}

// TestSymlinksNotFollowed: the keys directory belongs to the relay's user,
// who could plant links to files only root may read or write.
func TestSymlinksNotFollowed(t *testing.T) {
	dirs, _ := torKeys(t, 1)
	e, err := captureEntry(filepath.Join(dirs[0], "keys"))
	if err != nil {
		t.Fatal(err)
	}
	victim := filepath.Join(t.TempDir(), "victim")
	if err := os.WriteFile(victim, []byte("root's secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	data := t.TempDir()
	keys := filepath.Join(data, "keys")
	os.Mkdir(keys, 0o700)
	if err := os.Symlink(victim, filepath.Join(keys, fileRSAIdentity)); err != nil {
		t.Fatal(err)
	}
	if err := restoreEntry(e, data, 4242, 4242); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(victim); string(b) != "root's secret" {
		t.Fatal("restore wrote through a symlink")
	}
	if fi, _ := os.Lstat(filepath.Join(keys, fileRSAIdentity)); fi.Mode()&os.ModeSymlink != 0 {
		t.Fatal("the symlink is still there")
	}
	// Capture refuses a linked key file.
	os.Remove(filepath.Join(keys, fileEd25519Master))
	os.Symlink(victim, filepath.Join(keys, fileEd25519Master))
	if _, err := captureEntry(keys); err == nil {
		t.Fatal("capture followed a symlink")
	}
}
