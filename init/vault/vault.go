// Package vault keeps the relays' long-term tor keys across diskless boots,
// readable only by this TPM.
//
// A random 32-byte AES-256-GCM key is sealed in the TPM under the SRK, bound
// to a PCR policy that always includes a lock PCR (15 by default): after
// unsealing, the vault extends it, so nothing started later in this boot can
// unseal the key again. The relays' keys form one compact bundle, encrypted
// under that key with the EK name and the bundle version as associated data,
// kept in TPM NV over as many indices as it needs, or, when NV is full, in
// the config server's key mirror, which holds only ciphertext. A TPM NV
// counter, raised with every save and recorded in the authenticated
// envelope, makes the vault refuse an older bundle written back to NV or
// served by the mirror (counter.go).
//
// A config change never deletes keys: a relay that leaves the config is
// retired (Retire), its keys kept in the bundle, counted in its size, for
// the node's retention period on the TPM's clock (TPM2_ReadClock, which
// neither the server nor a wrong wall clock moves), restored if the relay
// comes back and purged by the first save after the period.
package vault

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"patela/init/tpmkeys"
	"patela/internal/api"
	"patela/internal/release"
)

// Mirror is the config server's ciphertext store (GET/PUT /v1/node/keys).
// Get answers an *api.Error with api.CodeNotFound when it has none.
type Mirror interface {
	Get(ctx context.Context) (*api.KeyBundle, error)
	Put(ctx context.Context, b *api.KeyBundle) error
}

// DefaultRetention is how long a retired relay's keys are kept.
const DefaultRetention = 30 * 24 * time.Hour

// DefaultLockPCR is extended after unsealing. It is zero at boot and no
// firmware or stboot measurement uses it.
const DefaultLockPCR = 15

// Options configure Open.
type Options struct {
	EKName []byte // binds bundles to this TPM's EK (attest.Session.EKName)
	PCRs   []int  // PCRs the vault key is sealed to, e.g. 7 and 13
	// LockPCR is the PCR extended after unsealing (0: DefaultLockPCR).
	// NoLock keeps the vault key unsealable all boot long; only for
	// development.
	LockPCR int
	NoLock  bool
	Mirror  Mirror // nil: NV only
	Log     *slog.Logger
	// NVMaxBytes caps the NV the bundle may use (0: what the TPM has).
	NVMaxBytes int
	// Retention is how long the keys of a relay that left the config are
	// kept (0: DefaultRetention), measured with the TPM's own clock. It is
	// the node's setting (agent.json), never the server's.
	Retention time.Duration
	// Release seals the vault key to a release policy key (the agent's
	// "release" sealing mode, authorized.go); PCRs then name the PolicyPCR
	// selection of a vault sealed before, migrated on its first release
	// boot. Nil is "unmeasured" sealing: PolicyPCR over PCRs and the lock.
	Release *ReleasePolicy
}

// ErrReleaseSealed means an unmeasured image found a vault sealed to a
// release policy key.
var ErrReleaseSealed = errors.New("the vault key is sealed to a release policy key (a measured release made it): " +
	"this image seals unmeasured and cannot open it; boot an approved release")

// ErrKeyLost means the vault's NV header is there but its sealed key is
// not (evicted, or the TPM was partly cleared): the stored bundle cannot be
// decrypted any more, and the vault refuses to start a new one over it.
// The message tells the operator both ways out.
var ErrKeyLost = errors.New("the vault's sealed key is missing but its key bundle exists; the relay keys cannot be recovered on this TPM, " +
	"refusing to replace them. " + recovery)

// ErrOrphaned means the mirror holds a bundle this TPM has no key for.
var ErrOrphaned = errors.New("the config server holds a key bundle for this node but this TPM has no vault key (the TPM was cleared or replaced); " +
	"the relay keys in it cannot be recovered, refusing to replace it. " + recovery)

