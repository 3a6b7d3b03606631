// Package release is the release record of patela's measured boot, shared
// by stimage (which writes and approves it), the config server (which
// registers and serves it) and the agent (which proves its approval to the
// TPM to unseal the vault key).
//
// A release names one bootable image (a UKI, or a stboot OS package) with
// the hashes of its artifacts and the SHA-256 PCR values a boot of it
// shows before the agent touches the vault. Its policy is a TPM2_PolicyPCR
// digest over some of those PCRs plus the lock PCR (15) still zero; its
// approval is an ECDSA P-256 signature by the release policy key over
// SHA-256(policy digest || PolicyRef), what TPM2_VerifySignature checks
// before TPM2_PolicyAuthorize accepts the policy. The vault key is sealed
// to PolicyAuthorize(the key's Name, PolicyRef), so every approved release
// unseals it and nothing else does; a new release needs a new approval,
// never a re-seal.
//
// Only the approval is signed. The name, kind and artifact hashes are for
// people and for matching; a server that altered them could only make a
// node refuse to boot.
package release

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"regexp"
	"slices"

	"github.com/google/go-tpm/tpm2"

	"patela/internal/pcr"
)

// Format is the record's format number.
const Format = 1

// PolicyRef qualifies every approval: a policy key that also signs for
// other uses (disk unlocking, say) cannot have those signatures replayed
// to open the vault.
const PolicyRef = "patela vault v1"

// LockPCR is zero until the agent has unsealed the vault key; the agent
// extends it right after, so nothing later in the boot can unseal again.
// Every release policy includes it, expected zero.
const LockPCR = 15

// LockDigest is what the agent extends LockPCR with (once, right after it
// unsealed the vault key or before a debug shell starts); a fixed label
// tells whoever reads the PCR what did it.
var LockDigest = sha256.Sum256([]byte("patela vault locked"))

// Locked is LockPCR's value once the agent has locked it in this boot.
func Locked() pcr.Value {
	var v pcr.Value
	v.Extend(LockDigest[:])
	return v
}

// Kinds of release.
const (
	KindUKI   = "uki"   // a Unified Kernel Image booted by UEFI
	KindOSPkg = "ospkg" // a System Transparency OS package booted by stboot
)

// UKIPolicyPCRs: PCR 4 anchors the chain (the firmware measured this UKI
// before running anything of it; PCR 11 and 12 alone any OS could extend
// to the right values), 11 holds the sections, 12 (zero) the absence of a
// command line override.
var UKIPolicyPCRs = []int{4, 11, 12, LockPCR}

// OSPkgPolicyPCRs are what stboot measures: the package (12) and its trust
// policy (13). stboot is software: an OS package release also names the
// firmware PCRs that pin stboot itself (its anchors, e.g. PCR 4 on UEFI).
var OSPkgPolicyPCRs = []int{12, 13, LockPCR}

// Release is the record, as JSON in a release file.
type Release struct {
	Format int    `json:"format"`
	Name   string `json:"name"`
	Kind   string `json:"kind"`
	// Boot is, for a UKI, the firmware path PCR 4 was predicted for
	// ("entry" or "direct", see stimage/uki).
	Boot string `json:"boot,omitempty"`
	// Artifacts are SHA-256 hashes (hex) by name: for a UKI "uki",
	// "uki_authenticode", "linux", "initrd", "cmdline", "osrel"; for an OS
	// package "archive", "descriptor", "kernel", "initramfs".
	Artifacts map[string]string `json:"artifacts"`
	// PCRs are the SHA-256 bank values a boot of the release shows before
	// the vault opens: every PCR of the policy and any other predictable
	// one a quote may be compared against.
	PCRs     map[int]pcr.Value `json:"pcrs"`
	Policy   Policy            `json:"policy"`
	Approval *Approval         `json:"approval,omitempty"`
}

// Policy is the PCR policy the approval signs.
type Policy struct {
	PCRs   []int     `json:"pcrs"`   // the SHA-256 selection, ascending, with LockPCR
	Digest pcr.Value `json:"digest"` // TPM2_PolicyPCR digest over the expected values
}

