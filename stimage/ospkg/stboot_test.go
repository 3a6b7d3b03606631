package ospkg

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"strings"
	"testing"
	"time"
)

// leafWithEKU issues an Ed25519 leaf under root with the given extended
// key usages (stimage keygen never sets any; other tools do).
func leafWithEKU(t *testing.T, root *signer, ekus ...x509.ExtKeyUsage) *signer {
	t.Helper()
	pub, key, _ := ed25519.GenerateKey(rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "eku leaf"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: ekus, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, root.cert, pub, root.key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return &signer{key, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), c}
}

// TestEKU: stboot verifies with Go's default options, so a leaf listing
// extended key usages without serverAuth (or any) does not count there:
// Sign refuses it and Verify does not count it (a descriptor carrying one
// by other means); serverAuth and no EKU at all both count.
func TestEKU(t *testing.T) {
	now := time.Now()
	root := newSigner(t, nil, now.Add(-time.Hour), now.Add(time.Hour))
	zb, d := mustCreate(t)
	codeSign := leafWithEKU(t, root, x509.ExtKeyUsageCodeSigning)
	if err := Sign(d, zb, codeSign.key, codeSign.pem); err == nil || !strings.Contains(err.Error(), "serverAuth") {
		t.Fatalf("Sign with a codeSigning-only leaf: %v", err)
	}
	if len(d.Signatures) != 0 {
		t.Fatal("a refused signature was added")
	}
	// Put it in by hand, as another tool would.
	d.Certificates = append(d.Certificates, codeSign.pem)
	d.Signatures = append(d.Signatures, ed25519.Sign(codeSign.key, Digest(zb)))
	for _, s := range []*signer{leafWithEKU(t, root, x509.ExtKeyUsageServerAuth), leafWithEKU(t, root, x509.ExtKeyUsageAny), newSigner(t, root, now.Add(-time.Hour), now.Add(time.Hour))} {
		if err := Sign(d, zb, s.key, s.pem); err != nil {
			t.Fatal(err)
		}
	}
	res, err := Verify(d, zb, []*x509.Certificate{root.cert}, 1, now)
	if err != nil {
		t.Fatal(err)
	}
	if res.Valid != 3 || res.Signatures[0].Valid || !strings.Contains(res.Signatures[0].Reason, "serverAuth") {
		t.Fatalf("valid %d, first %+v; want 3 valid and the codeSigning leaf refused naming serverAuth", res.Valid, res.Signatures[0])
	}
}

// TestPEMHeaders: a certificate PEM block with headers is refused
// everywhere stimage reads one, as stboot refuses it.
func TestPEMHeaders(t *testing.T) {
	now := time.Now()
	root := newSigner(t, nil, now.Add(-time.Hour), now.Add(time.Hour))
	blk, _ := pem.Decode(root.pem)
	blk.Headers = map[string]string{"Comment": "signing root"}
	withHeaders := pem.EncodeToMemory(blk)
	if _, err := ParseCertificate(withHeaders); err == nil || !strings.Contains(err.Error(), "headers") {
		t.Errorf("ParseCertificate: %v", err)
	}
	if _, err := ParseCertificates(append(append([]byte{}, root.pem...), withHeaders...)); err == nil || !strings.Contains(err.Error(), "headers") {
		t.Errorf("ParseCertificates: %v", err)
	}
	zb, d := mustCreate(t)
	if err := Sign(d, zb, root.key, withHeaders); err == nil || len(d.Signatures) != 0 {
		t.Errorf("Sign with a headed certificate: %v, %d signatures", err, len(d.Signatures))
	}
	d.Certificates = [][]byte{withHeaders}
	d.Signatures = [][]byte{ed25519.Sign(root.key, Digest(zb))}
	if _, err := Verify(d, zb, []*x509.Certificate{root.cert}, 1, now); err == nil {
		t.Error("Verify accepted a descriptor certificate with PEM headers")
	}
}

// TestResolveURL: --url as stboot v0.2.2 needs it (absolute), a base
// directory (the zip's name appended), relative (kept, reported), and
// what no stboot fetches.
func TestResolveURL(t *testing.T) {
	for _, c := range []struct {
		arg, want string
		relative  bool
	}{
		{"https://boot.example.org/os/patela-os.zip", "https://boot.example.org/os/patela-os.zip", false},
		{"https://boot.example.org/os/", "https://boot.example.org/os/patela-os.zip", false},
		{"http://192.0.2.5/", "http://192.0.2.5/patela-os.zip", false},
		{"patela-os.zip", "patela-os.zip", true},
		{"", "", false},
	} {
		got, rel, err := ResolveURL(c.arg, "patela-os.zip")
		if err != nil || got != c.want || rel != c.relative {
			t.Errorf("ResolveURL(%q) = %q, %v, %v; want %q, %v", c.arg, got, rel, err, c.want, c.relative)
		}
		if IsRelative(got) != c.relative {
			t.Errorf("IsRelative(%q) = %v", got, !c.relative)
		}
	}
	for _, bad := range []string{"ftp://boot.example.org/os.zip", "https://boot.example.org/os.tar", "https://boot.example.org/"} {
		if got, _, err := ResolveURL(bad, "os.tar"); err == nil {
			t.Errorf("ResolveURL(%q) = %q, want an error", bad, got)
		}
	}
}
