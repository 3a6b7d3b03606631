// Package softek is a software endorsement key for load generators and
// tests that need many nodes: it holds an ECC P-256 EK pair (TCG template
// L-2) in memory and performs the TPM's ActivateCredential arithmetic
// (TPM 2.0 Part 1, "Credential Protection"). A test proves it agrees with
// swtpm. It is not a TPM and proves nothing about a machine.
package softek

import (
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdh"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"

	"github.com/google/go-tpm/tpm2"

	"patela/internal/tpmwire"
)

// EK is a software endorsement key.
type EK struct {
	priv *ecdh.PrivateKey
	// Public is the marshalled TPMT_PUBLIC, as a node sends it.
	Public []byte
}

// New generates a fresh EK.
func New() (*EK, error) {
	priv, err := ecdh.P256().GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	raw := priv.PublicKey().Bytes()[1:] // strip the 0x04 point prefix
	tmpl := tpm2.ECCEKTemplate
	tmpl.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{
		X: tpm2.TPM2BECCParameter{Buffer: raw[:32]},
		Y: tpm2.TPM2BECCParameter{Buffer: raw[32:]},
	})
	return &EK{priv: priv, Public: tpm2.Marshal(tmpl)}, nil
}

// D returns the private scalar, for importing the same key into a TPM to
// check Activate against TPM2_ActivateCredential.
func (e *EK) D() []byte { return e.priv.Bytes() }

// Activate recovers the secret of a MakeCredential to this EK and the
// object named akName, as TPM2_ActivateCredential does: ECDH with the
// ephemeral point, KDFe seed, HMAC check of the ID object, AES-128-CFB
// decryption.
func (e *EK) Activate(blob, encSecret, akName []byte) ([]byte, error) {
	// A TPMS_ECC_POINT and TPM2B_DIGESTs, read by hand: go-tpm's
	// reflection cost a load generator a quarter of this function.
	pt := tpmwire.NewReader(encSecret)
	x, y := pt.TPM2B(), pt.TPM2B()
	if pt.Bad() {
		return nil, errors.New("encrypted secret: truncated TPMS_ECC_POINT")
	}
	eph, err := ecdh.P256().NewPublicKey(append(append([]byte{4}, pad(x)...), pad(y)...))
	if err != nil {
		return nil, fmt.Errorf("encrypted secret: %w", err)
	}
	z, err := e.priv.ECDH(eph)
	if err != nil {
		return nil, err
	}
	ekX := e.priv.PublicKey().Bytes()[1:33]
	seed := tpm2.KDFe(crypto.SHA256, z, "IDENTITY", pad(x), ekX, 256)

	id := tpmwire.NewReader(blob) // TPMS_ID_OBJECT
	integrity, encIdentity := id.TPM2B(), id.Rest()
	if id.Bad() {
		return nil, errors.New("credential blob: truncated")
	}
	mac := hmac.New(sha256.New, tpm2.KDFa(crypto.SHA256, seed, "INTEGRITY", nil, nil, 256))
	mac.Write(encIdentity)
	mac.Write(akName)
	if !hmac.Equal(mac.Sum(nil), integrity) {
		return nil, errors.New("credential integrity check failed (wrong EK or AK name)")
	}
	block, err := aes.NewCipher(tpm2.KDFa(crypto.SHA256, seed, "STORAGE", akName, nil, 128))
	if err != nil {
		return nil, err
	}
	plain := make([]byte, len(encIdentity))
	cipher.NewCFBDecrypter(block, make([]byte, aes.BlockSize)).XORKeyStream(plain, encIdentity)
	cred := tpmwire.NewReader(plain)
	secret := cred.TPM2B()
	if cred.Bad() {
		return nil, errors.New("credential: truncated")
	}
	return secret, nil
}

// pad left-pads a P-256 coordinate to 32 bytes.
func pad(b []byte) []byte {
	if len(b) >= 32 {
		return b
	}
	return append(make([]byte, 32-len(b)), b...)
}

// AKPublic returns the public area of an attestation key as a TPM makes
// one (restricted ECDSA-SHA256 signing key, fixedTPM, fixedParent,
// sensitiveDataOrigin) with a random point: activation only needs its Name.
func AKPublic() ([]byte, error) {
	priv, err := ecdh.P256().GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	raw := priv.PublicKey().Bytes()[1:]
	return tpm2.Marshal(AKTemplate(raw[:32], raw[32:])), nil
}

// AKTemplate is the AK public area with point (x, y); nil coordinates give
// the template to create one in a TPM.
func AKTemplate(x, y []byte) tpm2.TPMTPublic {
	return tpm2.TPMTPublic{
		Type:    tpm2.TPMAlgECC,
		NameAlg: tpm2.TPMAlgSHA256,
		ObjectAttributes: tpm2.TPMAObject{
			FixedTPM: true, FixedParent: true, SensitiveDataOrigin: true,
			UserWithAuth: true, Restricted: true, SignEncrypt: true, NoDA: true,
		},
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
			Scheme: tpm2.TPMTECCScheme{
				Scheme:  tpm2.TPMAlgECDSA,
				Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSigSchemeECDSA{HashAlg: tpm2.TPMAlgSHA256}),
			},
			CurveID: tpm2.TPMECCNistP256,
		}),
		Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{
			X: tpm2.TPM2BECCParameter{Buffer: x},
			Y: tpm2.TPM2BECCParameter{Buffer: y},
		}),
	}
}

// NewKeys makes what a new software node presents: a fresh EK and the
// public area of a fresh AK (AKPublic).
func NewKeys() (*EK, []byte, error) {
	ek, err := New()
	if err != nil {
		return nil, nil, err
	}
	ak, err := AKPublic()
	if err != nil {
		return nil, nil, err
	}
	return ek, ak, nil
}
