package attest

import (
	"bufio"
	"bytes"
	"crypto"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/google/go-tpm/tpm2"
)

// ErrUntrusted is returned when an EK fails the configured trust checks.
var ErrUntrusted = errors.New("endorsement key not trusted")

var (
	// oidSubjectAltName is marked critical in TCG EK certificates, with a
	// directoryName Go's verifier does not understand.
	oidSubjectAltName = asn1.ObjectIdentifier{2, 5, 29, 17}
	// OIDEKCertificate is the TCG's extended key usage of EK certificates
	// (tcg-kp-EKCertificate).
	OIDEKCertificate = asn1.ObjectIdentifier{2, 23, 133, 8, 1}
	// The TPM attributes of the SubjectAltName's directoryName.
	oidTPMManufacturer = asn1.ObjectIdentifier{2, 23, 133, 2, 1}
	oidTPMModel        = asn1.ObjectIdentifier{2, 23, 133, 2, 2}
	oidTPMVersion      = asn1.ObjectIdentifier{2, 23, 133, 2, 3}
)

// Trust decides which EKs may attest. An EK whose certificate verifies
// against the CA directory is admitted as it is. Any other EK must be made
// from a TCG default EK template (CheckTemplate: ErrBadEK otherwise) and,
// when a CA or an allowlist is configured, be on the allowlist
// (ErrUntrusted otherwise). With neither configured every template EK may
// start (new nodes still start pending).
type Trust struct {
	Roots         *x509.CertPool
	Intermediates *x509.CertPool
	// Allow holds EK identities (ekid) and, as older allowlists name
	// nodes, SHA-256 hashes of the public area as sent.
	Allow map[[32]byte]bool
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

// LoadAllowlist reads hex EK identities (as `init tpm ek` prints them;
// older trees printed the SHA-256 of the EK public area, also accepted),
// one per line; '#' starts a comment.
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
			return fmt.Errorf("%s:%d: not a hex EK identity (64 hex digits)", path, ln)
		}
		t.Allow[[32]byte(b)] = true
	}
	return sc.Err()
}

// Admit applies the policy to ek, with the optional DER certificate cert.
// The error wraps ErrBadEK or ErrUntrusted.
func (t *Trust) Admit(ek *EK, cert []byte) error {
	var certErr error
	if t != nil && t.Roots != nil && len(cert) > 0 {
		if certErr = t.verifyCert(ek.Public, cert); certErr == nil {
			return nil
		}
	}
	if ek.TemplateErr != nil {
		if certErr != nil {
			return fmt.Errorf("%w (and its certificate: %v)", ek.TemplateErr, certErr)
		}
		return ek.TemplateErr
	}
	if !t.Enabled() || t.Allow[ek.ID] || t.Allow[ek.Raw] {
		return nil
	}
	switch {
	case certErr != nil:
		return fmt.Errorf("%w: %v", ErrUntrusted, certErr)
	case t.Roots == nil:
		return fmt.Errorf("%w: not on the allowlist", ErrUntrusted)
	}
	return fmt.Errorf("%w: no EK certificate and not on the allowlist", ErrUntrusted)
}

// verifyCert checks that der is an EK certificate (TCG EK key usage, TPM
// SubjectAltName) chaining to the CA directory through certificates that
// allow that use, and that it certifies exactly ek's key.
func (t *Trust) verifyCert(ek *tpm2.TPMTPublic, der []byte) error {
	c, err := ParseEKCertificate(der)
	if err != nil {
		return err
	}
	// Go checks signatures, validity, basic and name constraints; it knows
	// no EK key usage, so that is checked below on each chain it built.
	chains, err := c.Verify(x509.VerifyOptions{
		Roots:         t.Roots,
		Intermediates: t.Intermediates,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	})
	if err != nil {
		return err
	}
	if !slices.ContainsFunc(c.UnknownExtKeyUsage, OIDEKCertificate.Equal) {
		return errors.New("the certificate lacks the TCG EK key usage (2.23.133.8.1)")
	}
	if !slices.ContainsFunc(chains, ekUsageChain) {
		return errors.New("an issuing CA's extended key usage excludes EK certificates")
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

// ekUsageChain reports whether every CA of chain allows EK certificates:
// no extended key usage (unrestricted), anyExtendedKeyUsage, or the TCG's.
func ekUsageChain(chain []*x509.Certificate) bool {
	for _, ca := range chain[1:] {
		if len(ca.ExtKeyUsage) == 0 && len(ca.UnknownExtKeyUsage) == 0 {
			continue
		}
		if !slices.Contains(ca.ExtKeyUsage, x509.ExtKeyUsageAny) &&
			!slices.ContainsFunc(ca.UnknownExtKeyUsage, OIDEKCertificate.Equal) {
			return false
		}
	}
	return true
}

// ParseEKCertificate parses an EK certificate as read from TPM NV: an
// optional TCG header (0x10 0x01, 2-byte length) and trailing padding are
// tolerated. Its SubjectAltName must be the TCG's: a directoryName naming
// the TPM's manufacturer, model and version, which the TCG marks critical
// and Go's verifier does not handle; once checked here it is accepted.
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
	if err := checkTPMAltName(c); err != nil {
		return nil, fmt.Errorf("EK certificate: %w", err)
	}
	c.UnhandledCriticalExtensions = slices.DeleteFunc(c.UnhandledCriticalExtensions, oidSubjectAltName.Equal)
	return c, nil
}

// checkTPMAltName finds the SubjectAltName directoryName holding the TPM
// manufacturer, model and version attributes.
func checkTPMAltName(c *x509.Certificate) error {
	i := slices.IndexFunc(c.Extensions, func(e pkix.Extension) bool { return e.Id.Equal(oidSubjectAltName) })
	if i < 0 {
		return errors.New("no SubjectAltName naming the TPM")
	}
	var names []asn1.RawValue
	if rest, err := asn1.Unmarshal(c.Extensions[i].Value, &names); err != nil || len(rest) > 0 {
		return errors.New("malformed SubjectAltName")
	}
	for _, n := range names {
		if n.Class != asn1.ClassContextSpecific || n.Tag != 4 || !n.IsCompound {
			continue // not a directoryName
		}
		var dn pkix.RDNSequence
		if rest, err := asn1.Unmarshal(n.Bytes, &dn); err != nil || len(rest) > 0 {
			return errors.New("malformed SubjectAltName directoryName")
		}
		found := map[string]bool{}
		for _, rdn := range dn {
			for _, atv := range rdn {
				if s, ok := atv.Value.(string); ok && s != "" {
					found[atv.Type.String()] = true
				}
			}
		}
		if found[oidTPMManufacturer.String()] && found[oidTPMModel.String()] && found[oidTPMVersion.String()] {
			return nil
		}
	}
	return errors.New("the SubjectAltName does not name a TPM (manufacturer, model and version)")
}