// recovery is the operator's way out of ErrKeyLost and ErrOrphaned.
const recovery = "To start over, which gives every relay of this node a NEW identity (new fingerprints, the old ones are lost): " +
	"on this node run `init tpm clear-vault --yes` (deletes the vault left in TPM NV) and " +
	"on the config server run `configsrv keys drop N --yes` with N this node's id (deletes the mirror copy), then reboot"

// Vault is the unsealed vault of one boot. It is safe for concurrent use.
type Vault struct {
	log    *slog.Logger
	mirror Mirror
	ekName []byte
	nv     *nvStore

	retention time.Duration

	mu     sync.Mutex
	key    []byte
	relays map[string]*Entry
	saved  map[string]*Entry // the entries as last saved (entries are replaced, never changed)
	// unsaved is which relays differ from saved, recomputed under mu
	// after every change and read under umu alone, so Unsaved (read by
	// every heartbeat) never waits for a save talking to the mirror.
	umu     sync.Mutex
	unsaved map[string]bool
	version uint64
	stored  []byte // encoding of the relays as last saved, to detect changes
	hdr     header
	// counter is the rollback counter value the stored bundle records;
	// uncommitted means the TPM counter was not raised to it yet.
	counter     uint64
	uncommitted bool
}

// saveHook, when set (tests), runs between the steps of a save; an error
// stops the save there, as a power cut would.
var saveHook func(step string) error

func (v *Vault) step(name string) error {
	if saveHook != nil {
		return saveHook(name)
	}
	return nil
}

// Open unseals the vault key, loads and decrypts the key bundle, and locks
// the vault for the rest of the boot. On the first boot it makes the key.
// A bundle that does not decrypt is an error, never replaced.
func Open(ctx context.Context, t transport.TPM, opts Options) (*Vault, error) {
	if len(opts.EKName) == 0 {
		return nil, errors.New("no EK name")
	}
	lock := opts.LockPCR
	if lock == 0 {
		lock = DefaultLockPCR
	}
	if opts.NoLock {
		lock = -1
	}
	if opts.Release != nil && lock != release.LockPCR {
		return nil, fmt.Errorf("release sealing locks PCR %d after unsealing; lock PCR %d (or none) cannot be used with it", release.LockPCR, lock)
	}
	pol, err := newPolicy(opts.PCRs, lock)
	if err != nil {
		return nil, err
	}
	log := opts.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	nv, err := newNVStore(t, opts.NVMaxBytes)
	if err != nil {
		return nil, err
	}
	v := &Vault{log: log, mirror: opts.Mirror, ekName: bytes.Clone(opts.EKName), nv: nv, relays: map[string]*Entry{},
		retention: opts.Retention}
	if v.retention <= 0 {
		v.retention = DefaultRetention
	}
	hdr, err := nv.readHeader()
	if err != nil {
		return nil, err
	}
	srk, err := tpmkeys.SRK(t)
	if err != nil {
		return nil, err
	}
	defer srk.Close(t)
	if opts.Release != nil {
		return v.openRelease(ctx, t, srk, hdr, pol, opts.Release)
	}
	if _, err := tpmkeys.Persisted(t, tpmkeys.ReleaseSealHandle); err == nil {
		return nil, ErrReleaseSealed
	} else if !errors.Is(err, tpmkeys.ErrNotPersisted) {
		return nil, err
	}

	sealed, err := tpmkeys.Persisted(t, tpmkeys.SealHandle)
	if errors.Is(err, tpmkeys.ErrNotPersisted) {
		if hdr != nil && hdr.location != locNone {
			return nil, ErrKeyLost
		}
		if b, err := v.mirrorGet(ctx); err != nil {
			return nil, err
		} else if b != nil {
			return nil, ErrOrphaned
		}
		if err := v.create(t, srk, pol); err != nil {
			return nil, err
		}
		return v, nil
	}
	if err != nil {
		return nil, err
	}
	// Fetch the ciphertext before unsealing: a failure here (server
	// unreachable) leaves the vault unlocked for a retry in this boot.
	if hdr == nil {
		// Sealed on an earlier boot that stopped before writing the header.
		hdr = &header{location: locNone, lock: pol.lock, pcrMask: pol.mask()}
		if err := nv.writeHeader(hdr); err != nil {
			return nil, err
		}
	}
	env, err := v.fetch(ctx, hdr)
	if err != nil {
		return nil, err
	}
	key, err := unsealKey(t, srk, sealed, pol)
	if err != nil {
		return nil, err
	}
	if pol.lock >= 0 {
		if err := lockPCR(t, pol.lock); err != nil {
			clear(key)
			return nil, err
		}
	}
	v.key = key
	if err := v.decrypt(hdr, env); err != nil {
		clear(v.key)
		return nil, err
	}
	log.Info("vault opened", "relays", len(v.relays), "version", v.version, "counter", v.counter,
		"stored_in", [...]string{"nothing yet", "TPM NV", "config server mirror"}[v.hdr.location], "pcrs", pol.pcrs)
	return v, nil
}

