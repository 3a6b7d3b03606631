// Package ospkg reads and writes System Transparency OS packages: an archive
// (NAME.zip, with manifest.json naming a kernel and an initramfs) and a
// descriptor (NAME.json) carrying Ed25519 signatures over the archive's
// SHA-256 with the X.509 certificates that vouch for them. The format is
// stboot's and stmgr's; archives are written with fixed order and times, so
// equal inputs give equal bytes.
package ospkg

import (
	"archive/zip"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path"
	"strings"
)

// Limits on what Open accepts: an OS package is a kernel and an initramfs,
// not a file system.
const (
	MaxArchiveBytes = 1 << 30   // the whole zip
	MaxEntryBytes   = 512 << 20 // one decompressed entry
	MaxEntries      = 64
	MaxManifest     = 64 << 10
	MaxDescriptor   = 1 << 20
)

// ManifestName is the manifest's path in the archive.
const ManifestName = "manifest.json"

// Manifest is manifest.json. Field order is stmgr's.
type Manifest struct {
	Version   int    `json:"version"`
	Label     string `json:"label"`
	Kernel    string `json:"kernel"`
	Initramfs string `json:"initramfs"`
	Cmdline   string `json:"cmdline"`
}

// Package is an opened, well-formed archive: its manifest and the two
// files it names.
type Package struct {
	Manifest  Manifest
	Kernel    []byte
	Initramfs []byte
}

// Options are the inputs of Create.
type Options struct {
	Label     string
	URL       string // descriptor os_pkg_url; "" for initramfs mode
	Kernel    []byte
	Initramfs []byte
	// KernelName and InitramfsName are the files' base names in boot/.
	KernelName, InitramfsName string
	Cmdline                   string
}

