package attest

import (
	"crypto/sha256"
	"fmt"
	"sync"

	"github.com/google/go-tpm/tpm2"

	"patela/internal/ekid"
)

// maxCached bounds each map of a Cache; a full map is simply dropped.
const maxCached = 1 << 16

// EK is a parsed endorsement key ready for MakeCredential.
type EK struct {
	Public *tpm2.TPMTPublic
	ID     ekid.ID  // the node identity
	Raw    [32]byte // SHA-256 of the public area as sent (older allowlists)
	// Template names the TCG default template the EK was made from; when
	// it was made from none, TemplateErr (wrapping ErrBadEK) says why.
	Template    string
	TemplateErr error
	key         tpm2.LabeledEncapsulationKey // nil when ecc is set
	ecc         *eccCredential               // nil: go-tpm makes the credential
}

// NewEK parses an EK public area (ParseEK) and derives what the server
// needs of it.
func NewEK(b []byte) (*EK, error) {
	pub, key, err := parseEK(b)
	if err != nil {
		return nil, err
	}
	id, err := ekid.Of(pub)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadEK, err)
	}
	e := &EK{Public: pub, ID: id, Raw: sha256.Sum256(b), key: key, ecc: newECCCredential(pub)}
	if e.ecc != nil {
		e.key = nil // one public key per cached EK (about 0.45 KiB each)
	}
	e.Template, e.TemplateErr = CheckTemplate(b, pub)
	return e, nil
}

// MakeCredential encrypts secret to the EK, bound to akName (see the
// package-level MakeCredential).
func (e *EK) MakeCredential(akName, secret []byte) (blob, encSecret []byte, err error) {
	if e.ecc != nil {
		return e.ecc.make(akName, secret)
	}
	return tpm2.CreateCredential(randReader, e.key, akName, secret)
}

// Cache memoizes ParseEK and ParseAK: a fleet re-attests with the same
// keys every boot and every token expiry, and TPM structure (un)marshalling
// by reflection is the bulk of a handshake's CPU otherwise. Only successful
// parses are kept. The zero Cache is ready to use.
type Cache struct {
	mu  sync.Mutex
	eks map[[32]byte]*EK
	aks map[[32]byte]ak
}

type ak struct {
	name []byte
	pub  *tpm2.TPMTPublic
}

// EK parses (or recalls) an EK public area.
func (c *Cache) EK(b []byte) (*EK, error) {
	h := sha256.Sum256(b)
	c.mu.Lock()
	e, ok := c.eks[h]
	c.mu.Unlock()
	if ok {
		return e, nil
	}
	e, err := NewEK(b)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	if c.eks == nil || len(c.eks) >= maxCached {
		c.eks = map[[32]byte]*EK{}
	}
	c.eks[h] = e
	c.mu.Unlock()
	return e, nil
}

// AKName checks (or recalls) an AK public area and returns its Name.
func (c *Cache) AKName(b []byte) ([]byte, error) {
	n, _, err := c.AK(b)
	return n, err
}

// AK is AKName that also returns the parsed public area (not to be
// modified: it is shared).
func (c *Cache) AK(b []byte) ([]byte, *tpm2.TPMTPublic, error) {
	h := sha256.Sum256(b)
	c.mu.Lock()
	a, ok := c.aks[h]
	c.mu.Unlock()
	if ok {
		return a.name, a.pub, nil
	}
	pub, n, err := ParseAK(b)
	if err != nil {
		return nil, nil, err
	}
	c.mu.Lock()
	if c.aks == nil || len(c.aks) >= maxCached {
		c.aks = map[[32]byte]ak{}
	}
	c.aks[h] = ak{name: n, pub: pub}
	c.mu.Unlock()
	return n, pub, nil
}