// create makes, seals and locks a new vault key (first boot).
func (v *Vault) create(t transport.TPM, srk *tpmkeys.Key, pol pcrPolicy) error {
	if pol.lock >= 0 {
		// Sealed to a non-zero lock PCR, the key could never be unsealed
		// after a reboot resets it.
		val, err := readPCR(t, pol.lock)
		if err != nil {
			return err
		}
		if !bytes.Equal(val, make([]byte, len(val))) {
			return fmt.Errorf("lock PCR %d is not zero at boot (something else extends it); configure another lock PCR", pol.lock)
		}
	}
	// A rollback counter left by an earlier vault takes another key's
	// auth; the next save defines a new one, which starts above it.
	if err := undefineCounter(t); err != nil {
		return fmt.Errorf("removing an old vault's rollback counter: %w", err)
	}
	v.key = make([]byte, keySize)
	if _, err := rand.Read(v.key); err != nil {
		return err
	}
	if err := sealKey(t, srk, pol, v.key); err != nil {
		return err
	}
	v.hdr = header{location: locNone, lock: pol.lock, pcrMask: pol.mask()}
	if err := v.nv.writeHeader(&v.hdr); err != nil {
		return err
	}
	if pol.lock >= 0 {
		if err := lockPCR(t, pol.lock); err != nil {
			return err
		}
	}
	v.stored, _ = encodeBundle(&Bundle{Relays: v.relays})
	v.saved = maps.Clone(v.relays)
	v.markLocked()
	v.log.Info("vault created: new key sealed in the TPM", "pcrs", pol.pcrs)
	return nil
}

func (v *Vault) mirrorGet(ctx context.Context) (*api.KeyBundle, error) {
	if v.mirror == nil {
		return nil, nil
	}
	b, err := v.mirror.Get(ctx)
	if api.IsCode(err, api.CodeNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading the key mirror: %w", err)
	}
	return b, nil
}

// fetch reads the bundle ciphertext where the header says it is (nil when
// none was saved yet).
func (v *Vault) fetch(ctx context.Context, hdr *header) ([]byte, error) {
	switch hdr.location {
	case locNV:
		data, err := v.nv.readData(hdr)
		if err != nil {
			return nil, fmt.Errorf("reading the key bundle from NV: %w", err)
		}
		if sha256.Sum256(data) != hdr.sum {
			return nil, fmt.Errorf("%w: the NV copy does not match its header (interrupted write or tampering)", ErrUndecryptable)
		}
		return data, nil
	case locMirror:
		b, err := v.mirrorGet(ctx)
		if err != nil {
			return nil, err
		}
		if b == nil {
			return nil, fmt.Errorf("the key bundle (version %d) should be on the config server, which has none", hdr.version)
		}
		if b.Version < hdr.version {
			return nil, fmt.Errorf("%w (the config server serves version %d, the vault's NV header records %d)", ErrRollback, b.Version, hdr.version)
		}
		return b.Bundle, nil
	}
	return nil, nil
}

