package vault

import (
	"errors"
	"fmt"
	"math/bits"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"patela/init/tpmkeys"
)

// State describes a vault without unsealing it.
type State struct {
	Sealed bool // a sealed key is at tpmkeys.SealHandle or ReleaseSealHandle
	// Sealing is "release" (sealed to a release policy key), "pcr"
	// (PolicyPCR, unmeasured sealing), "migrating" (both) or "".
	Sealing   string
	Header    bool   // the NV header exists
	Location  string // "none", "nv" or "mirror"
	Version   uint64
	Length    int   // ciphertext bytes
	PCRs      []int // the PCR selection recorded at sealing
	LockPCR   int   // -1: none
	NVIndices int   // vault NV indices, header included
	NVBytes   int
	IndexMax  int // the TPM's NV_INDEX_MAX
	BufferMax int // the TPM's NV_BUFFER_MAX (as used)
	// The rollback counter at tpmkeys.NVCounter: CounterDefined, and
	// Counter its value when CounterWritten (incremented at least once).
	CounterDefined bool
	CounterWritten bool
	Counter        uint64
	CounterForeign bool // the index there is not a TPM counter
}

// Inspect reads the vault's state: handles and the NV header only.
func Inspect(t transport.TPM) (*State, error) {
	nv, err := newNVStore(t, 0)
	if err != nil {
		return nil, err
	}
	st := &State{Location: "none", LockPCR: -1, IndexMax: nv.indexMax, BufferMax: nv.chunk}
	for _, h := range []struct {
		handle tpm2.TPMHandle
		name   string
	}{{tpmkeys.SealHandle, "pcr"}, {tpmkeys.ReleaseSealHandle, "release"}} {
		_, err = tpmkeys.Persisted(t, h.handle)
		switch {
		case err == nil:
			st.Sealing = map[bool]string{false: h.name, true: "migrating"}[st.Sealed]
			st.Sealed = true
		case !errors.Is(err, tpmkeys.ErrNotPersisted):
			return nil, err
		}
	}
	h, err := nv.readHeader()
	if err != nil {
		return nil, err
	}
	if h != nil {
		st.Header = true
		st.Location = [...]string{"none", "nv", "mirror"}[h.location]
		st.Version, st.Length, st.LockPCR = h.version, h.length, h.lock
		for m := h.pcrMask; m != 0; m &= m - 1 {
			st.PCRs = append(st.PCRs, bits.TrailingZeros32(m))
		}
	}
	if st.NVIndices, st.NVBytes, err = nv.usage(); err != nil {
		return nil, err
	}
	cs, err := readCounter(t)
	switch {
	case errors.Is(err, ErrRollback):
		st.CounterDefined, st.CounterForeign = true, true // clear-vault removes it
	case err != nil:
		return nil, err
	default:
		st.CounterDefined, st.CounterWritten, st.Counter = cs.defined, cs.written, cs.value
	}
	return st, nil
}

// Clear deletes the vault from the TPM: the sealed key, the header, the
// data indices and the rollback counter (whose value a new vault's counter
// starts above). The relay keys it held are gone for good (a copy on the
// config server's mirror cannot be decrypted any more either).
func Clear(t transport.TPM) error {
	nv, err := newNVStore(t, 0)
	if err != nil {
		return err
	}
	for _, h := range []tpm2.TPMHandle{tpmkeys.SealHandle, tpmkeys.ReleaseSealHandle} {
		if err := tpmkeys.Evict(t, h); err != nil && !errors.Is(err, tpmkeys.ErrNotPersisted) {
			return fmt.Errorf("evicting the sealed key: %w", err)
		}
	}
	if err := nv.freeExcept(0, 0); err != nil {
		return err
	}
	if err := undefineCounter(t); err != nil {
		return fmt.Errorf("removing the rollback counter: %w", err)
	}
	return nv.undefine(tpmkeys.NVHeader)
}
