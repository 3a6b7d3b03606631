// Package tpmkeys holds the node's TPM keys and where they live: the
// endorsement key (persisted by the vendor or re-derived from the TCG
// template), the storage root key (re-derived each boot), the attestation key
// (created once, persisted at a fixed handle) and the handles the key vault
// uses. Attestation, the vault and the CLI share it so they agree on names.
package tpmkeys

import (
	"bytes"
	"errors"
	"fmt"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"patela/init/tpmdev"
	"patela/internal/ekid"
)

// Fixed handles. The 0x81008Fxx persistent handles and the 0x01008Fxx NV
// indices are patela's; the EK handles and certificate indices are the TCG's.
const (
	EKHandleRSA tpm2.TPMHandle = 0x81010001
	EKHandleECC tpm2.TPMHandle = 0x81010002
	EKCertRSA   tpm2.TPMHandle = 0x01C00002
	EKCertECC   tpm2.TPMHandle = 0x01C0000A

	AKHandle   tpm2.TPMHandle = 0x81008F00 // the attestation key
	SealHandle tpm2.TPMHandle = 0x81008F01 // the vault's sealed key (PolicyPCR: unmeasured sealing)
	// ReleaseSealHandle holds the vault key sealed to the release policy key
	// (TPM2_PolicyAuthorize); a vault migrating from SealHandle has both
	// for a moment.
	ReleaseSealHandle tpm2.TPMHandle = 0x81008F02
	NVHeader          tpm2.TPMHandle = 0x01008F00 // the vault's storage header
	NVData            tpm2.TPMHandle = 0x01008F01 // first vault data index
	NVDataMax                        = 64         // data indices NVData .. NVData+63 (two slots of 32)
	NVCounter         tpm2.TPMHandle = 0x01008F80 // the vault's rollback counter (TPM_NT_COUNTER)
)

// Key is a loaded key. Transient keys must be flushed with Close.
type Key struct {
	Handle    tpm2.TPMHandle
	Name      tpm2.TPM2BName
	Public    tpm2.TPMTPublic
	Transient bool
}

// Close flushes a transient key; persistent keys stay.
func (k *Key) Close(t transport.TPM) {
	if k != nil && k.Transient {
		tpmdev.Flush(t, k.Handle)
	}
}

// Named returns the key as a handle for commands without authorization.
func (k *Key) Named() tpm2.NamedHandle {
	return tpm2.NamedHandle{Handle: k.Handle, Name: k.Name}
}

// EKTemplate is the TCG template of the EK for alg (TPMAlgECC: P-256, the
// default; TPMAlgRSA: RSA-2048).
func EKTemplate(alg tpm2.TPMAlgID) (tpm2.TPMTPublic, tpm2.TPMHandle, tpm2.TPMHandle, error) {
	switch alg {
	case tpm2.TPMAlgECC:
		return tpm2.ECCEKTemplate, EKHandleECC, EKCertECC, nil
	case tpm2.TPMAlgRSA:
		return tpm2.RSAEKTemplate, EKHandleRSA, EKCertRSA, nil
	}
	return tpm2.TPMTPublic{}, 0, 0, fmt.Errorf("unsupported EK algorithm 0x%x", uint16(alg))
}

// ChooseEK picks the EK algorithm when none is configured: ECC P-256,
// unless the TPM has no P-256 EK certificate but an RSA one, so that a
// server checking EK certificates can check this one. It depends only on
// what the manufacturer provisioned, so every boot picks the same EK.
func ChooseEK(t transport.TPM) (tpm2.TPMAlgID, error) {
	has := func(idx tpm2.TPMHandle) (bool, error) {
		_, err := tpm2.NVReadPublic{NVIndex: idx}.Execute(t)
		if errors.Is(err, tpm2.TPMRCHandle) {
			return false, nil
		}
		return err == nil, err
	}
	ecc, err := has(EKCertECC)
	if err != nil || ecc {
		return tpm2.TPMAlgECC, err
	}
	rsa, err := has(EKCertRSA)
	if err != nil {
		return 0, err
	}
	if rsa {
		return tpm2.TPMAlgRSA, nil
	}
	return tpm2.TPMAlgECC, nil
}

// EK loads the endorsement key: the persisted one at the TCG handle when it
// matches the template, else a CreatePrimary from the template (the same
// key: primaries are derived from the hierarchy seed).
func EK(t transport.TPM, alg tpm2.TPMAlgID) (*Key, error) {
	tmpl, h, _, err := EKTemplate(alg)
	if err != nil {
		return nil, err
	}
	if k, err := Persisted(t, h); err == nil && Matches(k.Public, tmpl) {
		return k, nil
	}
	return createPrimary(t, tpm2.TPMRHEndorsement, tmpl)
}

