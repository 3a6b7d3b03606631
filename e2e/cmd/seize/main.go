// Command seize is what someone who seized a relay machine runs: /init of
// an image nobody approved (the e2e test appends it, with the public
// release files, to the real initramfs). It prints the PCRs the boot
// measured, then tries every way it knows to get the vault key out of the
// TPM: an empty password on each sealed object, a PolicyPCR session on the
// PCRs as they are, and the full PolicyAuthorize sequence with every
// approval it has (public data) under the key that signed it. Each
// attempt's TPM answer is printed; "seize: UNSEALED" would mean one
// worked. It reads the vault's NV ciphertext (anyone may: it is useless
// without the key), then, if the image has the real agent, execs it as
// PID 1, which says for itself why it cannot open the vault.
package main

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"patela/init/tpmdev"
	"patela/init/tpmkeys"
	"patela/internal/release"
)

func say(format string, a ...any) { fmt.Printf("seize: "+format+"\n", a...) }

func main() {
	for _, m := range []struct{ src, dst, fs string }{
		{"proc", "/proc", "proc"}, {"sysfs", "/sys", "sysfs"}, {"devtmpfs", "/dev", "devtmpfs"},
	} {
		os.MkdirAll(m.dst, 0o755)
		syscall.Mount(m.src, m.dst, m.fs, 0, "")
	}
	run()
	// The kernel mounts nothing for the agent: leave it as we found it.
	for _, d := range []string{"/dev", "/sys", "/proc"} {
		syscall.Unmount(d, syscall.MNT_DETACH)
	}
	if _, err := os.Stat("/bin/init"); err == nil {
		say("handing over to the image's agent (/bin/init)")
		err := syscall.Exec("/bin/init", []string{"/init"}, os.Environ())
		say("exec /bin/init: %v", err)
	}
	syscall.Sync()
	syscall.Reboot(syscall.LINUX_REBOOT_CMD_POWER_OFF)
}

func run() {
	var t transport.TPMCloser
	var err error
	for i := 0; i < 50; i++ {
		if t, err = tpmdev.Open("/dev/tpmrm0"); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		say("no TPM: %v", err)
		return
	}
	defer t.Close()
	for n := 0; n < 16; n++ {
		if v, err := readPCR(t, n); err == nil {
			fmt.Printf("seize: pcr %d %x\n", n, v)
		}
	}
	unsealed := 0
	try := func(what string, err error) {
		if err == nil {
			unsealed++
			say("UNSEALED with %s", what)
			return
		}
		say("refused: %s: %v", what, err)
	}
	var objs []*tpmkeys.Key
	for _, h := range []tpm2.TPMHandle{tpmkeys.ReleaseSealHandle, tpmkeys.SealHandle} {
		k, err := tpmkeys.Persisted(t, h)
		if err != nil {
			say("no sealed object at 0x%08x: %v", uint32(h), err)
			continue
		}
		objs = append(objs, k)
		try(fmt.Sprintf("empty password on 0x%08x", uint32(h)), unseal(t, k, tpm2.PasswordAuth(nil)))
		for _, sel := range [][]int{{15}, {4, 11, 12, 15}, {7, 15}} {
			sel := sel
			try(fmt.Sprintf("PolicyPCR%v as they are on 0x%08x", sel, uint32(h)),
				unseal(t, k, tpm2.Policy(tpm2.TPMAlgSHA256, 16, func(t transport.TPM, s tpm2.TPMISHPolicy, _ tpm2.TPM2BNonce) error {
					_, err := tpm2.PolicyPCR{PolicySession: s, Pcrs: release.Selection(sel)}.Execute(t)
					return err
				})))
		}
	}
	files, _ := filepath.Glob("/seize/*.json")
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		r, err := release.Parse(b)
		if err != nil || r.Approval == nil {
			say("%s: %v", f, err)
			continue
		}
		key, _ := release.ParsePublicKey(r.Approval.Key)
		for _, k := range objs {
			try(fmt.Sprintf("release %s's approval (PolicyPCR%v + PolicyAuthorize) on 0x%08x", r.Name, r.Policy.PCRs, uint32(k.Handle)),
				authorized(t, k, r, release.KeyPublic(key)))
		}
	}
	if d, err := ciphertext(t); err == nil {
		say("read %d bytes of the vault's NV (header + ciphertext, SHA-256 %x…): encrypted under the sealed key", len(d), sha256.Sum256(d))
	}
	if unsealed == 0 {
		say("done: unsealed nothing")
	} else {
		say("done: UNSEALED %d times", unsealed)
	}
}

func readPCR(t transport.TPM, n int) ([]byte, error) {
	rsp, err := tpm2.PCRRead{PCRSelectionIn: release.Selection([]int{n})}.Execute(t)
	if err != nil {
		return nil, err
	}
	if len(rsp.PCRValues.Digests) != 1 {
		return nil, errors.New("no SHA-256 bank")
	}
	return rsp.PCRValues.Digests[0].Buffer, nil
}

func unseal(t transport.TPM, k *tpmkeys.Key, auth tpm2.Session) error {
	rsp, err := tpm2.Unseal{ItemHandle: tpm2.AuthHandle{Handle: k.Handle, Name: k.Name, Auth: auth}}.Execute(t)
	if err == nil {
		say("the sealed data is %d bytes", len(rsp.OutData.Buffer))
	}
	return err
}

func authorized(t transport.TPM, k *tpmkeys.Key, r *release.Release, pub tpm2.TPMTPublic) error {
	le, err := tpm2.LoadExternal{InPublic: tpm2.New2B(pub), Hierarchy: tpm2.TPMRHOwner}.Execute(t)
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
		return fmt.Errorf("VerifySignature: %w", err)
	}
	return unseal(t, k, tpm2.Policy(tpm2.TPMAlgSHA256, 16, func(t transport.TPM, s tpm2.TPMISHPolicy, _ tpm2.TPM2BNonce) error {
		if _, err := (tpm2.PolicyPCR{PolicySession: s, Pcrs: release.Selection(r.Policy.PCRs)}).Execute(t); err != nil {
			return err
		}
		_, err := tpm2.PolicyAuthorize{PolicySession: s, ApprovedPolicy: tpm2.TPM2BDigest{Buffer: r.Policy.Digest[:]},
			PolicyRef: tpm2.TPM2BDigest{Buffer: []byte(release.PolicyRef)}, KeySign: le.Name, CheckTicket: vs.Validation}.Execute(t)
		if err != nil {
			return fmt.Errorf("PolicyAuthorize: %w", err)
		}
		return nil
	}))
}

// ciphertext reads the vault's NV indices with owner auth (empty, as on
// most machines).
func ciphertext(t transport.TPM) ([]byte, error) {
	hs, err := tpmdev.Handles(t, tpm2.TPMHTNVIndex)
	if err != nil {
		return nil, err
	}
	var out []byte
	for _, h := range hs {
		if h < tpmkeys.NVHeader || h >= tpmkeys.NVData+tpmkeys.NVDataMax {
			continue
		}
		rp, err := tpm2.NVReadPublic{NVIndex: h}.Execute(t)
		if err != nil {
			continue
		}
		pub, err := rp.NVPublic.Contents()
		if err != nil || !pub.Attributes.Written {
			continue
		}
		b, err := tpmkeys.ReadNV(t, tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)},
			tpm2.NamedHandle{Handle: h, Name: rp.NVName}, int(pub.DataSize))
		if err == nil {
			out = append(out, b...)
		}
	}
	if len(out) == 0 {
		return nil, errors.New("nothing")
	}
	return out, nil
}
