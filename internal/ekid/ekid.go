// Package ekid is the identity of a TPM endorsement key: a hash of its
// public key (curve and point, or modulus and exponent) and its name
// algorithm. It depends on nothing else a client could vary (attributes,
// policy, symmetric parameters, how the coordinates are padded), so one
// TPM is one node however it presents its EK. The config server keys
// nodes by it and `init tpm ek` prints it; both compute it here.
package ekid

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"

	"github.com/google/go-tpm/tpm2"
)

// ID is an EK identity.
type ID [32]byte

// String is the lower-case hex form operators see and allowlist.
func (id ID) String() string { return hex.EncodeToString(id[:]) }

// Parse reads the hex form.
func Parse(s string) (ID, error) {
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != len(ID{}) {
		return ID{}, fmt.Errorf("%q is not a hex EK identity (64 hex digits)", s)
	}
	return ID(b), nil
}

// domain separates these hashes from every other SHA-256 in the system.
const domain = "patela EK identity v1\x00"

// curveBytes is the coordinate size of the curves an EK may use.
var curveBytes = map[tpm2.TPMECCCurve]int{
	tpm2.TPMECCNistP256: 32,
	tpm2.TPMECCNistP384: 48,
	tpm2.TPMECCNistP521: 66,
}

// CurveBytes is the coordinate size of curve, 0 for a curve an EK may not use.
func CurveBytes(curve tpm2.TPMECCCurve) int { return curveBytes[curve] }

// Of computes the identity of the EK whose public area is pub:
// SHA-256(domain ‖ nameAlg ‖ type ‖ key), the key being the curve and both
// coordinates left-padded to the curve size, or the modulus without
// leading zeros and the exponent (0 meaning 65537).
func Of(pub *tpm2.TPMTPublic) (ID, error) {
	b := binary.BigEndian.AppendUint16([]byte(domain), uint16(pub.NameAlg))
	b = binary.BigEndian.AppendUint16(b, uint16(pub.Type))
	switch pub.Type {
	case tpm2.TPMAlgECC:
		parms, err := pub.Parameters.ECCDetail()
		if err != nil {
			return ID{}, err
		}
		size := curveBytes[parms.CurveID]
		if size == 0 {
			return ID{}, fmt.Errorf("unsupported curve 0x%04x", uint16(parms.CurveID))
		}
		pt, err := pub.Unique.ECC()
		if err != nil {
			return ID{}, err
		}
		b = binary.BigEndian.AppendUint16(b, uint16(parms.CurveID))
		for _, c := range [][]byte{pt.X.Buffer, pt.Y.Buffer} {
			v := new(big.Int).SetBytes(c)
			if v.Sign() == 0 || (v.BitLen()+7)/8 > size {
				return ID{}, fmt.Errorf("an EK coordinate does not fit curve 0x%04x", uint16(parms.CurveID))
			}
			b = append(b, v.FillBytes(make([]byte, size))...)
		}
		return sha256.Sum256(b), nil
	case tpm2.TPMAlgRSA:
		parms, err := pub.Parameters.RSADetail()
		if err != nil {
			return ID{}, err
		}
		n, err := pub.Unique.RSA()
		if err != nil {
			return ID{}, err
		}
		mod := new(big.Int).SetBytes(n.Buffer).Bytes()
		if len(mod) == 0 {
			return ID{}, errors.New("the EK has an empty modulus")
		}
		e := parms.Exponent
		if e == 0 {
			e = 65537
		}
		b = binary.BigEndian.AppendUint16(b, uint16(len(mod)))
		b = append(b, mod...)
		b = binary.BigEndian.AppendUint32(b, e)
		return sha256.Sum256(b), nil
	}
	return ID{}, fmt.Errorf("EK type 0x%04x is neither RSA nor ECC", uint16(pub.Type))
}