// PersistEK is EK, and makes the EK persistent at its TCG handle when that
// handle is free, as provisioning tools do: later boots then load it
// instead of generating it again (RSA key generation takes seconds on
// hardware TPMs). A handle holding something else is left alone.
func PersistEK(t transport.TPM, alg tpm2.TPMAlgID) (*Key, error) {
	k, err := EK(t, alg)
	if err != nil || !k.Transient {
		return k, err
	}
	_, h, _, _ := EKTemplate(alg)
	if _, err := Persisted(t, h); !errors.Is(err, ErrNotPersisted) {
		return k, nil // occupied (or unreadable): keep the transient EK
	}
	if _, err := (tpm2.EvictControl{
		Auth:             tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)},
		ObjectHandle:     k.Named(),
		PersistentHandle: h,
	}).Execute(t); err != nil {
		return k, nil // no persistent slot left: derive it each boot
	}
	k.Close(t)
	return Persisted(t, h)
}

// SRK derives the ECC storage root key from the owner hierarchy.
func SRK(t transport.TPM) (*Key, error) {
	return createPrimary(t, tpm2.TPMRHOwner, tpm2.ECCSRKTemplate)
}

func createPrimary(t transport.TPM, hier tpm2.TPMHandle, tmpl tpm2.TPMTPublic) (*Key, error) {
	rsp, err := tpm2.CreatePrimary{
		PrimaryHandle: tpm2.AuthHandle{Handle: hier, Auth: tpm2.PasswordAuth(nil)},
		InPublic:      tpm2.New2B(tmpl),
	}.Execute(t)
	if err != nil {
		return nil, fmt.Errorf("CreatePrimary: %w", err)
	}
	pub, err := rsp.OutPublic.Contents()
	if err != nil {
		tpmdev.Flush(t, rsp.ObjectHandle)
		return nil, err
	}
	return &Key{Handle: rsp.ObjectHandle, Name: rsp.Name, Public: *pub, Transient: true}, nil
}

// ErrNotPersisted is returned by Persisted for an empty handle.
var ErrNotPersisted = errors.New("no object at this persistent handle")

// Persisted reads the object at a persistent handle.
func Persisted(t transport.TPM, h tpm2.TPMHandle) (*Key, error) {
	rsp, err := tpm2.ReadPublic{ObjectHandle: h}.Execute(t)
	if err != nil {
		if errors.Is(err, tpm2.TPMRCHandle) {
			return nil, fmt.Errorf("0x%08x: %w", uint32(h), ErrNotPersisted)
		}
		return nil, fmt.Errorf("reading 0x%08x: %w", uint32(h), err)
	}
	pub, err := rsp.OutPublic.Contents()
	if err != nil {
		return nil, err
	}
	return &Key{Handle: h, Name: rsp.Name, Public: *pub}, nil
}

// Matches reports whether pub was made from tmpl: everything but the
// unique field (the key itself) must be equal.
func Matches(pub, tmpl tpm2.TPMTPublic) bool {
	if pub.Type != tmpl.Type {
		return false // and the unions below would not marshal together
	}
	tmpl.Unique = pub.Unique
	return bytes.Equal(tpm2.Marshal(pub), tpm2.Marshal(tmpl))
}

// Identity is the EK's identity (internal/ekid): the config server's
// node key, and what operators allowlist a node by.
func Identity(pub tpm2.TPMTPublic) (ekid.ID, error) {
	return ekid.Of(&pub)
}

// EKPolicy satisfies the TCG EK's authPolicy, PolicySecret(TPM_RH_ENDORSEMENT),
// with an empty endorsement password.
func EKPolicy(t transport.TPM, s tpm2.TPMISHPolicy, nonce tpm2.TPM2BNonce) error {
	_, err := tpm2.PolicySecret{
		AuthHandle:    tpm2.AuthHandle{Handle: tpm2.TPMRHEndorsement, Auth: tpm2.PasswordAuth(nil)},
		PolicySession: s,
		NonceTPM:      nonce,
	}.Execute(t)
	return err
}

// EKCertificate reads the EK certificate the manufacturer stored in NV for
// alg. A TPM without one returns nil, nil.
func EKCertificate(t transport.TPM, alg tpm2.TPMAlgID) ([]byte, error) {
	_, _, idx, err := EKTemplate(alg)
	if err != nil {
		return nil, err
	}
	pub, err := tpm2.NVReadPublic{NVIndex: idx}.Execute(t)
	if err != nil {
		if errors.Is(err, tpm2.TPMRCHandle) {
			return nil, nil
		}
		return nil, fmt.Errorf("EK certificate index: %w", err)
	}
	nv, err := pub.NVPublic.Contents()
	if err != nil {
		return nil, err
	}
	// Vendors set AuthRead (empty index password), OwnerRead, or both.
	auth := tpm2.AuthHandle{Handle: idx, Name: pub.NVName, Auth: tpm2.PasswordAuth(nil)}
	if !nv.Attributes.AuthRead {
		auth = tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)}
	}
	data, err := ReadNV(t, auth, tpm2.NamedHandle{Handle: idx, Name: pub.NVName}, int(nv.DataSize))
	if err != nil {
		return nil, fmt.Errorf("reading EK certificate: %w", err)
	}
	return data, nil
}

