package softek_test

import (
	"bytes"
	"crypto/rand"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"patela/configsrv/attest"
	"patela/configsrv/attest/softek"
	"patela/configsrv/internal/tpmtest"
	"patela/internal/swtpmtest"
)

// TestActivateMatchesSwtpm proves the software ActivateCredential right:
// the same EK private key is imported into swtpm, and for many credentials
// made by the server's MakeCredential both recover the same secret.
func TestActivateMatchesSwtpm(t *testing.T) {
	tp := swtpmtest.Start(t)
	tpm, err := tp.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer tpm.Close()
	ek, err := softek.New()
	if err != nil {
		t.Fatal(err)
	}
	pub, err := tpm2.Unmarshal[tpm2.TPMTPublic](ek.Public)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := attest.ParseEK(ek.Public); err != nil {
		t.Fatalf("the software EK is not an acceptable EK: %v", err)
	}
	// A TPM only imports keys it did not make with the attributes that say
	// so; the key, name algorithm and symmetric scheme stay the EK's.
	imp := *pub
	imp.ObjectAttributes.FixedTPM = false
	imp.ObjectAttributes.FixedParent = false
	imp.ObjectAttributes.SensitiveDataOrigin = false
	imp.ObjectAttributes.AdminWithPolicy = false
	imp.ObjectAttributes.UserWithAuth = true
	imp.ObjectAttributes.NoDA = true
	imp.AuthPolicy = tpm2.TPM2BDigest{}

	srk, err := tpm2.CreatePrimary{PrimaryHandle: tpm2.TPMRHOwner, InPublic: tpm2.New2B(tpm2.ECCSRKTemplate)}.Execute(tpm)
	if err != nil {
		t.Fatal(err)
	}
	defer tpm2.FlushContext{FlushHandle: srk.ObjectHandle}.Execute(tpm)
	parent := tpm2.AuthHandle{Handle: srk.ObjectHandle, Name: srk.Name, Auth: tpm2.PasswordAuth(nil)}
	// A restricted decryption key is a storage key: its sensitive area
	// carries a seed of the name algorithm's size.
	seed := make([]byte, 32)
	rand.Read(seed)
	sens := tpm2.Marshal(tpm2.TPMTSensitive{
		SensitiveType: tpm2.TPMAlgECC,
		SeedValue:     tpm2.TPM2BDigest{Buffer: seed},
		Sensitive:     tpm2.NewTPMUSensitiveComposite(tpm2.TPMAlgECC, &tpm2.TPM2BECCParameter{Buffer: ek.D()}),
	})
	im, err := tpm2.Import{
		ParentHandle: parent,
		Duplicate:    tpm2.TPM2BPrivate{Buffer: tpm2.Marshal(tpm2.TPM2BPrivate{Buffer: sens})},
		ObjectPublic: tpm2.New2B(imp),
	}.Execute(tpm)
	if err != nil {
		t.Fatalf("import: %v", err)
	}
	loaded, err := tpm2.Load{ParentHandle: parent, InPrivate: im.OutPrivate, InPublic: tpm2.New2B(imp)}.Execute(tpm)
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	defer tpm2.FlushContext{FlushHandle: loaded.ObjectHandle}.Execute(tpm)
	key := tpm2.AuthHandle{Handle: loaded.ObjectHandle, Name: loaded.Name, Auth: tpm2.PasswordAuth(nil)}
	// The credential is bound to the SRK's name: any loaded object will do.
	obj := tpm2.NamedHandle{Handle: srk.ObjectHandle, Name: srk.Name}

	for i := 0; i < 40; i++ {
		secret := make([]byte, attest.SecretSize)
		rand.Read(secret)
		blob, enc, err := attest.MakeCredential(pub, srk.Name.Buffer, secret)
		if err != nil {
			t.Fatal(err)
		}
		hw, err := tpmtest.ActivateWith(tpm, obj, key, blob, enc)
		if err != nil {
			t.Fatalf("swtpm ActivateCredential: %v", err)
		}
		sw, err := ek.Activate(blob, enc, srk.Name.Buffer)
		if err != nil {
			t.Fatalf("software Activate: %v", err)
		}
		if !bytes.Equal(hw, secret) || !bytes.Equal(sw, secret) {
			t.Fatalf("round %d: secret %x, swtpm %x, software %x", i, secret, hw, sw)
		}
		// Bound to another name, both refuse.
		other := append([]byte(nil), srk.Name.Buffer...)
		other[len(other)-1] ^= 1
		if _, err := ek.Activate(blob, enc, other); err == nil {
			t.Fatal("software Activate accepted a credential bound to another name")
		}
	}
}
