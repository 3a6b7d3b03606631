// Package attest is the server side of TPM credential activation: it parses
// the EK and AK public areas a node sends, checks the AK is a key the TPM
// made and cannot export, runs MakeCredential in software, and optionally
// checks the EK against a certificate authority or an allowlist.
package attest

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/google/go-tpm/tpm2"
)

// SecretSize is the size of the activation secret: at most the smallest
// digest a TPM supports with a SHA-256 name algorithm.
const SecretSize = 32

var randReader = rand.Reader

// Errors for the two bad-request cases of POST /v1/attest.
var (
	ErrBadEK = errors.New("bad endorsement key")
	ErrBadAK = errors.New("bad attestation key")
)

// ParseEK parses an EK public area: an RSA or ECC restricted decryption key
// that MakeCredential can encrypt to.
func ParseEK(b []byte) (*tpm2.TPMTPublic, error) {
	pub, _, err := parseEK(b)
	return pub, err
}

func parseEK(b []byte) (*tpm2.TPMTPublic, tpm2.LabeledEncapsulationKey, error) {
	pub, err := parsePublic(b)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %v", ErrBadEK, err)
	}
	if pub.Type != tpm2.TPMAlgRSA && pub.Type != tpm2.TPMAlgECC {
		return nil, nil, fmt.Errorf("%w: type %v is neither RSA nor ECC", ErrBadEK, pub.Type)
	}
	a := pub.ObjectAttributes
	if !a.Restricted || !a.Decrypt || a.SignEncrypt {
		return nil, nil, fmt.Errorf("%w: not a restricted decryption key", ErrBadEK)
	}
	key, err := tpm2.ImportEncapsulationKey(pub)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %v", ErrBadEK, err)
	}
	return pub, key, nil
}

// ParseAK parses an AK public area, checks it is a restricted signing key
// that is fixedTPM, fixedParent and sensitiveDataOrigin, and returns its
// Name computed here (never trusted from the client).
func ParseAK(b []byte) (*tpm2.TPMTPublic, []byte, error) {
	pub, err := parsePublic(b)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %v", ErrBadAK, err)
	}
	if pub.Type != tpm2.TPMAlgRSA && pub.Type != tpm2.TPMAlgECC {
		return nil, nil, fmt.Errorf("%w: type %v is neither RSA nor ECC", ErrBadAK, pub.Type)
	}
	a := pub.ObjectAttributes
	var missing []string
	for _, c := range []struct {
		ok   bool
		name string
	}{
		{a.FixedTPM, "fixedTPM"}, {a.FixedParent, "fixedParent"},
		{a.SensitiveDataOrigin, "sensitiveDataOrigin"}, {a.Restricted, "restricted"},
		{a.SignEncrypt, "sign"}, {!a.Decrypt, "not decrypt"},
	} {
		if !c.ok {
			missing = append(missing, c.name)
		}
	}
	if len(missing) > 0 {
		return nil, nil, fmt.Errorf("%w: lacks %v", ErrBadAK, missing)
	}
	// The Name is nameAlg ‖ H(TPMT_PUBLIC); b is the canonical encoding,
	// so hash it rather than marshal pub again.
	h, err := pub.NameAlg.Hash()
	if err != nil {
		return nil, nil, fmt.Errorf("%w: name algorithm: %v", ErrBadAK, err)
	}
	d := h.New()
	d.Write(b)
	name := binary.BigEndian.AppendUint16(nil, uint16(pub.NameAlg))
	return pub, d.Sum(name), nil
}

// MakeCredential encrypts secret to the EK, bound to the AK name: only the
// TPM holding both keys can recover it with ActivateCredential. The outputs
// are the TPM2B_ID_OBJECT and TPM2B_ENCRYPTED_SECRET buffers (no size
// prefix).
func MakeCredential(ek *tpm2.TPMTPublic, akName, secret []byte) (blob, encSecret []byte, err error) {
	key, err := tpm2.ImportEncapsulationKey(ek)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %v", ErrBadEK, err)
	}
	return tpm2.CreateCredential(randReader, key, akName, secret)
}
