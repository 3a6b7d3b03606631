package harness

import (
	"bytes"
	"path"
	"strings"

	"github.com/u-root/mkuimage/cpio"
)

// File is one file of a CPIO archive.
type File struct {
	Name string // relative, e.g. "init" or "etc/patela/note"
	Data []byte
	Mode uint64 // permission bits
}

// CPIO is an uncompressed newc archive of files, with the directories
// they need. Appended to an initramfs, its files replace the ones of the
// same name: the kernel unpacks concatenated archives in order.
func CPIO(files ...File) ([]byte, error) {
	var buf bytes.Buffer
	w := cpio.Newc.Writer(&buf)
	dirs := map[string]bool{}
	for _, f := range files {
		var parents []string
		for d := path.Dir(f.Name); d != "." && d != "/" && !dirs[d]; d = path.Dir(d) {
			parents = append([]string{d}, parents...)
			dirs[d] = true
		}
		for _, d := range parents {
			if err := w.WriteRecord(cpio.Directory(d, 0o755)); err != nil {
				return nil, err
			}
		}
		if err := w.WriteRecord(cpio.StaticFile(strings.TrimPrefix(f.Name, "/"), string(f.Data), f.Mode)); err != nil {
			return nil, err
		}
	}
	if err := cpio.WriteTrailer(w); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// Append returns the initramfs base with an archive of files after it,
// zero-padded to the 4-byte boundary the kernel expects a newc archive to
// start on (it skips the zeros; unaligned, it would take the archive for
// junk after the compressed one and drop it).
func Append(base []byte, files ...File) ([]byte, error) {
	extra, err := CPIO(files...)
	if err != nil {
		return nil, err
	}
	out := append([]byte(nil), base...)
	for len(out)%4 != 0 {
		out = append(out, 0)
	}
	return append(out, extra...), nil
}
