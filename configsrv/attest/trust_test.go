package attest_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"

	"patela/configsrv/attest"
	"patela/configsrv/attest/softek"
	"patela/configsrv/internal/tpmtest"
)

type ekWithCert struct {
	name string
	ek   *attest.EK
	cert []byte
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
		ek, err := attest.NewEK(k.pub)
		if err != nil {
			t.Fatalf("%s EK: %v", k.name, err)
		}
		out = append(out, ekWithCert{k.name, ek, cert})
	}
	return out
}

func newEK(t *testing.T, pub tpm2.TPMTPublic) *attest.EK {
	t.Helper()
	ek, err := attest.NewEK(tpm2.Marshal(pub))
	if err != nil {
		t.Fatal(err)
	}
	return ek
}

// The EKs a real TPM makes match the TCG templates, swtpm_setup's
// persisted P-384 EK (high range: SHA-384, AES-256, userWithAuth, PolicyB)
// included; the same key with anything else changed keeps its identity
// but is refused without a certificate.
func TestEKTemplates(t *testing.T) {
	m := tpmtest.Manufacture(t)
	got := eks(t, m)
	for i, want := range []string{"L-1 RSA-2048", "H-3 ECC P-384"} {
		if got[i].ek.Template != want || got[i].ek.TemplateErr != nil {
			t.Errorf("%s EK: template %q (%v), want %s", got[i].name, got[i].ek.Template, got[i].ek.TemplateErr, want)
		}
	}
	node := tpmtest.On(t, m.TPM, tpm2.ECCEKTemplate)
	real, err := attest.NewEK(node.EKPublic)
	if err != nil || real.Template != "L-2 ECC P-256" {
		t.Fatalf("swtpm's L-2 EK: %q %v", real.Template, err)
	}
	soft, _ := softek.New()
	if ek, err := attest.NewEK(soft.Public); err != nil || ek.Template != "L-2 ECC P-256" {
		t.Fatalf("the software EK: %q %v", ek.Template, err)
	}

	base := *real.Public
	pt, _ := base.Unique.ECC()
	variants := map[string]func(p *tpm2.TPMTPublic){
		"noDA":          func(p *tpm2.TPMTPublic) { p.ObjectAttributes.NoDA = true },
		"userWithAuth":  func(p *tpm2.TPMTPublic) { p.ObjectAttributes.UserWithAuth = true },
		"no policy":     func(p *tpm2.TPMTPublic) { p.AuthPolicy = tpm2.TPM2BDigest{} },
		"other policy":  func(p *tpm2.TPMTPublic) { p.AuthPolicy = tpm2.TPM2BDigest{Buffer: make([]byte, 32)} },
		"SHA-384 names": func(p *tpm2.TPMTPublic) { p.NameAlg = tpm2.TPMAlgSHA384 },
		"AES-256": func(p *tpm2.TPMTPublic) {
			e, _ := p.Parameters.ECCDetail()
			q := *e
			q.Symmetric.KeyBits = tpm2.NewTPMUSymKeyBits(tpm2.TPMAlgAES, tpm2.TPMKeyBits(256))
			p.Parameters = tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &q)
		},
		"padded point": func(p *tpm2.TPMTPublic) {
			p.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{
				X: tpm2.TPM2BECCParameter{Buffer: append([]byte{0}, pt.X.Buffer...)}, Y: pt.Y})
		},
	}
	for name, f := range variants {
		p := base
		f(&p)
		ek := newEK(t, p)
		if !errors.Is(ek.TemplateErr, attest.ErrBadEK) {
			t.Errorf("%s: template %q, err %v; want ErrBadEK", name, ek.Template, ek.TemplateErr)
		}
		if name != "SHA-384 names" && ek.ID != real.ID {
			t.Errorf("%s changed the EK identity", name)
		}
		if err := (&attest.Trust{}).Admit(ek, nil); !errors.Is(err, attest.ErrBadEK) {
			t.Errorf("%s admitted without a policy: %v", name, err)
		}
	}
	if err := (&attest.Trust{}).Admit(real, nil); err != nil {
		t.Errorf("the real EK, no policy: %v", err)
	}
}

