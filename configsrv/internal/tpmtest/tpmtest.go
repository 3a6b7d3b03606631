// Package tpmtest plays a node's TPM side of attestation against a real
// swtpm, for the config server's tests: it creates an EK and an AK (under
// the SRK) and runs ActivateCredential. The agent's production client is
// init/attest; this is deliberately independent of it.
package tpmtest

import (
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"patela/configsrv/attest/softek"
	"patela/internal/swtpmtest"
)

// Node is a TPM with an EK and an AK loaded.
type Node struct {
	TPM      transport.TPMCloser
	EKPublic []byte // marshalled TPMT_PUBLIC
	AKPublic []byte
	AKName   []byte
	ek, ak   tpm2.NamedHandle
}

// New starts a swtpm and creates an EK from ekTemplate (tpm2.RSAEKTemplate
// or tpm2.ECCEKTemplate) and an ECC AK.
func New(t testing.TB, ekTemplate tpm2.TPMTPublic) *Node {
	t.Helper()
	return On(t, swtpmtest.Start(t), ekTemplate)
}

// On creates the keys on an already running swtpm.
func On(t testing.TB, tp *swtpmtest.TPM, ekTemplate tpm2.TPMTPublic) *Node {
	t.Helper()
	tpm, err := tp.Open()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tpm.Close() })
	n := &Node{TPM: tpm}
	ek, err := tpm2.CreatePrimary{PrimaryHandle: tpm2.TPMRHEndorsement, InPublic: tpm2.New2B(ekTemplate)}.Execute(tpm)
	if err != nil {
		t.Fatalf("create EK: %v", err)
	}
	n.ek = tpm2.NamedHandle{Handle: ek.ObjectHandle, Name: ek.Name}
	n.EKPublic = ek.OutPublic.Bytes()
	srk, err := tpm2.CreatePrimary{PrimaryHandle: tpm2.TPMRHOwner, InPublic: tpm2.New2B(tpm2.ECCSRKTemplate)}.Execute(tpm)
	if err != nil {
		t.Fatalf("create SRK: %v", err)
	}
	defer tpm2.FlushContext{FlushHandle: srk.ObjectHandle}.Execute(tpm)
	parent := tpm2.AuthHandle{Handle: srk.ObjectHandle, Name: srk.Name, Auth: tpm2.PasswordAuth(nil)}
	ak, err := tpm2.Create{ParentHandle: parent, InPublic: tpm2.New2B(softek.AKTemplate(nil, nil))}.Execute(tpm)
	if err != nil {
		t.Fatalf("create AK: %v", err)
	}
	loaded, err := tpm2.Load{ParentHandle: parent, InPrivate: ak.OutPrivate, InPublic: ak.OutPublic}.Execute(tpm)
	if err != nil {
		t.Fatalf("load AK: %v", err)
	}
	n.ak = tpm2.NamedHandle{Handle: loaded.ObjectHandle, Name: loaded.Name}
	n.AKPublic = ak.OutPublic.Bytes()
	n.AKName = loaded.Name.Buffer
	return n
}

// Activate runs TPM2_ActivateCredential with the EK (endorsement policy)
// and the AK, returning the recovered secret.
func (n *Node) Activate(blob, encSecret []byte) ([]byte, error) {
	return ActivateWith(n.TPM, n.ak, tpm2.AuthHandle{
		Handle: n.ek.Handle, Name: n.ek.Name,
		Auth: tpm2.Policy(tpm2.TPMAlgSHA256, 16, func(tpm transport.TPM, s tpm2.TPMISHPolicy, nonce tpm2.TPM2BNonce) error {
			_, err := tpm2.PolicySecret{AuthHandle: tpm2.TPMRHEndorsement, PolicySession: s, NonceTPM: nonce}.Execute(tpm)
			return err
		}),
	}, blob, encSecret)
}

// ActivateWith runs ActivateCredential for the object activate with the
// decryption key key.
func ActivateWith(tpm transport.TPM, activate tpm2.NamedHandle, key tpm2.AuthHandle, blob, encSecret []byte) ([]byte, error) {
	rsp, err := tpm2.ActivateCredential{
		ActivateHandle: tpm2.AuthHandle{Handle: activate.Handle, Name: activate.Name, Auth: tpm2.PasswordAuth(nil)},
		KeyHandle:      key,
		CredentialBlob: tpm2.TPM2BIDObject{Buffer: blob},
		Secret:         tpm2.TPM2BEncryptedSecret{Buffer: encSecret},
	}.Execute(tpm)
	if err != nil {
		return nil, err
	}
	return rsp.CertInfo.Buffer, nil
}

// EK certificate NV indices swtpm_setup writes.
const (
	RSAEKCertIndex tpm2.TPMHandle = 0x01C00002
	ECCEKCertIndex tpm2.TPMHandle = 0x01C00016 // P-384; its EK is persisted at 0x81010016
	ECCEKHandle    tpm2.TPMHandle = 0x81010016
)

// Manufactured is a swtpm provisioned by swtpm_setup with EK certificates
// from its own local CA.
type Manufactured struct {
	TPM   *swtpmtest.TPM
	CADir string // the local CA's root and intermediate certificates
}

// Manufacture provisions a swtpm with EK certificates from a private
// swtpm-localca (swtpmtest.Manufacture) and starts it.
func Manufacture(t testing.TB) *Manufactured {
	t.Helper()
	state, ca := swtpmtest.Manufacture(t)
	return &Manufactured{TPM: swtpmtest.StartState(t, state), CADir: ca}
}

// ReadNV reads a whole NV index (EK certificates: empty auth, the index
// authorizes itself).
func ReadNV(tpm transport.TPM, index tpm2.TPMHandle) ([]byte, error) {
	pub, err := tpm2.NVReadPublic{NVIndex: index}.Execute(tpm)
	if err != nil {
		return nil, err
	}
	nv, err := pub.NVPublic.Contents()
	if err != nil {
		return nil, err
	}
	var out []byte
	for off := uint16(0); off < nv.DataSize; {
		n := min(nv.DataSize-off, 512)
		rsp, err := tpm2.NVRead{
			AuthHandle: tpm2.AuthHandle{Handle: index, Name: pub.NVName, Auth: tpm2.PasswordAuth(nil)},
			NVIndex:    tpm2.NamedHandle{Handle: index, Name: pub.NVName},
			Size:       n,
			Offset:     off,
		}.Execute(tpm)
		if err != nil {
			return nil, err
		}
		out = append(out, rsp.Data.Buffer...)
		off += n
	}
	return out, nil
}
