package vault

import (
	"bytes"
	"crypto/ecdh"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"patela/init/edcert"
	"patela/internal/atomicfile"
)

// tor's key files (DataDirectory/keys). The binary ones start with a
// 32-byte, NUL-padded text header.
const (
	fileEd25519Master = "ed25519_master_id_secret_key"
	fileRSAIdentity   = "secret_id_key"
	fileOnion         = "secret_onion_key"
	fileNtor          = "secret_onion_key_ntor"
	fileNtorOld       = "secret_onion_key_ntor.old"
	familySuffix      = ".secret_family_key"

	hdrEd25519Master = "== ed25519v1-secret: type0 =="
	hdrNtor          = "== c25519v1: onion =="
	hdrFamily        = "== ed25519v1-secret: fmly-id =="
	headerSize       = 32
	rsaExponent      = 65537
	maxKeyFile       = 16 << 10
)

// Files tor derives from the master secret. A restore removes them (the
// public key is written anew, the signing key issued anew), so tor cannot
// pair old ones with another master.
var derivedFiles = []string{edcert.FileMasterPublic, edcert.FileSigningKey, edcert.FileSigningCert}

// issueSigning writes a new signing key and certificate for e, valid
// until expires, into keysDir (as restoreEntry writes).
func issueSigning(e *Entry, keysDir string, uid, gid int, expires time.Time) (time.Time, error) {
	s, err := edcert.Issue(e.Ed25519Master, expires)
	if err != nil {
		return time.Time{}, err
	}
	defer clear(s.SecretFile)
	for name, data := range map[string][]byte{edcert.FileSigningKey: s.SecretFile, edcert.FileSigningCert: s.CertFile,
		edcert.FileMasterPublic: s.PublicFile} {
		if err := atomicfile.WriteOwned(filepath.Join(keysDir, name), data, 0o600, uid, gid); err != nil {
			return time.Time{}, err
		}
	}
	return s.Expires, nil
}

// newEntry makes a new relay's long-term identity: an ed25519 master key
// and an RSA-1024 identity key (tor's sizes), so the identity exists, and
// is saved, before tor first runs.
func newEntry() (*Entry, error) {
	master, err := edcert.NewSecret()
	if err != nil {
		return nil, err
	}
	k, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		return nil, err
	}
	pq, err := rsaToPQ("new RSA identity", pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(k)}))
	if err != nil {
		return nil, err
	}
	e := &Entry{Ed25519Master: master, RSAIdentity: pq}
	return e, e.check()
}

// readKeyFile reads a key file without following symlinks: the directory
// belongs to the relay's user.
func readKeyFile(path string) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: not a regular file", path)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxKeyFile+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxKeyFile {
		return nil, fmt.Errorf("%s: larger than %d bytes", path, maxKeyFile)
	}
	return data, nil
}

func taggedFile(header string, key []byte) []byte {
	out := make([]byte, headerSize, headerSize+len(key))
	copy(out, header)
	return append(out, key...)
}

// untag checks the header of a tagged file and returns its payload.
func untag(path string, data []byte, header string, size int) ([]byte, error) {
	if len(data) != headerSize+size {
		return nil, fmt.Errorf("%s: %d bytes, want %d", path, len(data), headerSize+size)
	}
	h := data[:headerSize]
	if !bytes.HasPrefix(h, []byte(header)) || strings.Trim(string(h[len(header):]), "\x00") != "" {
		return nil, fmt.Errorf("%s: unexpected header %q", path, bytes.TrimRight(h, "\x00"))
	}
	return bytes.Clone(data[headerSize:]), nil
}

// ErrNoKeys means tor has not (yet) written the relay's identity keys.
var ErrNoKeys = errors.New("tor has not written the identity keys yet")