// A swtpm EK certificate verifies against its local CA; one from another
// CA, one for another key, or none at all is refused unless the EK is
// allowlisted (by identity, or by the hash of its public area as older
// allowlists have it).
func TestEKCertificatesFromSwtpmSetup(t *testing.T) {
	a, b := tpmtest.Manufacture(t), tpmtest.Manufacture(t)
	ekA, ekB := eks(t, a), eks(t, b)
	trust := &attest.Trust{}
	if err := trust.LoadCADir(a.CADir); err != nil {
		t.Fatal(err)
	}
	for _, k := range ekA {
		if err := trust.Admit(k.ek, k.cert); err != nil {
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
		if err := trust.Admit(r.ek.ek, r.cert); !errors.Is(err, attest.ErrUntrusted) {
			t.Errorf("%s: %v, want ErrUntrusted", r.name, err)
		}
	}
	list := filepath.Join(t.TempDir(), "allow")
	legacy := sha256.Sum256(tpm2.Marshal(*ekB[1].ek.Public))
	os.WriteFile(list, []byte("# fleet\n"+ekB[0].ek.ID.String()+"  # lab box\n"+
		strings.ToUpper(ekid(legacy))+"\n"), 0o644)
	if err := trust.LoadAllowlist(list); err != nil {
		t.Fatal(err)
	}
	for _, k := range ekB {
		if err := trust.Admit(k.ek, nil); err != nil {
			t.Errorf("allowlisted %s EK: %v", k.name, err)
		}
	}
	if err := trust.Admit(ekA[0].ek, nil); !errors.Is(err, attest.ErrUntrusted) {
		t.Errorf("EK not on the list: %v", err)
	}
	os.WriteFile(list, []byte("abcd\n"), 0o644)
	if err := trust.LoadAllowlist(list); err == nil {
		t.Error("short hash accepted in the allowlist")
	}
	// No policy configured: every template EK may start (as pending).
	if err := (&attest.Trust{}).Admit(ekB[0].ek, nil); err != nil {
		t.Errorf("no policy: %v", err)
	}
}

func ekid(h [32]byte) string {
	const hexd = "0123456789abcdef"
	var s strings.Builder
	for _, c := range h {
		s.WriteByte(hexd[c>>4])
		s.WriteByte(hexd[c&15])
	}
	return s.String()
}

// testCA is a certificate authority made in the test, for certificates
// swtpm_setup cannot be asked to get wrong.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

var serial int64

func issue(t *testing.T, parent *testCA, tmpl *x509.Certificate, pub crypto.PublicKey) *testCA {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if pub == nil {
		pub = key.Public()
	}
	serial++
	tmpl.SerialNumber = big.NewInt(serial)
	tmpl.NotBefore, tmpl.NotAfter = time.Now().Add(-time.Hour), time.Now().Add(time.Hour)
	signer, issuer := key, tmpl
	if parent != nil {
		signer, issuer = parent.key, parent.cert
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, issuer, pub, signer)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &testCA{cert: c, key: key}
}

func caTmpl(name string, eku []x509.ExtKeyUsage, unknown ...asn1.ObjectIdentifier) *x509.Certificate {
	return &x509.Certificate{Subject: pkix.Name{CommonName: name}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign, ExtKeyUsage: eku, UnknownExtKeyUsage: unknown}
}

// tpmSAN is the TCG SubjectAltName: a critical directoryName with the
// TPM attributes given (manufacturer, model, version).
func tpmSAN(t *testing.T, attrs ...int) pkix.Extension {
	t.Helper()
	var rdn pkix.RDNSequence
	for _, a := range attrs {
		rdn = append(rdn, pkix.RelativeDistinguishedNameSET{{Type: asn1.ObjectIdentifier{2, 23, 133, 2, a}, Value: "id:00001014"}})
	}
	dn, err := asn1.Marshal(rdn)
	if err != nil {
		t.Fatal(err)
	}
	v, err := asn1.Marshal([]asn1.RawValue{{Class: asn1.ClassContextSpecific, Tag: 4, IsCompound: true, Bytes: dn}})
	if err != nil {
		t.Fatal(err)
	}
	return pkix.Extension{Id: asn1.ObjectIdentifier{2, 5, 29, 17}, Critical: true, Value: v}
}

// The EK certificate checks, case by case, with certificates from a CA
// made here: the TCG EK key usage on the certificate, CAs whose key usage
// allows it, the TPM SubjectAltName, and the certified key.
func TestEKCertificateRules(t *testing.T) {
	soft, _ := softek.New()
	ek, err := attest.NewEK(soft.Public)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := tpm2.Pub(*ek.Public)
	if err != nil {
		t.Fatal(err)
	}
	root := issue(t, nil, caTmpl("root", nil), nil)
	inter := issue(t, root, caTmpl("intermediate", nil), nil)
	serverOnly := issue(t, root, caTmpl("web CA", []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}), nil)
	tcgOnly := issue(t, root, caTmpl("EK CA", nil, attest.OIDEKCertificate), nil)
	dir := t.TempDir()
	var bundle []byte
	for _, c := range []*testCA{root, inter, serverOnly, tcgOnly} {
		bundle = append(bundle, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.cert.Raw})...)
	}
	os.WriteFile(filepath.Join(dir, "ca.pem"), bundle, 0o644)
	trust := &attest.Trust{}
	if err := trust.LoadCADir(dir); err != nil {
		t.Fatal(err)
	}
	other, _ := softek.New()
	otherEK, _ := attest.NewEK(other.Public)
	otherPub, _ := tpm2.Pub(*otherEK.Public)

	leaf := func(eku []x509.ExtKeyUsage, unknown []asn1.ObjectIdentifier, ext ...pkix.Extension) *x509.Certificate {
		return &x509.Certificate{KeyUsage: x509.KeyUsageKeyAgreement, ExtKeyUsage: eku, UnknownExtKeyUsage: unknown,
			ExtraExtensions: ext}
	}
	tcg := []asn1.ObjectIdentifier{attest.OIDEKCertificate}
	cases := []struct {
		name   string
		parent *testCA
		tmpl   *x509.Certificate
		key    crypto.PublicKey
		ok     bool
	}{
		{"TCG certificate", inter, leaf(nil, tcg, tpmSAN(t, 1, 2, 3)), pub, true},
		{"under a CA limited to EK certificates", tcgOnly, leaf(nil, tcg, tpmSAN(t, 1, 2, 3)), pub, true},
		{"no extended key usage", inter, leaf(nil, nil, tpmSAN(t, 1, 2, 3)), pub, false},
		{"server auth only", inter, leaf([]x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, nil, tpmSAN(t, 1, 2, 3)), pub, false},
		{"any key usage instead of the TCG's", inter, leaf([]x509.ExtKeyUsage{x509.ExtKeyUsageAny}, nil, tpmSAN(t, 1, 2, 3)), pub, false},
		{"under a web-server CA", serverOnly, leaf(nil, tcg, tpmSAN(t, 1, 2, 3)), pub, false},
		{"no SubjectAltName", inter, leaf(nil, tcg), pub, false},
		{"SubjectAltName without the model", inter, leaf(nil, tcg, tpmSAN(t, 1, 3)), pub, false},
		{"certifies another key", inter, leaf(nil, tcg, tpmSAN(t, 1, 2, 3)), otherPub, false},
	}
	for _, c := range cases {
		cert := issue(t, c.parent, c.tmpl, c.key).cert
		err := trust.Admit(ek, cert.Raw)
		if c.ok && err != nil {
			t.Errorf("%s: %v", c.name, err)
		}
		if !c.ok && !errors.Is(err, attest.ErrUntrusted) {
			t.Errorf("%s: %v, want ErrUntrusted", c.name, err)
		}
	}
	// A certified EK need not be made from a TCG template: the
	// manufacturer vouches for the key.
	odd := *ek.Public
	odd.ObjectAttributes.NoDA = true
	oddEK := newEK(t, odd)
	cert := issue(t, inter, leaf(nil, tcg, tpmSAN(t, 1, 2, 3)), pub).cert
	if err := trust.Admit(oddEK, cert.Raw); err != nil {
		t.Errorf("certified non-template EK: %v", err)
	}
	if err := trust.Admit(oddEK, nil); !errors.Is(err, attest.ErrBadEK) {
		t.Errorf("the same EK without its certificate: %v, want ErrBadEK", err)
	}
}
