package vault

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"patela/init/tpmdev"
	"patela/init/tpmdev/tpmdevtest"
	"patela/init/tpmkeys"
)

// machine is a node's TPM across reboots, with the EK name the vault binds
// its bundle to.
type machine struct {
	*tpmdevtest.Machine
	EK []byte
}

func newMachine(t *testing.T) *machine {
	m := &machine{Machine: tpmdevtest.New(t)}
	m.readEK()
	return m
}

// boot power-cycles the TPM: PCRs reset, persistent state kept.
func (m *machine) boot() {
	m.Boot()
	m.readEK()
}

func (m *machine) readEK() {
	m.T.Helper()
	ek, err := tpmkeys.EK(m.Dev, tpm2.TPMAlgECC)
	if err != nil {
		m.T.Fatal(err)
	}
	ek.Close(m.Dev)
	m.EK = ek.Name.Buffer
}

func (m *machine) open(opts Options) (*Vault, error) {
	if opts.EKName == nil {
		opts.EKName = m.EK
	}
	return Open(context.Background(), m.Cnt, opts)
}

func (m *machine) mustOpen(opts Options) *Vault {
	m.T.Helper()
	v, err := m.open(opts)
	if err != nil {
		m.T.Fatal(err)
	}
	return v
}

func (m *machine) extend(pcr int) {
	m.T.Helper()
	if err := lockPCR(m.Dev, pcr); err != nil {
		m.T.Fatal(err)
	}
}

// chownTree hands a restored directory back to root so tor, run by the
// test as root, accepts it.
func chownTree(t *testing.T, dir string) {
	filepath.WalkDir(dir, func(p string, _ fs.DirEntry, err error) error {
		if err == nil {
			err = os.Lchown(p, os.Getuid(), os.Getgid())
		}
		if err != nil {
			t.Fatal(err)
		}
		return nil
	})
}