// captureEntry reads a relay's long-term keys from its key directory.
func captureEntry(keysDir string) (*Entry, error) {
	idPath := filepath.Join(keysDir, fileRSAIdentity)
	id, err := readKeyFile(idPath)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, ErrNoKeys
	}
	if err != nil {
		return nil, err
	}
	e := &Entry{}
	if e.RSAIdentity, err = rsaToPQ(idPath, id); err != nil {
		return nil, err
	}
	// The keys tor may not have written: with OfflineMasterKey tor never
	// writes the master secret (the vault holds it; a key set tor made
	// itself, in tests or on older nodes, has it); the TAP and ntor onion
	// keys are medium-term (rotated every few weeks; of the TAP key the
	// .old file is not kept) and absent until tor made them.
	for _, f := range []struct {
		name  string
		dst   *[]byte
		parse func(path string, data []byte) ([]byte, error)
	}{
		{fileEd25519Master, &e.Ed25519Master, func(path string, data []byte) ([]byte, error) {
			return untag(path, data, hdrEd25519Master, ed25519SecretSize)
		}},
		{fileOnion, &e.Onion, rsaToPQ},
		{fileNtor, &e.Ntor, ntorSecret},
		{fileNtorOld, &e.NtorOld, ntorSecret},
	} {
		path := filepath.Join(keysDir, f.name)
		data, err := readKeyFile(path)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		if *f.dst, err = f.parse(path, data); err != nil {
			return nil, err
		}
	}
	ents, err := os.ReadDir(keysDir)
	if err != nil {
		return nil, err
	}
	for _, de := range ents {
		name, ok := strings.CutSuffix(de.Name(), familySuffix)
		if !ok {
			continue
		}
		if !validName(name) {
			return nil, fmt.Errorf("family key file %q: unsupported name", de.Name())
		}
		path := filepath.Join(keysDir, de.Name())
		data, err := readKeyFile(path)
		if err != nil {
			return nil, err
		}
		secret, err := untag(path, data, hdrFamily, familySecretSize)
		if err != nil {
			return nil, err
		}
		e.Family = append(e.Family, FamilyKey{Name: name, Secret: secret})
	}
	slices.SortFunc(e.Family, func(a, b FamilyKey) int { return strings.Compare(a.Name, b.Name) })
	return e, nil
}

// ntorSecret returns the curve25519 secret of an ntor key file after
// checking the public half stored beside it derives from it.
func ntorSecret(path string, data []byte) ([]byte, error) {
	kp, err := untag(path, data, hdrNtor, 2*ntorSecretSize)
	if err != nil {
		return nil, err
	}
	secret, pub := kp[:ntorSecretSize], kp[ntorSecretSize:]
	derived, err := ntorPublic(secret)
	if err != nil || !bytes.Equal(derived, pub) {
		return nil, fmt.Errorf("%s: public key does not match the secret", path)
	}
	return secret, nil
}

func ntorPublic(secret []byte) ([]byte, error) {
	k, err := ecdh.X25519().NewPrivateKey(secret)
	if err != nil {
		return nil, err
	}
	return k.PublicKey().Bytes(), nil
}

// rsaToPQ reduces tor's PKCS#1 identity key to p‖q, after checking the key
// rebuilt from them is the same key.
func rsaToPQ(path string, pemData []byte) ([]byte, error) {
	blk, rest := pem.Decode(pemData)
	if blk == nil || blk.Type != "RSA PRIVATE KEY" || len(bytes.Trim(rest, " \t\r\n\x00")) != 0 {
		return nil, fmt.Errorf("%s: not one PEM RSA PRIVATE KEY", path)
	}
	k, err := x509.ParsePKCS1PrivateKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(k.Primes) != 2 || k.E != rsaExponent {
		return nil, fmt.Errorf("%s: not a two-prime RSA key with e=%d", path, rsaExponent)
	}
	p, q := k.Primes[0].Bytes(), k.Primes[1].Bytes()
	w := max(len(p), len(q))
	pq := make([]byte, 2*w)
	copy(pq[w-len(p):w], p)
	copy(pq[2*w-len(q):], q)
	rebuilt, err := rsaFromPQ(pq)
	if err != nil || rebuilt.N.Cmp(k.N) != 0 {
		return nil, fmt.Errorf("%s: key cannot be rebuilt from its primes", path)
	}
	return pq, nil
}

