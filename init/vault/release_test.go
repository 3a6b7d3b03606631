package vault

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"strings"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"patela/init/tpmkeys"
	"patela/internal/pcr"
	"patela/internal/release"
)

// image is what a boot chain measures before the agent runs: the events
// "firmware" extends into PCR 4 and "the stub" into PCR 11.
type image struct{ fw, sections string }

// bootAs power-cycles the TPM and measures img, as UEFI and systemd-stub
// would for a UKI.
func (m *machine) bootAs(img image) {
	m.T.Helper()
	m.boot()
	for n, data := range map[int]string{4: img.fw, 11: img.sections} {
		d := sha256.Sum256([]byte(data))
		if _, err := (tpm2.PCRExtend{PCRHandle: tpm2.AuthHandle{Handle: tpm2.TPMHandle(n), Auth: tpm2.PasswordAuth(nil)},
			Digests: tpm2.TPMLDigestValues{Digests: []tpm2.TPMTHA{{HashAlg: tpm2.TPMAlgSHA256, Digest: d[:]}}}}).Execute(m.Dev); err != nil {
			m.T.Fatal(err)
		}
	}
}

// approve makes the release record of img, approved by key (stimage's
// part, in software).
func approve(t *testing.T, name string, img image, key *ecdsa.PrivateKey) *release.Release {
	t.Helper()
	var p4, p11 pcr.Value
	p4.Measure([]byte(img.fw))
	p11.Measure([]byte(img.sections))
	r, err := release.New(name, release.KindUKI, map[int]pcr.Value{4: p4, 11: p11, 12: {}}, release.UKIPolicyPCRs,
		map[string]string{"uki": strings.Repeat("00", 32)})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Approve(key); err != nil {
		t.Fatal(err)
	}
	return r
}

func policyKey(t *testing.T) *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// tpmState is what an attack must not change: persistent handles and the
// vault's NV.
func tpmState(t *testing.T, m *machine) string {
	t.Helper()
	var b strings.Builder
	for _, h := range []tpm2.TPMHandle{tpmkeys.SealHandle, tpmkeys.ReleaseSealHandle} {
		k, err := tpmkeys.Persisted(m.Dev, h)
		if err == nil {
			b.Write(k.Name.Buffer)
		}
		b.WriteString("|")
	}
	st, err := Inspect(m.Dev)
	if err != nil {
		t.Fatal(err)
	}
	b.WriteString(strings.Join([]string{st.Sealing, st.Location}, ","))
	b.Write(nvData(t, m))
	return b.String()
}

// rawUnseal is what an attacker with the machine can do without patela's
// agent: the whole TPM sequence with an approval of their choice and no
// software check before it.
func rawUnseal(t transport.TPM, key *ecdsa.PublicKey, r *release.Release) error {
	sealed, err := tpmkeys.Persisted(t, tpmkeys.ReleaseSealHandle)
	if err != nil {
		return err
	}
	srk, err := tpmkeys.SRK(t)
	if err != nil {
		return err
	}
	defer srk.Close(t)
	le, err := tpm2.LoadExternal{InPublic: tpm2.New2B(release.KeyPublic(key)), Hierarchy: tpm2.TPMRHOwner}.Execute(t)
	if err != nil {
		return err
	}
	defer tpm2.FlushContext{FlushHandle: le.ObjectHandle}.Execute(t)
	vs, err := tpm2.VerifySignature{KeyHandle: tpm2.NamedHandle{Handle: le.ObjectHandle, Name: le.Name},
		Digest: tpm2.TPM2BDigest{Buffer: release.ApprovalDigest(r.Policy.Digest)},
		Signature: tpm2.TPMTSignature{SigAlg: tpm2.TPMAlgECDSA, Signature: tpm2.NewTPMUSignature(tpm2.TPMAlgECDSA,
			&tpm2.TPMSSignatureECC{Hash: tpm2.TPMAlgSHA256,
				SignatureR: tpm2.TPM2BECCParameter{Buffer: r.Approval.Signature[:32]},
				SignatureS: tpm2.TPM2BECCParameter{Buffer: r.Approval.Signature[32:]}})}}.Execute(t)
	if err != nil {
		return err
	}
	auth := tpm2.Policy(tpm2.TPMAlgSHA256, 16, func(t transport.TPM, s tpm2.TPMISHPolicy, _ tpm2.TPM2BNonce) error {
		if _, err := (tpm2.PolicyPCR{PolicySession: s, Pcrs: release.Selection(r.Policy.PCRs)}).Execute(t); err != nil {
			return err
		}
		_, err := tpm2.PolicyAuthorize{PolicySession: s, ApprovedPolicy: tpm2.TPM2BDigest{Buffer: r.Policy.Digest[:]},
			PolicyRef: tpm2.TPM2BDigest{Buffer: []byte(release.PolicyRef)}, KeySign: le.Name, CheckTicket: vs.Validation}.Execute(t)
		return err
	})
	_, err = tpm2.Unseal{ItemHandle: tpm2.AuthHandle{Handle: sealed.Handle, Name: sealed.Name, Auth: auth}}.Execute(t)
	if err == nil {
		return errors.New("UNSEALED")
	}
	// Password auth on a policy-only object.
	_, perr := tpm2.Unseal{ItemHandle: tpm2.AuthHandle{Handle: sealed.Handle, Name: sealed.Name, Auth: tpm2.PasswordAuth(nil)}}.Execute(t)
	if perr == nil {
		return errors.New("UNSEALED with an empty password")
	}
	return err
}

