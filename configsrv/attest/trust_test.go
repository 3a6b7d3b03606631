package attest_test

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"patela/configsrv/attest"
	"patela/configsrv/internal/tpmtest"
)

type ekWithCert struct {
	name   string
	public []byte
	parsed *tpm2.TPMTPublic
	cert   []byte
}

// eks returns the RSA EK (created from the TCG template) and the P-384 EK
// swtpm_setup persisted, each with the certificate swtpm_setup wrote.
func eks(t *testing.T, m *tpmtest.Manufactured) []ekWithCert {
	t.Helper()
	tpm, err := m.TPM.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer tpm.Close()
	rsa, err := tpm2.CreatePrimary{PrimaryHandle: tpm2.TPMRHEndorsement, InPublic: tpm2.New2B(tpm2.RSAEKTemplate)}.Execute(tpm)
	if err != nil {
		t.Fatal(err)
	}
	tpm2.FlushContext{FlushHandle: rsa.ObjectHandle}.Execute(tpm)
	ecc, err := tpm2.ReadPublic{ObjectHandle: tpmtest.ECCEKHandle}.Execute(tpm)
	if err != nil {
		t.Fatal(err)
	}
	var out []ekWithCert
	for _, k := range []struct {
		name  string
		pub   []byte
		index tpm2.TPMHandle
	}{{"rsa", rsa.OutPublic.Bytes(), tpmtest.RSAEKCertIndex}, {"ecc-p384", ecc.OutPublic.Bytes(), tpmtest.ECCEKCertIndex}} {
		cert, err := tpmtest.ReadNV(tpm, k.index)
		if err != nil {
			t.Fatalf("read %s EK certificate: %v", k.name, err)
		}
		parsed, err := attest.ParseEK(k.pub)
		if err != nil {
			t.Fatalf("%s EK: %v", k.name, err)
		}
		out = append(out, ekWithCert{k.name, k.pub, parsed, cert})
	}
	return out
}

// A swtpm EK certificate verifies against its local CA; one from another
// CA, one for another key, or none at all is refused unless the EK is
// allowlisted.
func TestEKCertificatesFromSwtpmSetup(t *testing.T) {
	a, b := tpmtest.Manufacture(t), tpmtest.Manufacture(t)
	ekA, ekB := eks(t, a), eks(t, b)
	trust := &attest.Trust{}
	if err := trust.LoadCADir(a.CADir); err != nil {
		t.Fatal(err)
	}
	for _, k := range ekA {
		if err := trust.Check(k.public, k.parsed, k.cert); err != nil {
			t.Errorf("%s EK with its own certificate: %v", k.name, err)
		}
	}
	refused := []struct {
		name string
		ek   ekWithCert
		cert []byte
	}{
		{"foreign CA", ekB[0], ekB[0].cert},
		{"foreign CA ecc", ekB[1], ekB[1].cert},
		{"certificate of another key", ekA[0], ekA[1].cert},
		{"certificate of another TPM", ekA[0], ekB[0].cert},
		{"no certificate", ekA[0], nil},
		{"garbage certificate", ekA[0], []byte{0x30, 0x03, 1, 2, 3}},
	}
	for _, r := range refused {
		if err := trust.Check(r.ek.public, r.ek.parsed, r.cert); !errors.Is(err, attest.ErrUntrusted) {
			t.Errorf("%s: %v, want ErrUntrusted", r.name, err)
		}
	}
	// The allowlist admits a certless EK.
	list := filepath.Join(t.TempDir(), "allow")
	sum := sha256.Sum256(ekB[0].public)
	os.WriteFile(list, []byte("# fleet\n"+hex.EncodeToString(sum[:])+"  # lab box\n"), 0o644)
	if err := trust.LoadAllowlist(list); err != nil {
		t.Fatal(err)
	}
	if err := trust.Check(ekB[0].public, ekB[0].parsed, nil); err != nil {
		t.Errorf("allowlisted EK: %v", err)
	}
	if err := trust.Check(ekB[1].public, ekB[1].parsed, nil); !errors.Is(err, attest.ErrUntrusted) {
		t.Errorf("EK not on the list: %v", err)
	}
	os.WriteFile(list, []byte("abcd\n"), 0o644)
	if err := trust.LoadAllowlist(list); err == nil {
		t.Error("short hash accepted in the allowlist")
	}
	// No policy configured: every EK may start (as pending).
	if err := (&attest.Trust{}).Check(ekB[0].public, ekB[0].parsed, nil); err != nil {
		t.Errorf("no policy: %v", err)
	}
}
