package attest

import (
	"bytes"
	"crypto/rand"
	"testing"
	"testing/cryptotest"

	"github.com/google/go-tpm/tpm2"
)

// The hand-written MakeCredential is tpm2.CreateCredential byte for byte
// (the same ephemeral key drawn from the same deterministic randomness),
// for every ECC EK seed (P-256 L-2 from swtpm and software, swtpm_setup's
// P-384 H-3); an RSA EK is left to go-tpm.
func TestCredentialAgrees(t *testing.T) {
	name := bytes.Repeat([]byte{0x0b}, 34)
	secret := bytes.Repeat([]byte{0x5e}, SecretSize)
	n := 0
	for file, b := range seedPublics(t) {
		ek, err := NewEK(b)
		if err != nil {
			continue // an AK
		}
		if ek.Public.Type == tpm2.TPMAlgRSA {
			if ek.ecc != nil {
				t.Fatalf("%s: an RSA EK got the ECC path", file)
			}
			continue
		}
		if ek.ecc == nil {
			t.Fatalf("%s: no hand-written credential", file)
		}
		var mine, ref [2][]byte
		t.Run(file+"/mine", func(t *testing.T) {
			cryptotest.SetGlobalRandom(t, 7)
			if mine[0], mine[1], err = ek.MakeCredential(name, secret); err != nil {
				t.Fatal(err)
			}
		})
		t.Run(file+"/go-tpm", func(t *testing.T) {
			cryptotest.SetGlobalRandom(t, 7)
			key, err := tpm2.ImportEncapsulationKey(ek.Public)
			if err != nil {
				t.Fatal(err)
			}
			if ref[0], ref[1], err = tpm2.CreateCredential(rand.Reader, key, name, secret); err != nil {
				t.Fatal(err)
			}
		})
		if !bytes.Equal(mine[0], ref[0]) || !bytes.Equal(mine[1], ref[1]) {
			t.Fatalf("%s: blob %x secret %x, go-tpm %x %x", file, mine[0], mine[1], ref[0], ref[1])
		}
		n++
	}
	if n != 3 {
		t.Fatalf("%d ECC EKs compared, want 3", n)
	}
}
