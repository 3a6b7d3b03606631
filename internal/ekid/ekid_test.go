package ekid

import (
	"crypto/ecdh"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/binary"
	"testing"

	"github.com/google/go-tpm/tpm2"
)

func eccEK(t *testing.T, tmpl tpm2.TPMTPublic, x, y []byte) *tpm2.TPMTPublic {
	t.Helper()
	tmpl.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{
		X: tpm2.TPM2BECCParameter{Buffer: x}, Y: tpm2.TPM2BECCParameter{Buffer: y}})
	return &tmpl
}

func mustOf(t *testing.T, pub *tpm2.TPMTPublic) ID {
	t.Helper()
	id, err := Of(pub)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// The identity is the key and name algorithm: encoding, attributes and
// policy do not change it, anything of the key does.
func TestIdentityIsTheKey(t *testing.T) {
	priv, _ := ecdh.P256().GenerateKey(rand.Reader)
	raw := priv.PublicKey().Bytes()[1:]
	x, y := raw[:32], raw[32:]
	id := mustOf(t, eccEK(t, tpm2.ECCEKTemplate, x, y))

	// Written out: what the hash covers, so it can never drift silently
	// (node rows are keyed by it).
	want := sha256.Sum256(append(append([]byte("patela EK identity v1\x00\x00\x0b\x00\x23\x00\x03"), x...), y...))
	if id != want {
		t.Fatalf("identity %s, want %x", id, want)
	}
	if back, err := Parse(id.String()); err != nil || back != id {
		t.Fatalf("Parse(String) = %v, %v", back, err)
	}

	flipped := tpm2.ECCEKTemplate
	flipped.ObjectAttributes.NoDA = true
	flipped.ObjectAttributes.UserWithAuth = true
	flipped.AuthPolicy = tpm2.TPM2BDigest{Buffer: make([]byte, 32)}
	for name, pub := range map[string]*tpm2.TPMTPublic{
		"attributes and policy":  eccEK(t, flipped, x, y),
		"zero-padded coordinate": eccEK(t, tpm2.ECCEKTemplate, append([]byte{0}, x...), y),
	} {
		if got := mustOf(t, pub); got != id {
			t.Errorf("%s changed the identity", name)
		}
	}

	other, _ := ecdh.P256().GenerateKey(rand.Reader)
	oraw := other.PublicKey().Bytes()[1:]
	sha384 := tpm2.ECCEKTemplate
	sha384.NameAlg = tpm2.TPMAlgSHA384
	for name, pub := range map[string]*tpm2.TPMTPublic{
		"another key":      eccEK(t, tpm2.ECCEKTemplate, oraw[:32], oraw[32:]),
		"another name alg": eccEK(t, sha384, x, y),
	} {
		if got := mustOf(t, pub); got == id {
			t.Errorf("%s kept the identity", name)
		}
	}

	for name, pub := range map[string]*tpm2.TPMTPublic{
		"oversized coordinate": eccEK(t, tpm2.ECCEKTemplate, append([]byte{1}, x...), y),
		"zero coordinate":      eccEK(t, tpm2.ECCEKTemplate, make([]byte, 32), y),
		"keyed hash":           {Type: tpm2.TPMAlgKeyedHash, NameAlg: tpm2.TPMAlgSHA256},
	} {
		if _, err := Of(pub); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	if _, err := Parse("abcd"); err == nil {
		t.Error("short hex parsed")
	}
}

func TestRSAIdentity(t *testing.T) {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	ek := func(exp uint32, mod []byte) *tpm2.TPMTPublic {
		p := tpm2.RSAEKTemplate
		parms, _ := p.Parameters.RSADetail()
		q := *parms
		q.Exponent = exp
		p.Parameters = tpm2.NewTPMUPublicParms(tpm2.TPMAlgRSA, &q)
		p.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{Buffer: mod})
		return &p
	}
	mod := k.N.Bytes()
	id := mustOf(t, ek(0, mod))
	b := append([]byte("patela EK identity v1\x00\x00\x0b\x00\x01"), byte(len(mod)>>8), byte(len(mod)))
	b = binary.BigEndian.AppendUint32(append(b, mod...), 65537)
	if id != sha256.Sum256(b) {
		t.Fatal("RSA identity is not the documented hash")
	}
	if mustOf(t, ek(65537, append([]byte{0}, mod...))) != id {
		t.Error("exponent 65537 spelled out or a leading zero changed the identity")
	}
	if mustOf(t, ek(3, mod)) == id {
		t.Error("another exponent kept the identity")
	}
	if _, err := Of(ek(0, nil)); err == nil {
		t.Error("empty modulus accepted")
	}
}
