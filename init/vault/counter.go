package vault

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"patela/init/tpmkeys"
)

// Rollback protection. NV is writable by anyone with (empty) owner auth, so
// an older bundle could be written back to it (or served by the mirror) and
// would still decrypt. A TPM NV counter (tpmkeys.NVCounter, TPM_NT_COUNTER)
// only goes up: TPM2_NV_Increment is its only write, and a counter defined
// again after being undefined starts above the highest value any counter
// of this TPM ever had. Every bundle records, inside its authenticated
// envelope, the counter value that commits it, and Open refuses a bundle
// recording less than the TPM's counter.
//
// A save writes the new bundle recording c+1 (c: the counter now), switches
// the header to it, and only then increments the counter to c+1, the
// commit point. A power cut before the header switch leaves the old bundle
// (recording c = counter); one after it leaves the new bundle one ahead of
// the counter, and Open completes the save by incrementing. So the newest
// consistent bundle always records at least the counter, and every older
// one records less once the save committed: no slack is needed.
//
// Only the agent increments: the index is AuthWrite with an auth value
// derived from the vault key (HMAC sessions, never sent in clear after the
// definition), not OwnerWrite. It is OwnerRead so `init tpm info` and Open
// read it without the key, and NoDA.

// ErrRollback means the bundle is older than the TPM's counter records: an
// older copy was written back to NV or served by the config server. It is
// never silently replaced.
var ErrRollback = errors.New("the key bundle is older than this TPM's rollback counter records (an older copy was written back to TPM NV, or the config server serves an old one): " +
	"it may hold keys that were since replaced, refusing to use it. If the newest bundle cannot be put back, start over. " + recovery)

// counterState is what the TPM holds at tpmkeys.NVCounter.
type counterState struct {
	defined bool
	written bool // false: defined but never incremented (no value yet)
	value   uint64
	name    tpm2.TPM2BName
}

// counterAuth is the counter's auth value: only the vault key's holder
// can increment it. It is 128 bits in hex: go-tpm (v0.9.8) drops an HMAC
// session's auth value at its last zero byte, wherever it is, instead of
// trimming only trailing zeros, so the value must have none.
func counterAuth(key []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte("patela-vault-rollback-counter"))
	return []byte(hex.EncodeToString(m.Sum(nil)[:16]))
}

func readCounter(t transport.TPM) (counterState, error) {
	var cs counterState
	rsp, err := tpm2.NVReadPublic{NVIndex: tpmkeys.NVCounter}.Execute(t)
	if errors.Is(err, tpm2.TPMRCHandle) {
		return cs, nil
	}
	if err != nil {
		return cs, fmt.Errorf("rollback counter: %w", err)
	}
	pub, err := rsp.NVPublic.Contents()
	if err != nil {
		return cs, err
	}
	if pub.Attributes.NT != tpm2.TPMNTCounter || pub.DataSize != 8 {
		// An ordinary index would let anyone with owner auth write any
		// "counter" value.
		return cs, fmt.Errorf("%w: NV 0x%08x is not a TPM counter (someone replaced the vault's rollback counter)",
			ErrRollback, uint32(tpmkeys.NVCounter))
	}
	cs.defined, cs.written, cs.name = true, pub.Attributes.Written, rsp.NVName
	if !cs.written {
		return cs, nil
	}
	rd, err := tpm2.NVRead{AuthHandle: owner, NVIndex: tpm2.NamedHandle{Handle: tpmkeys.NVCounter, Name: rsp.NVName},
		Size: 8}.Execute(t)
	if err != nil {
		return cs, fmt.Errorf("reading the rollback counter: %w", err)
	}
	if len(rd.Data.Buffer) != 8 {
		return cs, fmt.Errorf("reading the rollback counter: %d bytes", len(rd.Data.Buffer))
	}
	cs.value = binary.BigEndian.Uint64(rd.Data.Buffer)
	return cs, nil
}

func defineCounter(t transport.TPM, auth []byte) error {
	_, err := tpm2.NVDefineSpace{
		AuthHandle: owner,
		Auth:       tpm2.TPM2BAuth{Buffer: auth},
		PublicInfo: tpm2.New2B(tpm2.TPMSNVPublic{
			NVIndex: tpmkeys.NVCounter,
			NameAlg: tpm2.TPMAlgSHA256,
			Attributes: tpm2.TPMANV{AuthWrite: true, OwnerRead: true, NoDA: true,
				NT: tpm2.TPMNTCounter},
			DataSize: 8,
		}),
	}.Execute(t)
	if err != nil {
		return fmt.Errorf("defining the rollback counter: %w", err)
	}
	return nil
}

