package quote

import (
	"bytes"
	"math/rand/v2"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"patela/configsrv/quote/quotetest"
)

// TestParseAgrees holds the hand readers to go-tpm's: the same fields
// from a quote and its signature, and every truncation and most byte
// flips refused by both or read alike.
func TestParseAgrees(t *testing.T) {
	ak, err := quotetest.NewAK()
	if err != nil {
		t.Fatal(err)
	}
	l := quotetest.Boot("A")
	q, err := ak.Quote([]byte("nonce"), l.AllPCRs(), nil)
	if err != nil {
		t.Fatal(err)
	}
	same := func(b []byte) {
		t.Helper()
		mine, err1 := parseAttest(b)
		ref, err2 := tpm2.Unmarshal[tpm2.TPMSAttest](b)
		if err2 == nil && len(tpm2.Marshal(ref)) != len(b) {
			err2 = errShort // go-tpm ignores trailing bytes; so must not we
		}
		if (err1 == nil) != (err2 == nil) {
			if err1 == nil && (mine.magic != tpm2.TPMGeneratedValue || mine.typ != tpm2.TPMSTAttestQuote) {
				return // not a quote: Verify refuses it on those fields
			}
			t.Fatalf("parseAttest %v, tpm2.Unmarshal %v on %x", err1, err2, b)
		}
		if err1 != nil || mine.magic != tpm2.TPMGeneratedValue || mine.typ != tpm2.TPMSTAttestQuote {
			return // refused by Verify on these fields
		}
		info, err := ref.Attested.Quote()
		if err != nil {
			t.Fatal(err)
		}
		if mine.magic != ref.Magic || !bytes.Equal(mine.extraData, ref.ExtraData.Buffer) ||
			mine.resetCount != ref.ClockInfo.ResetCount || !bytes.Equal(mine.pcrDigest, info.PCRDigest.Buffer) ||
			!bytes.Equal(tpm2.Marshal(mine.sel), tpm2.Marshal(info.PCRSelect)) {
			t.Fatalf("fields differ on %x", b)
		}
	}
	same(q.Quoted)
	for n := range len(q.Quoted) {
		same(q.Quoted[:n])
	}
	r := rand.New(rand.NewPCG(1, 2))
	for range 2000 {
		b := bytes.Clone(q.Quoted)
		b[r.IntN(len(b))] ^= byte(1 + r.IntN(255))
		same(b)
	}
	s, err := parseSignature(q.Signature)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := tpm2.Unmarshal[tpm2.TPMTSignature](q.Signature)
	if err != nil {
		t.Fatal(err)
	}
	e, _ := ref.Signature.ECDSA()
	if s.alg != ref.SigAlg || s.hash != e.Hash || !bytes.Equal(s.r, e.SignatureR.Buffer) || !bytes.Equal(s.s, e.SignatureS.Buffer) {
		t.Fatal("signature fields differ")
	}
	for n := range len(q.Signature) {
		if _, err := parseSignature(q.Signature[:n]); err == nil && n > 2 {
			t.Fatalf("signature truncated to %d bytes parsed", n)
		}
	}
}
