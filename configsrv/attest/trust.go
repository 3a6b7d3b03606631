package attest

import (
	"bufio"
	"bytes"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/asn1"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/google/go-tpm/tpm2"
)

// ErrUntrusted is returned when an EK fails the configured trust checks.
var ErrUntrusted = errors.New("endorsement key not trusted")

// oidSubjectAltName is marked critical in TCG EK certificates, with a
// directoryName Go's verifier does not understand.
var oidSubjectAltName = asn1.ObjectIdentifier{2, 5, 29, 17}

// Trust decides which EKs may attest. With neither a CA nor an allowlist
// every EK may (new nodes still start pending); otherwise an EK must be on
// the allowlist or come with a certificate that chains to the CA directory
// and certifies exactly this key.
type Trust struct {
	Roots         *x509.CertPool
	Intermediates *x509.CertPool
	Allow         map[[32]byte]bool // SHA-256 of the marshalled EK public area
}

// Enabled reports whether any check is configured.
func (t *Trust) Enabled() bool { return t != nil && (t.Roots != nil || t.Allow != nil) }

// LoadCADir reads every PEM certificate in dir (files ending .pem, .crt or
// .cer): self-signed ones become roots, the others intermediates.
func (t *Trust) LoadCADir(dir string) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	t.Roots, t.Intermediates = x509.NewCertPool(), x509.NewCertPool()
	n := 0
	for _, e := range ents {
		ext := strings.ToLower(filepath.Ext(e.Name()))
		if e.IsDir() || (ext != ".pem" && ext != ".crt" && ext != ".cer") {
			continue
		}
		data, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			return err
		}
		for {
			var b *pem.Block
			b, data = pem.Decode(data)
			if b == nil {
				break
			}
			if b.Type != "CERTIFICATE" {
				continue
			}
			c, err := x509.ParseCertificate(b.Bytes)
			if err != nil {
				return fmt.Errorf("%s: %w", e.Name(), err)
			}
			if bytes.Equal(c.RawIssuer, c.RawSubject) && c.CheckSignatureFrom(c) == nil {
				t.Roots.AddCert(c)
			} else {
				t.Intermediates.AddCert(c)
			}
			n++
		}
	}
	if n == 0 {
		return fmt.Errorf("%s: no PEM certificate found", dir)
	}
	return nil
}

// LoadAllowlist reads hex SHA-256 EK hashes, one per line; '#' starts a
// comment.
func (t *Trust) LoadAllowlist(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	t.Allow = map[[32]byte]bool{}
	sc := bufio.NewScanner(f)
	for ln := 1; sc.Scan(); ln++ {
		s, _, _ := strings.Cut(sc.Text(), "#")
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		b, err := hex.DecodeString(s)
		if err != nil || len(b) != 32 {
			return fmt.Errorf("%s:%d: not a hex SHA-256 EK hash", path, ln)
		}
		t.Allow[[32]byte(b)] = true
	}
	return sc.Err()
}

// Check applies the trust policy to the EK whose marshalled public area is
// ekPublic, with the optional DER certificate cert.
func (t *Trust) Check(ekPublic []byte, ek *tpm2.TPMTPublic, cert []byte) error {
	if !t.Enabled() {
		return nil
	}
	if t.Allow[sha256.Sum256(ekPublic)] {
		return nil
	}
	if t.Roots == nil {
		return fmt.Errorf("%w: not on the allowlist", ErrUntrusted)
	}
	if len(cert) == 0 {
		return fmt.Errorf("%w: no EK certificate and not on the allowlist", ErrUntrusted)
	}
	if err := t.verifyCert(ek, cert); err != nil {
		return fmt.Errorf("%w: %v", ErrUntrusted, err)
	}
	return nil
}

func (t *Trust) verifyCert(ek *tpm2.TPMTPublic, der []byte) error {
	c, err := ParseEKCertificate(der)
	if err != nil {
		return err
	}
	if _, err := c.Verify(x509.VerifyOptions{
		Roots:         t.Roots,
		Intermediates: t.Intermediates,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	}); err != nil {
		return err
	}
	pub, err := tpm2.Pub(*ek)
	if err != nil {
		return err
	}
	eq, ok := pub.(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !eq.Equal(c.PublicKey) {
		return errors.New("the certificate certifies another key")
	}
	return nil
}

// ParseEKCertificate parses an EK certificate as read from TPM NV: an
// optional TCG header (0x10 0x01, 2-byte length) and trailing padding are
// tolerated. The critical SubjectAltName of TCG certificates is accepted
// (its directoryName names the TPM model, not a host).
func ParseEKCertificate(b []byte) (*x509.Certificate, error) {
	if len(b) > 4 && b[0] == 0x10 && b[1] == 0x01 {
		n := int(b[2])<<8 | int(b[3])
		if n <= len(b)-4 {
			b = b[4 : 4+n]
		}
	}
	var raw asn1.RawValue
	rest, err := asn1.Unmarshal(b, &raw)
	if err != nil {
		return nil, fmt.Errorf("EK certificate: %w", err)
	}
	c, err := x509.ParseCertificate(b[:len(b)-len(rest)])
	if err != nil {
		return nil, fmt.Errorf("EK certificate: %w", err)
	}
	var keep []asn1.ObjectIdentifier
	for _, oid := range c.UnhandledCriticalExtensions {
		if !oid.Equal(oidSubjectAltName) {
			keep = append(keep, oid)
		}
	}
	c.UnhandledCriticalExtensions = keep
	return c, nil
}
