package ospkg

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"
)

// Descriptor is NAME.json. Certificates are PEM blocks and signatures raw
// 64-byte Ed25519 signatures; JSON carries both as standard base64, and
// Signatures[i] pairs with Certificates[i].
type Descriptor struct {
	Version      int      `json:"version"`
	PkgURL       string   `json:"os_pkg_url"`
	Certificates [][]byte `json:"certificates"`
	Signatures   [][]byte `json:"signatures"`
}

// ParseDescriptor decodes and checks a descriptor's shape (not its
// signatures: see Verify).
func ParseDescriptor(b []byte) (*Descriptor, error) {
	if len(b) > MaxDescriptor {
		return nil, fmt.Errorf("ospkg: descriptor is %d bytes, more than the %d allowed", len(b), MaxDescriptor)
	}
	var d Descriptor
	if err := DecodeStrict(b, &d); err != nil {
		return nil, fmt.Errorf("ospkg: descriptor: %w", err)
	}
	if d.Version != 1 {
		return nil, fmt.Errorf("ospkg: descriptor: version %d, want 1", d.Version)
	}
	if len(d.Certificates) != len(d.Signatures) {
		return nil, fmt.Errorf("ospkg: descriptor: %d certificates but %d signatures", len(d.Certificates), len(d.Signatures))
	}
	if err := checkURL(d.PkgURL); err != nil {
		return nil, err
	}
	return &d, nil
}

// checkURL accepts "" (initramfs mode) or an http(s) URL, possibly
// relative to the descriptor's own URL, of a .zip.
func checkURL(s string) error {
	if s == "" {
		return nil
	}
	u, err := url.Parse(s)
	if err != nil {
		return fmt.Errorf("ospkg: os_pkg_url: %w", err)
	}
	if u.IsAbs() && u.Scheme != "http" && u.Scheme != "https" {
		return fmt.Errorf("ospkg: os_pkg_url %q: scheme must be http or https", s)
	}
	if !strings.HasSuffix(u.Path, ".zip") {
		return fmt.Errorf("ospkg: os_pkg_url %q does not name a .zip", s)
	}
	return nil
}

// Marshal encodes d as stmgr does (two-space indent), with empty arrays
// rather than null.
func (d *Descriptor) Marshal() ([]byte, error) {
	c := *d
	if c.Certificates == nil {
		c.Certificates = [][]byte{}
	}
	if c.Signatures == nil {
		c.Signatures = [][]byte{}
	}
	b, err := json.MarshalIndent(&c, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// Digest is what the signatures sign: the SHA-256 of the archive bytes.
func Digest(archive []byte) []byte {
	h := sha256.Sum256(archive)
	return h[:]
}

// ResolveURL turns the --url of `ospkg create` into the descriptor's
// os_pkg_url: an absolute http(s) URL of a .zip is kept; a base ending in
// "/" gets zipName appended; "" stays "" (initramfs mode). A relative URL
// is kept but reported: stboot resolves it against the descriptor's URL
// only from ST 1.1 on, and v0.2.2 refuses it ("missing scheme").
func ResolveURL(arg, zipName string) (u string, relative bool, err error) {
	if arg == "" {
		return "", false, nil
	}
	p, err := url.Parse(arg)
	if err != nil {
		return "", false, fmt.Errorf("ospkg: os_pkg_url: %w", err)
	}
	if p.IsAbs() && strings.HasSuffix(p.Path, "/") {
		arg = p.JoinPath(zipName).String()
	}
	if err := checkURL(arg); err != nil {
		return "", false, err
	}
	return arg, !p.IsAbs(), nil
}

// IsRelative reports whether a descriptor's os_pkg_url is a relative URL.
func IsRelative(u string) bool {
	p, err := url.Parse(u)
	return u != "" && err == nil && !p.IsAbs()
}

// RelativeURLWarning explains what a relative os_pkg_url means for stboot.
const RelativeURLWarning = "os_pkg_url %q is relative: stboot resolves it against the descriptor's URL only from ST 1.1 on; stboot v0.2.2 refuses it (\"missing scheme\"): give the absolute URL (--url https://HOST/PATH/NAME.zip or a base ending in /)"

// ParseCertificate reads one PEM CERTIFICATE block with nothing after it.
// PEM headers are refused, as stboot refuses them.
func ParseCertificate(p []byte) (*x509.Certificate, error) {
	blk, rest := pem.Decode(p)
	if blk == nil || blk.Type != "CERTIFICATE" {
		return nil, errors.New("not a PEM CERTIFICATE")
	}
	if len(blk.Headers) != 0 {
		return nil, errors.New("the PEM CERTIFICATE block has headers, which stboot refuses")
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return nil, errors.New("data after the certificate")
	}
	return x509.ParseCertificate(blk.Bytes)
}

// Sign adds a signature over archive by key, vouched for by certPEM, to d.
// The certificate must hold key's public key, and neither the certificate
// nor the key may have signed d already.
func Sign(d *Descriptor, archive []byte, key ed25519.PrivateKey, certPEM []byte) error {
	cert, err := ParseCertificate(certPEM)
	if err != nil {
		return fmt.Errorf("ospkg: signing certificate: %w", err)
	}
	pub, ok := cert.PublicKey.(ed25519.PublicKey)
	if !ok {
		return errors.New("ospkg: signing certificate has no Ed25519 key")
	}
	if p := EKUProblem(cert); p != "" {
		return fmt.Errorf("ospkg: signing certificate: %s", p)
	}
	if !pub.Equal(key.Public()) {
		return errors.New("ospkg: the signing key does not match the certificate")
	}
	for i, c := range d.Certificates {
		other, err := ParseCertificate(c)
		if err != nil {
			return fmt.Errorf("ospkg: descriptor certificate %d: %w", i, err)
		}
		if op, ok := other.PublicKey.(ed25519.PublicKey); ok && op.Equal(pub) {
			return fmt.Errorf("ospkg: the descriptor already holds a signature by this key (certificate %d)", i)
		}
	}
	sig := ed25519.Sign(key, Digest(archive))
	d.Certificates = append(d.Certificates, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}))
	d.Signatures = append(d.Signatures, sig)
	return nil
}

