package vault

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"slices"
)

// Bundle format v1 (plaintext; big-endian):
//
//	"PTLK" | format u8 = 1 | version u64 | relays u16 |
//	per relay, sorted by name: name len u8 | name | fields u8 |
//	  per field: tag u8 | len u16 | data
//
// Fields: ed25519 master secret (64 B, tor's expanded key), RSA identity
// p‖q (two equal-width halves), ntor onion secret (32 B, current and .old),
// family key (name len u8 | name | 64 B secret), retired-at (u64: the TPM
// clock in ms when the relay left the config; absent while it is active,
// so an older agent still reads a bundle without retired relays), TAP
// onion key p‖q (RSA-1024, tor's secret_onion_key: kept so a reboot does
// not make tor generate one, seconds of CPU under emulation; an agent
// older than this field refuses a bundle that has it). Public
// keys, the signing key
// and its certificate are not kept: tor derives them from these.
//
// Tags from tagOptional up are optional: a field a later agent adds there
// holds only what tor can make again, so an agent that does not know its
// tag skips it (and drops it at its next save) instead of refusing the
// bundle, and booting an older image stays possible. A field whose loss
// would lose a key gets a tag below tagOptional, which older agents refuse.
//
// Envelope v2 (what NV or the mirror holds; written since the rollback
// counter):
//
//	"PTLE" | format u8 = 2 | version u64 | counter u64 | nonce [12] | AES-256-GCM(plaintext)
//
// with AAD = "patela-relay-bundle-v2" ‖ EK name ‖ version u64 ‖ counter u64,
// so a bundle opens only with this TPM's key, for this EK, at the version
// and rollback counter value (counter.go) it claims. Envelope v1, still
// read, has no counter:
//
//	"PTLE" | format u8 = 1 | version u64 | nonce [12] | AES-256-GCM(plaintext)
//
// with AAD = "patela-relay-bundle-v1" ‖ EK name ‖ version u64.
// GCM authenticates everything, so no separate checksum.
const (
	bundleMagic   = "PTLK"
	envelopeMagic = "PTLE"
	formatV1      = 1
	envelopeV2    = 2
	aadLabel      = "patela-relay-bundle-v1"
	aadLabelV2    = "patela-relay-bundle-v2"
	nonceSize     = 12
	envHeader     = 4 + 1 + 8
	envHeaderV2   = envHeader + 8
	maxName       = 64
)

const (
	tagEd25519Master = 1
	tagRSAIdentity   = 2
	tagNtor          = 3
	tagNtorOld       = 4
	tagFamily        = 5
	tagRetired       = 6
	tagOnion         = 7

	tagOptional = 128 // first optional tag: unknown ones are skipped
)

const (
	ed25519SecretSize = 64
	ntorSecretSize    = 32
	familySecretSize  = 64
)

// Entry is one relay's long-term keys.
type Entry struct {
	Ed25519Master []byte      // 64 B expanded secret key
	RSAIdentity   []byte      // p‖q
	Ntor          []byte      // 32 B curve25519 secret, may be nil
	NtorOld       []byte      // 32 B, may be nil
	Onion         []byte      // TAP onion key p‖q, may be nil
	Family        []FamilyKey // sorted by name
	// RetiredAt is the TPM clock (ms) when the relay left the config; 0
	// while it is active. Its keys are kept for the vault's retention
	// period from then, and restored if the relay comes back.
	RetiredAt uint64
}

// FamilyKey is a happy-family secret key, <Name>.secret_family_key.
type FamilyKey struct {
	Name   string
	Secret []byte // 64 B
}

// Bundle is every relay's keys, at one version.
type Bundle struct {
	Version uint64
	// Counter is the rollback counter value that commits this bundle
	// (envelope v2); counted is false for a v1 envelope, which has none.
	Counter uint64
	counted bool
	Relays  map[string]*Entry
}

