package quote

import (
	"errors"

	"github.com/google/go-tpm/tpm2"

	"patela/internal/tpmwire"
)

// The two structures of a quote are read by hand: go-tpm's reflection
// unmarshalling costs about as much as the signature check, on every
// handshake. TestParseAgrees holds these readers to tpm2.Unmarshal.

// attest is what Verify reads of a TPMS_ATTEST holding a quote.
type attest struct {
	magic      tpm2.TPMGenerated
	typ        tpm2.TPMST
	extraData  []byte
	resetCount uint32
	sel        tpm2.TPMLPCRSelection
	pcrDigest  []byte
}

var errShort = errors.New("truncated or malformed structure")

// parseAttest reads a TPMS_ATTEST; only quotes are read past the header.
func parseAttest(b []byte) (*attest, error) {
	r := tpmwire.NewReader(b)
	a := &attest{magic: tpm2.TPMGenerated(r.U32()), typ: tpm2.TPMST(r.U16())}
	r.TPM2B() // qualifiedSigner
	a.extraData = r.TPM2B()
	r.Take(8) // clock
	a.resetCount = r.U32()
	r.Take(4 + 1 + 8) // restartCount, safe, firmwareVersion
	if r.Bad() {
		return nil, errShort
	}
	if a.magic != tpm2.TPMGeneratedValue || a.typ != tpm2.TPMSTAttestQuote {
		return a, nil
	}
	n := r.U32()
	if n > 16 {
		return nil, errShort
	}
	for i := uint32(0); i < n; i++ {
		s := tpm2.TPMSPCRSelection{Hash: tpm2.TPMIAlgHash(r.U16())}
		s.PCRSelect = r.Take(int(r.U8()))
		a.sel.PCRSelections = append(a.sel.PCRSelections, s)
	}
	a.pcrDigest = r.TPM2B()
	if !r.Done() {
		return nil, errShort
	}
	return a, nil
}

// signature is a TPMT_SIGNATURE of one of the schemes an AK uses.
type signature struct {
	alg  tpm2.TPMAlgID
	hash tpm2.TPMIAlgHash
	r, s []byte // ECDSA
	sig  []byte // RSASSA, RSAPSS
}

func parseSignature(b []byte) (*signature, error) {
	r := tpmwire.NewReader(b)
	s := &signature{alg: tpm2.TPMAlgID(r.U16())}
	switch s.alg {
	case tpm2.TPMAlgECDSA:
		s.hash = tpm2.TPMIAlgHash(r.U16())
		s.r, s.s = r.TPM2B(), r.TPM2B()
	case tpm2.TPMAlgRSASSA, tpm2.TPMAlgRSAPSS:
		s.hash = tpm2.TPMIAlgHash(r.U16())
		s.sig = r.TPM2B()
	default:
		if !r.Bad() {
			return s, nil // an algorithm no AK of ours has: refused by the caller
		}
	}
	if !r.Done() {
		return nil, errShort
	}
	return s, nil
}