// decrypt opens the fetched ciphertext with the unsealed key.
func (v *Vault) decrypt(hdr *header, env []byte) error {
	v.hdr = *hdr
	if env != nil {
		b, err := open(v.key, v.ekName, env)
		if err != nil {
			return err
		}
		if b.Version < hdr.version {
			return fmt.Errorf("%w (the bundle is version %d, the vault's NV header records %d)", ErrRollback, b.Version, hdr.version)
		}
		if err := v.checkCounter(b); err != nil {
			return err
		}
		v.relays, v.version = b.Relays, b.Version
	}
	var err error
	v.stored, err = encodeBundle(&Bundle{Relays: v.relays})
	v.saved = maps.Clone(v.relays)
	v.markLocked()
	return err
}

// Restore writes a relay's keys into dataDir/keys (files 0600, directories
// 0700, owned by uid:gid) before tor starts. A relay the vault does not
// know yet starts fresh: restored is false and err nil.
// A retired relay that comes back is active again (Save records it),
// with the keys it had.
func (v *Vault) Restore(name, dataDir string, uid, gid int) (restored bool, err error) {
	v.mu.Lock()
	e := v.relays[name]
	if e != nil && e.RetiredAt != 0 {
		back := *e
		back.RetiredAt = 0
		v.relays[name] = &back
		v.markLocked()
		v.log.Info("retired relay is back; restoring its keys", "relay", name)
	}
	v.mu.Unlock()
	if e == nil {
		return false, nil
	}
	if err := restoreEntry(e, dataDir, uid, gid); err != nil {
		return false, fmt.Errorf("restoring keys of %s: %w", name, err)
	}
	return true, nil
}

// Capture reads a relay's key files (once tor has written them) into the
// bundle. changed says whether they differ from what the vault held; Save
// persists them. Before tor has written its keys it returns false, nil.
func (v *Vault) Capture(name, dataDir string) (changed bool, err error) {
	if !validName(name) {
		return false, fmt.Errorf("relay name %q cannot be stored", name)
	}
	e, err := captureEntry(filepath.Join(dataDir, "keys"))
	if errors.Is(err, ErrNoKeys) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("capturing keys of %s: %w", name, err)
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	old := v.relays[name]
	if e.Ed25519Master == nil { // OfflineMasterKey: the master is the vault's
		if old == nil {
			return false, fmt.Errorf("capturing keys of %s: no ed25519 master key, on disk or in the vault", name)
		}
		e.Ed25519Master, e.RetiredAt = old.Ed25519Master, old.RetiredAt
	}
	if err := e.check(); err != nil {
		return false, fmt.Errorf("capturing keys of %s: %w", name, err)
	}
	if old != nil && old.equal(e) {
		return false, nil
	}
	if old != nil && (!bytes.Equal(old.Ed25519Master, e.Ed25519Master) || !bytes.Equal(old.RSAIdentity, e.RSAIdentity)) {
		// Only happens if tor ran without the restored keys.
		v.log.Warn("relay identity keys differ from the stored ones; storing the new identity", "relay", name)
	}
	v.relays[name] = e
	v.markLocked()
	return true, nil
}

