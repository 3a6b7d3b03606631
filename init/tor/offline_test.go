package tor

import (
	"bytes"
	"context"
	"encoding/base64"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"patela/init/edcert"
	"patela/internal/api"
)

// noMasterSecret fails t if any file under root holds an ed25519 master
// secret key: by tor's file name, or by the header tor writes it with
// (the signing key's is type4, not type0).
func noMasterSecret(t *testing.T, root string) {
	t.Helper()
	n := 0
	filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return nil
		}
		n++
		if d.Name() == edcert.FileMasterSecret {
			t.Errorf("%s exists", p)
		}
		if b, err := os.ReadFile(p); err == nil && bytes.Contains(b, []byte(edcert.HeaderSecret)) {
			t.Errorf("%s holds a master secret key", p)
		}
		return nil
	})
	if n == 0 {
		t.Fatalf("no files under %s: the scan proves nothing", root)
	}
}

func signingCert(t *testing.T, dataDir string) *edcert.Cert {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dataDir, "keys", edcert.FileSigningCert))
	if err != nil {
		t.Fatal(err)
	}
	c, err := edcert.ParseCert(b)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// tor runs with OfflineMasterKey from a signing key and certificate the
// agent issued; its directories never hold the master secret; with a
// short lifetime the certificate is renewed (on the agent's clock) with
// the same identity, tor takes it by SIGHUP and runs on.
func TestOfflineMasterKey(t *testing.T) {
	var skew atomic.Int64 // how far the agent's clock runs ahead
	h := newHarness(t, func(o *Options) {
		o.SigningKeyLifetime, o.SigningKeyRenew = 3*24*time.Hour, 36*time.Hour
		o.Now = func() time.Time { return time.Now().Add(time.Duration(skew.Load())) }
	})
	spec := Spec{Name: "india", UID: 20009, Torrc: serverTorrc("india", 39109)}
	if err := h.sup.Apply(context.Background(), spec); err != nil {
		t.Fatal(err)
	}
	var st Status
	waitFor(t, "running with fingerprints", func() bool {
		st = h.status(t, "india")
		return st.State == api.RelayRunning && st.Ed25519ID != ""
	})
	dataDir := filepath.Join(h.root, "state", "india")
	live, _ := os.ReadFile(filepath.Join(h.root, "run", "india.torrc"))
	if !bytes.Contains(live, []byte("\nOfflineMasterKey 1\n")) {
		t.Fatalf("live torrc without OfflineMasterKey 1:\n%s", live)
	}
	c := signingCert(t, dataDir)
	if d := time.Until(c.Expires); d < 71*time.Hour || d > 72*time.Hour {
		t.Errorf("certificate expires in %v, want the 3-day lifetime", d)
	}
	pub, _ := os.ReadFile(filepath.Join(dataDir, "keys", edcert.FileMasterPublic))
	if !bytes.Equal(pub[32:], c.Master) || !strings.HasPrefix(st.Ed25519ID, strings.TrimRight(b64(c.Master), "=")) {
		t.Errorf("tor's ed25519 identity %s is not the vault's master %s", st.Ed25519ID, b64(c.Master))
	}
	noMasterSecret(t, h.root)

	skew.Store(int64(40 * time.Hour)) // 32 h left on the agent's clock: renew
	var now Status
	waitFor(t, "renewed and reloaded", func() bool {
		now = h.status(t, "india")
		return now.Reloads >= 1 && now.State == api.RelayRunning
	})
	c2 := signingCert(t, dataDir)
	if bytes.Equal(c2.SigningKey, c.SigningKey) || !bytes.Equal(c2.Master, c.Master) || !c2.Expires.After(c.Expires) {
		t.Errorf("renewal: signing key new %v, same master %v, expires %v after %v",
			!bytes.Equal(c2.SigningKey, c.SigningKey), bytes.Equal(c2.Master, c.Master), c2.Expires, c.Expires)
	}
	time.Sleep(time.Second) // tor checks its keys; it would exit on a bad one
	now = h.status(t, "india")
	if now.PID != st.PID || now.State != api.RelayRunning || now.Ed25519ID != st.Ed25519ID || now.Restarts != 0 {
		t.Errorf("after renewal: %+v, was %+v", now, st)
	}
	logs := strings.Join(h.sup.Logs("india"), "\n")
	for _, bad := range []string{"still using old keys", "Unable to update Ed25519 keys", "Can't load master identity key"} {
		if strings.Contains(logs, bad) {
			t.Errorf("tor: %q\n%s", bad, logs)
		}
	}
	if n := strings.Count(h.logs.String(), "signing certificate renewed"); n != 1 {
		t.Errorf("renewed %d times, want once", n)
	}
	noMasterSecret(t, h.root)
}

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }
