package vault

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"slices"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"patela/init/tpmkeys"
	"patela/internal/release"
)

// keySize is the vault key: AES-256.
const keySize = 32

// ErrLocked means the vault key was already unsealed this boot and the lock
// PCR extended; only a reboot (TPM reset) makes it unsealable again.
var ErrLocked = errors.New("the vault is locked for this boot (its lock PCR was extended after unsealing); reboot to unseal again")

// ErrPolicy means the PCRs no longer hold the values the key was sealed to.
var ErrPolicy = errors.New("the vault key's PCR policy does not match the current PCR values (the boot chain changed, or the configured PCR list did)")

// pcrPolicy is the PCR selection the vault key is sealed to.
type pcrPolicy struct {
	pcrs []int // sorted, unique, includes lock when lock >= 0
	lock int   // -1: no lock PCR
}

func newPolicy(pcrs []int, lock int) (pcrPolicy, error) {
	p := pcrPolicy{lock: lock}
	for _, n := range pcrs {
		if n < 0 || n > 23 {
			return p, fmt.Errorf("PCR %d out of range 0-23", n)
		}
		p.pcrs = append(p.pcrs, n)
	}
	if lock >= 0 {
		if lock > 23 || lock == 16 || lock == 23 {
			return p, fmt.Errorf("lock PCR %d: want a non-resettable PCR 0-22 (not 16)", lock)
		}
		p.pcrs = append(p.pcrs, lock)
	}
	slices.Sort(p.pcrs)
	p.pcrs = slices.Compact(p.pcrs)
	return p, nil
}

func (p pcrPolicy) mask() uint32 {
	var m uint32
	for _, n := range p.pcrs {
		m |= 1 << n
	}
	return m
}

func (p pcrPolicy) selection() tpm2.TPMLPCRSelection {
	u := make([]uint, len(p.pcrs))
	for i, n := range p.pcrs {
		u[i] = uint(n)
	}
	return tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{
		Hash: tpm2.TPMAlgSHA256, PCRSelect: tpm2.PCClientCompatible.PCRs(u...),
	}}}
}

// readPCR reads one SHA-256 PCR.
func readPCR(t transport.TPM, n int) ([]byte, error) {
	sel := tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{
		Hash: tpm2.TPMAlgSHA256, PCRSelect: tpm2.PCClientCompatible.PCRs(uint(n)),
	}}}
	rsp, err := tpm2.PCRRead{PCRSelectionIn: sel}.Execute(t)
	if err != nil {
		return nil, fmt.Errorf("reading PCR %d: %w", n, err)
	}
	if len(rsp.PCRValues.Digests) != 1 {
		return nil, fmt.Errorf("PCR %d: the TPM has no active SHA-256 bank for it", n)
	}
	return rsp.PCRValues.Digests[0].Buffer, nil
}

// digest is the policy digest of PolicyPCR over the PCRs' current values
// (nil without PCRs: the key then uses userWithAuth).
func (p pcrPolicy) digest(t transport.TPM) ([]byte, error) {
	if len(p.pcrs) == 0 {
		return nil, nil
	}
	h := sha256.New()
	for _, n := range p.pcrs {
		v, err := readPCR(t, n)
		if err != nil {
			return nil, err
		}
		h.Write(v)
	}
	calc, err := tpm2.NewPolicyCalculator(tpm2.TPMAlgSHA256)
	if err != nil {
		return nil, err
	}
	if err := (tpm2.PolicyPCR{PcrDigest: tpm2.TPM2BDigest{Buffer: h.Sum(nil)}, Pcrs: p.selection()}).Update(calc); err != nil {
		return nil, err
	}
	return calc.Hash().Digest, nil
}

// sealKey seals key under the SRK to the PCRs' current values and persists
// the sealed object at tpmkeys.SealHandle.
func sealKey(t transport.TPM, srk *tpmkeys.Key, p pcrPolicy, key []byte) error {
	policy, err := p.digest(t)
	if err != nil {
		return err
	}
	return sealTo(t, srk, policy, key, tpmkeys.SealHandle)
}

