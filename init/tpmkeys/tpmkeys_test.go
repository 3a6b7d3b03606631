package tpmkeys

import (
	"bytes"
	"crypto/rand"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"patela/init/tpmdev"
	"patela/internal/swtpmtest"
)

func open(t *testing.T, tp *swtpmtest.TPM) transport.TPMCloser {
	t.Helper()
	dev, err := tpmdev.Open("unix:" + tp.Socket)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dev.Close() })
	return dev
}

func TestEKIsStable(t *testing.T) {
	dev := open(t, swtpmtest.Start(t))
	for _, alg := range []tpm2.TPMAlgID{tpm2.TPMAlgECC, tpm2.TPMAlgRSA} {
		a, err := EK(dev, alg)
		if err != nil {
			t.Fatal(err)
		}
		a.Close(dev)
		b, err := EK(dev, alg)
		if err != nil {
			t.Fatal(err)
		}
		b.Close(dev)
		if !bytes.Equal(a.Name.Buffer, b.Name.Buffer) {
			t.Fatalf("EK 0x%x name changed between derivations", alg)
		}
	}
	if hs, _ := tpmdev.Handles(dev, tpm2.TPMHTTransient); len(hs) != 0 {
		t.Fatalf("transients leaked: %v", hs)
	}
}

func TestPersistedEKIsUsed(t *testing.T) {
	dev := open(t, swtpmtest.Start(t))
	ek, err := EK(dev, tpm2.TPMAlgECC)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := (tpm2.EvictControl{
		Auth:             tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)},
		ObjectHandle:     ek.Named(),
		PersistentHandle: EKHandleECC,
	}).Execute(dev); err != nil {
		t.Fatal(err)
	}
	ek.Close(dev)
	c := tpmdev.NewCounter(dev)
	got, err := EK(c, tpm2.TPMAlgECC)
	if err != nil {
		t.Fatal(err)
	}
	if got.Transient || got.Handle != EKHandleECC || !bytes.Equal(got.Name.Buffer, ek.Name.Buffer) {
		t.Fatalf("persisted EK not used: %+v", got)
	}
	if n := c.Count(tpm2.TPMCCCreatePrimary); n != 0 {
		t.Fatalf("%d CreatePrimary with a persisted EK", n)
	}
}

func TestAKCreatedOnce(t *testing.T) {
	dev := open(t, swtpmtest.Start(t))
	a, created, err := AK(dev)
	if err != nil || !created {
		t.Fatalf("first AK: created=%v err=%v", created, err)
	}
	c := tpmdev.NewCounter(dev)
	b, created, err := AK(c)
	if err != nil || created {
		t.Fatalf("second AK: created=%v err=%v", created, err)
	}
	if !bytes.Equal(a.Name.Buffer, b.Name.Buffer) || b.Handle != AKHandle {
		t.Fatal("AK changed")
	}
	if c.Count(tpm2.TPMCCCreate)+c.Count(tpm2.TPMCCCreatePrimary) != 0 {
		t.Fatal("second AK call created keys")
	}
	attrs := b.Public.ObjectAttributes
	if !attrs.FixedTPM || !attrs.FixedParent || !attrs.Restricted || !attrs.SignEncrypt || attrs.Decrypt || !attrs.SensitiveDataOrigin {
		t.Fatalf("AK attributes %+v", attrs)
	}
}

func TestForeignObjectAtAKHandleIsReplaced(t *testing.T) {
	dev := open(t, swtpmtest.Start(t))
	srk, err := SRK(dev)
	if err != nil {
		t.Fatal(err)
	}
	// An SRK copy is a storage key, not an AK.
	if _, err := (tpm2.EvictControl{
		Auth:             tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)},
		ObjectHandle:     srk.Named(),
		PersistentHandle: AKHandle,
	}).Execute(dev); err != nil {
		t.Fatal(err)
	}
	srk.Close(dev)
	k, created, err := AK(dev)
	if err != nil || !created || !Matches(k.Public, AKTemplate) {
		t.Fatalf("created=%v err=%v", created, err)
	}
}

func TestEKCertificate(t *testing.T) {
	dev := open(t, swtpmtest.Start(t))
	if c, err := EKCertificate(dev, tpm2.TPMAlgECC); err != nil || c != nil {
		t.Fatalf("no certificate: got %d bytes, %v", len(c), err)
	}
	// What a manufacturer provisions: a platform-created index the owner
	// can read. Larger than NV_BUFFER_MAX so reading must be chunked.
	cert := make([]byte, 1500)
	rand.Read(cert)
	platform := tpm2.AuthHandle{Handle: tpm2.TPMRHPlatform, Auth: tpm2.PasswordAuth(nil)}
	def := tpm2.TPMSNVPublic{
		NVIndex: EKCertECC,
		NameAlg: tpm2.TPMAlgSHA256,
		Attributes: tpm2.TPMANV{PPWrite: true, PPRead: true, OwnerRead: true, AuthRead: true,
			PlatformCreate: true, NoDA: true, NT: tpm2.TPMNTOrdinary},
		DataSize: uint16(len(cert)),
	}
	if _, err := (tpm2.NVDefineSpace{AuthHandle: platform, PublicInfo: tpm2.New2B(def)}).Execute(dev); err != nil {
		t.Fatal(err)
	}
	for off := 0; off < len(cert); off += 1024 {
		pub, err := tpm2.NVReadPublic{NVIndex: EKCertECC}.Execute(dev)
		if err != nil {
			t.Fatal(err)
		}
		end := min(off+1024, len(cert))
		if _, err := (tpm2.NVWrite{AuthHandle: platform, NVIndex: tpm2.NamedHandle{Handle: EKCertECC, Name: pub.NVName},
			Data: tpm2.TPM2BMaxNVBuffer{Buffer: cert[off:end]}, Offset: uint16(off)}).Execute(dev); err != nil {
			t.Fatal(err)
		}
	}
	got, err := EKCertificate(dev, tpm2.TPMAlgECC)
	if err != nil || !bytes.Equal(got, cert) {
		t.Fatalf("read %d bytes, %v", len(got), err)
	}
}

