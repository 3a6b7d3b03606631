package quotetest

import (
	"bytes"
	"testing"

	"github.com/google/go-tpm/tpm2"
)

// The hand-written quote structures are byte for byte what go-tpm
// marshals of the same fields.
func TestEncodingAgrees(t *testing.T) {
	for _, c := range []struct{ name, nonce, digest []byte }{
		{bytes.Repeat([]byte{1}, 34), bytes.Repeat([]byte{2}, 32), bytes.Repeat([]byte{3}, 32)},
		{nil, nil, nil},
		{[]byte{9}, []byte("nonce"), []byte{4, 5}},
	} {
		for _, pcrs := range [][]uint{{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 14, 15}, {0}, {23}, nil} {
			sel := tpm2.PCClientCompatible.PCRs(pcrs...)
			want := tpm2.Marshal(tpm2.TPMSAttest{
				Magic:           tpm2.TPMGeneratedValue,
				Type:            tpm2.TPMSTAttestQuote,
				QualifiedSigner: tpm2.TPM2BName{Buffer: c.name},
				ExtraData:       tpm2.TPM2BData{Buffer: c.nonce},
				ClockInfo:       tpm2.TPMSClockInfo{Clock: clock, ResetCount: resetCount, Safe: true},
				Attested: tpm2.NewTPMUAttest(tpm2.TPMSTAttestQuote, &tpm2.TPMSQuoteInfo{
					PCRSelect: tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{Hash: tpm2.TPMAlgSHA256, PCRSelect: sel}}},
					PCRDigest: tpm2.TPM2BDigest{Buffer: c.digest},
				}),
			})
			if got := quoteInfo(c.name, c.nonce, resetCount, sel, c.digest); !bytes.Equal(got, want) {
				t.Fatalf("TPMS_ATTEST %x, go-tpm %x", got, want)
			}
		}
		want := tpm2.Marshal(tpm2.TPMTSignature{
			SigAlg: tpm2.TPMAlgECDSA,
			Signature: tpm2.NewTPMUSignature(tpm2.TPMAlgECDSA, &tpm2.TPMSSignatureECC{
				Hash: tpm2.TPMAlgSHA256, SignatureR: tpm2.TPM2BECCParameter{Buffer: c.name}, SignatureS: tpm2.TPM2BECCParameter{Buffer: c.digest},
			}),
		})
		if got := ecdsaSignature(c.name, c.digest); !bytes.Equal(got, want) {
			t.Fatalf("TPMT_SIGNATURE %x, go-tpm %x", got, want)
		}
	}
}