// SigResult says what Verify made of one (certificate, signature) pair.
type SigResult struct {
	Index   int
	Subject string
	Valid   bool
	Reason  string // why it does not count, when !Valid
}

// Result is the outcome of Verify.
type Result struct {
	Signatures []SigResult
	Valid      int // distinct keys with a good signature from a trusted chain
	Threshold  int
}

// OK reports whether enough signatures counted.
func (r *Result) OK() bool { return r.Valid >= r.Threshold }

// Verify checks d's signatures over archive as stboot does: a certificate
// that does not parse aborts; one that does not chain to a root (directly
// or as the root itself; no intermediates), is outside its validity at now,
// repeats a key already counted, or whose signature fails, does not count.
// Threshold must be positive.
func Verify(d *Descriptor, archive []byte, roots []*x509.Certificate, threshold int, now time.Time) (*Result, error) {
	if threshold < 1 {
		return nil, fmt.Errorf("ospkg: signature threshold %d, must be at least 1", threshold)
	}
	if len(roots) == 0 {
		return nil, errors.New("ospkg: no signing root certificates")
	}
	if len(d.Certificates) != len(d.Signatures) {
		return nil, fmt.Errorf("ospkg: descriptor: %d certificates but %d signatures", len(d.Certificates), len(d.Signatures))
	}
	pool := x509.NewCertPool()
	for _, r := range roots {
		pool.AddCert(r)
	}
	digest := Digest(archive)
	res := &Result{Threshold: threshold}
	var counted []ed25519.PublicKey
	for i := range d.Certificates {
		cert, err := ParseCertificate(d.Certificates[i])
		if err != nil {
			return nil, fmt.Errorf("ospkg: descriptor certificate %d: %w", i, err)
		}
		sr := SigResult{Index: i, Subject: cert.Subject.String()}
		pub, isEd := cert.PublicKey.(ed25519.PublicKey)
		// stboot's options: roots and the clock, no KeyUsages, so Go
		// demands serverAuth of every certificate that lists any EKU.
		_, verr := cert.Verify(x509.VerifyOptions{Roots: pool, CurrentTime: now})
		switch {
		case verr != nil:
			sr.Reason = "certificate not trusted: " + verr.Error()
			if p := EKUProblem(cert); p != "" {
				sr.Reason += " (" + p + ")"
			}
		case !isEd:
			sr.Reason = "certificate key is not Ed25519"
		case containsKey(counted, pub):
			sr.Reason = "key already counted (duplicate key)"
		case len(d.Signatures[i]) != ed25519.SignatureSize:
			sr.Reason = fmt.Sprintf("signature is %d bytes, want %d", len(d.Signatures[i]), ed25519.SignatureSize)
		case !ed25519.Verify(pub, digest, d.Signatures[i]):
			sr.Reason = "signature does not match the archive"
		default:
			sr.Valid = true
			counted = append(counted, pub)
			res.Valid++
		}
		res.Signatures = append(res.Signatures, sr)
	}
	return res, nil
}

func containsKey(keys []ed25519.PublicKey, k ed25519.PublicKey) bool {
	for _, x := range keys {
		if x.Equal(k) {
			return true
		}
	}
	return false
}

// ParseCertificates reads every PEM CERTIFICATE block of a roots file.
func ParseCertificates(p []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for {
		var blk *pem.Block
		blk, p = pem.Decode(p)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("PEM block %q is not a CERTIFICATE", blk.Type)
		}
		if len(blk.Headers) != 0 {
			return nil, errors.New("a PEM CERTIFICATE block has headers, which stboot refuses")
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	if len(bytes.TrimSpace(p)) != 0 {
		return nil, errors.New("data that is not PEM after the certificates")
	}
	if len(out) == 0 {
		return nil, errors.New("no PEM certificate")
	}
	return out, nil
}

// EKUProblem says why stboot would not accept cert for its extended key
// usage, or "" if it would. stboot verifies certificates with Go's
// defaults, which want serverAuth (or any) of a certificate that lists
// extended key usages at all; one that lists none is fine.
func EKUProblem(cert *x509.Certificate) string {
	if len(cert.ExtKeyUsage) == 0 && len(cert.UnknownExtKeyUsage) == 0 {
		return ""
	}
	for _, u := range cert.ExtKeyUsage {
		if u == x509.ExtKeyUsageAny || u == x509.ExtKeyUsageServerAuth {
			return ""
		}
	}
	return "its extended key usage lacks serverAuth and any; stboot verifies with Go's default (serverAuth) and would not count its signature: issue it without an extended key usage (stimage keygen does)"
}
