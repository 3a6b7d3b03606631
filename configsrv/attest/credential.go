package attest

import (
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdh"
	"crypto/hmac"

	"github.com/google/go-tpm/tpm2"

	"patela/internal/tpmwire"
)

// eccCredential is what MakeCredential needs of an ECC EK whose
// symmetric parameters are AES-CFB (every TCG ECC template): the same
// arithmetic as tpm2.CreateCredential (TPM 2.0 Part 1, "Credential
// Protection"), with its three small structures written by hand rather
// than by go-tpm's reflection (a fifth of a handshake's MakeCredential).
// TestCredentialAgrees holds it to tpm2.CreateCredential byte for byte.
type eccCredential struct {
	pub     *ecdh.PublicKey
	x       []byte // the EK's X coordinate, full length
	hash    crypto.Hash
	aesBits int
}

// newECCCredential prepares pub for MakeCredential, or returns nil when
// pub is not an ECC EK with AES-CFB (go-tpm then does it all).
func newECCCredential(pub *tpm2.TPMTPublic) *eccCredential {
	if pub.Type != tpm2.TPMAlgECC {
		return nil
	}
	parms, err := pub.Parameters.ECCDetail()
	if err != nil || parms.Symmetric.Algorithm != tpm2.TPMAlgAES {
		return nil
	}
	mode, err := parms.Symmetric.Mode.AES()
	if err != nil || *mode != tpm2.TPMAlgCFB {
		return nil
	}
	bits, err := parms.Symmetric.KeyBits.AES()
	if err != nil {
		return nil
	}
	h, err := pub.NameAlg.Hash()
	if err != nil {
		return nil
	}
	pt, err := pub.Unique.ECC()
	if err != nil {
		return nil
	}
	k, err := tpm2.ECDHPub(parms, pt)
	if err != nil {
		return nil
	}
	raw := k.Bytes()[1:]
	return &eccCredential{pub: k, x: raw[:len(raw)/2], hash: h, aesBits: int(*bits)}
}

// make is tpm2.CreateCredential(randReader, the EK, akName, secret).
func (c *eccCredential) make(akName, secret []byte) (blob, encSecret []byte, err error) {
	eph, err := c.pub.Curve().GenerateKey(randReader)
	if err != nil {
		return nil, nil, err
	}
	z, err := eph.ECDH(c.pub)
	if err != nil {
		return nil, nil, err
	}
	raw := eph.PublicKey().Bytes()[1:]
	ephX, ephY := raw[:len(raw)/2], raw[len(raw)/2:]
	seed := tpm2.KDFe(c.hash, z, "IDENTITY", ephX, c.x, c.hash.Size()*8)
	encSecret = tpmwire.Append2B(tpmwire.Append2B(make([]byte, 0, 4+len(raw)), ephX), ephY) // TPMS_ECC_POINT

	block, err := aes.NewCipher(tpm2.KDFa(c.hash, seed, "STORAGE", akName, nil, c.aesBits))
	if err != nil {
		return nil, nil, err
	}
	cred := tpmwire.Append2B(nil, secret) // TPM2B_DIGEST
	encIdentity := make([]byte, len(cred))
	cipher.NewCFBEncrypter(block, make([]byte, block.BlockSize())).XORKeyStream(encIdentity, cred)
	mac := hmac.New(c.hash.New, tpm2.KDFa(c.hash, seed, "INTEGRITY", nil, nil, c.hash.Size()*8))
	mac.Write(encIdentity)
	mac.Write(akName)
	blob = append(tpmwire.Append2B(make([]byte, 0, 2+c.hash.Size()+len(encIdentity)), mac.Sum(nil)), encIdentity...) // TPMS_ID_OBJECT
	return blob, encSecret, nil
}
