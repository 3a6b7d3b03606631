package quote

import (
	"encoding/binary"
	"errors"

	"github.com/google/go-tpm/tpm2"
)

// The two structures of a quote are read by hand: go-tpm's reflection
// unmarshalling costs about as much as the signature check, on every
// handshake. TestParseAgrees holds these readers to tpm2.Unmarshal.

// reader consumes big-endian TPM wire data; a short read sets bad.
type reader struct {
	b   []byte
	bad bool
}

func (r *reader) take(n int) []byte {
	if r.bad || n > len(r.b) {
		r.bad = true
		return nil
	}
	v := r.b[:n]
	r.b = r.b[n:]
	return v
}

func (r *reader) u8() uint8 {
	if b := r.take(1); b != nil {
		return b[0]
	}
	return 0
}

func (r *reader) u16() uint16 {
	if b := r.take(2); b != nil {
		return binary.BigEndian.Uint16(b)
	}
	return 0
}

func (r *reader) u32() uint32 {
	if b := r.take(4); b != nil {
		return binary.BigEndian.Uint32(b)
	}
	return 0
}

func (r *reader) tpm2b() []byte { return r.take(int(r.u16())) }

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
	r := &reader{b: b}
	a := &attest{magic: tpm2.TPMGenerated(r.u32()), typ: tpm2.TPMST(r.u16())}
	r.tpm2b() // qualifiedSigner
	a.extraData = r.tpm2b()
	r.take(8) // clock
	a.resetCount = r.u32()
	r.take(4 + 1 + 8) // restartCount, safe, firmwareVersion
	if r.bad {
		return nil, errShort
	}
	if a.magic != tpm2.TPMGeneratedValue || a.typ != tpm2.TPMSTAttestQuote {
		return a, nil
	}
	n := r.u32()
	if n > 16 {
		return nil, errShort
	}
	for i := uint32(0); i < n; i++ {
		s := tpm2.TPMSPCRSelection{Hash: tpm2.TPMIAlgHash(r.u16())}
		s.PCRSelect = r.take(int(r.u8()))
		a.sel.PCRSelections = append(a.sel.PCRSelections, s)
	}
	a.pcrDigest = r.tpm2b()
	if r.bad || len(r.b) != 0 {
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
	r := &reader{b: b}
	s := &signature{alg: tpm2.TPMAlgID(r.u16())}
	switch s.alg {
	case tpm2.TPMAlgECDSA:
		s.hash = tpm2.TPMIAlgHash(r.u16())
		s.r, s.s = r.tpm2b(), r.tpm2b()
	case tpm2.TPMAlgRSASSA, tpm2.TPMAlgRSAPSS:
		s.hash = tpm2.TPMIAlgHash(r.u16())
		s.sig = r.tpm2b()
	default:
		if !r.bad {
			return s, nil // an algorithm no AK of ours has: refused by the caller
		}
	}
	if r.bad || len(r.b) != 0 {
		return nil, errShort
	}
	return s, nil
}
