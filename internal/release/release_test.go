package release

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"patela/internal/pcr"
	"patela/internal/swtpmtest"
)

func testRelease(t *testing.T) *Release {
	t.Helper()
	var p4, p11 pcr.Value
	p4.Measure([]byte("firmware"))
	p11.Measure([]byte("sections"))
	r, err := New("patela-1.0", KindUKI, map[int]pcr.Value{4: p4, 11: p11, 12: {}}, []int{4, 11, 12},
		map[string]string{"uki": strings.Repeat("ab", 32)})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func newKey(t *testing.T) *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// TestRoundTrip: a record approved and written parses back equal; every
// tampering with the signed part is refused by Check.
func TestRoundTrip(t *testing.T) {
	r := testRelease(t)
	if !slices.Equal(r.Policy.PCRs, []int{4, 11, 12, 15}) {
		t.Fatalf("policy PCRs %v", r.Policy.PCRs)
	}
	key := newKey(t)
	if err := r.Approve(key); err != nil {
		t.Fatal(err)
	}
	b, err := r.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	back, err := Parse(b)
	if err != nil {
		t.Fatalf("%v\n%s", err, b)
	}
	b2, _ := back.Marshal()
	if !bytes.Equal(b, b2) {
		t.Errorf("round trip changed the record:\n%s\n%s", b, b2)
	}
	pub, _ := ParsePublicKey(back.Approval.Key)
	if err := VerifyApproval(pub, back.Policy.Digest, back.Approval.Signature); err != nil {
		t.Fatal(err)
	}
	if err := VerifyApproval(&newKey(t).PublicKey, back.Policy.Digest, back.Approval.Signature); err == nil {
		t.Error("an approval verified with another key")
	}

	tamper := map[string]func(r *Release){
		"PCR value":       func(r *Release) { v := r.PCRs[11]; v[0] ^= 1; r.PCRs[11] = v },
		"digest":          func(r *Release) { r.Policy.Digest[0] ^= 1 },
		"signature":       func(r *Release) { r.Approval.Signature[5] ^= 1 },
		"policy PCRs":     func(r *Release) { r.Policy.PCRs = []int{4, 11, 15} },
		"no lock PCR":     func(r *Release) { r.Policy.PCRs = []int{4, 11, 12} },
		"lock PCR set":    func(r *Release) { r.PCRs[15] = r.PCRs[4] },
		"no firmware PCR": func(r *Release) { r.Policy.PCRs = []int{11, 12, 15} },
		"kind":            func(r *Release) { r.Kind = "iso" },
		"name":            func(r *Release) { r.Name = "../etc" },
		"artifact":        func(r *Release) { r.Artifacts["uki"] = "xyz" },
		"format":          func(r *Release) { r.Format = 2 },
		"short key":       func(r *Release) { r.Approval.Key = r.Approval.Key[:10] },
	}
	for name, f := range tamper {
		c, _ := Parse(b)
		f(c)
		if err := c.Check(); err == nil {
			t.Errorf("tampered %s: accepted", name)
		}
	}
	for _, bad := range []string{`{"format":1}`, string(b) + "{}", strings.Replace(string(b), `"kind"`, `"extra": 1, "kind"`, 1)} {
		if _, err := Parse([]byte(bad)); err == nil {
			t.Errorf("Parse accepted %.60q", bad)
		}
	}
	have := map[int]pcr.Value{4: r.PCRs[4], 11: r.PCRs[11], 12: {}, 15: {}, 0: {}}
	if !r.Matches(have) {
		t.Error("Matches: the release's own values do not match")
	}
	have[15] = r.PCRs[4]
	if r.Matches(have) {
		t.Error("Matches: a locked boot matches")
	}
}

func TestParsePublicKey(t *testing.T) {
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	d384, _ := x509.MarshalPKIXPublicKey(&p384.PublicKey)
	edPub, _, _ := ed25519.GenerateKey(rand.Reader)
	ded, _ := x509.MarshalPKIXPublicKey(edPub)
	for name, b := range map[string][]byte{"P-384": d384, "Ed25519": ded, "garbage": []byte("x")} {
		if _, err := ParsePublicKey(b); err == nil {
			t.Errorf("%s accepted", name)
		}
	}
	if err := testRelease(t).Approve(p384); err == nil {
		t.Error("Approve accepted a P-384 key")
	}
}

// TestDigestsMatchTPM: the policy digests computed in software are the
// ones swtpm computes in trial sessions: PolicyPCR over PCRs the test
// extended, and PolicyAuthorize naming the policy key as the TPM names it
// after TPM2_LoadExternal.
func TestDigestsMatchTPM(t *testing.T) {
	tp := swtpmtest.Start(t)
	tpm, err := tp.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer tpm.Close()
	extend := func(n int, data string) {
		d := sha256.Sum256([]byte(data))
		if _, err := (tpm2.PCRExtend{PCRHandle: tpm2.AuthHandle{Handle: tpm2.TPMHandle(n), Auth: tpm2.PasswordAuth(nil)},
			Digests: tpm2.TPMLDigestValues{Digests: []tpm2.TPMTHA{{HashAlg: tpm2.TPMAlgSHA256, Digest: d[:]}}}}).Execute(tpm); err != nil {
			t.Fatal(err)
		}
	}
	extend(4, "firmware")
	extend(11, "sections")
	var p4, p11 pcr.Value
	p4.Measure([]byte("firmware"))
	p11.Measure([]byte("sections"))
	sel := []int{4, 11, 12, LockPCR}
	want, err := PolicyDigest(sel, map[int]pcr.Value{4: p4, 11: p11, 12: {}, 15: {}})
	if err != nil {
		t.Fatal(err)
	}
	got := trial(t, tpm, func(s tpm2.TPMISHPolicy) error {
		_, err := tpm2.PolicyPCR{PolicySession: s, Pcrs: Selection(sel)}.Execute(tpm)
		return err
	})
	if !bytes.Equal(got, want[:]) {
		t.Errorf("PolicyPCR: software %s, TPM %x", want, got)
	}

	key := newKey(t)
	pub := KeyPublic(&key.PublicKey)
	le, err := tpm2.LoadExternal{InPublic: tpm2.New2B(pub), Hierarchy: tpm2.TPMRHOwner}.Execute(tpm)
	if err != nil {
		t.Fatal(err)
	}
	defer tpm2.FlushContext{FlushHandle: le.ObjectHandle}.Execute(tpm)
	name, _ := KeyName(&key.PublicKey)
	if !bytes.Equal(le.Name.Buffer, name) {
		t.Fatalf("KeyName %x, the TPM names the loaded key %x", name, le.Name.Buffer)
	}
	wantAuth, err := AuthorizePolicy(&key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	// A real ticket, so the trial cannot pass by skipping the check.
	r := testRelease(t)
	r.PCRs[4], r.PCRs[11] = p4, p11
	r.Policy.Digest = want
	if err := r.Approve(key); err != nil {
		t.Fatal(err)
	}
	vs, err := tpm2.VerifySignature{KeyHandle: tpm2.NamedHandle{Handle: le.ObjectHandle, Name: le.Name},
		Digest: tpm2.TPM2BDigest{Buffer: ApprovalDigest(want)},
		Signature: tpm2.TPMTSignature{SigAlg: tpm2.TPMAlgECDSA, Signature: tpm2.NewTPMUSignature(tpm2.TPMAlgECDSA,
			&tpm2.TPMSSignatureECC{Hash: tpm2.TPMAlgSHA256,
				SignatureR: tpm2.TPM2BECCParameter{Buffer: r.Approval.Signature[:32]},
				SignatureS: tpm2.TPM2BECCParameter{Buffer: r.Approval.Signature[32:]}})}}.Execute(tpm)
	if err != nil {
		t.Fatalf("TPM2_VerifySignature refused a software approval: %v", err)
	}
	gotAuth := trial(t, tpm, func(s tpm2.TPMISHPolicy) error {
		if _, err := (tpm2.PolicyPCR{PolicySession: s, Pcrs: Selection(sel)}).Execute(tpm); err != nil {
			return err
		}
		_, err := tpm2.PolicyAuthorize{PolicySession: s, ApprovedPolicy: tpm2.TPM2BDigest{Buffer: want[:]},
			PolicyRef: tpm2.TPM2BDigest{Buffer: []byte(PolicyRef)}, KeySign: le.Name, CheckTicket: vs.Validation}.Execute(tpm)
		return err
	})
	if !bytes.Equal(gotAuth, wantAuth) {
		t.Errorf("PolicyAuthorize: software %x, TPM %x", wantAuth, gotAuth)
	}
}

// trial runs policy commands in a trial session and returns its digest.
func trial(t *testing.T, tpm transport.TPM, f func(tpm2.TPMISHPolicy) error) []byte {
	t.Helper()
	s, closer, err := tpm2.PolicySession(tpm, tpm2.TPMAlgSHA256, 16, tpm2.Trial())
	if err != nil {
		t.Fatal(err)
	}
	defer closer()
	if err := f(s.Handle()); err != nil {
		t.Fatal(err)
	}
	d, err := tpm2.PolicyGetDigest{PolicySession: s.Handle()}.Execute(tpm)
	if err != nil {
		t.Fatal(err)
	}
	return d.PolicyDigest.Buffer
}
