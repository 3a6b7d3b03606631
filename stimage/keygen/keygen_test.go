package keygen

import (
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"testing"
	"time"
)

func parse(t *testing.T, p []byte) *x509.Certificate {
	t.Helper()
	b, _ := pem.Decode(p)
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestRootAndLeaf checks the certificate profile stmgr writes.
func TestRootAndLeaf(t *testing.T) {
	nb := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	rk, _ := NewKey()
	rp, err := Certificate(Request{Key: rk.Public().(ed25519.PublicKey), IsCA: true, NotBefore: nb, NotAfter: nb.Add(DefaultValidity), ParentKey: rk})
	if err != nil {
		t.Fatal(err)
	}
	root := parse(t, rp)
	sum := sha256.Sum256(rk.Public().(ed25519.PublicKey))
	if !root.IsCA || !root.MaxPathLenZero || root.KeyUsage != x509.KeyUsageDigitalSignature|x509.KeyUsageCertSign ||
		root.Subject.CommonName != hex.EncodeToString(sum[:]) || root.Issuer.String() != root.Subject.String() || !root.NotAfter.Equal(nb.Add(72*time.Hour)) {
		t.Errorf("root profile: %+v", root)
	}
	lk, _ := NewKey()
	lp, err := Certificate(Request{Key: lk.Public().(ed25519.PublicKey), NotBefore: nb, NotAfter: nb.Add(time.Hour), Parent: root, ParentKey: rk})
	if err != nil {
		t.Fatal(err)
	}
	leaf := parse(t, lp)
	if leaf.IsCA || leaf.KeyUsage != x509.KeyUsageDigitalSignature || leaf.Issuer.String() != root.Subject.String() {
		t.Errorf("leaf profile: %+v", leaf)
	}
	if err := leaf.CheckSignatureFrom(root); err != nil {
		t.Error(err)
	}

	// Refusals: no intermediates, wrong root key, inverted validity, leaf as issuer.
	ok := Request{Key: lk.Public().(ed25519.PublicKey), NotBefore: nb, NotAfter: nb.Add(time.Hour), Parent: root, ParentKey: rk}
	for name, mod := range map[string]func(r *Request){
		"intermediate": func(r *Request) { r.IsCA = true },
		"wrong key":    func(r *Request) { r.ParentKey = lk },
		"inverted":     func(r *Request) { r.NotAfter = nb.Add(-time.Hour) },
		"leaf issues":  func(r *Request) { r.Parent = leaf; r.ParentKey = lk },
		"orphan leaf":  func(r *Request) { r.Parent = nil },
		"foreign root": func(r *Request) { r.Parent = nil; r.IsCA = true; r.ParentKey = rk },
	} {
		r := ok
		mod(&r)
		if _, err := Certificate(r); err == nil {
			t.Errorf("%s: issued", name)
		}
	}
}

func TestKeysRoundTrip(t *testing.T) {
	k, _ := NewKey()
	p, err := MarshalPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	k2, err := ParsePrivateKey(p)
	if err != nil || !k2.Equal(k) {
		t.Fatalf("round trip: %v", err)
	}
	pub, err := ParsePublicKey(p)
	if err != nil || !pub.Equal(k.Public()) {
		t.Fatalf("public from private: %v", err)
	}
	der, _ := x509.MarshalPKIXPublicKey(k.Public())
	pub, err = ParsePublicKey(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
	if err != nil || !pub.Equal(k.Public()) {
		t.Fatalf("PKIX public: %v", err)
	}
	for _, bad := range []string{"", "junk", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"} {
		if _, err := ParsePrivateKey([]byte(bad)); err == nil {
			t.Errorf("parsed private key %q", bad)
		}
		if _, err := ParsePublicKey([]byte(bad)); err == nil {
			t.Errorf("parsed public key %q", bad)
		}
	}
}
