package attest

import (
	"bytes"
	"encoding/hex"
	"fmt"

	"github.com/google/go-tpm/tpm2"

	"patela/internal/ekid"
)

// The TCG default EK templates (TCG EK Credential Profile for TPM Family
// 2.0, section 2.1.5): an EK a TPM derived from one of them is restricted,
// fixedTPM, needs the endorsement hierarchy's authorization, and its
// private key never leaves the TPM. Without a certificate the server
// knows nothing else of an EK, so it admits these only. RSA-4096 (H-7) is
// left out: published references disagree on its name algorithm; a
// verified certificate admits it (and any other vendor template).
var ekTemplates = []struct {
	name string
	tmpl tpm2.TPMTPublic
}{
	{"L-1 RSA-2048", tpm2.RSAEKTemplate},
	{"L-2 ECC P-256", tpm2.ECCEKTemplate},
	{"H-1 RSA-2048", highRSA(2048, tpm2.TPMAlgSHA256, policyBSHA256, 128)},
	{"H-2 ECC P-256", highECC(tpm2.TPMECCNistP256, tpm2.TPMAlgSHA256, policyBSHA256, 128)},
	{"H-3 ECC P-384", highECC(tpm2.TPMECCNistP384, tpm2.TPMAlgSHA384, policyBSHA384, 256)}, // swtpm_setup's ECC EK
	{"H-4 ECC P-521", highECC(tpm2.TPMECCNistP521, tpm2.TPMAlgSHA512, policyBSHA512, 256)},
	{"H-6 RSA-3072", highRSA(3072, tpm2.TPMAlgSHA384, policyBSHA384, 256)},
}

// PolicyB of the high-range templates: PolicyOR of PolicySecret(TPM_RH_ENDORSEMENT)
// and PolicyAuthorizeNV of the TCG's EK policy index, per name algorithm.
var (
	policyBSHA256 = mustHex("ca3d0a99a2b93906f7a3342414efcfb3a385d44cd1fd459089d19b5071c0b7a0")
	policyBSHA384 = mustHex("b26e7d28d11a50bc53d882bcf5fd3a1a074148bb35d3b4e4cb1c0ad9bde419ca" +
		"cb47ba09699646150f9fc000f3f80e12")
	policyBSHA512 = mustHex("b8221ca69e8550a4914de3faa6a18c072cc01208073a928d5d66d59ef79e49a4" +
		"29c41a6b269571d57edb25fbdb1838425608b413cd616a5f6db5b6071af99bea")
)

func mustHex(s string) []byte {
	b, err := hex.DecodeString(s)
	if err != nil {
		panic(err)
	}
	return b
}

// highAttrs are the high-range templates' attributes: the low range's plus
// userWithAuth.
var highAttrs = tpm2.TPMAObject{
	FixedTPM: true, FixedParent: true, SensitiveDataOrigin: true, UserWithAuth: true,
	AdminWithPolicy: true, Restricted: true, Decrypt: true,
}

func aesCFB(bits tpm2.TPMKeyBits) tpm2.TPMTSymDefObject {
	return tpm2.TPMTSymDefObject{
		Algorithm: tpm2.TPMAlgAES,
		KeyBits:   tpm2.NewTPMUSymKeyBits(tpm2.TPMAlgAES, bits),
		Mode:      tpm2.NewTPMUSymMode(tpm2.TPMAlgAES, tpm2.TPMAlgCFB),
	}
}

func highRSA(bits tpm2.TPMKeyBits, nameAlg tpm2.TPMAlgID, policy []byte, aes tpm2.TPMKeyBits) tpm2.TPMTPublic {
	return tpm2.TPMTPublic{
		Type: tpm2.TPMAlgRSA, NameAlg: nameAlg, ObjectAttributes: highAttrs,
		AuthPolicy: tpm2.TPM2BDigest{Buffer: policy},
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgRSA, &tpm2.TPMSRSAParms{
			Symmetric: aesCFB(aes), Scheme: tpm2.TPMTRSAScheme{Scheme: tpm2.TPMAlgNull}, KeyBits: bits,
		}),
		Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{}),
	}
}