func TestChooseEK(t *testing.T) {
	dev := open(t, swtpmtest.Start(t))
	define := func(idx tpm2.TPMHandle) {
		t.Helper()
		if _, err := (tpm2.NVDefineSpace{
			AuthHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHPlatform, Auth: tpm2.PasswordAuth(nil)},
			PublicInfo: tpm2.New2B(tpm2.TPMSNVPublic{NVIndex: idx, NameAlg: tpm2.TPMAlgSHA256,
				Attributes: tpm2.TPMANV{PPWrite: true, PPRead: true, OwnerRead: true, AuthRead: true,
					PlatformCreate: true, NoDA: true, NT: tpm2.TPMNTOrdinary}, DataSize: 16}),
		}).Execute(dev); err != nil {
			t.Fatal(err)
		}
	}
	for _, step := range []struct {
		define tpm2.TPMHandle
		want   tpm2.TPMAlgID
	}{
		{0, tpm2.TPMAlgECC},         // no certificate: ECC
		{EKCertRSA, tpm2.TPMAlgRSA}, // only RSA certified
		{EKCertECC, tpm2.TPMAlgECC}, // both: ECC
	} {
		if step.define != 0 {
			define(step.define)
		}
		if got, err := ChooseEK(dev); err != nil || got != step.want {
			t.Fatalf("after defining 0x%08x: %v %v, want %v", uint32(step.define), got, err, step.want)
		}
	}
}

func TestPersistEK(t *testing.T) {
	dev := open(t, swtpmtest.Start(t))
	a, err := PersistEK(dev, tpm2.TPMAlgECC)
	if err != nil || a.Transient || a.Handle != EKHandleECC {
		t.Fatalf("first: %+v %v", a, err)
	}
	c := tpmdev.NewCounter(dev)
	b, err := PersistEK(c, tpm2.TPMAlgECC)
	if err != nil || !bytes.Equal(a.Name.Buffer, b.Name.Buffer) || c.Count(tpm2.TPMCCCreatePrimary) != 0 {
		t.Fatalf("second: %v, %d CreatePrimary", err, c.Count(tpm2.TPMCCCreatePrimary))
	}
	// A foreign object at the RSA EK handle is left alone.
	srk, _ := SRK(dev)
	tpm2.EvictControl{
		Auth:             tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)},
		ObjectHandle:     srk.Named(),
		PersistentHandle: EKHandleRSA,
	}.Execute(dev)
	srk.Close(dev)
	r, err := PersistEK(dev, tpm2.TPMAlgRSA)
	if err != nil || !r.Transient {
		t.Fatalf("RSA EK with its handle taken: %+v %v", r, err)
	}
	r.Close(dev)
	if k, _ := Persisted(dev, EKHandleRSA); !bytes.Equal(k.Name.Buffer, srk.Name.Buffer) {
		t.Fatal("the foreign object was replaced")
	}
}

func TestMatchesOtherType(t *testing.T) {
	// A persisted object of another type must not match (nor panic).
	if Matches(tpm2.RSAEKTemplate, tpm2.ECCEKTemplate) || Matches(tpm2.ECCSRKTemplate, AKTemplate) {
		t.Fatal("matched")
	}
	if !Matches(tpm2.ECCEKTemplate, tpm2.ECCEKTemplate) {
		t.Fatal("a template does not match itself")
	}
}

func TestEKCertificateOwnerReadOnly(t *testing.T) {
	dev := open(t, swtpmtest.Start(t))
	cert := []byte("a DER certificate stand-in, owner-readable only")
	platform := tpm2.AuthHandle{Handle: tpm2.TPMRHPlatform, Auth: tpm2.PasswordAuth(nil)}
	if _, err := (tpm2.NVDefineSpace{AuthHandle: platform, PublicInfo: tpm2.New2B(tpm2.TPMSNVPublic{
		NVIndex: EKCertRSA, NameAlg: tpm2.TPMAlgSHA256,
		Attributes: tpm2.TPMANV{PPWrite: true, PPRead: true, OwnerRead: true,
			PlatformCreate: true, NoDA: true, NT: tpm2.TPMNTOrdinary},
		DataSize: uint16(len(cert)),
	})}).Execute(dev); err != nil {
		t.Fatal(err)
	}
	pub, _ := tpm2.NVReadPublic{NVIndex: EKCertRSA}.Execute(dev)
	if _, err := (tpm2.NVWrite{AuthHandle: platform, NVIndex: tpm2.NamedHandle{Handle: EKCertRSA, Name: pub.NVName},
		Data: tpm2.TPM2BMaxNVBuffer{Buffer: cert}}).Execute(dev); err != nil {
		t.Fatal(err)
	}
	if got, err := EKCertificate(dev, tpm2.TPMAlgRSA); err != nil || !bytes.Equal(got, cert) {
		t.Fatalf("%q %v", got, err)
	}
}