func validName(s string) bool {
	if s == "" || len(s) > maxName || s == "." || s == ".." {
		return false
	}
	for _, c := range []byte(s) {
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.'
		if !ok {
			return false
		}
	}
	return true
}

// check reports what is wrong with an entry, if anything.
func (e *Entry) check() error {
	if len(e.Ed25519Master) != ed25519SecretSize {
		return fmt.Errorf("ed25519 master secret is %d bytes, want %d", len(e.Ed25519Master), ed25519SecretSize)
	}
	if n := len(e.RSAIdentity); n == 0 || n%2 != 0 || n > 1024 {
		return fmt.Errorf("RSA identity p‖q is %d bytes", n)
	}
	if n := len(e.Onion); e.Onion != nil && (n == 0 || n%2 != 0 || n > 1024) {
		return fmt.Errorf("TAP onion key p‖q is %d bytes", n)
	}
	for _, k := range [][]byte{e.Ntor, e.NtorOld} {
		if k != nil && len(k) != ntorSecretSize {
			return fmt.Errorf("ntor secret is %d bytes, want %d", len(k), ntorSecretSize)
		}
	}
	for i, f := range e.Family {
		if !validName(f.Name) {
			return fmt.Errorf("bad family key name %q", f.Name)
		}
		if len(f.Secret) != familySecretSize {
			return fmt.Errorf("family key %s is %d bytes", f.Name, len(f.Secret))
		}
		if i > 0 && e.Family[i-1].Name >= f.Name {
			return fmt.Errorf("family keys not sorted or duplicated at %q", f.Name)
		}
	}
	return nil
}

func (e *Entry) equal(o *Entry) bool {
	if !bytes.Equal(e.Ed25519Master, o.Ed25519Master) || !bytes.Equal(e.RSAIdentity, o.RSAIdentity) ||
		!bytes.Equal(e.Ntor, o.Ntor) || !bytes.Equal(e.NtorOld, o.NtorOld) || len(e.Family) != len(o.Family) ||
		e.RetiredAt != o.RetiredAt || !bytes.Equal(e.Onion, o.Onion) {
		return false
	}
	for i := range e.Family {
		if e.Family[i].Name != o.Family[i].Name || !bytes.Equal(e.Family[i].Secret, o.Family[i].Secret) {
			return false
		}
	}
	return true
}

// encodeBundle serializes b; entries must be valid.
func encodeBundle(b *Bundle) ([]byte, error) {
	if len(b.Relays) > 0xFFFF {
		return nil, errors.New("too many relays")
	}
	out := []byte(bundleMagic)
	out = append(out, formatV1)
	out = binary.BigEndian.AppendUint64(out, b.Version)
	out = binary.BigEndian.AppendUint16(out, uint16(len(b.Relays)))
	for _, name := range slices.Sorted(maps.Keys(b.Relays)) {
		e := b.Relays[name]
		if !validName(name) {
			return nil, fmt.Errorf("bad relay name %q", name)
		}
		if err := e.check(); err != nil {
			return nil, fmt.Errorf("relay %s: %w", name, err)
		}
		out = append(out, byte(len(name)))
		out = append(out, name...)
		var fields [][]byte
		field := func(tag byte, data []byte) {
			f := []byte{tag}
			f = binary.BigEndian.AppendUint16(f, uint16(len(data)))
			fields = append(fields, append(f, data...))
		}
		field(tagEd25519Master, e.Ed25519Master)
		field(tagRSAIdentity, e.RSAIdentity)
		if e.Ntor != nil {
			field(tagNtor, e.Ntor)
		}
		if e.NtorOld != nil {
			field(tagNtorOld, e.NtorOld)
		}
		for _, f := range e.Family {
			field(tagFamily, append(append([]byte{byte(len(f.Name))}, f.Name...), f.Secret...))
		}
		if e.RetiredAt != 0 {
			field(tagRetired, binary.BigEndian.AppendUint64(nil, e.RetiredAt))
		}
		if e.Onion != nil {
			field(tagOnion, e.Onion)
		}
		if len(fields) > 0xFF {
			return nil, fmt.Errorf("relay %s: too many keys", name)
		}
		out = append(out, byte(len(fields)))
		for _, f := range fields {
			out = append(out, f...)
		}
	}
	return out, nil
}