// Ensure makes the long-term identity of a relay the vault does not know
// (created true); Save persists it. A known relay is left as it is.
func (v *Vault) Ensure(name string) (created bool, err error) {
	if !validName(name) {
		return false, fmt.Errorf("relay name %q cannot be stored", name)
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.relays[name] != nil {
		return false, nil
	}
	e, err := newEntry()
	if err != nil {
		return false, fmt.Errorf("making keys of %s: %w", name, err)
	}
	v.relays[name] = e
	v.markLocked()
	v.log.Info("new relay identity made", "relay", name)
	return true, nil
}

// Issue writes a new medium-term signing key and its certificate, valid
// until expires, into the relay's dataDir/keys (owned by uid:gid), signed
// by the master key only the vault holds: tor runs with OfflineMasterKey
// and never sees it. It returns the certificate's expiry (to the hour).
func (v *Vault) Issue(name, dataDir string, uid, gid int, expires time.Time) (time.Time, error) {
	v.mu.Lock()
	e := v.relays[name]
	v.mu.Unlock()
	if e == nil {
		return time.Time{}, fmt.Errorf("issuing a signing key for %s: the vault has no keys for it", name)
	}
	keysDir := filepath.Join(dataDir, "keys")
	for _, d := range []string{dataDir, keysDir} {
		if err := ownedDir(d, uid, gid); err != nil {
			return time.Time{}, err
		}
	}
	exp, err := issueSigning(e, keysDir, uid, gid, expires)
	if err != nil {
		return time.Time{}, fmt.Errorf("issuing a signing key for %s: %w", name, err)
	}
	return exp, nil
}

// Forget drops a relay's keys from the bundle at once. The supervisor
// never does (a config change retires, see Retire); tools and tests do.
func (v *Vault) Forget(name string) {
	v.mu.Lock()
	defer v.mu.Unlock()
	delete(v.relays, name)
	v.markLocked()
}

// Retire marks a relay that left the config: its keys stay in the bundle
// (and count in its size) for the retention period, measured from now on
// the TPM's clock, which only the TPM advances (a server that sets the
// node's wall clock cannot shorten it). Save records it and purges the
// retired relays whose period is over. Retiring an unknown or already
// retired relay does nothing.
func (v *Vault) Retire(name string) error {
	now, err := v.clock()
	if err != nil {
		return fmt.Errorf("retiring %s: %w", name, err)
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	e := v.relays[name]
	if e == nil || e.RetiredAt != 0 {
		return nil
	}
	r := *e
	r.RetiredAt = max(now, 1)
	v.relays[name] = &r
	v.markLocked()
	v.log.Info("relay retired; its keys are kept", "relay", name, "for", v.retention)
	return nil
}

// clock is the TPM's clock in ms: it advances while the TPM is powered,
// persists across power cycles and resets only with TPM2_Clear.
func (v *Vault) clock() (uint64, error) {
	rsp, err := tpm2.ReadClock{}.Execute(v.nv.t)
	if err != nil {
		return 0, fmt.Errorf("TPM2_ReadClock: %w", err)
	}
	return rsp.CurrentTime.ClockInfo.Clock, nil
}

// purgeLocked drops the retired relays whose retention is over. A clock
// that cannot be read purges nothing.
func (v *Vault) purgeLocked() {
	var retired []string
	for n, e := range v.relays {
		if e.RetiredAt != 0 {
			retired = append(retired, n)
		}
	}
	if len(retired) == 0 {
		return
	}
	now, err := v.clock()
	if err != nil {
		v.log.Warn("not purging retired relays", "err", err)
		return
	}
	for _, n := range retired {
		if e := v.relays[n]; now >= e.RetiredAt && time.Duration(now-e.RetiredAt)*time.Millisecond >= v.retention {
			delete(v.relays, n)
			v.markLocked()
			v.log.Info("retired relay's keys purged after the retention period", "relay", n, "retention", v.retention)
		}
	}
}

// Relays lists the active relays the vault holds keys for.
func (v *Vault) Relays() []string { return v.list(false) }

// Retired lists the retired relays whose keys the vault still holds.
func (v *Vault) Retired() []string { return v.list(true) }

func (v *Vault) list(retired bool) []string {
	v.mu.Lock()
	defer v.mu.Unlock()
	var out []string
	for _, n := range slices.Sorted(maps.Keys(v.relays)) {
		if (v.relays[n].RetiredAt != 0) == retired {
			out = append(out, n)
		}
	}
	return out
}

// Unsaved reports whether relay name's keys differ from the last saved
// bundle: a reboot now would lose them.
func (v *Vault) Unsaved(name string) bool {
	v.umu.Lock()
	defer v.umu.Unlock()
	return v.unsaved[name]
}

// markLocked recomputes unsaved; v.mu is held.
func (v *Vault) markLocked() {
	u := map[string]bool{}
	for n, e := range v.relays {
		if s := v.saved[n]; s == nil || !s.equal(e) {
			u[n] = true
		}
	}
	v.umu.Lock()
	v.unsaved = u
	v.umu.Unlock()
}

// Save persists the bundle if it changed since it was loaded or last
// saved: to NV when it fits, else to the mirror. The new bundle records
// the next rollback counter value; the save commits by raising the TPM's
// counter to it, after the header points at the new bundle (counter.go).
func (v *Vault) Save(ctx context.Context) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.purgeLocked()
	cur, err := encodeBundle(&Bundle{Relays: v.relays})
	if err != nil {
		return err
	}
	if bytes.Equal(cur, v.stored) {
		if v.uncommitted {
			return v.commit()
		}
		return nil
	}
	cs, err := v.prepareCounter()
	if err != nil {
		return fmt.Errorf("saving the key bundle: %w", err)
	}
	b := &Bundle{Version: v.version + 1, Counter: max(cs.value, v.counter) + 1, Relays: v.relays}
	env, err := seal(v.key, v.ekName, b)
	if err != nil {
		return err
	}
	hdr := header{location: locNV, slot: v.hdr.slot ^ 1, lock: v.hdr.lock, pcrMask: v.hdr.pcrMask, release: v.hdr.release,
		length: len(env), version: b.Version, sum: sha256.Sum256(env)}
	hdr.count, err = v.nv.writeData(hdr.slot, env)
	if errors.Is(err, ErrNVFull) {
		if v.mirror == nil {
			return fmt.Errorf("saving the key bundle (%d bytes): %w, and no mirror is configured", len(env), err)
		}
		v.log.Info("key bundle does not fit in TPM NV; storing its ciphertext on the config server", "bytes", len(env), "reason", err)
		err := v.mirror.Put(ctx, &api.KeyBundle{Bundle: env, Version: b.Version})
		if api.IsCode(err, api.CodeConflict) {
			// The mirror already has this version: an earlier save reached
			// it but not the NV header. Go past it.
			remote, gerr := v.mirrorGet(ctx)
			if gerr != nil || remote == nil {
				return fmt.Errorf("saving the key bundle to the mirror: %w", err)
			}
			b.Version = max(b.Version, remote.Version+1)
			if env, err = seal(v.key, v.ekName, b); err != nil {
				return err
			}
			hdr.version, hdr.length, hdr.sum = b.Version, len(env), sha256.Sum256(env)
			err = v.mirror.Put(ctx, &api.KeyBundle{Bundle: env, Version: b.Version})
		}
		if err != nil {
			return fmt.Errorf("saving the key bundle to the mirror: %w", err)
		}
		hdr.location, hdr.count = locMirror, 0
	} else if err != nil {
		return fmt.Errorf("saving the key bundle to NV: %w", err)
	}
	if err := v.step("bundle written"); err != nil {
		return err
	}
	if err := v.nv.writeHeader(&hdr); err != nil {
		return err
	}
	v.hdr, v.version, v.stored, v.counter, v.uncommitted = hdr, b.Version, cur, b.Counter, true
	v.saved = maps.Clone(v.relays)
	v.markLocked()
	if err := v.step("header written"); err != nil {
		return err
	}
	if err := v.raiseCounter(cs, b.Counter); err != nil {
		return fmt.Errorf("key bundle version %d written but not committed (the next save or boot completes it): %w", v.version, err)
	}
	v.uncommitted = false
	if err := v.step("counter raised"); err != nil {
		return err
	}
	if err := v.nv.freeExcept(hdr.slot, hdr.count); err != nil {
		v.log.Warn("freeing unused vault NV indices", "err", err)
	}
	v.log.Info("key bundle saved", "version", b.Version, "counter", b.Counter, "relays", len(v.relays), "bytes", len(env),
		"in", map[byte]string{locNV: "TPM NV", locMirror: "config server mirror"}[hdr.location])
	return nil
}

// commit raises the TPM's rollback counter to the value the stored bundle
// records, for a save whose commit failed.
func (v *Vault) commit() error {
	cs, err := readCounter(v.nv.t)
	if err == nil {
		err = v.raiseCounter(cs, v.counter)
	}
	if err != nil {
		return fmt.Errorf("key bundle version %d written but not committed (the next save or boot completes it): %w", v.version, err)
	}
	v.uncommitted = false
	return nil
}
