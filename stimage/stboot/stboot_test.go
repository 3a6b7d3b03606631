package stboot

import (
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"testing"
	"time"

	"patela/stimage/keygen"
	"patela/stimage/ospkg"
)

// extend is TPM2_PCR_Extend on the SHA-256 bank.
func extend(pcr [32]byte, d []byte) [32]byte {
	return sha256.Sum256(append(pcr[:], d...))
}

// tssMeasure transcribes u-root's tss.Measure for TPM 2.0: extend with the
// SHA-256 of the data it is given.
func tssMeasure(pcr [32]byte, data []byte) [32]byte {
	h := sha256.Sum256(data)
	return extend(pcr, h[:])
}

// TestStbootV022: a package built and signed by stimage, measured as
// stboot v0.2.2's stboot.go does it step by step (osp.ArchiveHash() is
// sha256 of the zip, osp.DescriptorHash() sha256 of the descriptor bytes
// fetched, both passed to mes.Add, which calls tss.Measure on them; the
// policy is json.Marshal of trust.Policy; roots are DER), equals PCR12 and
// PCR13.
func TestStbootV022(t *testing.T) {
	key, err := keygen.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC().Truncate(time.Second)
	rootPEM, err := keygen.Certificate(keygen.Request{Key: key.Public().(ed25519.PublicKey), IsCA: true, ParentKey: key,
		NotBefore: now, NotAfter: now.Add(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	zb, db, err := ospkg.Create(ospkg.Options{Label: "t", URL: "https://example.org/os.zip", Kernel: []byte("kernel"),
		Initramfs: []byte("initramfs"), KernelName: "vmlinuz", InitramfsName: "initramfs.cpio.gz", Cmdline: "console=ttyS0"})
	if err != nil {
		t.Fatal(err)
	}
	d, err := ospkg.ParseDescriptor(db)
	if err != nil {
		t.Fatal(err)
	}
	if err := ospkg.Sign(d, zb, key, rootPEM); err != nil {
		t.Fatal(err)
	}
	db, _ = d.Marshal()
	root, err := ospkg.ParseCertificate(rootPEM)
	if err != nil {
		t.Fatal(err)
	}
	tls, _ := ospkg.ParseCertificate(rootPEM) // any certificate stands in for ISRG Root X1

	var want12 [32]byte
	archiveHash := sha256.Sum256(zb)
	descriptorHash := sha256.Sum256(db)
	want12 = tssMeasure(want12, archiveHash[:])
	want12 = tssMeasure(want12, descriptorHash[:])
	if got := PCR12(zb, db); hex.EncodeToString(want12[:]) != got.String() {
		t.Errorf("PCR 12 = %s, stboot v0.2.2 gives %x", got, want12)
	}

	pol := struct {
		SignatureThreshold int    `json:"ospkg_signature_threshold"`
		FetchMethod        string `json:"ospkg_fetch_method"`
	}{2, "network"}
	pj, _ := json.Marshal(pol)
	if string(pj) != `{"ospkg_signature_threshold":2,"ospkg_fetch_method":"network"}` {
		t.Fatalf("policy JSON %s", pj)
	}
	var want13 [32]byte
	for _, data := range [][]byte{pj, root.Raw, tls.Raw} {
		h := sha256.Sum256(data)
		want13 = tssMeasure(want13, h[:])
	}
	got13, err := PCR13(Policy{SignatureThreshold: 2, FetchMethod: "network"}, []*x509.Certificate{root}, []*x509.Certificate{tls})
	if err != nil {
		t.Fatal(err)
	}
	if got13.String() != hex.EncodeToString(want13[:]) {
		t.Errorf("PCR 13 = %s, stboot v0.2.2 gives %x", got13, want13)
	}
	// Another signature on the descriptor is another PCR 12.
	if PCR12(zb, append(db, ' ')) == PCR12(zb, db) {
		t.Error("PCR 12 ignores the descriptor bytes")
	}
	if _, err := PCR13(Policy{1, "network"}, []*x509.Certificate{root, root}, []*x509.Certificate{tls}); err == nil {
		t.Error("two signing roots accepted (v0.2.2 refuses them)")
	}
	if _, err := PCR13(Policy{1, "network"}, []*x509.Certificate{root}, nil); err == nil {
		t.Error("no HTTPS roots accepted")
	}
}
