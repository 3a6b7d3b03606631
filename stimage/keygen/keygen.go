// Package keygen makes the Ed25519 certificates of OS package signing, as
// stmgr does: a self-signed root that may sign packages and leaves, and
// leaf (signing) certificates issued by it. No intermediates: stboot
// accepts chains of at most two.
package keygen

import (
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"time"
)

// DefaultValidity is stmgr's default lifetime; production roots and
// signing keys want a deliberate --valid-until.
const DefaultValidity = 72 * time.Hour

// Request describes a certificate to issue.
type Request struct {
	Key       ed25519.PublicKey
	IsCA      bool
	NotBefore time.Time
	NotAfter  time.Time
	Parent    *x509.Certificate  // nil for a self-signed root
	ParentKey ed25519.PrivateKey // signs the certificate (the root's own key when self-signed)
}

// Certificate issues the certificate and returns its PEM. The subject's
// common name is the hex SHA-256 of the public key, as with stmgr.
func Certificate(r Request) ([]byte, error) {
	if len(r.Key) != ed25519.PublicKeySize {
		return nil, errors.New("keygen: no Ed25519 public key")
	}
	if len(r.ParentKey) != ed25519.PrivateKeySize {
		return nil, errors.New("keygen: no Ed25519 signing key")
	}
	if !r.NotAfter.After(r.NotBefore) {
		return nil, fmt.Errorf("keygen: valid-until %s is not after valid-from %s", r.NotAfter.Format(time.RFC3339), r.NotBefore.Format(time.RFC3339))
	}
	if r.Parent == nil && !r.IsCA {
		return nil, errors.New("keygen: a certificate without a parent must be a root (--is-ca)")
	}
	if r.Parent != nil {
		if !r.Parent.IsCA || r.Parent.KeyUsage&x509.KeyUsageCertSign == 0 {
			return nil, errors.New("keygen: the parent certificate is not a signing root (CA with certSign)")
		}
		pk, ok := r.Parent.PublicKey.(ed25519.PublicKey)
		if !ok || !pk.Equal(r.ParentKey.Public()) {
			return nil, errors.New("keygen: the root key does not match the root certificate")
		}
		if r.IsCA {
			return nil, errors.New("keygen: stboot takes no intermediate CAs; a certificate issued by a root must be a leaf")
		}
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(r.Key)
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: hex.EncodeToString(sum[:])},
		NotBefore:             r.NotBefore.UTC(),
		NotAfter:              r.NotAfter.UTC(),
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageDigitalSignature,
	}
	parent := tmpl
	if r.IsCA {
		tmpl.IsCA = true
		tmpl.MaxPathLenZero = true
		tmpl.KeyUsage |= x509.KeyUsageCertSign
	}
	if r.Parent != nil {
		parent = r.Parent
	} else if !r.Key.Equal(r.ParentKey.Public()) {
		return nil, errors.New("keygen: a self-signed root must be signed by its own key")
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, r.Key, r.ParentKey)
	if err != nil {
		return nil, fmt.Errorf("keygen: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), nil
}

// NewKey returns a fresh key pair's private key.
func NewKey() (ed25519.PrivateKey, error) {
	_, k, err := ed25519.GenerateKey(rand.Reader)
	return k, err
}

// MarshalPrivateKey encodes k as PKCS#8 PEM ("PRIVATE KEY").
func MarshalPrivateKey(k ed25519.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// ParsePrivateKey reads a PKCS#8 PEM Ed25519 private key.
func ParsePrivateKey(p []byte) (ed25519.PrivateKey, error) {
	blk, _ := pem.Decode(p)
	if blk == nil || blk.Type != "PRIVATE KEY" {
		return nil, errors.New("not a PEM PRIVATE KEY (PKCS#8)")
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, err
	}
	ek, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("private key is %T, want Ed25519", k)
	}
	return ek, nil
}

// ParsePublicKey reads an Ed25519 key from a PEM PUBLIC KEY (PKIX) or
// PRIVATE KEY, so a leaf's certificate can be made from its public half.
func ParsePublicKey(p []byte) (ed25519.PublicKey, error) {
	blk, _ := pem.Decode(p)
	if blk == nil {
		return nil, errors.New("not PEM")
	}
	var k crypto.PublicKey
	switch blk.Type {
	case "PUBLIC KEY":
		var err error
		if k, err = x509.ParsePKIXPublicKey(blk.Bytes); err != nil {
			return nil, err
		}
	case "PRIVATE KEY":
		sk, err := ParsePrivateKey(p)
		if err != nil {
			return nil, err
		}
		k = sk.Public()
	default:
		return nil, fmt.Errorf("PEM block %q is not a key", blk.Type)
	}
	ek, ok := k.(ed25519.PublicKey)
	if !ok {
		return nil, fmt.Errorf("key is %T, want Ed25519", k)
	}
	return ek, nil
}
