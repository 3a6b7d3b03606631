package vault

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"errors"
	"fmt"
	"strings"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"patela/init/tpmdev"
	"patela/init/tpmkeys"
	"patela/internal/pcr"
	"patela/internal/release"
)

// Release sealing. The vault key is sealed (at tpmkeys.ReleaseSealHandle)
// with authPolicy = TPM2_PolicyAuthorize(policy key's Name, PolicyRef): no
// PCR is named in the object. To unseal, the agent shows the TPM the
// approval of the release it booted: TPM2_LoadExternal of the policy key,
// TPM2_VerifySignature of the approval (a ticket), then in one policy
// session TPM2_PolicyPCR over the release's PCRs (the TPM takes their
// current values) and TPM2_PolicyAuthorize, which accepts only if the
// session's digest is the approved one. Any release the key approved
// unseals the same key; a boot whose PCRs differ, or whose lock PCR was
// extended, cannot, whatever approvals it holds.

// ErrNotApproved means this boot's PCRs are not the approved release's.
var ErrNotApproved = errors.New("this boot is not the approved release: its PCRs differ from the release's, so the TPM will not unseal the vault key")

// ReleasePolicy seals the vault to a release policy key.
type ReleasePolicy struct {
	Key *ecdsa.PublicKey // the image's policy key (agent config policy_key)
	// Approval is the approved release this boot claims to be (from the
	// config server); nil only to report ErrNotApproved's details.
	Approval *release.Release
}

// readPCRs reads SHA-256 PCRs (at most 8 per TPM2_PCR_Read).
func readPCRs(t transport.TPM, pcrs []int) (map[int]pcr.Value, error) {
	out := map[int]pcr.Value{}
	for i := 0; i < len(pcrs); i += 8 {
		chunk := pcrs[i:min(i+8, len(pcrs))]
		rsp, err := tpm2.PCRRead{PCRSelectionIn: release.Selection(chunk)}.Execute(t)
		if err != nil {
			return nil, fmt.Errorf("reading PCRs %v: %w", chunk, err)
		}
		if len(rsp.PCRValues.Digests) != len(chunk) {
			return nil, fmt.Errorf("reading PCRs %v: the TPM returned %d values (no SHA-256 bank?)", chunk, len(rsp.PCRValues.Digests))
		}
		for j, n := range chunk {
			var v pcr.Value
			copy(v[:], rsp.PCRValues.Digests[j].Buffer)
			out[n] = v
		}
	}
	return out, nil
}

// ReadPCRs reads the SHA-256 PCRs 0-15, what releases are matched against.
func ReadPCRs(t transport.TPM) (map[int]pcr.Value, error) {
	all := make([]int, 16)
	for i := range all {
		all[i] = i
	}
	return readPCRs(t, all)
}

// checkApproval verifies the approval in software and compares its PCRs
// with the TPM's, so a refusal names what differs before the TPM says
// only "policy failed".
func checkApproval(t transport.TPM, rp *ReleasePolicy) error {
	a := rp.Approval
	if a == nil || a.Approval == nil {
		return errors.New("no approved release given")
	}
	if err := a.Check(); err != nil {
		return err
	}
	if err := release.VerifyApproval(rp.Key, a.Policy.Digest, a.Approval.Signature); err != nil {
		return fmt.Errorf("release %s is not approved by this image's policy key: %w", a.Name, err)
	}
	have, err := readPCRs(t, a.Policy.PCRs)
	if err != nil {
		return err
	}
	if v := have[release.LockPCR]; !v.IsZero() {
		return fmt.Errorf("%w (PCR %d)", ErrLocked, release.LockPCR)
	}
	var diff []string
	for _, n := range a.Policy.PCRs {
		if have[n] != a.PCRs[n] {
			diff = append(diff, fmt.Sprintf("PCR %d is %s, release %s expects %s", n, have[n], a.Name, a.PCRs[n]))
		}
	}
	if len(diff) > 0 {
		return fmt.Errorf("%w: %s", ErrNotApproved, strings.Join(diff, "; "))
	}
	return nil
}

// sealAuthorized seals key to the policy key at ReleaseSealHandle.
func sealAuthorized(t transport.TPM, srk *tpmkeys.Key, pub *ecdsa.PublicKey, key []byte) error {
	policy, err := release.AuthorizePolicy(pub)
	if err != nil {
		return err
	}
	return sealTo(t, srk, policy, key, tpmkeys.ReleaseSealHandle)
}

// isAuthorized reports whether the sealed object is sealed to pub.
func isAuthorized(sealed *tpmkeys.Key, pub *ecdsa.PublicKey) (bool, error) {
	want, err := release.AuthorizePolicy(pub)
	if err != nil {
		return false, err
	}
	return !sealed.Public.ObjectAttributes.UserWithAuth && bytes.Equal(sealed.Public.AuthPolicy.Buffer, want), nil
}

