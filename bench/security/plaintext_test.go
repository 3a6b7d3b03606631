package security_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"patela/bench/srvproc"
	"patela/init/attest"
	"patela/init/tpmdev/tpmdevtest"
	"patela/init/vault"
	"patela/internal/testutil"
)

// A node stores real tor relay keys (made by Debian's tor) in its vault
// over a real swtpm, with the bundle too big for the NV it may use, so the
// ciphertext goes to the config server binary. The server's database
// files and its log then hold the ciphertext (checked, so the scan is
// looking at the right bytes) and none of the secret key material, raw,
// base64 or hex.
func TestServerNeverSeesRelayKeyPlaintext(t *testing.T) {
	testutil.RequireTool(t, "tor", "apt-get install tor")
	srv := srvproc.StartT(t, bin)
	client, err := srv.Client(netip.Addr{})
	if err != nil {
		t.Fatal(err)
	}
	dev := tpmdevtest.New(t).Dev
	log := slog.New(slog.DiscardHandler)
	sess, err := attest.NewSession(dev, client, log, attest.WithBackoff(20*time.Millisecond, 100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	go func() {
		for sess.NodeID() == 0 && ctx.Err() == nil {
			time.Sleep(10 * time.Millisecond)
		}
		srv.Admin("node", "enable", strconv.FormatInt(sess.NodeID(), 10))
	}()
	if _, err := sess.Wait(ctx); err != nil {
		t.Fatal(err)
	}

	dataDir := t.TempDir()
	torKeys(t, dataDir)
	v, err := vault.Open(ctx, dev, vault.Options{EKName: sess.EKName(), Log: log, NVMaxBytes: 256,
		Mirror: vault.ServerMirror{Client: client, Tokens: sess}})
	if err != nil {
		t.Fatal(err)
	}
	if changed, err := v.Capture("murazzano", dataDir); err != nil || !changed {
		t.Fatalf("capture: %v %v", changed, err)
	}
	if err := v.Save(ctx); err != nil {
		t.Fatal(err)
	}
	tok, _ := sess.Token(ctx)
	kb, err := client.GetKeys(ctx, tok)
	if err != nil {
		t.Fatalf("the bundle did not go to the server: %v", err)
	}

	needles := secrets(t, filepath.Join(dataDir, "keys"))
	var files = map[string][]byte{}
	for _, p := range []string{srv.DB, srv.DB + "-wal", srv.DB + "-shm", filepath.Join(srv.Dir, "server.log")} {
		if b, err := os.ReadFile(p); err == nil {
			files[filepath.Base(p)] = b
		}
	}
	found := false
	for _, b := range files {
		found = found || bytes.Contains(b, kb.Bundle)
	}
	if !found {
		t.Fatalf("the %d-byte ciphertext is in none of %d server files: the scan would prove nothing", len(kb.Bundle), len(files))
	}
	for name, b := range files {
		for what, n := range needles {
			for form, enc := range encodings(n) {
				if bytes.Contains(b, enc) {
					t.Errorf("%s holds %s (%s)", name, what, form)
				}
			}
		}
	}
	t.Logf("scanned %d server files for %d secrets (raw, hex, base64 at 3 alignments); ciphertext %d bytes found", len(files), len(needles), len(kb.Bundle))
}

// encodings are the forms secret n could take in a file: raw, hex, and
// base64 at each of the three alignments it could have inside a longer
// encoded string (without the partial characters at the ends).
func encodings(n []byte) map[string][]byte {
	m := map[string][]byte{"raw": n, "hex": []byte(hex.EncodeToString(n))}
	for off := range 3 {
		e := base64.StdEncoding.EncodeToString(append(make([]byte, off), n...))
		m["base64+"+strconv.Itoa(off)] = []byte(e[4 : len(e)-4])
	}
	return m
}

// torKeys has tor make a relay's keys offline, plus a family key.
func torKeys(t *testing.T, dataDir string) {
	t.Helper()
	rc := filepath.Join(t.TempDir(), "torrc")
	os.WriteFile(rc, nil, 0o600)
	out, err := exec.Command("tor", "--list-fingerprint", "--DisableNetwork", "1", "--DataDirectory", dataDir,
		"--ORPort", "127.0.0.1:auto", "--defaults-torrc", rc, "-f", rc, "--Log", "err stderr").CombinedOutput()
	if err != nil {
		t.Fatalf("tor --list-fingerprint: %v\n%s", err, out)
	}
	cmd := exec.Command("tor", "--keygen-family", "fam", "--defaults-torrc", "/dev/null", "--Log", "err stderr")
	cmd.Dir = filepath.Join(dataDir, "keys")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("tor --keygen-family: %v\n%s", err, out)
	}
}

// secrets returns the secret material of a tor keys directory: the
// ed25519 master secret, the RSA identity key (DER, and its primes), the
// ntor secret and the family secret.
func secrets(t *testing.T, keys string) map[string][]byte {
	t.Helper()
	read := func(name string) []byte {
		b, err := os.ReadFile(filepath.Join(keys, name))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	// tor's tagged key files: a 32-byte "== ... ==" header, then the key.
	tagged := func(name string, n int) []byte {
		b := read(name)
		if len(b) < 32+n || b[0] != '=' {
			t.Fatalf("%s: not a tagged key file", name)
		}
		return b[32 : 32+n]
	}
	m := map[string][]byte{
		"ed25519 master secret": tagged("ed25519_master_id_secret_key", 64),
		"ntor secret":           tagged("secret_onion_key_ntor", 32),
		"family secret":         tagged("fam.secret_family_key", 64),
	}
	blk, _ := pem.Decode(read("secret_id_key"))
	if blk == nil {
		t.Fatal("secret_id_key: no PEM block")
	}
	m["RSA identity key (DER)"] = blk.Bytes
	k, err := x509.ParsePKCS1PrivateKey(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	m["RSA identity prime p"] = k.Primes[0].Bytes()
	m["RSA identity prime q"] = k.Primes[1].Bytes()
	return m
}
