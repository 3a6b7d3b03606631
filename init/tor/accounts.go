package tor

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"patela/internal/atomicfile"
)

// Accounts makes the system user and group a relay runs as.
//
// tor is started with the relay's uid and gid already set (see proc.go)
// and its torrc has no User line, so tor itself never calls getpwnam: the
// entries exist so that files, processes and nftables rules show a name,
// and so the uid is never handed to anything else. Hence one
// implementation, Files, serves PID 1 (Root "/", where /etc is a tmpfs
// copy) and the tests (Root in a temporary directory) alike; no test has
// to touch the host's /etc/passwd.
type Accounts interface {
	// Ensure makes user and group name with the given ids, replacing an
	// entry of the same name with other ids.
	Ensure(name string, uid, gid int) error
	// Remove deletes the user and group name; absent entries are fine.
	Remove(name string) error
}

// Files keeps accounts in Root/etc/passwd and Root/etc/group.
type Files struct {
	Root string
}

// Ensure implements Accounts.
func (f Files) Ensure(name string, uid, gid int) error {
	if err := checkAccountName(name); err != nil {
		return err
	}
	pw := fmt.Sprintf("%s:x:%d:%d:tor relay:/nonexistent:/usr/sbin/nologin", name, uid, gid)
	if err := f.edit("passwd", name, 2, uid, pw); err != nil {
		return err
	}
	return f.edit("group", name, 2, gid, fmt.Sprintf("%s:x:%d:", name, gid))
}

// Remove implements Accounts.
func (f Files) Remove(name string) error {
	if err := checkAccountName(name); err != nil {
		return err
	}
	if err := f.edit("passwd", name, 2, -1, ""); err != nil {
		return err
	}
	return f.edit("group", name, 2, -1, "")
}

// edit rewrites Root/etc/file with the entry for name replaced by entry
// (dropped if entry is empty). It refuses an id (field idField) that
// another name already holds. The file is replaced atomically.
func (f Files) edit(file, name string, idField, id int, entry string) error {
	path := filepath.Join(f.Root, "etc", file)
	old, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		return err
	}
	var out bytes.Buffer
	for _, line := range strings.SplitAfter(string(old), "\n") {
		if line == "" {
			continue
		}
		fields := strings.Split(strings.TrimRight(line, "\n"), ":")
		if fields[0] == name {
			continue
		}
		if id >= 0 && len(fields) > idField && fields[idField] == strconv.Itoa(id) {
			return fmt.Errorf("%s: id %d already belongs to %q, not %q", path, id, fields[0], name)
		}
		out.WriteString(line)
		if !strings.HasSuffix(line, "\n") {
			out.WriteByte('\n')
		}
	}
	if entry != "" {
		out.WriteString(entry + "\n")
	}
	if bytes.Equal(out.Bytes(), old) {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return atomicfile.Write(path, out.Bytes(), 0o644)
}

func checkAccountName(name string) error {
	if name == "" || strings.ContainsAny(name, ":\n/") {
		return fmt.Errorf("bad account name %q", name)
	}
	return nil
}