// reader consumes a byte slice; the first short read sets err.
type reader struct {
	b   []byte
	err error
}

func (r *reader) take(n int) []byte {
	if r.err != nil {
		return nil
	}
	if n > len(r.b) {
		r.err = errors.New("truncated")
		return nil
	}
	v := r.b[:n:n]
	r.b = r.b[n:]
	return v
}

func (r *reader) u8() int {
	v := r.take(1)
	if v == nil {
		return 0
	}
	return int(v[0])
}

func (r *reader) u16() int {
	v := r.take(2)
	if v == nil {
		return 0
	}
	return int(binary.BigEndian.Uint16(v))
}

func (r *reader) u64() uint64 {
	v := r.take(8)
	if v == nil {
		return 0
	}
	return binary.BigEndian.Uint64(v)
}

// decodeBundle parses a plaintext bundle strictly: every byte accounted
// for, every key the right size, names valid, sorted and unique.
func decodeBundle(data []byte) (*Bundle, error) {
	r := &reader{b: data}
	if string(r.take(4)) != bundleMagic {
		return nil, errors.New("bundle: bad magic")
	}
	if f := r.u8(); f != formatV1 {
		return nil, fmt.Errorf("bundle: unknown format %d", f)
	}
	b := &Bundle{Version: r.u64(), Relays: map[string]*Entry{}}
	n := r.u16()
	prev := ""
	for i := 0; i < n && r.err == nil; i++ {
		name := string(r.take(r.u8()))
		if r.err != nil {
			break
		}
		if !validName(name) || name <= prev {
			return nil, fmt.Errorf("bundle: relay %d: bad, unsorted or duplicate name %q", i, name)
		}
		prev = name
		e := &Entry{}
		nf := r.u8()
		prevTag := 0
		for j := 0; j < nf && r.err == nil; j++ {
			tag := r.u8()
			data := bytes.Clone(r.take(r.u16())) // the caller wipes its buffer
			if r.err != nil {
				break
			}
			// Fields come in tag order, each once (family keys excepted),
			// so every bundle has exactly one encoding.
			if tag < prevTag || tag == prevTag && tag != tagFamily {
				return nil, fmt.Errorf("bundle: relay %s: field %d out of order or repeated", name, tag)
			}
			prevTag = tag
			switch tag {
			case tagEd25519Master:
				e.Ed25519Master = data
			case tagRSAIdentity:
				e.RSAIdentity = data
			case tagNtor:
				e.Ntor = data
			case tagNtorOld:
				e.NtorOld = data
			case tagFamily:
				fr := &reader{b: data}
				fname := string(fr.take(fr.u8()))
				secret := fr.take(familySecretSize)
				if fr.err != nil || len(fr.b) != 0 {
					return nil, fmt.Errorf("bundle: relay %s: malformed family key", name)
				}
				e.Family = append(e.Family, FamilyKey{Name: fname, Secret: secret})
			case tagRetired:
				if len(data) != 8 || binary.BigEndian.Uint64(data) == 0 {
					return nil, fmt.Errorf("bundle: relay %s: malformed retired-at", name)
				}
				e.RetiredAt = binary.BigEndian.Uint64(data)
			case tagOnion:
				e.Onion = data
			default:
				if tag >= tagOptional {
					clear(data) // not ours to keep: a later agent's, skipped
					continue
				}
				return nil, fmt.Errorf("bundle: relay %s: unknown field %d", name, tag)
			}
		}
		if r.err != nil {
			break
		}
		if err := e.check(); err != nil {
			return nil, fmt.Errorf("bundle: relay %s: %w", name, err)
		}
		b.Relays[name] = e
	}
	if r.err != nil {
		return nil, fmt.Errorf("bundle: %w", r.err)
	}
	if len(r.b) != 0 {
		return nil, fmt.Errorf("bundle: %d bytes after the last relay", len(r.b))
	}
	return b, nil
}