// Approval is the policy key's signature over the policy.
type Approval struct {
	Key       []byte `json:"key"`       // the P-256 public key, PKIX DER
	Signature []byte `json:"signature"` // r || s, 32 bytes each
}

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$`)

// New builds an unapproved record whose policy covers policyPCRs (LockPCR
// is added, expected zero) with the values in pcrs.
func New(name, kind string, pcrs map[int]pcr.Value, policyPCRs []int, artifacts map[string]string) (*Release, error) {
	r := &Release{Format: Format, Name: name, Kind: kind, Artifacts: artifacts, PCRs: map[int]pcr.Value{}}
	for k, v := range pcrs {
		r.PCRs[k] = v
	}
	sel := append(slices.Clone(policyPCRs), LockPCR)
	slices.Sort(sel)
	r.Policy.PCRs = slices.Compact(sel)
	r.PCRs[LockPCR] = pcr.Value{}
	d, err := PolicyDigest(r.Policy.PCRs, r.PCRs)
	if err != nil {
		return nil, err
	}
	r.Policy.Digest = d
	return r, r.Check()
}

// PolicyDigest is the TPM2_PolicyPCR policy digest over the SHA-256 PCRs
// sel (ascending) holding values: what a policy session's digest is after
// PolicyPCR(sel) when the PCRs hold those values.
func PolicyDigest(sel []int, values map[int]pcr.Value) (pcr.Value, error) {
	var out pcr.Value
	h := sha256.New()
	for i, n := range sel {
		if n < 0 || n > 23 || (i > 0 && n <= sel[i-1]) {
			return out, fmt.Errorf("release: policy PCRs %v: want ascending indices 0-23", sel)
		}
		v, ok := values[n]
		if !ok {
			return out, fmt.Errorf("release: no expected value for policy PCR %d", n)
		}
		h.Write(v[:])
	}
	calc, err := tpm2.NewPolicyCalculator(tpm2.TPMAlgSHA256)
	if err != nil {
		return out, err
	}
	if err := (tpm2.PolicyPCR{PcrDigest: tpm2.TPM2BDigest{Buffer: h.Sum(nil)}, Pcrs: Selection(sel)}).Update(calc); err != nil {
		return out, err
	}
	copy(out[:], calc.Hash().Digest)
	return out, nil
}

// Selection is the SHA-256 bank selection of PCRs.
func Selection(pcrs []int) tpm2.TPMLPCRSelection {
	u := make([]uint, len(pcrs))
	for i, n := range pcrs {
		u[i] = uint(n)
	}
	return tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{
		Hash: tpm2.TPMAlgSHA256, PCRSelect: tpm2.PCClientCompatible.PCRs(u...),
	}}}
}

// Check validates the record: shape, a policy digest that matches its
// PCR values, LockPCR zero in it, and, when approved, a signature that
// verifies with the key it names.
func (r *Release) Check() error {
	switch {
	case r.Format != Format:
		return fmt.Errorf("release: format %d, want %d", r.Format, Format)
	case !nameRE.MatchString(r.Name):
		return fmt.Errorf("release: name %q: want 1-64 of A-Z a-z 0-9 . _ + - (starting with a letter or digit)", r.Name)
	case r.Kind != KindUKI && r.Kind != KindOSPkg:
		return fmt.Errorf("release %s: kind %q, want %q or %q", r.Name, r.Kind, KindUKI, KindOSPkg)
	case len(r.Artifacts) == 0:
		return fmt.Errorf("release %s: no artifact hashes", r.Name)
	case !slices.Contains(r.Policy.PCRs, LockPCR):
		return fmt.Errorf("release %s: the policy must include the lock PCR %d", r.Name, LockPCR)
	case !r.PCRs[LockPCR].IsZero():
		return fmt.Errorf("release %s: the lock PCR %d must be expected zero", r.Name, LockPCR)
	}
	for k, v := range r.Artifacts {
		if len(v) != 64 {
			return fmt.Errorf("release %s: artifact %s: want a SHA-256 in hex", r.Name, k)
		}
	}
	for n := range r.PCRs {
		if n < 0 || n > 23 {
			return fmt.Errorf("release %s: PCR %d out of range", r.Name, n)
		}
	}
	anchored := false
	for _, n := range r.Policy.PCRs {
		// PCRs 0-7 are extended by firmware only: one of them must pin what
		// ran first, or any OS could extend the rest to the right values.
		anchored = anchored || n < 8
	}
	if !anchored {
		return fmt.Errorf("release %s: policy PCRs %v have no firmware PCR (0-7): any OS could reproduce them", r.Name, r.Policy.PCRs)
	}
	d, err := PolicyDigest(r.Policy.PCRs, r.PCRs)
	if err != nil {
		return fmt.Errorf("release %s: %w", r.Name, err)
	}
	if d != r.Policy.Digest {
		return fmt.Errorf("release %s: policy digest %s does not match its PCR values (%s)", r.Name, r.Policy.Digest, d)
	}
	if r.Approval != nil {
		pub, err := ParsePublicKey(r.Approval.Key)
		if err != nil {
			return fmt.Errorf("release %s: approval key: %w", r.Name, err)
		}
		if err := VerifyApproval(pub, r.Policy.Digest, r.Approval.Signature); err != nil {
			return fmt.Errorf("release %s: %w", r.Name, err)
		}
	}
	return nil
}

// Parse decodes and checks a release file.
func Parse(b []byte) (*Release, error) {
	var r Release
	d := json.NewDecoder(bytes.NewReader(b))
	d.DisallowUnknownFields()
	if err := d.Decode(&r); err != nil {
		return nil, fmt.Errorf("release: %w", err)
	}
	if d.More() {
		return nil, errors.New("release: data after the JSON object")
	}
	if err := r.Check(); err != nil {
		return nil, err
	}
	return &r, nil
}

// Marshal encodes r as indented JSON with a final newline.
func (r *Release) Marshal() ([]byte, error) {
	b, err := json.MarshalIndent(r, "", "  ")
	return append(b, '\n'), err
}

// Matches reports whether the PCR values have every policy PCR at its
// expected value.
func (r *Release) Matches(have map[int]pcr.Value) bool {
	for _, n := range r.Policy.PCRs {
		if v, ok := have[n]; !ok || v != r.PCRs[n] {
			return false
		}
	}
	return true
}

// ApprovalDigest is the aHash TPM2_PolicyAuthorize checks the signature
// over: SHA-256(approvedPolicy || policyRef).
func ApprovalDigest(policy pcr.Value) []byte {
	h := sha256.New()
	h.Write(policy[:])
	h.Write([]byte(PolicyRef))
	return h.Sum(nil)
}

// Approve signs r's policy with the policy key.
func (r *Release) Approve(key *ecdsa.PrivateKey) error {
	if key.Curve != elliptic.P256() {
		return errors.New("release: the policy key must be ECDSA P-256")
	}
	rr, s, err := ecdsa.Sign(rand.Reader, key, ApprovalDigest(r.Policy.Digest))
	if err != nil {
		return err
	}
	sig := make([]byte, 64)
	rr.FillBytes(sig[:32])
	s.FillBytes(sig[32:])
	der, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return err
	}
	r.Approval = &Approval{Key: der, Signature: sig}
	return nil
}

// VerifyApproval checks an approval signature in software, the check the
// TPM repeats in TPM2_VerifySignature.
func VerifyApproval(pub *ecdsa.PublicKey, policy pcr.Value, sig []byte) error {
	if len(sig) != 64 {
		return fmt.Errorf("approval signature is %d bytes, want 64 (r || s)", len(sig))
	}
	r, s := new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])
	if !ecdsa.Verify(pub, ApprovalDigest(policy), r, s) {
		return errors.New("the approval signature does not verify with its key")
	}
	return nil
}

// ParsePublicKey reads a P-256 public key: PKIX DER, or PEM "PUBLIC KEY".
func ParsePublicKey(b []byte) (*ecdsa.PublicKey, error) {
	if blk, _ := pem.Decode(b); blk != nil {
		if blk.Type != "PUBLIC KEY" {
			return nil, fmt.Errorf("PEM block %q, want PUBLIC KEY", blk.Type)
		}
		b = blk.Bytes
	}
	k, err := x509.ParsePKIXPublicKey(b)
	if err != nil {
		return nil, err
	}
	pub, ok := k.(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() {
		return nil, errors.New("not an ECDSA P-256 key (the TPM verifies approvals with P-256)")
	}
	return pub, nil
}

// KeyPublic is the TPMT_PUBLIC the agent loads the policy key as
// (TPM2_LoadExternal): its Name is what the sealed key's policy names, so
// it must never change.
func KeyPublic(pub *ecdsa.PublicKey) tpm2.TPMTPublic {
	b, _ := pub.Bytes() // 0x04 || X || Y for a valid P-256 key
	x, y := b[1:33], b[33:]
	return tpm2.TPMTPublic{
		Type:    tpm2.TPMAlgECC,
		NameAlg: tpm2.TPMAlgSHA256,
		ObjectAttributes: tpm2.TPMAObject{
			SignEncrypt:  true,
			UserWithAuth: true,
		},
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
			Symmetric: tpm2.TPMTSymDefObject{Algorithm: tpm2.TPMAlgNull},
			Scheme: tpm2.TPMTECCScheme{Scheme: tpm2.TPMAlgECDSA,
				Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSigSchemeECDSA{HashAlg: tpm2.TPMAlgSHA256})},
			CurveID: tpm2.TPMECCNistP256,
			KDF:     tpm2.TPMTKDFScheme{Scheme: tpm2.TPMAlgNull},
		}),
		Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{
			X: tpm2.TPM2BECCParameter{Buffer: x}, Y: tpm2.TPM2BECCParameter{Buffer: y},
		}),
	}
}

// KeyName is the TPM Name of the policy key.
func KeyName(pub *ecdsa.PublicKey) ([]byte, error) {
	p := KeyPublic(pub)
	n, err := tpm2.ObjectName(&p)
	if err != nil {
		return nil, err
	}
	return n.Buffer, nil
}

// AuthorizePolicy is the authPolicy of a key sealed to every release the
// policy key approves: TPM2_PolicyAuthorize(keyName, PolicyRef).
func AuthorizePolicy(pub *ecdsa.PublicKey) ([]byte, error) {
	name, err := KeyName(pub)
	if err != nil {
		return nil, err
	}
	calc, err := tpm2.NewPolicyCalculator(tpm2.TPMAlgSHA256)
	if err != nil {
		return nil, err
	}
	if err := (tpm2.PolicyAuthorize{PolicyRef: tpm2.TPM2BDigest{Buffer: []byte(PolicyRef)},
		KeySign: tpm2.TPM2BName{Buffer: name}}).Update(calc); err != nil {
		return nil, err
	}
	return calc.Hash().Digest, nil
}
