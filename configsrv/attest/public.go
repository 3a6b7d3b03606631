package attest

import (
	"bytes"
	"errors"
	"sync"
	"sync/atomic"

	"github.com/google/go-tpm/tpm2"

	"patela/internal/tpmwire"
)

// Public areas a node sends are read by hand when everything before their
// key is byte for byte what go-tpm has already read here: a fleet's EKs
// and AKs come from a handful of templates, and go-tpm's reflective
// Unmarshal plus the re-Marshal that proves the encoding canonical were
// the largest part of a new key's handshake.
//
// Why this accepts exactly what parsePublicTPM accepts: a TPMT_PUBLIC is
// a sequence whose last field is unique (the key), and go-tpm reads and
// writes a structure field by field, in order, each field from its own
// bytes only (unique's union tag is type, read earlier). So when go-tpm
// read P ‖ U0 canonically and P is the encoding of every field before
// unique, it reads P ‖ U with the same fields before unique, and P ‖ U
// is canonical exactly when U is the canonical encoding of a unique of
// that type: for RSA one TPM2B (the modulus), for ECC two (the point).
// That is all parseUnique accepts; anything else goes to go-tpm.
// FuzzParsePublic holds the two to each other.

// A shape is the encoding of every field of a TPMT_PUBLIC before unique,
// and what go-tpm read from it.
type shape struct {
	prefix []byte
	pub    tpm2.TPMTPublic // Unique is zero
}

// maxShapes bounds the shapes kept. A fleet needs a few (its EK and AK
// templates); once full, a new shape replaces the oldest learnt one, so
// a client sending many shapes costs only slower parses.
const maxShapes = 32

type shapeSet struct {
	mu   sync.Mutex // serialises learning
	list atomic.Pointer[[]*shape]
	next int // the slot the next shape replaces once full
}

// shapes holds what parsePublic has learnt; reads take no lock.
var shapes shapeSet

func (s *shapeSet) find(b []byte) *shape {
	l := s.list.Load()
	if l == nil {
		return nil
	}
	for _, sh := range *l {
		if bytes.HasPrefix(b, sh.prefix) {
			return sh
		}
	}
	return nil
}

// learn keeps the shape of pub, which go-tpm read from b, canonical.
func (s *shapeSet) learn(b []byte, pub *tpm2.TPMTPublic) {
	var n int
	switch pub.Type {
	case tpm2.TPMAlgECC:
		pt, err := pub.Unique.ECC()
		if err != nil {
			return
		}
		n = 4 + len(pt.X.Buffer) + len(pt.Y.Buffer)
	case tpm2.TPMAlgRSA:
		m, err := pub.Unique.RSA()
		if err != nil {
			return
		}
		n = 2 + len(m.Buffer)
	default:
		return
	}
	if n > len(b) {
		return
	}
	sh := &shape{prefix: bytes.Clone(b[:len(b)-n]), pub: *pub}
	sh.pub.Unique = tpm2.TPMUPublicID{}
	s.mu.Lock()
	defer s.mu.Unlock()
	var l []*shape
	if old := s.list.Load(); old != nil {
		for _, o := range *old {
			if bytes.Equal(o.prefix, sh.prefix) {
				return
			}
		}
		l = append(l, *old...)
	}
	if len(l) < maxShapes {
		l = append(l, sh)
	} else {
		l[s.next] = sh
		s.next = (s.next + 1) % maxShapes
	}
	s.list.Store(&l)
}

// parseUnique reads what follows sh's prefix in b: the key, canonically
// encoded for sh's type, and nothing after it. ok is false for anything
// else.
func (sh *shape) parseUnique(b []byte) (tpm2.TPMUPublicID, bool) {
	r := tpmwire.NewReader(b[len(sh.prefix):])
	switch sh.pub.Type {
	case tpm2.TPMAlgECC:
		x, y := r.TPM2B(), r.TPM2B()
		if !r.Done() {
			return tpm2.TPMUPublicID{}, false
		}
		// Copies, never nil: go-tpm reads an empty buffer as empty.
		return tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{
			X: tpm2.TPM2BECCParameter{Buffer: bytes.Clone(x)}, Y: tpm2.TPM2BECCParameter{Buffer: bytes.Clone(y)}}), true
	case tpm2.TPMAlgRSA:
		m := r.TPM2B()
		if !r.Done() {
			return tpm2.TPMUPublicID{}, false
		}
		return tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{Buffer: bytes.Clone(m)}), true
	}
	return tpm2.TPMUPublicID{}, false
}

// parsePublic unmarshals a TPMT_PUBLIC and insists on its canonical
// encoding, so one key has one byte string (the node identity is its
// hash). The result shares its parameters and policy with other parses
// of the same shape: it is not to be modified.
func parsePublic(b []byte) (*tpm2.TPMTPublic, error) {
	if sh := shapes.find(b); sh != nil {
		if u, ok := sh.parseUnique(b); ok {
			pub := sh.pub
			pub.Unique = u
			return &pub, nil
		}
	}
	pub, err := parsePublicTPM(b)
	if err != nil {
		return nil, err
	}
	shapes.learn(b, pub)
	return pub, nil
}

// parsePublicTPM is parsePublic by go-tpm alone: Unmarshal, then Marshal
// again to prove the encoding canonical (go-tpm ignores trailing bytes).
func parsePublicTPM(b []byte) (*tpm2.TPMTPublic, error) {
	if len(b) == 0 {
		return nil, errors.New("empty public area")
	}
	pub, err := tpm2.Unmarshal[tpm2.TPMTPublic](b)
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(tpm2.Marshal(pub), b) {
		return nil, errors.New("public area is not canonically encoded (trailing bytes?)")
	}
	return pub, nil
}
