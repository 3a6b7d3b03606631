package tor

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"patela/internal/api"
	"patela/internal/atomicfile"
	"patela/internal/familykey"
	"patela/internal/torrc"
)

// Features are what this agent does beyond the first protocol, for
// api.Specs.Features: it installs the family keys a config carries
// (familyKeys below).
var Features = []string{api.FeatureFamilyKeys}

// FamilyError is a relay whose FamilyId has no matching family key: tor
// would exit at start ("No key was found for listed FamilyID"), so the
// relay is refused before tor sees it, never left in a crash loop.
type FamilyError struct {
	Relay string
	Msg   string
}

func (e *FamilyError) Error() string { return "relay " + e.Relay + ": " + e.Msg }

// familyKeys puts the family keys spec carries into the relay's key
// directory, named <name>.secret_family_key, mode 0600, owned by the
// relay, after checking that each key is the key of the id it comes with
// and that every FamilyId of the torrc tor will run has its key. Files
// are written only when they differ, so an unchanged key does not look
// like a new one to the key poll. It returns the file names, for
// pruneFamilyKeys once tor has the torrc.
func familyKeys(spec Spec, p relayPaths, cfg *torrc.Config) (map[string]bool, error) {
	ids := map[string]bool{}
	want := map[string][]byte{}
	for _, k := range spec.Family {
		if !familykey.ValidName(k.Name) {
			return nil, &FamilyError{spec.Name, fmt.Sprintf("family key name %q cannot name a key file", k.Name)}
		}
		if id, err := familykey.ID(k.Secret); err != nil || id != k.ID {
			return nil, &FamilyError{spec.Name, fmt.Sprintf("family key %s: %v", k.Name, errors.Join(err, familykey.ErrMismatch))}
		}
		ids[k.ID] = true
		want[k.Name+familykey.FileSuffix] = familykey.File(k.Secret)
	}
	for _, id := range cfg.Values("FamilyId") {
		id = strings.TrimSpace(id)
		if id == "*" && len(ids) > 0 || ids[id] {
			continue
		}
		return nil, &FamilyError{spec.Name, fmt.Sprintf("FamilyId %s has no family key (the config carries none for it); "+
			"tor would exit without it, so the relay is not started with this configuration", id)}
	}
	dir := filepath.Join(p.data, "keys")
	if err := keysDir(dir, spec.UID); err != nil {
		return nil, fmt.Errorf("relay %s: %w", spec.Name, err)
	}
	names := map[string]bool{}
	for name, data := range want {
		names[name] = true
		path := filepath.Join(dir, name)
		if have, err := readSmall(path, len(data)); err == nil && bytes.Equal(have, data) {
			continue
		}
		if err := atomicfile.WriteOwned(path, data, 0o600, spec.UID, spec.UID); err != nil {
			return nil, fmt.Errorf("relay %s: family key: %w", spec.Name, err)
		}
	}
	return names, nil
}

// pruneFamilyKeys removes the family keys of the relay's key directory
// that keep are not (a rotated key, or one the vault restored that the
// config no longer names), once tor runs a torrc that does not name
// them: before, a restart of the old configuration would still need
// them. The vault then captures what is left.
func pruneFamilyKeys(p relayPaths, keep map[string]bool) error {
	dir := filepath.Join(p.data, "keys")
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range ents {
		if strings.HasSuffix(e.Name(), familykey.FileSuffix) && !keep[e.Name()] {
			errs = append(errs, os.Remove(filepath.Join(dir, e.Name())))
		}
	}
	return errors.Join(errs...)
}

// keysDir makes DataDirectory/keys a directory of the relay's, 0700. The
// relay owns DataDirectory: a symlink there is refused, not followed.
func keysDir(dir string, uid int) error {
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	fi, err := os.Lstat(dir)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s: not a directory", dir)
	}
	if err := os.Lchown(dir, uid, uid); err != nil {
		return err
	}
	return os.Chmod(dir, 0o700)
}

// readSmall reads a regular file of at most n bytes without following a
// symlink (the relay owns the directory).
func readSmall(path string, n int) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if fi, err := f.Stat(); err != nil || !fi.Mode().IsRegular() || fi.Size() != int64(n) {
		return nil, errors.New("not the expected file")
	}
	return io.ReadAll(io.LimitReader(f, int64(n)))
}
