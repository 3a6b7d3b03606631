// Package atomicfile replaces files so that a reader sees the old content
// or the new, never a mix, and a failed write leaves the old file: the
// data goes to a temporary file beside the target ("."+name+".*"), which
// gets its mode (and owner) and is renamed over the target.
package atomicfile

import (
	"os"
	"path/filepath"
)

// Write replaces path with data, mode perm.
func Write(path string, data []byte, perm os.FileMode) error {
	return write(path, data, perm, false, 0, 0)
}

// WriteOwned replaces path with data, mode perm, owned by uid:gid.
func WriteOwned(path string, data []byte, perm os.FileMode, uid, gid int) error {
	return write(path, data, perm, true, uid, gid)
}

func write(path string, data []byte, perm os.FileMode, chown bool, uid, gid int) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.Write(data)
	if err == nil {
		err = tmp.Chmod(perm)
	}
	if err == nil && chown {
		err = tmp.Chown(uid, gid)
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