// unsealAuthorized proves the approval to the TPM and unseals.
func unsealAuthorized(t transport.TPM, srk, sealed *tpmkeys.Key, rp *ReleasePolicy) ([]byte, error) {
	if ok, err := isAuthorized(sealed, rp.Key); err != nil {
		return nil, err
	} else if !ok {
		return nil, errors.New("the vault key is sealed to another release policy key than this image's (policy_key in the agent config)")
	}
	if err := checkApproval(t, rp); err != nil {
		return nil, err
	}
	a := rp.Approval
	le, err := tpm2.LoadExternal{InPublic: tpm2.New2B(release.KeyPublic(rp.Key)), Hierarchy: tpm2.TPMRHOwner}.Execute(t)
	if err != nil {
		return nil, fmt.Errorf("loading the release policy key: %w", err)
	}
	defer tpmdev.Flush(t, le.ObjectHandle)
	vs, err := tpm2.VerifySignature{
		KeyHandle: tpm2.NamedHandle{Handle: le.ObjectHandle, Name: le.Name},
		Digest:    tpm2.TPM2BDigest{Buffer: release.ApprovalDigest(a.Policy.Digest)},
		Signature: tpm2.TPMTSignature{SigAlg: tpm2.TPMAlgECDSA, Signature: tpm2.NewTPMUSignature(tpm2.TPMAlgECDSA,
			&tpm2.TPMSSignatureECC{Hash: tpm2.TPMAlgSHA256,
				SignatureR: tpm2.TPM2BECCParameter{Buffer: a.Approval.Signature[:32]},
				SignatureS: tpm2.TPM2BECCParameter{Buffer: a.Approval.Signature[32:]}})},
	}.Execute(t)
	if err != nil {
		return nil, fmt.Errorf("the TPM refused release %s's approval signature: %w", a.Name, err)
	}
	sel := release.Selection(a.Policy.PCRs)
	digest := a.Policy.Digest
	auth := tpm2.Policy(tpm2.TPMAlgSHA256, 16, func(t transport.TPM, s tpm2.TPMISHPolicy, _ tpm2.TPM2BNonce) error {
		if _, err := (tpm2.PolicyPCR{PolicySession: s, Pcrs: sel}).Execute(t); err != nil {
			return err
		}
		_, err := tpm2.PolicyAuthorize{PolicySession: s, ApprovedPolicy: tpm2.TPM2BDigest{Buffer: digest[:]},
			PolicyRef: tpm2.TPM2BDigest{Buffer: []byte(release.PolicyRef)}, KeySign: le.Name, CheckTicket: vs.Validation}.Execute(t)
		return err
	}, tpm2.Salted(srk.Handle, srk.Public), tpm2.AESEncryption(128, tpm2.EncryptOut))
	rsp, err := tpm2.Unseal{ItemHandle: tpm2.AuthHandle{Handle: sealed.Handle, Name: sealed.Name, Auth: auth}}.Execute(t)
	if err != nil {
		if errors.Is(err, tpm2.TPMRCPolicyFail) || errors.Is(err, tpm2.TPMRCValue) {
			return nil, fmt.Errorf("%w: %v", ErrNotApproved, err)
		}
		return nil, fmt.Errorf("unsealing the vault key: %w", err)
	}
	if len(rsp.OutData.Buffer) != keySize {
		return nil, fmt.Errorf("sealed vault key is %d bytes, want %d", len(rsp.OutData.Buffer), keySize)
	}
	return rsp.OutData.Buffer, nil
}

// openRelease is Open in release sealing: unseal with the approval, or
// migrate a PolicyPCR vault to the policy key, or create the vault on an
// approved first boot. An unapproved boot changes nothing in the TPM.
func (v *Vault) openRelease(ctx context.Context, t transport.TPM, srk *tpmkeys.Key, hdr *header, pol pcrPolicy, rp *ReleasePolicy) (*Vault, error) {
	if rp.Key == nil {
		return nil, errors.New("release sealing needs the policy key")
	}
	if err := checkApproval(t, rp); err != nil {
		return nil, err
	}
	sealed, err := tpmkeys.Persisted(t, tpmkeys.ReleaseSealHandle)
	if err != nil && !errors.Is(err, tpmkeys.ErrNotPersisted) {
		return nil, err
	}
	legacy, lerr := tpmkeys.Persisted(t, tpmkeys.SealHandle)
	if lerr != nil && !errors.Is(lerr, tpmkeys.ErrNotPersisted) {
		return nil, lerr
	}
	if sealed == nil && legacy == nil {
		if hdr != nil && hdr.location != locNone {
			return nil, ErrKeyLost
		}
		if b, err := v.mirrorGet(ctx); err != nil {
			return nil, err
		} else if b != nil {
			return nil, ErrOrphaned
		}
		if err := v.createRelease(t, srk, rp); err != nil {
			return nil, err
		}
		return v, nil
	}
	// Fetch the ciphertext before unsealing: a failure here leaves the
	// vault unlocked for a retry in this boot.
	if hdr == nil {
		hdr = &header{location: locNone, lock: release.LockPCR, release: true}
		if err := v.nv.writeHeader(hdr); err != nil {
			return nil, err
		}
	}
	env, err := v.fetch(ctx, hdr)
	if err != nil {
		return nil, err
	}
	migrated := false
	var key []byte
	if sealed != nil {
		key, err = unsealAuthorized(t, srk, sealed, rp)
	} else {
		key, err = v.migrate(t, srk, legacy, pol, rp)
		migrated = err == nil
	}
	if err != nil {
		return nil, err
	}
	if err := lockPCR(t, release.LockPCR); err != nil {
		clear(key)
		return nil, err
	}
	if sealed != nil && legacy != nil {
		// A migration stopped after sealing to the policy key.
		if err := tpmkeys.Evict(t, tpmkeys.SealHandle); err != nil {
			v.log.Warn("evicting the PolicyPCR-sealed copy of the vault key", "err", err)
		}
		migrated = true
	}
	if migrated {
		hdr.release, hdr.pcrMask, hdr.lock = true, 0, release.LockPCR
		if err := v.nv.writeHeader(hdr); err != nil {
			clear(key)
			return nil, err
		}
	}
	v.key = key
	if err := v.decrypt(hdr, env); err != nil {
		clear(v.key)
		return nil, err
	}
	v.log.Info("vault opened", "relays", len(v.relays), "version", v.version, "counter", v.counter,
		"stored_in", [...]string{"nothing yet", "TPM NV", "config server mirror"}[v.hdr.location],
		"sealing", "release", "release", rp.Approval.Name, "migrated", migrated)
	return v, nil
}