// rsaFromPQ rebuilds an RSA key (e = 65537) from p‖q.
func rsaFromPQ(pq []byte) (*rsa.PrivateKey, error) {
	if len(pq) == 0 || len(pq)%2 != 0 {
		return nil, errors.New("bad p‖q length")
	}
	w := len(pq) / 2
	p, q := new(big.Int).SetBytes(pq[:w]), new(big.Int).SetBytes(pq[w:])
	one := big.NewInt(1)
	phi := new(big.Int).Mul(new(big.Int).Sub(p, one), new(big.Int).Sub(q, one))
	e := big.NewInt(rsaExponent)
	d := new(big.Int).ModInverse(e, phi)
	if d == nil {
		return nil, errors.New("e is not invertible mod φ")
	}
	k := &rsa.PrivateKey{
		PublicKey: rsa.PublicKey{N: new(big.Int).Mul(p, q), E: rsaExponent},
		D:         d,
		Primes:    []*big.Int{p, q},
	}
	k.Precompute()
	if err := k.Validate(); err != nil {
		return nil, err
	}
	return k, nil
}

// keyFiles renders an entry as tor's files, by file name.
func keyFiles(e *Entry) (map[string][]byte, error) {
	k, err := rsaFromPQ(e.RSAIdentity)
	if err != nil {
		return nil, fmt.Errorf("RSA identity: %w", err)
	}
	pub, err := edcert.Public(e.Ed25519Master)
	if err != nil {
		return nil, err
	}
	files := map[string][]byte{
		edcert.FileMasterPublic: edcert.Tagged(edcert.HeaderPublic, pub),
		fileRSAIdentity:         pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(k)}),
	}
	if e.Onion != nil {
		onion, err := rsaFromPQ(e.Onion)
		if err != nil {
			return nil, fmt.Errorf("TAP onion key: %w", err)
		}
		files[fileOnion] = pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(onion)})
	}
	for name, s := range map[string][]byte{fileNtor: e.Ntor, fileNtorOld: e.NtorOld} {
		if s == nil {
			continue
		}
		pub, err := ntorPublic(s)
		if err != nil {
			return nil, err
		}
		files[name] = taggedFile(hdrNtor, append(bytes.Clone(s), pub...))
	}
	for _, f := range e.Family {
		files[f.Name+familySuffix] = taggedFile(hdrFamily, f.Secret)
	}
	return files, nil
}

// restoreEntry writes an entry's files into dataDir/keys, mode 0600 and
// owned by uid:gid, directories 0700: every long-term key but the ed25519
// master secret, which tor (OfflineMasterKey) never gets; its public key
// instead, and the signing key and certificate come from issueSigning. A
// master secret found there (an older node's layout) is removed. Each
// file is written to a temporary name and renamed, so a symlink planted
// by the relay is replaced, never followed.
func restoreEntry(e *Entry, dataDir string, uid, gid int) error {
	files, err := keyFiles(e)
	if err != nil {
		return err
	}
	keysDir := filepath.Join(dataDir, "keys")
	for _, d := range []string{dataDir, keysDir} {
		if err := ownedDir(d, uid, gid); err != nil {
			return err
		}
	}
	for _, f := range append([]string{fileEd25519Master}, derivedFiles...) {
		if err := os.Remove(filepath.Join(keysDir, f)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	for _, name := range slices.Sorted(maps.Keys(files)) {
		if err := atomicfile.WriteOwned(filepath.Join(keysDir, name), files[name], 0o600, uid, gid); err != nil {
			return err
		}
	}
	return nil
}

func ownedDir(d string, uid, gid int) error {
	if err := os.Mkdir(d, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	fi, err := os.Lstat(d)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s: not a directory", d)
	}
	if err := os.Lchown(d, uid, gid); err != nil {
		return err
	}
	// Private to the relay; a setgid bit (Debian's 02700 DataDirectory)
	// stays.
	return os.Chmod(d, 0o700|fi.Mode()&fs.ModeSetgid)
}
