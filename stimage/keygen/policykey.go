package keygen

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
)

// NewPolicyKey makes a release policy key: ECDSA P-256, the curve a TPM
// verifies approvals with (TPM2_VerifySignature has no Ed25519), and never
// one of the OS-package signing keys.
func NewPolicyKey() (*ecdsa.PrivateKey, error) {
	return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
}

// MarshalPolicyKey encodes the private key as PKCS#8 PEM and the public
// key as PKIX PEM.
func MarshalPolicyKey(k *ecdsa.PrivateKey) (priv, pub []byte, err error) {
	d, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, nil, err
	}
	p, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: d}), pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: p}), nil
}

// ParsePolicyKey reads a PKCS#8 PEM P-256 private key.
func ParsePolicyKey(b []byte) (*ecdsa.PrivateKey, error) {
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "PRIVATE KEY" {
		return nil, errors.New("not a PEM PRIVATE KEY")
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, err
	}
	ek, ok := k.(*ecdsa.PrivateKey)
	if !ok || ek.Curve != elliptic.P256() {
		return nil, errors.New("not an ECDSA P-256 policy key (stimage keygen policy-key makes one)")
	}
	return ek, nil
}
