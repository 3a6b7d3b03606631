package inspect

import (
	"bytes"
	"compress/gzip"
	"slices"
	"testing"

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