// incrementCounter runs TPM2_NV_Increment; name is the index's current
// Name (it changes with the first increment).
func incrementCounter(t transport.TPM, auth []byte, name tpm2.TPM2BName) error {
	_, err := tpm2.NVIncrement{
		AuthHandle: tpm2.AuthHandle{Handle: tpmkeys.NVCounter, Name: name,
			Auth: tpm2.HMAC(tpm2.TPMAlgSHA256, 16, tpm2.Auth(auth))},
		NVIndex: tpm2.NamedHandle{Handle: tpmkeys.NVCounter, Name: name},
	}.Execute(t)
	if errors.Is(err, tpm2.TPMRCAuthFail) || errors.Is(err, tpm2.TPMRCBadAuth) {
		return fmt.Errorf("the rollback counter at 0x%08x does not take this vault's key (defined by someone else): %w",
			uint32(tpmkeys.NVCounter), err)
	}
	if err != nil {
		return fmt.Errorf("incrementing the rollback counter: %w", err)
	}
	return nil
}

// undefineCounter deletes the counter (owner auth). Its value is not lost:
// a counter defined later starts above it.
func undefineCounter(t transport.TPM) error {
	rsp, err := tpm2.NVReadPublic{NVIndex: tpmkeys.NVCounter}.Execute(t)
	if errors.Is(err, tpm2.TPMRCHandle) {
		return nil
	}
	if err != nil {
		return err
	}
	_, err = tpm2.NVUndefineSpace{AuthHandle: owner,
		NVIndex: tpm2.NamedHandle{Handle: tpmkeys.NVCounter, Name: rsp.NVName}}.Execute(t)
	return err
}

// prepareCounter makes sure the counter exists and has a value (defining
// it on a vault's first save, including a vault made before the counter
// existed) and returns it.
func (v *Vault) prepareCounter() (counterState, error) {
	t := v.nv.t
	auth := counterAuth(v.key)
	cs, err := readCounter(t)
	if err != nil {
		return cs, err
	}
	if !cs.defined {
		if err := defineCounter(t, auth); err != nil {
			return cs, err
		}
		v.log.Info("rollback counter defined", "index", fmt.Sprintf("0x%08x", uint32(tpmkeys.NVCounter)))
		if err := v.step("counter defined"); err != nil {
			return cs, err
		}
		if cs, err = readCounter(t); err != nil {
			return cs, err
		}
	}
	if !cs.written {
		// The first increment sets it above every counter this TPM had.
		if err := incrementCounter(t, auth, cs.name); err != nil {
			return cs, err
		}
		if err := v.step("counter initialized"); err != nil {
			return cs, err
		}
		if cs, err = readCounter(t); err != nil {
			return cs, err
		}
	}
	return cs, nil
}

// raiseCounter increments the counter until it reaches target: the commit
// of a save, or the completion of one a power cut interrupted.
func (v *Vault) raiseCounter(cs counterState, target uint64) error {
	if target <= cs.value {
		return nil
	}
	if target-cs.value > 16 {
		return fmt.Errorf("the key bundle records rollback counter %d, far beyond the TPM's %d", target, cs.value)
	}
	for n := cs.value; n < target; n++ {
		if err := incrementCounter(v.nv.t, counterAuth(v.key), cs.name); err != nil {
			return err
		}
	}
	return nil
}

// checkCounter enforces the counter on a decrypted bundle at Open.
func (v *Vault) checkCounter(b *Bundle) error {
	cs, err := readCounter(v.nv.t)
	if err != nil {
		return err
	}
	if !b.counted {
		// Saved before rollback protection existed: the first save with a
		// counter upgrades it. (A copy of a bundle this old can still be
		// written back: nothing in the TPM tells an upgraded vault from one
		// never saved with a counter, as owner auth can undefine counters.)
		v.log.Info("key bundle predates the rollback counter; the next save adds it", "counter_defined", cs.defined)
		return nil
	}
	if !cs.written {
		return fmt.Errorf("%w (the bundle records counter %d, the TPM has no rollback counter value: deleted)", ErrRollback, b.Counter)
	}
	if b.Counter < cs.value {
		return fmt.Errorf("%w (the bundle, version %d, records counter %d, the TPM counter is %d)", ErrRollback, b.Version, b.Counter, cs.value)
	}
	if b.Counter > cs.value {
		v.log.Warn("completing a key bundle save a power cut interrupted (raising the rollback counter)",
			"bundle_counter", b.Counter, "tpm_counter", cs.value)
		if err := v.raiseCounter(cs, b.Counter); err != nil {
			return err
		}
	}
	v.counter = b.Counter
	return nil
}