// TestReleaseSealing: release A creates the vault sealed to the policy
// key; release B (another approved image) opens it with no re-seal and
// the same relays; an unapproved image cannot, with or without the agent's
// checks, whatever approval it shows, and changes nothing; the lock PCR
// closes the vault after use; an unmeasured image refuses the vault.
func TestReleaseSealing(t *testing.T) {
	m := newMachine(t)
	ctx := context.Background()
	key := policyKey(t)
	pub := &key.PublicKey
	imgA, imgB, imgC := image{"uki A", "sections A"}, image{"uki B", "sections B"}, image{"usb stick", "attacker"}
	relA, relB := approve(t, "A", imgA, key), approve(t, "B", imgB, key)

	m.bootAs(imgA)
	m.Cnt.Reset()
	v := m.mustOpen(Options{Release: &ReleasePolicy{Key: pub, Approval: relA}})
	t.Logf("first boot (create, seal to the policy key, self-check unseal, lock): %d TPM commands", m.Cnt.Total())
	v.relays["murazzano"] = testEntry(1)
	if err := v.Save(ctx); err != nil {
		t.Fatal(err)
	}
	sealedName := func() []byte {
		k, err := tpmkeys.Persisted(m.Dev, tpmkeys.ReleaseSealHandle)
		if err != nil {
			t.Fatal(err)
		}
		return k.Name.Buffer
	}
	first := sealedName()
	if _, err := m.open(Options{Release: &ReleasePolicy{Key: pub, Approval: relA}}); !errors.Is(err, ErrLocked) {
		t.Fatalf("second open in the same boot: %v, want ErrLocked", err)
	}
	if err := rawUnseal(m.Dev, pub, relA); err == nil || strings.Contains(err.Error(), "UNSEALED") {
		t.Fatalf("raw unseal after the lock: %v", err)
	}

	// Power cycle, same release; then the update to B: no re-seal.
	for _, c := range []struct {
		img image
		rel *release.Release
	}{{imgA, relA}, {imgB, relB}} {
		m.bootAs(c.img)
		m.Cnt.Reset()
		v := m.mustOpen(Options{Release: &ReleasePolicy{Key: pub, Approval: c.rel}})
		if got := v.Relays(); len(got) != 1 || !v.relays["murazzano"].equal(testEntry(1)) {
			t.Fatalf("release %s: relays %v", c.rel.Name, got)
		}
		if !bytes.Equal(sealedName(), first) || m.Cnt.Count(tpm2.TPMCCCreate) != 0 {
			t.Fatalf("release %s re-sealed the vault key", c.rel.Name)
		}
		t.Logf("boot of release %s: vault opened with %d TPM commands (LoadExternal %d, VerifySignature %d, PolicyAuthorize %d, Unseal %d) in %v",
			c.rel.Name, m.Cnt.Total(), m.Cnt.Count(tpm2.TPMCCLoadExternal), m.Cnt.Count(tpm2.TPMCCVerifySignature),
			m.Cnt.Count(tpm2.TPMCCPolicyAuthorize), m.Cnt.Count(tpm2.TPMCCUnseal), m.Cnt.Elapsed())
	}

	// Seizure: an image nobody approved.
	m.bootAs(imgC)
	before := tpmState(t, m)
	other := policyKey(t)
	relC := approve(t, "C", imgC, other) // the attacker's own key
	forged := approve(t, "A", imgA, key)
	forged.PCRs[11] = relC.PCRs[11] // A's approval over C's PCRs
	for name, rel := range map[string]*release.Release{"A's approval": relA, "B's approval": relB, "C signed by another key": relC, "forged record": forged} {
		_, err := m.open(Options{Release: &ReleasePolicy{Key: pub, Approval: rel}})
		if err == nil {
			t.Fatalf("unapproved image opened the vault with %s", name)
		}
		t.Logf("unapproved image, agent with %s: %v", name, err)
		for _, k := range []*ecdsa.PublicKey{pub, &other.PublicKey} {
			if err := rawUnseal(m.Dev, k, rel); err == nil || strings.Contains(err.Error(), "UNSEALED") {
				t.Fatalf("raw TPM unseal with %s: %v", name, err)
			}
		}
	}
	if _, err := m.open(Options{}); !errors.Is(err, ErrReleaseSealed) {
		t.Errorf("unmeasured image: %v, want ErrReleaseSealed", err)
	}
	if _, err := m.open(Options{Release: &ReleasePolicy{Key: &other.PublicKey, Approval: relC}}); err == nil {
		t.Error("an image with another policy key opened the vault")
	} else {
		t.Logf("image with its own policy key and approval: %v", err)
	}
	if after := tpmState(t, m); after != before {
		t.Error("the unapproved boot changed the TPM's vault state")
	}
	// The approved release still opens afterwards.
	m.bootAs(imgB)
	m.mustOpen(Options{Release: &ReleasePolicy{Key: pub, Approval: relB}})
}

