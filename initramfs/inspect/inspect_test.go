package inspect

import (
	"bytes"
	"compress/gzip"
	"os/exec"
	"slices"
	"testing"

	"patela/internal/testutil"

	"github.com/u-root/mkuimage/cpio"
)

func archive(t *testing.T, recs ...cpio.Record) []byte {
	t.Helper()
	var b bytes.Buffer
	w := cpio.Newc.Writer(&b)
	for _, r := range recs {
		if err := w.WriteRecord(r); err != nil {
			t.Fatal(err)
		}
	}
	if err := cpio.WriteTrailer(w); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func gz(b []byte) []byte {
	var o bytes.Buffer
	w := gzip.NewWriter(&o)
	w.Write(b)
	w.Close()
	return o.Bytes()
}

// TestConcatenated: a gzip archive, zero padding and a plain archive
// appended (as the kernel accepts them) are all listed; a shell in the
// appended part is found; garbage is an error, never "no shell".
func TestConcatenated(t *testing.T) {
	prod := gz(archive(t, cpio.Directory("etc", 0o755), cpio.StaticFile("etc/patela/agent.json", "{}", 0o644),
		cpio.Symlink("init", "bin/init")))
	names, err := Names(prod)
	if err != nil || !slices.Equal(names, []string{"etc", "etc/patela/agent.json", "init"}) {
		t.Fatalf("Names = %v, %v", names, err)
	}
	if s, err := DebugShell(prod); s != "" || err != nil {
		t.Fatalf("production image: %q %v", s, err)
	}
	added := append(append(bytes.Clone(prod), 0, 0, 0, 0), archive(t, cpio.StaticFile("bbin/gosh", "x", 0o755))...)
	if s, err := DebugShell(added); s != "bbin/gosh" || err != nil {
		t.Errorf("appended shell: %q %v", s, err)
	}
	both := append(gz(archive(t, cpio.Symlink("bin/sh", "/bbin/gosh"))), prod...)
	if s, _ := DebugShell(both); s != "bin/sh" {
		t.Errorf("shell in the first archive: %q", s)
	}
	for name, bad := range map[string][]byte{
		"zstd":      {0x28, 0xb5, 0x2f, 0xfd, 1, 2},
		"truncated": prod[:len(prod)/2],
		"tail":      append(bytes.Clone(prod), 'x'),
	} {
		if _, err := DebugShell(bad); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

func xzOf(t *testing.T, b []byte) []byte {
	t.Helper()
	var out bytes.Buffer
	cmd := exec.Command("xz", "--format=xz", "--check=crc32", "--x86", "--lzma2=preset=6", "--stdout")
	cmd.Stdin, cmd.Stdout = bytes.NewReader(b), &out
	if err := cmd.Run(); err != nil {
		testutil.SkipOrFail(t, "xz (xz-utils): "+err.Error())
	}
	return out.Bytes()
}

// TestXZ: ramfs's format (xz, x86 filter) is read, after a plain archive
// too, and so is an archive appended after the xz stream; a shell in
// either is found; garbage after the stream is an error.
func TestXZ(t *testing.T) {
	prod := xzOf(t, archive(t, cpio.Directory("etc", 0o755), cpio.Symlink("init", "bin/init")))
	if names, err := Names(prod); err != nil || !slices.Equal(names, []string{"etc", "init"}) {
		t.Fatalf("Names = %v, %v", names, err)
	}
	debug := append(archive(t, cpio.Directory("x", 0o755)), xzOf(t, archive(t, cpio.Symlink("bin/sh", "../bbin/gosh")))...)
	if s, err := DebugShell(debug); s != "bin/sh" || err != nil {
		t.Errorf("shell in the xz archive: %q %v", s, err)
	}
	if s, err := DebugShell(append(bytes.Clone(prod), archive(t, cpio.StaticFile("bbin/gosh", "x", 0o755))...)); s != "bbin/gosh" || err != nil {
		t.Errorf("a shell appended after the xz stream: %q %v", s, err)
	}
	if _, err := DebugShell(append(bytes.Clone(prod), "junk"...)); err == nil {
		t.Error("junk after the xz stream went unnoticed")
	}
	if _, err := DebugShell(prod[:len(prod)-8]); err == nil {
		t.Error("a truncated xz stream went unnoticed")
	}
}

// TestFile: a file's contents as the kernel leaves them: an appended
// archive's copy replaces the first.
func TestFile(t *testing.T) {
	b := gz(archive(t, cpio.StaticFile("etc/patela/agent.json", "first", 0o644)))
	b = append(append(b, make([]byte, (4-len(b)%4)%4)...), archive(t, cpio.StaticFile("etc/patela/agent.json", "second", 0o644))...)
	if d, ok, err := File(b, "etc/patela/agent.json"); string(d) != "second" || !ok || err != nil {
		t.Errorf("File = %q %v %v", d, ok, err)
	}
	if _, ok, err := File(b, "etc/passwd"); ok || err != nil {
		t.Errorf("missing file: %v %v", ok, err)
	}
}
