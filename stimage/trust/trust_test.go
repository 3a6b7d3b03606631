package trust

import (
	"crypto/ed25519"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"patela/stimage/keygen"
	"patela/stimage/ospkg"
)

func TestLoadDir(t *testing.T) {
	d := t.TempDir()
	rk, _ := keygen.NewKey()
	now := time.Now()
	rp, _ := keygen.Certificate(keygen.Request{Key: rk.Public().(ed25519.PublicKey), IsCA: true, NotBefore: now, NotAfter: now.Add(time.Hour), ParentKey: rk})
	lk, _ := keygen.NewKey()
	root, _ := ospkg.ParseCertificate(rp)
	lp, _ := keygen.Certificate(keygen.Request{Key: lk.Public().(ed25519.PublicKey), NotBefore: now, NotAfter: now.Add(time.Hour), Parent: root, ParentKey: rk})

	os.WriteFile(filepath.Join(d, PolicyFile), []byte(`{"ospkg_signature_threshold": 2, "ospkg_fetch_method": "network"}`), 0o644)
	os.WriteFile(filepath.Join(d, RootsFile), append(append([]byte{}, rp...), rp...), 0o644)
	p, roots, err := LoadDir(d)
	if err != nil {
		t.Fatal(err)
	}
	if p.SignatureThreshold != 2 || len(roots) != 2 {
		t.Fatalf("policy %+v, %d roots", p, len(roots))
	}
	// A leaf is not a signing root.
	os.WriteFile(filepath.Join(d, RootsFile), lp, 0o644)
	if _, _, err := LoadDir(d); err == nil || !strings.Contains(err.Error(), "not a signing root") {
		t.Fatalf("leaf as root: %v", err)
	}
	os.WriteFile(filepath.Join(d, RootsFile), []byte("junk"), 0o644)
	if _, _, err := LoadDir(d); err == nil {
		t.Fatal("junk roots loaded")
	}
}

func TestHostConfigNormalises(t *testing.T) {
	h, err := ParseHostConfig([]byte(`{"ospkg_pointer": "https://a/os.json,https://b/os.json", "network_mode": "dhcp", "version": 1, "timestamp": 0}`))
	if err != nil {
		t.Fatal(err)
	}
	if *h.NetworkMode != "dhcp" || h.HostIP != nil {
		t.Fatalf("%+v", h)
	}
	if _, err := ParseHostConfig([]byte(`{"ospkg_pointer": "x", "network_mode": "dhcp", "bogus": 1}`)); err == nil {
		t.Fatal("unknown field accepted")
	}
}