func highECC(curve tpm2.TPMECCCurve, nameAlg tpm2.TPMAlgID, policy []byte, aes tpm2.TPMKeyBits) tpm2.TPMTPublic {
	return tpm2.TPMTPublic{
		Type: tpm2.TPMAlgECC, NameAlg: nameAlg, ObjectAttributes: highAttrs,
		AuthPolicy: tpm2.TPM2BDigest{Buffer: policy},
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
			Symmetric: aesCFB(aes), Scheme: tpm2.TPMTECCScheme{Scheme: tpm2.TPMAlgNull},
			CurveID: curve, KDF: tpm2.TPMTKDFScheme{Scheme: tpm2.TPMAlgNull},
		}),
		Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{}),
	}
}

// templatePrefixes are the templates marshalled without their unique
// field, the last of a TPMT_PUBLIC: an EK made from a template is one
// whose canonical encoding starts with the template's prefix (every field
// before unique is fixed-size or length-prefixed, so equal prefixes mean
// equal fields). Comparing bytes spares a handshake two reflective
// marshals per template.
var templatePrefixes = func() [][]byte {
	out := make([][]byte, len(ekTemplates))
	for i, t := range ekTemplates {
		tmpl := t.tmpl
		var empty []byte
		if tmpl.Type == tpm2.TPMAlgECC {
			tmpl.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{})
			empty = tpm2.Marshal(tpm2.TPMSECCPoint{})
		} else {
			tmpl.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{})
			empty = tpm2.Marshal(tpm2.TPM2BPublicKeyRSA{})
		}
		b := tpm2.Marshal(tmpl)
		out[i] = b[:len(b)-len(empty)]
	}
	return out
}()

// CheckTemplate returns the name of the TCG default EK template the EK
// pub was made from (everything but the key equal, the key of the
// template's full size), or an error wrapping ErrBadEK. b is pub's
// canonical encoding (parsePublic checked it).
func CheckTemplate(b []byte, pub *tpm2.TPMTPublic) (string, error) {
	for i, t := range ekTemplates {
		if !bytes.HasPrefix(b, templatePrefixes[i]) {
			continue
		}
		if err := fullSize(pub); err != nil {
			return "", fmt.Errorf("%w: %s EK: %v", ErrBadEK, t.name, err)
		}
		return t.name, nil
	}
	return "", fmt.Errorf("%w: not made from a TCG default EK template (attributes, policy or parameters differ) and not certified by a configured EK CA", ErrBadEK)
}

// fullSize insists on the key sizes a TPM outputs: coordinates of the
// curve's size, a modulus of exactly keyBits with its top bit set.
func fullSize(pub *tpm2.TPMTPublic) error {
	switch pub.Type {
	case tpm2.TPMAlgECC:
		parms, err := pub.Parameters.ECCDetail()
		if err != nil {
			return err
		}
		pt, err := pub.Unique.ECC()
		if err != nil {
			return err
		}
		n := ekid.CurveBytes(parms.CurveID)
		if len(pt.X.Buffer) != n || len(pt.Y.Buffer) != n {
			return fmt.Errorf("point coordinates of %d and %d bytes, want %d", len(pt.X.Buffer), len(pt.Y.Buffer), n)
		}
	case tpm2.TPMAlgRSA:
		parms, err := pub.Parameters.RSADetail()
		if err != nil {
			return err
		}
		m, err := pub.Unique.RSA()
		if err != nil {
			return err
		}
		if len(m.Buffer) != int(parms.KeyBits)/8 || m.Buffer[0]&0x80 == 0 {
			return fmt.Errorf("modulus of %d bytes is not a full %d-bit key", len(m.Buffer), parms.KeyBits)
		}
	}
	return nil
}