func aad(ekName []byte, version uint64) []byte {
	a := append([]byte(aadLabel), ekName...)
	return binary.BigEndian.AppendUint64(a, version)
}

func aadV2(ekName []byte, version, counter uint64) []byte {
	a := append([]byte(aadLabelV2), ekName...)
	a = binary.BigEndian.AppendUint64(a, version)
	return binary.BigEndian.AppendUint64(a, counter)
}

func newGCM(key []byte) (cipher.AEAD, error) {
	blk, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(blk)
}

// seal encrypts b under key for this EK, in envelope v2.
func seal(key, ekName []byte, b *Bundle) ([]byte, error) {
	return sealFormat(key, ekName, b, envelopeV2)
}

// sealFormat writes envelope v2, or v1 (tests of old vaults only).
func sealFormat(key, ekName []byte, b *Bundle, format byte) ([]byte, error) {
	pt, err := encodeBundle(b)
	if err != nil {
		return nil, err
	}
	defer clear(pt)
	g, err := newGCM(key)
	if err != nil {
		return nil, err
	}
	out := []byte(envelopeMagic)
	out = append(out, format)
	out = binary.BigEndian.AppendUint64(out, b.Version)
	ad := aad(ekName, b.Version)
	if format == envelopeV2 {
		out = binary.BigEndian.AppendUint64(out, b.Counter)
		ad = aadV2(ekName, b.Version, b.Counter)
	}
	nonce := make([]byte, nonceSize)
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	out = append(out, nonce...)
	return g.Seal(out, nonce, pt, ad), nil
}

// ErrUndecryptable means the bundle is not this TPM's, was altered, or is
// not a bundle at all. It is never silently replaced.
var ErrUndecryptable = errors.New("key bundle cannot be decrypted with this TPM's vault key (another TPM's bundle, or corrupted)")

// envelopeHeader reads what an envelope claims: its version, its counter
// (v2), the associated data and where the nonce starts.
func envelopeHeader(ekName, env []byte) (version, counter uint64, counted bool, ad []byte, nonceAt int, err error) {
	if len(env) < envHeader+nonceSize || string(env[:4]) != envelopeMagic {
		return 0, 0, false, nil, 0, fmt.Errorf("%w: not a bundle envelope", ErrUndecryptable)
	}
	version = binary.BigEndian.Uint64(env[5:13])
	switch env[4] {
	case formatV1:
		return version, 0, false, aad(ekName, version), envHeader, nil
	case envelopeV2:
		if len(env) < envHeaderV2+nonceSize {
			return 0, 0, false, nil, 0, fmt.Errorf("%w: not a bundle envelope", ErrUndecryptable)
		}
		counter = binary.BigEndian.Uint64(env[13:21])
		return version, counter, true, aadV2(ekName, version, counter), envHeaderV2, nil
	}
	return 0, 0, false, nil, 0, fmt.Errorf("%w: unknown envelope format %d", ErrUndecryptable, env[4])
}

// open decrypts and decodes an envelope.
func open(key, ekName, env []byte) (*Bundle, error) {
	version, counter, counted, ad, at, err := envelopeHeader(ekName, env)
	if err != nil {
		return nil, err
	}
	g, err := newGCM(key)
	if err != nil {
		return nil, err
	}
	nonce := env[at : at+nonceSize]
	pt, err := g.Open(nil, nonce, env[at+nonceSize:], ad)
	if err != nil {
		return nil, ErrUndecryptable
	}
	defer clear(pt)
	b, err := decodeBundle(pt)
	if err != nil {
		return nil, fmt.Errorf("decrypted bundle is malformed: %w", err)
	}
	if b.Version != version {
		return nil, fmt.Errorf("bundle claims version %d inside, %d outside", b.Version, version)
	}
	b.Counter, b.counted = counter, counted
	return b, nil
}