// BufferMax is the largest NV read or write the TPM accepts in one command.
func BufferMax(t transport.TPM) int {
	v, err := tpmdev.Property(t, tpm2.TPMPTNVBufferMax)
	if err != nil || v == 0 {
		return 512 // some TPMs report 0; 512 is accepted everywhere
	}
	return int(v)
}

// ReadNV reads size bytes of an NV index in chunks the TPM accepts.
func ReadNV(t transport.TPM, auth tpm2.AuthHandle, idx tpm2.NamedHandle, size int) ([]byte, error) {
	chunk := BufferMax(t)
	out := make([]byte, 0, size)
	for off := 0; off < size; off += chunk {
		n := min(chunk, size-off)
		rsp, err := tpm2.NVRead{AuthHandle: auth, NVIndex: idx, Size: uint16(n), Offset: uint16(off)}.Execute(t)
		if err != nil {
			return nil, err
		}
		out = append(out, rsp.Data.Buffer...)
	}
	return out, nil
}

// AKTemplate is the attestation key: a restricted ECDSA P-256 signing key
// that never leaves this TPM.
var AKTemplate = tpm2.TPMTPublic{
	Type:    tpm2.TPMAlgECC,
	NameAlg: tpm2.TPMAlgSHA256,
	ObjectAttributes: tpm2.TPMAObject{
		FixedTPM:            true,
		FixedParent:         true,
		SensitiveDataOrigin: true,
		UserWithAuth:        true,
		Restricted:          true,
		SignEncrypt:         true,
		NoDA:                true,
	},
	Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
		Scheme: tpm2.TPMTECCScheme{
			Scheme: tpm2.TPMAlgECDSA,
			Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgECDSA,
				&tpm2.TPMSSigSchemeECDSA{HashAlg: tpm2.TPMAlgSHA256}),
		},
		CurveID: tpm2.TPMECCNistP256,
	}),
	Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{
		X: tpm2.TPM2BECCParameter{Buffer: make([]byte, 32)},
		Y: tpm2.TPM2BECCParameter{Buffer: make([]byte, 32)},
	}),
}

// AK returns the persisted attestation key, creating it under the SRK and
// persisting it at AKHandle when absent. A foreign object at AKHandle (not
// made from AKTemplate) is evicted and replaced. created says whether a new
// key was made.
func AK(t transport.TPM) (k *Key, created bool, err error) {
	if k, err := Persisted(t, AKHandle); err == nil {
		if Matches(k.Public, AKTemplate) {
			return k, false, nil
		}
		if err := Evict(t, AKHandle); err != nil {
			return nil, false, fmt.Errorf("evicting foreign object at the AK handle: %w", err)
		}
	} else if !errors.Is(err, ErrNotPersisted) {
		return nil, false, err
	}
	srk, err := SRK(t)
	if err != nil {
		return nil, false, err
	}
	defer srk.Close(t)
	crt, err := tpm2.Create{
		ParentHandle: tpm2.AuthHandle{Handle: srk.Handle, Name: srk.Name, Auth: tpm2.PasswordAuth(nil)},
		InPublic:     tpm2.New2B(AKTemplate),
	}.Execute(t)
	if err != nil {
		return nil, false, fmt.Errorf("creating AK: %w", err)
	}
	k, err = Persist(t, srk, crt.OutPrivate, crt.OutPublic, AKHandle)
	if err != nil {
		return nil, false, fmt.Errorf("persisting AK: %w", err)
	}
	return k, true, nil
}

// Persist loads a child of parent and makes it persistent at h.
func Persist(t transport.TPM, parent *Key, priv tpm2.TPM2BPrivate, pub tpm2.TPM2BPublic, h tpm2.TPMHandle) (*Key, error) {
	ld, err := tpm2.Load{
		ParentHandle: tpm2.AuthHandle{Handle: parent.Handle, Name: parent.Name, Auth: tpm2.PasswordAuth(nil)},
		InPrivate:    priv,
		InPublic:     pub,
	}.Execute(t)
	if err != nil {
		return nil, err
	}
	defer tpmdev.Flush(t, ld.ObjectHandle)
	if _, err := (tpm2.EvictControl{
		Auth:             tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)},
		ObjectHandle:     tpm2.NamedHandle{Handle: ld.ObjectHandle, Name: ld.Name},
		PersistentHandle: h,
	}).Execute(t); err != nil {
		return nil, err
	}
	return Persisted(t, h)
}

// Evict removes the persistent object at h.
func Evict(t transport.TPM, h tpm2.TPMHandle) error {
	k, err := Persisted(t, h)
	if err != nil {
		return err
	}
	_, err = tpm2.EvictControl{
		Auth:             tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)},
		ObjectHandle:     k.Named(),
		PersistentHandle: h,
	}.Execute(t)
	return err
}
