package atomicfile

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

func check(t *testing.T, p, content string, perm os.FileMode) *syscall.Stat_t {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil || string(b) != content {
		t.Fatalf("content %q, %v; want %q", b, err, content)
	}
	fi, err := os.Stat(p)
	if err != nil || fi.Mode().Perm() != perm {
		t.Fatalf("mode %v, %v; want %v", fi.Mode(), err, perm)
	}
	if es, _ := os.ReadDir(filepath.Dir(p)); len(es) != 1 {
		t.Fatalf("temporary files left: %v", es)
	}
	return fi.Sys().(*syscall.Stat_t)
}

func TestWriteReplaces(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	if err := Write(p, []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	check(t, p, "old", 0o600)
	if err := Write(p, []byte("new"), 0o644); err != nil {
		t.Fatal(err)
	}
	st := check(t, p, "new", 0o644)
	if int(st.Uid) != os.Geteuid() {
		t.Fatalf("owner %d, want %d", st.Uid, os.Geteuid())
	}
}

func TestWriteOwned(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("chown to another uid needs root")
	}
	p := filepath.Join(t.TempDir(), "f")
	if err := WriteOwned(p, []byte("k"), 0o600, 12345, 12346); err != nil {
		t.Fatal(err)
	}
	if st := check(t, p, "k", 0o600); st.Uid != 12345 || st.Gid != 12346 {
		t.Fatalf("owner %d:%d", st.Uid, st.Gid)
	}
}

func TestWriteNoDirectory(t *testing.T) {
	if err := Write(filepath.Join(t.TempDir(), "missing", "f"), nil, 0o644); err == nil {
		t.Fatal("write into a missing directory succeeded")
	}
}