// Create returns the archive and its unsigned descriptor.
func Create(o Options) (archive, descriptor []byte, err error) {
	if len(o.Kernel) == 0 || len(o.Initramfs) == 0 {
		return nil, nil, errors.New("ospkg: kernel and initramfs must not be empty")
	}
	if len(o.Kernel) > MaxEntryBytes || len(o.Initramfs) > MaxEntryBytes {
		return nil, nil, fmt.Errorf("ospkg: kernel and initramfs must each be at most %d bytes", MaxEntryBytes)
	}
	kn, in := path.Base(o.KernelName), path.Base(o.InitramfsName)
	for _, n := range []string{kn, in} {
		if n == "" || n == "." || n == "/" || n == ".." || strings.ContainsAny(n, `\`) {
			return nil, nil, fmt.Errorf("ospkg: bad file name %q", n)
		}
	}
	if kn == in {
		return nil, nil, fmt.Errorf("ospkg: kernel and initramfs are both named %q", kn)
	}
	if err := checkURL(o.URL); err != nil {
		return nil, nil, err
	}
	m := Manifest{Version: 1, Label: o.Label, Kernel: "boot/" + kn, Initramfs: "boot/" + in, Cmdline: o.Cmdline}
	mj, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, nil, err
	}

	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	// stmgr's layout. Headers carry no time (MS-DOS zero date) and fixed
	// modes, so the bytes depend only on the contents.
	entries := []struct {
		name   string
		data   []byte
		method uint16
	}{
		{"boot/", nil, zip.Store},
		{m.Kernel, o.Kernel, zip.Store}, // already compressed
		{m.Initramfs, o.Initramfs, zip.Store},
		{ManifestName, mj, zip.Deflate},
	}
	for _, e := range entries {
		h := &zip.FileHeader{Name: e.name, Method: e.method}
		if strings.HasSuffix(e.name, "/") {
			h.SetMode(0o755 | 1<<31) // fs.ModeDir
		} else {
			h.SetMode(0o644)
		}
		w, err := zw.CreateHeader(h)
		if err != nil {
			return nil, nil, err
		}
		if _, err := w.Write(e.data); err != nil {
			return nil, nil, err
		}
	}
	if err := zw.Close(); err != nil {
		return nil, nil, err
	}
	d := &Descriptor{Version: 1, PkgURL: o.URL}
	dj, err := d.Marshal()
	if err != nil {
		return nil, nil, err
	}
	return buf.Bytes(), dj, nil
}

// Open checks an archive and returns its manifest and boot files. It
// refuses what stboot should never boot: not a zip, entries that escape
// the archive or repeat, entries or a total beyond the limits, a manifest
// that is missing, malformed or names files that are not there.
func Open(archive []byte) (*Package, error) {
	if len(archive) > MaxArchiveBytes {
		return nil, fmt.Errorf("ospkg: archive is %d bytes, more than the %d allowed", len(archive), MaxArchiveBytes)
	}
	zr, err := zip.NewReader(bytes.NewReader(archive), int64(len(archive)))
	if err != nil {
		return nil, fmt.Errorf("ospkg: not a zip archive: %w", err)
	}
	if len(zr.File) > MaxEntries {
		return nil, fmt.Errorf("ospkg: archive has %d entries, more than the %d allowed", len(zr.File), MaxEntries)
	}
	files := map[string]*zip.File{}
	for _, f := range zr.File {
		if err := checkEntryName(f.Name); err != nil {
			return nil, err
		}
		if _, dup := files[f.Name]; dup {
			return nil, fmt.Errorf("ospkg: entry %q appears twice", f.Name)
		}
		if f.UncompressedSize64 > MaxEntryBytes {
			return nil, fmt.Errorf("ospkg: entry %q declares %d bytes, more than the %d allowed", f.Name, f.UncompressedSize64, MaxEntryBytes)
		}
		files[f.Name] = f
	}
	mf, ok := files[ManifestName]
	if !ok {
		return nil, fmt.Errorf("ospkg: archive has no %s", ManifestName)
	}
	mj, err := readEntry(mf, MaxManifest)
	if err != nil {
		return nil, err
	}
	m, err := ParseManifest(mj)
	if err != nil {
		return nil, err
	}
	p := &Package{Manifest: *m}
	for _, want := range []struct {
		name string
		dst  *[]byte
	}{{m.Kernel, &p.Kernel}, {m.Initramfs, &p.Initramfs}} {
		f, ok := files[want.name]
		if !ok {
			return nil, fmt.Errorf("ospkg: manifest names %q, which the archive does not hold", want.name)
		}
		if *want.dst, err = readEntry(f, MaxEntryBytes); err != nil {
			return nil, err
		}
		if len(*want.dst) == 0 {
			return nil, fmt.Errorf("ospkg: %q is empty", want.name)
		}
	}
	return p, nil
}

// ParseManifest decodes and checks manifest.json.
func ParseManifest(b []byte) (*Manifest, error) {
	var m Manifest
	if err := DecodeStrict(b, &m); err != nil {
		return nil, fmt.Errorf("ospkg: %s: %w", ManifestName, err)
	}
	if m.Version != 1 {
		return nil, fmt.Errorf("ospkg: %s: version %d, want 1", ManifestName, m.Version)
	}
	for field, p := range map[string]string{"kernel": m.Kernel, "initramfs": m.Initramfs} {
		if p == "" {
			return nil, fmt.Errorf("ospkg: %s: no %s", ManifestName, field)
		}
		if err := checkEntryName(p); err != nil {
			return nil, fmt.Errorf("ospkg: %s: %s: %w", ManifestName, field, err)
		}
	}
	return &m, nil
}

// checkEntryName accepts only clean relative slash paths inside the archive.
func checkEntryName(n string) error {
	c := strings.TrimSuffix(n, "/")
	if c == "" || strings.HasPrefix(c, "/") || strings.ContainsAny(c, "\\\x00") || path.Clean(c) != c ||
		c == ".." || strings.HasPrefix(c, "../") || c == "." {
		return fmt.Errorf("ospkg: path %q escapes the archive or is not clean", n)
	}
	return nil
}

// readEntry decompresses f, reading at most limit bytes whatever its
// header claims (a zip bomb stops at the limit).
func readEntry(f *zip.File, limit int64) ([]byte, error) {
	if strings.HasSuffix(f.Name, "/") {
		return nil, fmt.Errorf("ospkg: %q is a directory", f.Name)
	}
	rc, err := f.Open()
	if err != nil {
		return nil, fmt.Errorf("ospkg: %s: %w", f.Name, err)
	}
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, limit+1))
	if err != nil {
		return nil, fmt.Errorf("ospkg: %s: %w", f.Name, err)
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("ospkg: %s decompresses to more than %d bytes", f.Name, limit)
	}
	return b, nil
}

// DecodeStrict decodes one JSON object into v the way every document
// stimage reads must be: no unknown fields, nothing after the object
// (descriptors, manifests, and the trust policy and host config of
// stimage/trust).
func DecodeStrict(b []byte, v any) error {
	d := json.NewDecoder(bytes.NewReader(b))
	d.DisallowUnknownFields()
	if err := d.Decode(v); err != nil {
		return err
	}
	if d.More() {
		return errors.New("data after the JSON object")
	}
	return nil
}
