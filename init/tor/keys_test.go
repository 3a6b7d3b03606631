package tor

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"flag"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/google/go-tpm/tpm2"

	"patela/init/tpmdev"
	"patela/init/tpmkeys"
	"patela/init/vault"
	"patela/internal/api"
	"patela/internal/swtpmtest"
)

// tpmDevice is a TPM device the tests' vault uses instead of a swtpm of
// their own: the TPM of the test machine e2e's TestCgroupsInVM boots,
// which has no swtpm.
var tpmDevice = flag.String("tpm-device", "", "TPM device for the tests' key vault (default: a swtpm per test)")

// bootVault powers the swtpm in stateDir up (PCRs reset, NV kept) and
// opens the real key vault on it, as the agent does at boot; with
// -tpm-device, the vault is on that TPM.
func bootVault(t testing.TB, stateDir string) (*vault.Vault, func()) {
	stop := func() {}
	spec := *tpmDevice
	if spec == "" {
		tp := swtpmtest.StartState(t, stateDir)
		spec, stop = "unix:"+tp.Socket, tp.Stop
	}
	dev, err := tpmdev.Open(spec)
	if err != nil {
		t.Fatal(err)
	}
	ek, err := tpmkeys.EK(dev, tpm2.TPMAlgECC)
	if err != nil {
		t.Fatal(err)
	}
	ek.Close(dev)
	v, err := vault.Open(context.Background(), dev, vault.Options{EKName: ek.Name.Buffer, Log: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	return v, func() { dev.Close(); stop() }
}

// A new relay's keys, written by tor at its first start, are captured into
// the TPM vault, and again when tor rotates its onion keys; after a
// "reboot" (TPM power cycle, empty tmpfs) they are restored before tor
// starts, so the relay keeps its identity and its current onion key.
func TestKeysSurviveReboot(t *testing.T) {
	needTor(t)
	swtpmtest.Require(t)
	tpmState := t.TempDir()
	ctx := context.Background()

	v, powerOff := bootVault(t, tpmState)
	h := newHarness(t, func(o *Options) { o.Keys = v })
	spec := Spec{Name: "golf", UID: 20007, Torrc: serverTorrc("golf", 39107)}
	if err := h.sup.Apply(ctx, spec); err != nil {
		t.Fatal(err)
	}
	first := h.waitRunning(t, "golf")
	waitFor(t, "keys captured into the vault", func() bool { return slices.Contains(v.Relays(), "golf") })
	waitFor(t, "fingerprints", func() bool {
		first = h.status(t, "golf")
		return first.Fingerprint != "" && first.Ed25519ID != ""
	})
	// The identity is saved when the vault makes it, the onion keys once
	// tor wrote them.
	waitFor(t, "keys saved", func() bool {
		return !v.Unsaved("golf") && strings.Contains(h.logs.String(), "relay keys saved")
	})
	saves := strings.Count(h.logs.String(), "relay keys saved")

	// Onion key rotation, the real thing: tor rotates at startup when its
	// state says the key is older than 28 days.
	dataDir := filepath.Join(h.root, "state", "golf")
	stateFile := filepath.Join(dataDir, "state")
	state, err := os.ReadFile(stateFile)
	if err != nil {
		t.Fatal(err)
	}
	old := time.Now().AddDate(0, 0, -40).UTC().Format("2006-01-02 15:04:05")
	re := regexp.MustCompile(`(?m)^LastRotatedOnionKey .*$`)
	if re.Match(state) {
		state = re.ReplaceAll(state, []byte("LastRotatedOnionKey "+old))
	} else { // tor has not saved it yet
		state = append(state, "LastRotatedOnionKey "+old+"\n"...)
	}
	if err := os.WriteFile(stateFile, state, 0o600); err != nil {
		t.Fatal(err)
	}
	ntor := filepath.Join(dataDir, "keys", "secret_onion_key_ntor")
	before, _ := os.ReadFile(ntor)
	unix.Kill(first.PID, unix.SIGKILL)
	waitFor(t, "onion key rotated", func() bool {
		_, err := os.Stat(ntor + ".old")
		return err == nil
	})
	rotated, _ := os.ReadFile(ntor)
	tap := rsaModulus(t, filepath.Join(dataDir, "keys", "secret_onion_key"))
	if bytes.Equal(rotated, before) {
		t.Fatal("tor did not rotate its onion key")
	}
	// The watcher (not the capture on exit) saves the rotated key.
	waitFor(t, "rotated key saved", func() bool { return strings.Count(h.logs.String(), "relay keys saved") > saves })

	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	h.sup.Shutdown(sctx)
	cancel()
	powerOff()

	// Next boot: fresh tmpfs, TPM power-cycled.
	v2, powerOff2 := bootVault(t, tpmState)
	defer powerOff2()
	if !slices.Contains(v2.Relays(), "golf") {
		t.Fatalf("vault after reboot holds %v, not golf", v2.Relays())
	}
	h2 := newHarness(t, func(o *Options) { o.Keys = v2 })
	if err := h2.sup.Apply(ctx, spec); err != nil {
		t.Fatal(err)
	}
	h2.waitRunning(t, "golf")
	var again Status
	waitFor(t, "fingerprints after reboot", func() bool {
		again = h2.status(t, "golf")
		return again.Fingerprint != ""
	})
	if again.Fingerprint != first.Fingerprint || again.Ed25519ID != first.Ed25519ID {
		t.Fatalf("identity changed across reboot: %s/%s → %s/%s", first.Fingerprint, first.Ed25519ID, again.Fingerprint, again.Ed25519ID)
	}
	noMasterSecret(t, h2.root) // OfflineMasterKey: the vault restored no master secret
	fi, err := os.Stat(filepath.Join(h2.root, "state", "golf", "keys", "secret_id_key"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("restored secret_id_key: %v %v", fi, err)
	}
	if got, _ := os.ReadFile(filepath.Join(h2.root, "state", "golf", "keys", "secret_onion_key_ntor")); !bytes.Equal(got, rotated) {
		t.Error("the restored onion key is not the rotated one")
	}
	// The TAP onion key too: tor does not make one at every boot.
	if got := rsaModulus(t, filepath.Join(h2.root, "state", "golf", "keys", "secret_onion_key")); got != tap {
		t.Error("the restored TAP onion key is not the rotated one")
	}

	// Stopping the relay (the node was disabled) wipes the key files from
	// tmpfs and keeps the keys in the vault: the relay comes back as itself.
	if err := h2.sup.Stop(ctx, "golf"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(h2.root, "state", "golf")); !os.IsNotExist(err) || len(h2.sup.Status()) != 0 {
		t.Fatalf("after Stop: data directory %v, status %v", err, h2.sup.Status())
	}
	if !slices.Contains(v2.Relays(), "golf") || slices.Contains(v2.Retired(), "golf") {
		t.Fatalf("after Stop: active %v, retired %v; want golf active", v2.Relays(), v2.Retired())
	}
	if err := h2.sup.Apply(ctx, spec); err != nil {
		t.Fatal(err)
	}
	h2.waitRunning(t, "golf")
	waitFor(t, "fingerprints after a stop", func() bool {
		again = h2.status(t, "golf")
		return again.Fingerprint != ""
	})
	if again.Fingerprint != first.Fingerprint || again.Ed25519ID != first.Ed25519ID {
		t.Fatalf("identity changed across a stop: %s → %s", first.Fingerprint, again.Fingerprint)
	}

	// A relay that leaves the config is retired, not forgotten: its keys
	// stay in the vault, saved, and come back with it.
	if err := h2.sup.Remove(ctx, "golf"); err != nil {
		t.Fatal(err)
	}
	if slices.Contains(v2.Relays(), "golf") || !slices.Contains(v2.Retired(), "golf") {
		t.Errorf("after Remove: active %v, retired %v; want golf retired", v2.Relays(), v2.Retired())
	}
	waitFor(t, "retirement saved", func() bool { return !v2.Unsaved("golf") })
	if err := h2.sup.Apply(ctx, spec); err != nil {
		t.Fatal(err)
	}
	var back Status
	waitFor(t, "fingerprints after coming back", func() bool {
		back = h2.status(t, "golf")
		return back.State == api.RelayRunning && back.Fingerprint != ""
	})
	if back.Fingerprint != first.Fingerprint || back.Ed25519ID != first.Ed25519ID {
		t.Errorf("identity changed when the relay came back: %s → %s", first.Fingerprint, back.Fingerprint)
	}
	if !slices.Contains(v2.Relays(), "golf") || len(v2.Retired()) != 0 {
		t.Errorf("after coming back: active %v, retired %v", v2.Relays(), v2.Retired())
	}
}

// A new relay's keys reach the vault as soon as tor reports READY, not at
// the next poll: the window in which a power cut would cost a new relay
// its identity is as short as tor's own start.
func TestKeysCapturedAtReady(t *testing.T) {
	needTor(t)
	swtpmtest.Require(t)
	v, powerOff := bootVault(t, t.TempDir())
	defer powerOff()
	h := newHarness(t, func(o *Options) { o.Keys = v; o.KeyPoll = time.Hour })
	spec := Spec{Name: "hotel", UID: 20008, Torrc: serverTorrc("hotel", 39108)}
	if err := h.sup.Apply(context.Background(), spec); err != nil {
		t.Fatal(err)
	}
	h.waitRunning(t, "hotel")
	waitFor(t, "keys captured at READY with an hour-long poll", func() bool {
		return slices.Contains(v.Relays(), "hotel") && strings.Contains(h.logs.String(), "relay keys saved")
	})
}

// rsaModulus is the modulus of the PEM RSA key in path, in hex.
func rsaModulus(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(data)
	if blk == nil {
		t.Fatalf("%s: no PEM", path)
	}
	k, err := x509.ParsePKCS1PrivateKey(blk.Bytes)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return k.N.Text(16)
}
