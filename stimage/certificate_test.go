package main

import (
	"bytes"
	"crypto/ed25519"
	"crypto/x509"
	"encoding/pem"
	"os"
	"slices"
	"strings"
	"testing"

	"patela/stimage/keygen"
)

func parseCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	b, _ := pem.Decode(read(t, path))
	if b == nil {
		t.Fatalf("%s: no PEM", path)
	}
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func files(t *testing.T) []string {
	t.Helper()
	ents, err := os.ReadDir(".")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

// TestRootKey: `--is-ca --root-key K` makes a root certificate of K (a
// leaf K's old root issued verifies under it) and writes no key; flags the
// command would ignore are refused, and nothing is written.
func TestRootKey(t *testing.T) {
	t.Chdir(t.TempDir()) // the default outputs land here, if anywhere
	stimage(t, "keygen", "certificate", "--is-ca", "--cert-out", "root1.pem", "--key-out", "root.key")
	stimage(t, "keygen", "certificate", "--root-cert", "root1.pem", "--root-key", "root.key", "--cert-out", "leaf.pem", "--key-out", "leaf.key")
	key := read(t, "root.key")

	stimage(t, "keygen", "certificate", "--is-ca", "--root-key", "root.key", "--valid-until", "2099-01-01T00:00:00Z", "--cert-out", "root2.pem")
	stimage(t, "keygen", "certificate", "-isCA", "-rootKey", "root.key", "-certOut", "root3.pem")
	if want := []string{"leaf.key", "leaf.pem", "root.key", "root1.pem", "root2.pem", "root3.pem"}; !slices.Equal(files(t), want) {
		t.Fatalf("files %v, want %v", files(t), want)
	}
	if !bytes.Equal(read(t, "root.key"), key) {
		t.Fatal("--root-key K rewrote K")
	}
	priv, err := keygen.ParsePrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"root2.pem", "root3.pem"} {
		root := parseCert(t, name)
		if pub, ok := root.PublicKey.(ed25519.PublicKey); !ok || !pub.Equal(priv.Public()) || !root.IsCA {
			t.Fatalf("%s does not certify root.key as a CA", name)
		}
		if err := root.CheckSignatureFrom(root); err != nil {
			t.Fatalf("%s is not self-signed: %v", name, err)
		}
		roots := x509.NewCertPool()
		roots.AddCert(root)
		if _, err := parseCert(t, "leaf.pem").Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
			t.Errorf("leaf of the old root under %s: %v", name, err)
		}
	}
	if got := parseCert(t, "root2.pem").NotAfter.Year(); got != 2099 {
		t.Errorf("root2 valid until %d", got)
	}

	before := files(t)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--is-ca", "--root-key", "root.key", "--root-cert", "root1.pem", "--cert-out", "x.pem"}, "--root-cert with --is-ca"},
		{[]string{"--is-ca", "-rootCert", "root1.pem", "--cert-out", "x.pem"}, "--root-cert with --is-ca"},
		{[]string{"--is-ca", "--root-key", "root.key", "--leaf-key", "leaf.key", "--cert-out", "x.pem"}, "--root-key and --leaf-key"},
		{[]string{"--is-ca", "--root-key", "root.key", "--key-out", "x.key", "--cert-out", "x.pem"}, "--key-out with root.key"},
		{[]string{"--leaf-key", "leaf.key", "--key-out", "x.key", "--cert-out", "x.pem"}, "--key-out with leaf.key"},
	} {
		code, out, errs := runOut(append([]string{"keygen", "certificate"}, tc.args...)...)
		if code != 2 || out != "" || !strings.Contains(errs, tc.want) {
			t.Errorf("keygen certificate %q: exit %d, stdout %q, stderr %q; want exit 2 and %q", tc.args, code, out, errs, tc.want)
		}
	}
	// Not a private key: a failure.
	if code, _, errs := runOut("keygen", "certificate", "--is-ca", "--root-key", "leaf.pem", "--cert-out", "x.pem"); code != 1 || !strings.Contains(errs, "needs the root's private key") {
		t.Errorf("--is-ca --root-key CERT: exit %d %q", code, errs)
	}
	if !slices.Equal(files(t), before) {
		t.Errorf("refused commands wrote files: %v, before %v", files(t), before)
	}
}