// migrate moves a PolicyPCR-sealed vault key to the policy key: unseal it
// with its old policy (the configured PCRs), seal the same key at
// ReleaseSealHandle, prove the new object unseals with the approval, then
// evict the old one. A power cut leaves one or both objects, never none;
// the bundle and the rollback counter keep working, as the key is the
// same.
func (v *Vault) migrate(t transport.TPM, srk, legacy *tpmkeys.Key, pol pcrPolicy, rp *ReleasePolicy) ([]byte, error) {
	key, err := unsealKey(t, srk, legacy, pol)
	if err != nil {
		return nil, fmt.Errorf("migrating the PolicyPCR-sealed vault key to the release policy key (it is opened once with its old policy, PCRs %v): %w", pol.pcrs, err)
	}
	if err := sealAuthorized(t, srk, rp.Key, key); err != nil {
		clear(key)
		return nil, err
	}
	sealed, err := tpmkeys.Persisted(t, tpmkeys.ReleaseSealHandle)
	if err != nil {
		clear(key)
		return nil, err
	}
	again, err := unsealAuthorized(t, srk, sealed, rp)
	if err != nil || !bytes.Equal(again, key) {
		clear(key)
		return nil, fmt.Errorf("the vault key sealed to the policy key does not unseal with the approval (kept the old one): %v", err)
	}
	clear(again)
	if err := tpmkeys.Evict(t, tpmkeys.SealHandle); err != nil {
		v.log.Warn("evicting the PolicyPCR-sealed copy of the vault key (next boot retries)", "err", err)
	}
	v.log.Warn("vault key migrated from PolicyPCR sealing to the release policy key: only approved releases unseal it from now on",
		"old_pcrs", pol.pcrs)
	return key, nil
}

// createRelease makes the vault key on an approved first boot, seals it to
// the policy key, checks it unseals with the approval, and locks.
func (v *Vault) createRelease(t transport.TPM, srk *tpmkeys.Key, rp *ReleasePolicy) error {
	if err := undefineCounter(t); err != nil {
		return fmt.Errorf("removing an old vault's rollback counter: %w", err)
	}
	v.key = make([]byte, keySize)
	if _, err := rand.Read(v.key); err != nil {
		return err
	}
	if err := sealAuthorized(t, srk, rp.Key, v.key); err != nil {
		return err
	}
	sealed, err := tpmkeys.Persisted(t, tpmkeys.ReleaseSealHandle)
	if err != nil {
		return err
	}
	again, err := unsealAuthorized(t, srk, sealed, rp)
	if err != nil || !bytes.Equal(again, v.key) {
		tpmkeys.Evict(t, tpmkeys.ReleaseSealHandle)
		return fmt.Errorf("the new vault key does not unseal with the approval (removed it): %v", err)
	}
	clear(again)
	v.hdr = header{location: locNone, lock: release.LockPCR, release: true}
	if err := v.nv.writeHeader(&v.hdr); err != nil {
		return err
	}
	if err := lockPCR(t, release.LockPCR); err != nil {
		return err
	}
	v.stored, _ = encodeBundle(&Bundle{Relays: v.relays})
	v.log.Info("vault created: new key sealed to the release policy key", "release", rp.Approval.Name, "policy_pcrs", rp.Approval.Policy.PCRs)
	return nil
}

// Lock extends the lock PCR (release.LockPCR, every policy's lock) so that
// no vault key on this TPM can be unsealed until the next reboot: the
// agent does it before a debug shell starts.
func Lock(t transport.TPM) error { return lockPCR(t, release.LockPCR) }