func TestEightRelaysRoundTrip(t *testing.T) {
	const n = 8
	dirs, fps := torKeys(t, n)
	m := newMachine(t)
	ctx := context.Background()

	v := m.mustOpen(Options{PCRs: []int{7}})
	for i, d := range dirs {
		changed, err := v.Capture(fmt.Sprintf("relay%d", i), d)
		if err != nil || !changed {
			t.Fatalf("capture %d: changed=%v err=%v", i, changed, err)
		}
	}
	if err := v.Save(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d relays: %d-byte ciphertext in %d NV indices", n, v.hdr.length, v.hdr.count)
	// Nothing changed: a capture reports so and Save writes nothing.
	m.Cnt.Reset()
	if changed, err := v.Capture("relay0", dirs[0]); err != nil || changed {
		t.Fatalf("recapture: changed=%v err=%v", changed, err)
	}
	if err := v.Save(ctx); err != nil {
		t.Fatal(err)
	}
	if w := m.Cnt.Count(tpm2.TPMCCNVWrite); w != 0 {
		t.Fatalf("unchanged bundle: %d NV writes", w)
	}
	// Everything the vault loaded is flushed (swtpm has no resource manager).
	for _, ht := range []tpm2.TPMHT{tpm2.TPMHTTransient, tpm2.TPMHTHMACSession, tpm2.TPMHTPolicySession} {
		if hs, _ := tpmdev.Handles(m.Dev, ht); len(hs) != 0 {
			t.Fatalf("handles left loaded: %v", hs)
		}
	}

	m.boot()
	v = m.mustOpen(Options{PCRs: []int{7}})
	restored := make([]string, n)
	for i := range n {
		dir := filepath.Join(t.TempDir(), "data")
		uid := 10001 + i
		ok, err := restoreIssued(t, v, fmt.Sprintf("relay%d", i), dir, uid, uid)
		if err != nil || !ok {
			t.Fatalf("restore %d: ok=%v err=%v", i, ok, err)
		}
		checkOwned(t, dir, uid, 0o700)
		checkOwned(t, filepath.Join(dir, "keys"), uid, 0o700)
		ents, _ := os.ReadDir(filepath.Join(dir, "keys"))
		for _, e := range ents {
			checkOwned(t, filepath.Join(dir, "keys", e.Name()), uid, 0o600)
		}
		chownTree(t, dir)
		restored[i] = dir
	}
	var wg sync.WaitGroup
	got := make([]string, n)
	for i := range n {
		wg.Go(func() { got[i] = fingerprints(t, restored[i]) })
	}
	wg.Wait()
	for i := range n {
		if got[i] != fps[i] {
			t.Errorf("relay %d: fingerprints %q after restore, %q before", i, got[i], fps[i])
		}
	}
	fam, err := os.ReadFile(filepath.Join(dirs[0], "keys", "fam"+familySuffix))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	v.Restore("relay0", dir, 0, 0)
	if got, _ := os.ReadFile(filepath.Join(dir, "keys", "fam"+familySuffix)); !bytes.Equal(got, fam) {
		t.Error("family key not restored")
	}
	// A relay the vault has never seen starts fresh.
	if ok, err := v.Restore("newcomer", t.TempDir(), 0, 0); ok || err != nil {
		t.Fatalf("unknown relay: ok=%v err=%v", ok, err)
	}
}

func checkOwned(t *testing.T, path string, uid int, mode fs.FileMode) {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	if int(st.Uid) != uid || int(st.Gid) != uid || fi.Mode().Perm() != mode {
		t.Errorf("%s: %d:%d %v, want %d:%d %v", path, st.Uid, st.Gid, fi.Mode().Perm(), uid, uid, mode)
	}
}

func TestSecondUnsealAfterLockFails(t *testing.T) {
	for _, pcrs := range [][]int{nil, {7}} {
		m := newMachine(t)
		m.mustOpen(Options{PCRs: pcrs}) // first boot: creates and locks
		if _, err := m.open(Options{PCRs: pcrs}); !errors.Is(err, ErrLocked) {
			t.Fatalf("PCRs %v, same boot as creation: %v", pcrs, err)
		}
		m.boot()
		m.mustOpen(Options{PCRs: pcrs})
		_, err := m.open(Options{PCRs: pcrs})
		if !errors.Is(err, ErrLocked) {
			t.Fatalf("PCRs %v, second unseal in one boot: %v", pcrs, err)
		}
		t.Log(err)
	}
}

func TestPCRChangedAfterSealing(t *testing.T) {
	m := newMachine(t)
	m.mustOpen(Options{PCRs: []int{13}})
	m.boot()
	m.extend(13) // another trust policy measured by stboot
	_, err := m.open(Options{PCRs: []int{13}})
	if !errors.Is(err, ErrPolicy) {
		t.Fatalf("unseal after PCR 13 changed: %v", err)
	}
	t.Log(err)
	m.boot()
	if _, err := m.open(Options{PCRs: []int{7, 13}}); !errors.Is(err, ErrPolicy) {
		t.Fatalf("PCR list changed: %v", err)
	}
	m.boot()
	m.mustOpen(Options{PCRs: []int{13}})
}

// saveOne makes a vault holding one relay's real keys and returns that
// relay's data directory.
func saveOne(t *testing.T, m *machine, opts Options) (*Vault, string) {
	t.Helper()
	dirs, _ := torKeys(t, 1)
	v := m.mustOpen(opts)
	if _, err := v.Capture("murazzano", dirs[0]); err != nil {
		t.Fatal(err)
	}
	if err := v.Save(context.Background()); err != nil {
		t.Fatal(err)
	}
	return v, dirs[0]
}

func nvData(t *testing.T, m *machine) []byte {
	t.Helper()
	nv, err := newNVStore(m.Dev, 0)
	if err != nil {
		t.Fatal(err)
	}
	h, err := nv.readHeader()
	if err != nil || h == nil || h.location != locNV {
		t.Fatalf("header %+v, %v", h, err)
	}
	d, err := nv.readData(h)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestOtherEKCannotDecrypt(t *testing.T) {
	m := newMachine(t)
	saveOne(t, m, Options{})
	before := nvData(t, m)
	m.boot()
	other := newMachine(t) // another TPM: another EK
	_, err := m.open(Options{EKName: other.EK})
	if !errors.Is(err, ErrUndecryptable) {
		t.Fatalf("bundle opened for another EK: %v", err)
	}
	if !bytes.Equal(before, nvData(t, m)) {
		t.Fatal("the undecryptable bundle was modified")
	}
	m.boot()
	m.mustOpen(Options{})
}

func TestCorruptedCiphertext(t *testing.T) {
	m := newMachine(t)
	saveOne(t, m, Options{})
	nv, _ := newNVStore(m.Dev, 0)
	h, _ := nv.readHeader()
	data := nvData(t, m)

	// One flipped bit in the stored ciphertext, with the header's hash
	// updated to match, as an attacker with owner auth could.
	data[len(data)-20] ^= 1
	if _, err := nv.writeData(h.slot, data); err != nil {
		t.Fatal(err)
	}
	h.sum = sha256.Sum256(data)
	if err := nv.writeHeader(h); err != nil {
		t.Fatal(err)
	}
	m.boot()
	if _, err := m.open(Options{}); !errors.Is(err, ErrUndecryptable) {
		t.Fatalf("tampered bundle: %v", err)
	}
	// Without the hash update: noticed before decryption.
	data[len(data)-20] ^= 1
	nv, _ = newNVStore(m.Dev, 0)
	data[0] ^= 0xFF
	nv.writeData(h.slot, data)
	m.boot()
	if _, err := m.open(Options{}); !errors.Is(err, ErrUndecryptable) {
		t.Fatalf("corrupted NV: %v", err)
	}
}

func TestNVFullWithoutMirror(t *testing.T) {
	m := newMachine(t)
	dirs, _ := torKeys(t, 1)
	v := m.mustOpen(Options{NVMaxBytes: 128})
	v.Capture("murazzano", dirs[0])
	if err := v.Save(context.Background()); !errors.Is(err, ErrNVFull) {
		t.Fatalf("save with no room and no mirror: %v", err)
	}
	// Nothing was stored: the next boot has an empty vault, and the
	// bundle is still pending in memory.
	if err := v.Save(context.Background()); err == nil {
		t.Fatal("failed save was forgotten")
	}
}

func TestSealedKeyLost(t *testing.T) {
	m := newMachine(t)
	saveOne(t, m, Options{})
	if err := tpmkeys.Evict(m.Dev, tpmkeys.SealHandle); err != nil {
		t.Fatal(err)
	}
	m.boot()
	if _, err := m.open(Options{}); !errors.Is(err, ErrKeyLost) {
		t.Fatalf("bundle without sealed key: %v", err)
	}
}

func TestVaultKeyNeverInNV(t *testing.T) {
	// The vault key is stored only inside the sealed object: scan every
	// NV index for it.
	m := newMachine(t)
	v, _ := saveOne(t, m, Options{})
	hs, _ := tpmdev.Handles(m.Dev, tpm2.TPMHTNVIndex)
	nv, _ := newNVStore(m.Dev, 0)
	for _, h := range hs {
		n, _, _ := nv.size(h)
		d, err := nv.read(h, n)
		if err == nil && bytes.Contains(d, v.key) {
			t.Fatalf("vault key in NV 0x%08x", uint32(h))
		}
	}
}

// TestLockIsEnforcedByTheTPM skips the vault's own diagnosis and asks the
// TPM to unseal after the lock: the TPM itself must refuse.
func TestLockIsEnforcedByTheTPM(t *testing.T) {
	m := newMachine(t)
	m.mustOpen(Options{PCRs: []int{7}})
	m.boot()
	pol, _ := newPolicy([]int{7}, DefaultLockPCR)
	unseal := func() error {
		srk, err := tpmkeys.SRK(m.Dev)
		if err != nil {
			t.Fatal(err)
		}
		defer srk.Close(m.Dev)
		sealed, err := tpmkeys.Persisted(m.Dev, tpmkeys.SealHandle)
		if err != nil {
			t.Fatal(err)
		}
		sel := pol.selection()
		_, err = tpm2.Unseal{ItemHandle: tpm2.AuthHandle{Handle: sealed.Handle, Name: sealed.Name,
			Auth: tpm2.Policy(tpm2.TPMAlgSHA256, 16, func(t transport.TPM, s tpm2.TPMISHPolicy, _ tpm2.TPM2BNonce) error {
				_, err := tpm2.PolicyPCR{PolicySession: s, Pcrs: sel}.Execute(t)
				return err
			})}}.Execute(m.Dev)
		return err
	}
	if err := unseal(); err != nil {
		t.Fatalf("unseal before the lock: %v", err)
	}
	m.extend(DefaultLockPCR)
	if err := unseal(); !errors.Is(err, tpm2.TPMRCPolicyFail) {
		t.Fatalf("unseal after the lock: %v", err)
	}
}

// TestInterruptedSave: a save that stops after writing the new slot but
// before switching the header (power cut) leaves the old bundle readable,
// and the next save recovers the half-written slot.
func TestInterruptedSave(t *testing.T) {
	m := newMachine(t)
	v, dir := saveOne(t, m, Options{})
	nv, _ := newNVStore(m.Dev, 0)
	h, _ := nv.readHeader()
	junk := make([]byte, 3000)
	if _, err := nv.writeData(h.slot^1, junk); err != nil {
		t.Fatal(err)
	}
	v.Forget("murazzano")
	m.boot()
	v = m.mustOpen(Options{})
	if got := v.Relays(); len(got) != 1 || got[0] != "murazzano" {
		t.Fatalf("after an interrupted save: relays %v", got)
	}
	if _, err := v.Capture("gorgonzola", dir); err != nil {
		t.Fatal(err)
	}
	if err := v.Save(context.Background()); err != nil {
		t.Fatal(err)
	}
	nv, _ = newNVStore(m.Dev, 0)
	if n, size, err := nv.usage(); n != 2 || size > headerLen+2048 {
		t.Logf("usage: %v", err)
		t.Fatalf("after the next save: %d indices, %d bytes (the stale slot was not freed)", n, size)
	}
	m.boot()
	if got := m.mustOpen(Options{}).Relays(); len(got) != 2 {
		t.Fatalf("relays %v", got)
	}
}

func TestLockPCRInUse(t *testing.T) {
	m := newMachine(t)
	m.extend(DefaultLockPCR)
	if _, err := m.open(Options{}); err == nil || !strings.Contains(err.Error(), "not zero at boot") {
		t.Fatalf("lock PCR already extended at first boot: %v", err)
	}
	if _, err := tpmkeys.Persisted(m.Dev, tpmkeys.SealHandle); !errors.Is(err, tpmkeys.ErrNotPersisted) {
		t.Fatal("a key was sealed anyway")
	}
	m.mustOpen(Options{LockPCR: 14})
}

func TestNoLockNoPCRs(t *testing.T) {
	// Development mode: no PCRs, no lock; the key unseals with an HMAC
	// session (userWithAuth) as often as asked.
	m := newMachine(t)
	m.mustOpen(Options{NoLock: true})
	m.mustOpen(Options{NoLock: true})
	if _, err := m.open(Options{}); !errors.Is(err, ErrPolicy) {
		t.Fatalf("sealed without PCRs, opened with the lock PCR: %v", err)
	}
}
