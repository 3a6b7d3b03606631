package tor

import (
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// Keys is where relay keys live between boots (*vault.Vault). It holds
// each relay's ed25519 master key; tor runs with OfflineMasterKey and gets
// only signing keys it issues.
type Keys interface {
	// Ensure makes the identity of a relay it does not know.
	Ensure(name string) (created bool, err error)
	Restore(name, dataDir string, uid, gid int) (bool, error)
	// Issue writes a signing key and certificate valid until expires.
	Issue(name, dataDir string, uid, gid int, expires time.Time) (time.Time, error)
	Capture(name, dataDir string) (bool, error)
	// Retire keeps the keys of a relay that left the config for the
	// node's retention period; Restore brings them back.
	Retire(name string) error
	// Unsaved: the relay's keys are not in the last saved bundle.
	Unsaved(name string) bool
	Save(ctx context.Context) error
}

// keyState fingerprints DataDirectory/keys by name, size and mtime: cheap
// to poll, and it changes whenever tor writes a key (tor writes each key
// file anew and renames it into place).
func keyState(dataDir string) (string, error) {
	ents, err := os.ReadDir(filepath.Join(dataDir, "keys"))
	if os.IsNotExist(err) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	h := sha256.New()
	names := make([]string, 0, len(ents))
	for _, e := range ents {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	for _, n := range names {
		fi, err := os.Lstat(filepath.Join(dataDir, "keys", n))
		if err != nil {
			return "", err
		}
		fmt.Fprintf(h, "%s %d %d\n", n, fi.Size(), fi.ModTime().UnixNano())
	}
	return fmt.Sprintf("%x", h.Sum(nil)), nil
}

// fingerprints reads what tor writes once its keys exist: the RSA
// fingerprint (hex) and the ed25519 identity (base64). Missing files give
// empty strings.
func fingerprints(dataDir string) (rsa, ed string) {
	read := func(name string) string {
		b, err := os.ReadFile(filepath.Join(dataDir, name))
		if err != nil {
			return ""
		}
		// "<nickname> <id>\n"
		f := strings.Fields(string(b))
		if len(f) != 2 {
			return ""
		}
		return f[1]
	}
	return read("fingerprint"), read("fingerprint-ed25519")
}