// sealTo seals key under the SRK with authPolicy (nil: userWithAuth) and
// persists the sealed object at h. The key crosses the bus encrypted
// (salted session, parameter encryption). The TPM does not look at PCRs
// when sealing.
func sealTo(t transport.TPM, srk *tpmkeys.Key, policy, key []byte, h tpm2.TPMHandle) error {
	tmpl := tpm2.TPMTPublic{
		Type:    tpm2.TPMAlgKeyedHash,
		NameAlg: tpm2.TPMAlgSHA256,
		ObjectAttributes: tpm2.TPMAObject{
			FixedTPM:     true,
			FixedParent:  true,
			NoDA:         true,
			UserWithAuth: policy == nil,
		},
		AuthPolicy: tpm2.TPM2BDigest{Buffer: policy},
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgKeyedHash, &tpm2.TPMSKeyedHashParms{
			Scheme: tpm2.TPMTKeyedHashScheme{Scheme: tpm2.TPMAlgNull},
		}),
	}
	crt, err := tpm2.Create{
		ParentHandle: tpm2.AuthHandle{Handle: srk.Handle, Name: srk.Name,
			Auth: tpm2.HMAC(tpm2.TPMAlgSHA256, 16, tpm2.Salted(srk.Handle, srk.Public),
				tpm2.AESEncryption(128, tpm2.EncryptIn))},
		InSensitive: tpm2.TPM2BSensitiveCreate{Sensitive: &tpm2.TPMSSensitiveCreate{
			Data: tpm2.NewTPMUSensitiveCreate(&tpm2.TPM2BSensitiveData{Buffer: key}),
		}},
		InPublic: tpm2.New2B(tmpl),
	}.Execute(t)
	if err != nil {
		return fmt.Errorf("sealing the vault key: %w", err)
	}
	if _, err := tpmkeys.Persist(t, srk, crt.OutPrivate, crt.OutPublic, h); err != nil {
		return fmt.Errorf("persisting the sealed vault key: %w", err)
	}
	return nil
}

// unsealKey unseals the vault key. A policy that cannot be satisfied is
// diagnosed before trying: locked this boot, or PCRs changed.
func unsealKey(t transport.TPM, srk, sealed *tpmkeys.Key, p pcrPolicy) ([]byte, error) {
	want := sealed.Public.AuthPolicy.Buffer
	if sealed.Public.ObjectAttributes.UserWithAuth != (len(want) == 0) {
		return nil, errors.New("the sealed vault key has an unexpected authorization (not made by patela?)")
	}
	if len(p.pcrs) == 0 && len(want) != 0 {
		return nil, fmt.Errorf("%w: the key is sealed to PCRs, the configuration names none", ErrPolicy)
	}
	if len(p.pcrs) != 0 && len(want) == 0 {
		return nil, fmt.Errorf("%w: the key is sealed without PCRs, the configuration names %v", ErrPolicy, p.pcrs)
	}
	enc := []tpm2.AuthOption{tpm2.Salted(srk.Handle, srk.Public), tpm2.AESEncryption(128, tpm2.EncryptOut)}
	var auth tpm2.Session
	if len(want) == 0 {
		auth = tpm2.HMAC(tpm2.TPMAlgSHA256, 16, enc...)
	} else {
		have, err := p.digest(t)
		if err != nil {
			return nil, err
		}
		if !bytes.Equal(have, want) {
			if p.lock >= 0 {
				if v, err := readPCR(t, p.lock); err == nil && !bytes.Equal(v, make([]byte, len(v))) {
					return nil, fmt.Errorf("%w (PCR %d)", ErrLocked, p.lock)
				}
			}
			return nil, fmt.Errorf("%w (configured PCRs %v)", ErrPolicy, p.pcrs)
		}
		sel := p.selection()
		auth = tpm2.Policy(tpm2.TPMAlgSHA256, 16, func(t transport.TPM, s tpm2.TPMISHPolicy, _ tpm2.TPM2BNonce) error {
			_, err := tpm2.PolicyPCR{PolicySession: s, Pcrs: sel}.Execute(t)
			return err
		}, enc...)
	}
	rsp, err := tpm2.Unseal{ItemHandle: tpm2.AuthHandle{Handle: sealed.Handle, Name: sealed.Name, Auth: auth}}.Execute(t)
	if err != nil {
		if errors.Is(err, tpm2.TPMRCPolicyFail) {
			return nil, fmt.Errorf("%w: %v", ErrPolicy, err)
		}
		return nil, fmt.Errorf("unsealing the vault key: %w", err)
	}
	if len(rsp.OutData.Buffer) != keySize {
		return nil, fmt.Errorf("sealed vault key is %d bytes, want %d", len(rsp.OutData.Buffer), keySize)
	}
	return rsp.OutData.Buffer, nil
}

// lockLabel is extended into the lock PCR (the server recognizes the
// locked value in quotes).
var lockLabel = release.LockDigest

// lockPCR extends the lock PCR so the vault key's policy cannot be met
// again until the TPM resets.
func lockPCR(t transport.TPM, n int) error {
	_, err := tpm2.PCRExtend{
		PCRHandle: tpm2.AuthHandle{Handle: tpm2.TPMHandle(n), Auth: tpm2.PasswordAuth(nil)},
		Digests: tpm2.TPMLDigestValues{Digests: []tpm2.TPMTHA{{
			HashAlg: tpm2.TPMAlgSHA256, Digest: lockLabel[:],
		}}},
	}.Execute(t)
	if err != nil {
		return fmt.Errorf("locking the vault (extending PCR %d): %w", n, err)
	}
	return nil
}
