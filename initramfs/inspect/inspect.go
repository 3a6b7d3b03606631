// Package inspect lists what an initramfs holds without unpacking it, as
// the kernel reads it: newc cpio archives, each plain, gzip- or
// xz-compressed, concatenated, with zero padding between them. (xz-utils
// decodes xz streams, as the Go xz packages lack the x86 filter ramfs
// uses; a stream's end is found from its footer.) Release tooling uses it to
// refuse to approve a debug image.
package inspect

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os/exec"
	"strconv"
	"strings"
)

// Names lists every entry name of every archive in b, in order.
func Names(b []byte) ([]string, error) {
	es, err := entries(b)
	if err != nil {
		return nil, err
	}
	names := make([]string, len(es))
	for i, e := range es {
		names[i] = e.name
	}
	return names, nil
}

// File returns the contents of the file name (relative, e.g.
// "etc/patela/agent.json") as the kernel leaves it: the last archive's
// entry wins. ok is false when no archive has it.
func File(b []byte, name string) (data []byte, ok bool, err error) {
	es, err := entries(b)
	if err != nil {
		return nil, false, err
	}
	for _, e := range es {
		if e.name == name {
			data, ok = e.data, true
		}
	}
	return data, ok, nil
}

type entry struct {
	name string
	data []byte
}

func entries(b []byte) ([]entry, error) {
	var names []entry
	for len(b) > 0 {
		switch {
		case b[0] == 0:
			b = b[1:] // padding between archives
		case bytes.HasPrefix(b, []byte("070701")) || bytes.HasPrefix(b, []byte("070702")):
			n, used, err := cpioEntries(b)
			if err != nil {
				return nil, err
			}
			names = append(names, n...)
			b = b[used:]
		case bytes.HasPrefix(b, []byte{0x1f, 0x8b}):
			r := bytes.NewReader(b)
			zr, err := gzip.NewReader(r)
			if err != nil {
				return nil, fmt.Errorf("inspect: gzip: %w", err)
			}
			zr.Multistream(false)
			raw, err := io.ReadAll(io.LimitReader(zr, 2<<30))
			if err != nil {
				return nil, fmt.Errorf("inspect: gzip: %w", err)
			}
			n, err := entries(raw)
			if err != nil {
				return nil, err
			}
			names = append(names, n...)
			b = b[len(b)-r.Len():]
		case bytes.HasPrefix(b, xzMagic):
			end, raw, err := xzStream(b)
			if err != nil {
				return nil, err
			}
			n, err := entries(raw)
			if err != nil {
				return nil, err
			}
			names = append(names, n...)
			b = b[end:]
		default:
			return nil, fmt.Errorf("inspect: unknown data at an archive boundary (%x…): not newc cpio, gzip or xz", b[:min(len(b), 6)])
		}
	}
	return names, nil
}

// cpioEntries reads one newc archive up to and including its trailer and
// returns its entries and its length.
func cpioEntries(b []byte) ([]entry, int, error) {
	var names []entry
	off := 0
	for {
		if off+110 > len(b) {
			return nil, 0, errors.New("inspect: cpio header truncated")
		}
		h := b[off : off+110]
		if string(h[:5]) != "07070" {
			return nil, 0, fmt.Errorf("inspect: bad cpio magic at %d", off)
		}
		field := func(i int) (int, error) {
			v, err := strconv.ParseUint(string(h[6+8*i:14+8*i]), 16, 32)
			return int(v), err
		}
		size, err1 := field(6)
		nameSize, err2 := field(11)
		if err1 != nil || err2 != nil || nameSize == 0 {
			return nil, 0, fmt.Errorf("inspect: bad cpio header at %d", off)
		}
		nameEnd := off + 110 + nameSize
		if nameEnd > len(b) {
			return nil, 0, errors.New("inspect: cpio name truncated")
		}
		name := strings.TrimRight(string(b[off+110:nameEnd]), "\x00")
		data := (nameEnd + 3) &^ 3
		off = (data + size + 3) &^ 3
		if data+size > len(b) {
			return nil, 0, fmt.Errorf("inspect: cpio entry %q truncated", name)
		}
		if name == "TRAILER!!!" {
			return names, min(off, len(b)), nil
		}
		names = append(names, entry{strings.TrimPrefix(name, "./"), b[data : data+size]})
	}
}

// DebugMarkers are paths only the debug flavour of patela's initramfs has
// (initramfs/ramfs: ShellPath and the u-root busybox under /bbin), or any
// image with a shell.
var DebugMarkers = []string{"bin/sh", "bbin/"}

// DebugShell returns the first entry of b that marks a debug image, or ""
// for an image without a shell.
func DebugShell(b []byte) (string, error) {
	names, err := Names(b)
	if err != nil {
		return "", err
	}
	for _, n := range names {
		for _, m := range DebugMarkers {
			if n == strings.TrimSuffix(m, "/") || (strings.HasSuffix(m, "/") && strings.HasPrefix(n, m)) {
				return n, nil
			}
		}
	}
	return "", nil
}

var xzMagic = []byte("\xfd7zXZ\x00")

// xzStream finds where the xz stream at the start of b ends and returns
// its length and contents, so an archive appended after it is read too. A
// stream ends with a 12-byte footer (CRC32 of the next 6 bytes, the index
// size, the header's flags, "YZ") on a 4-byte boundary: the first
// candidate whose bytes xz-utils decodes as one stream is the end.
func xzStream(b []byte) (int, []byte, error) {
	if len(b) < 24 {
		return 0, nil, errors.New("inspect: xz stream truncated")
	}
	if _, err := exec.LookPath("xz"); err != nil {
		return 0, nil, fmt.Errorf("inspect: reading an xz archive needs xz-utils: %w", err)
	}
	flags := b[6:8]
	lastErr := errors.New("no stream footer")
	for end := 24; end <= len(b); end += 4 {
		f := b[end-12 : end]
		if f[10] != 'Y' || f[11] != 'Z' || !bytes.Equal(f[8:10], flags) || crc32.ChecksumIEEE(f[4:10]) != binary.LittleEndian.Uint32(f[:4]) {
			continue
		}
		idx := end - 12 - int(binary.LittleEndian.Uint32(f[4:8])+1)*4
		if idx < 12 || b[idx] != 0 {
			continue
		}
		var raw, errb bytes.Buffer
		cmd := exec.Command("xz", "--decompress", "--stdout", "--format=xz", "--single-stream")
		cmd.Stdin, cmd.Stdout, cmd.Stderr = bytes.NewReader(b[:end]), &raw, &errb
		if err := cmd.Run(); err != nil {
			lastErr = fmt.Errorf("%v: %s", err, strings.TrimSpace(errb.String()))
			continue
		}
		return end, raw.Bytes(), nil
	}
	return 0, nil, fmt.Errorf("inspect: xz (xz-utils): %v", lastErr)
}