// TestReleaseMigration: a vault sealed with PolicyPCR (an agent before
// release sealing) is migrated on the first approved release boot: same
// key, same relays, the old object evicted; an unapproved boot before that
// leaves it as it was.
func TestReleaseMigration(t *testing.T) {
	m := newMachine(t)
	ctx := context.Background()
	v := m.mustOpen(Options{}) // PCR 15 only, as agent.json without pcrs did
	v.relays["tometta"] = testEntry(3)
	if err := v.Save(ctx); err != nil {
		t.Fatal(err)
	}
	key := policyKey(t)
	imgA := image{"uki A", "sections A"}
	relA := approve(t, "A", imgA, key)
	m.bootAs(image{"other", "other"})
	before := tpmState(t, m)
	if _, err := m.open(Options{Release: &ReleasePolicy{Key: &key.PublicKey, Approval: relA}}); !errors.Is(err, ErrNotApproved) {
		t.Fatalf("unapproved boot: %v, want ErrNotApproved", err)
	}
	if tpmState(t, m) != before {
		t.Fatal("an unapproved boot touched the PolicyPCR vault")
	}
	m.bootAs(imgA)
	v = m.mustOpen(Options{Release: &ReleasePolicy{Key: &key.PublicKey, Approval: relA}})
	if !v.relays["tometta"].equal(testEntry(3)) {
		t.Fatal("migration lost the relay keys")
	}
	if _, err := tpmkeys.Persisted(m.Dev, tpmkeys.SealHandle); !errors.Is(err, tpmkeys.ErrNotPersisted) {
		t.Errorf("the PolicyPCR object is still there: %v", err)
	}
	st, _ := Inspect(m.Dev)
	if st.Sealing != "release" {
		t.Errorf("after migration Inspect says sealing %q", st.Sealing)
	}
	m.bootAs(imgA)
	if v := m.mustOpen(Options{Release: &ReleasePolicy{Key: &key.PublicKey, Approval: relA}}); len(v.Relays()) != 1 {
		t.Error("the migrated vault does not reopen")
	}
}
