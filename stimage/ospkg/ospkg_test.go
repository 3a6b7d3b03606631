package ospkg

import (
	"archive/zip"
	"bytes"
	"crypto/ed25519"
	"crypto/x509"
	"strings"
	"testing"
	"time"

	"patela/stimage/keygen"
)

func mustCreate(t testing.TB) ([]byte, *Descriptor) {
	t.Helper()
	zb, db, err := Create(Options{Label: "l", Kernel: []byte("kernel"), Initramfs: []byte("initramfs"),
		KernelName: "vmlinuz", InitramfsName: "initramfs.cpio.gz", Cmdline: "console=ttyS0"})
	if err != nil {
		t.Fatal(err)
	}
	d, err := ParseDescriptor(db)
	if err != nil {
		t.Fatal(err)
	}
	return zb, d
}

type signer struct {
	key  ed25519.PrivateKey
	pem  []byte
	cert *x509.Certificate
}

func newSigner(t testing.TB, parent *signer, from, until time.Time) *signer {
	t.Helper()
	k, err := keygen.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	req := keygen.Request{Key: k.Public().(ed25519.PublicKey), IsCA: parent == nil, NotBefore: from, NotAfter: until, ParentKey: k}
	if parent != nil {
		req.Parent, req.ParentKey = parent.cert, parent.key
	}
	p, err := keygen.Certificate(req)
	if err != nil {
		t.Fatal(err)
	}
	c, err := ParseCertificate(p)
	if err != nil {
		t.Fatal(err)
	}
	return &signer{k, p, c}
}

func TestOpen(t *testing.T) {
	zb, _ := mustCreate(t)
	p, err := Open(zb)
	if err != nil {
		t.Fatal(err)
	}
	if p.Manifest.Kernel != "boot/vmlinuz" || string(p.Kernel) != "kernel" || string(p.Initramfs) != "initramfs" || p.Manifest.Cmdline != "console=ttyS0" {
		t.Fatalf("opened %+v", p.Manifest)
	}
}

// zipOf builds an archive from (name, content) pairs, as an attacker might.
func zipOf(t testing.TB, entries ...string) []byte {
	t.Helper()
	var b bytes.Buffer
	w := zip.NewWriter(&b)
	for i := 0; i < len(entries); i += 2 {
		f, err := w.Create(entries[i])
		if err != nil {
			t.Fatal(err)
		}
		f.Write([]byte(entries[i+1]))
	}
	w.Close()
	return b.Bytes()
}

const goodManifest = `{"version":1,"kernel":"boot/k","initramfs":"boot/i"}`

func TestOpenRefuses(t *testing.T) {
	cases := map[string][]byte{
		"not a zip":          []byte("PK\x03\x04 definitely not"),
		"empty":              nil,
		"no manifest":        zipOf(t, "boot/k", "k", "boot/i", "i"),
		"dotdot entry":       zipOf(t, "manifest.json", goodManifest, "boot/k", "k", "boot/i", "i", "../evil", "x"),
		"absolute entry":     zipOf(t, "manifest.json", goodManifest, "boot/k", "k", "boot/i", "i", "/etc/passwd", "x"),
		"unclean entry":      zipOf(t, "manifest.json", goodManifest, "boot/k", "k", "boot/i", "i", "boot/./k2", "x"),
		"duplicate entry":    zipOf(t, "manifest.json", goodManifest, "boot/k", "k", "boot/k", "k2", "boot/i", "i"),
		"dotdot manifest":    zipOf(t, "manifest.json", `{"version":1,"kernel":"../k","initramfs":"boot/i"}`, "boot/i", "i"),
		"absolute manifest":  zipOf(t, "manifest.json", `{"version":1,"kernel":"/boot/k","initramfs":"boot/i"}`, "boot/k", "k", "boot/i", "i"),
		"missing kernel":     zipOf(t, "manifest.json", goodManifest, "boot/i", "i"),
		"empty kernel":       zipOf(t, "manifest.json", goodManifest, "boot/k", "", "boot/i", "i"),
		"manifest version":   zipOf(t, "manifest.json", `{"version":2,"kernel":"boot/k","initramfs":"boot/i"}`, "boot/k", "k", "boot/i", "i"),
		"manifest unknown":   zipOf(t, "manifest.json", `{"version":1,"kernel":"boot/k","initramfs":"boot/i","extra":1}`, "boot/k", "k", "boot/i", "i"),
		"manifest not json":  zipOf(t, "manifest.json", `version=1`, "boot/k", "k", "boot/i", "i"),
		"manifest too big":   zipOf(t, "manifest.json", goodManifest+strings.Repeat(" ", MaxManifest), "boot/k", "k", "boot/i", "i"),
		"kernel a directory": zipOf(t, "manifest.json", `{"version":1,"kernel":"boot/","initramfs":"boot/i"}`, "boot/", "", "boot/i", "i"),
	}
	for name, zb := range cases {
		if _, err := Open(zb); err == nil {
			t.Errorf("%s: opened without error", name)
		}
	}
}

// TestZipBomb: an entry that declares more than the limit is refused
// before decompression; one that lies about its size stops at the limit.
func TestZipBomb(t *testing.T) {
	var b bytes.Buffer
	w := zip.NewWriter(&b)
	m, _ := w.Create("manifest.json")
	m.Write([]byte(goodManifest))
	k, _ := w.Create("boot/k")
	k.Write([]byte("k"))
	// A raw deflate stream of 1 MiB zeros, declared as a huge file.
	var z bytes.Buffer
	zw := zip.NewWriter(&z)
	zf, _ := zw.Create("x")
	zf.Write(make([]byte, 1<<20))
	zw.Close()
	zr, _ := zip.NewReader(bytes.NewReader(z.Bytes()), int64(z.Len()))
	raw, _ := zr.File[0].OpenRaw()
	var comp bytes.Buffer
	comp.ReadFrom(raw)
	h := &zip.FileHeader{Name: "boot/i", Method: zip.Deflate, CRC32: zr.File[0].CRC32,
		CompressedSize64: uint64(comp.Len()), UncompressedSize64: MaxEntryBytes + 1}
	rw, err := w.CreateRaw(h)
	if err != nil {
		t.Fatal(err)
	}
	rw.Write(comp.Bytes())
	w.Close()
	if _, err := Open(b.Bytes()); err == nil || !strings.Contains(err.Error(), "declares") {
		t.Fatalf("huge declared entry: got %v", err)
	}

	// Same stream declared as 10 bytes: decompression stops with an error.
	b.Reset()
	w = zip.NewWriter(&b)
	m, _ = w.Create("manifest.json")
	m.Write([]byte(goodManifest))
	k, _ = w.Create("boot/k")
	k.Write([]byte("k"))
	h.UncompressedSize64 = 10
	rw, _ = w.CreateRaw(h)
	rw.Write(comp.Bytes())
	w.Close()
	if _, err := Open(b.Bytes()); err == nil {
		t.Fatal("entry lying about its size opened")
	}
}

func TestVerify(t *testing.T) {
	now := time.Now()
	root := newSigner(t, nil, now.Add(-72*time.Hour), now.Add(time.Hour))
	leaf := newSigner(t, root, now.Add(-time.Hour), now.Add(time.Hour))
	expired := newSigner(t, root, now.Add(-48*time.Hour), now.Add(-24*time.Hour))
	otherRoot := newSigner(t, nil, now.Add(-time.Hour), now.Add(time.Hour))
	foreign := newSigner(t, otherRoot, now.Add(-time.Hour), now.Add(time.Hour))
	roots := []*x509.Certificate{root.cert}

	zb, d := mustCreate(t)
	for _, s := range []*signer{root, leaf, expired, foreign} {
		if err := Sign(d, zb, s.key, s.pem); err != nil {
			t.Fatal(err)
		}
	}
	if err := Sign(d, zb, leaf.key, leaf.pem); err == nil {
		t.Fatal("the same key signed twice")
	}
	res, err := Verify(d, zb, roots, 2, now)
	if err != nil {
		t.Fatal(err)
	}
	if !res.OK() || res.Valid != 2 {
		t.Fatalf("valid %d, want 2 (root, leaf): %+v", res.Valid, res.Signatures)
	}
	for i, want := range []bool{true, true, false, false} {
		if res.Signatures[i].Valid != want {
			t.Errorf("signature %d valid=%v, want %v (%s)", i, res.Signatures[i].Valid, want, res.Signatures[i].Reason)
		}
	}
	if res, _ := Verify(d, zb, roots, 3, now); res.OK() {
		t.Error("threshold 3 met by 2 keys")
	}
	// The expired leaf counts at a time it was valid (and the newer leaf
	// does not yet).
	if res, _ := Verify(d, zb, roots, 3, now.Add(-36*time.Hour)); res.Valid != 2 || !res.Signatures[2].Valid || res.Signatures[1].Valid {
		t.Errorf("36 h ago the root and the expired leaf were valid; got %+v", res.Signatures)
	}

	// A descriptor listing one key twice (hand-made) counts it once.
	dup := &Descriptor{Version: 1, Certificates: [][]byte{leaf.pem, leaf.pem}, Signatures: [][]byte{d.Signatures[1], d.Signatures[1]}}
	if res, _ := Verify(dup, zb, roots, 2, now); res.OK() || res.Valid != 1 || !strings.Contains(res.Signatures[1].Reason, "duplicate") {
		t.Errorf("duplicate key counted twice: %+v", res)
	}
	// A tampered archive: nothing counts.
	bad := bytes.Clone(zb)
	bad[len(bad)/2] ^= 0x40
	if res, _ := Verify(d, bad, roots, 1, now); res.Valid != 0 {
		t.Errorf("tampered archive: %d valid", res.Valid)
	}
	// A certificate that is not PEM aborts verification.
	broken := &Descriptor{Version: 1, Certificates: [][]byte{[]byte("junk")}, Signatures: [][]byte{make([]byte, 64)}}
	if _, err := Verify(broken, zb, roots, 1, now); err == nil {
		t.Error("junk certificate did not abort")
	}
	if _, err := Verify(d, zb, nil, 1, now); err == nil {
		t.Error("verified without roots")
	}
}

func TestParseDescriptorRefuses(t *testing.T) {
	for _, in := range []string{
		`{"version":2,"os_pkg_url":"","certificates":[],"signatures":[]}`,
		`{"version":1,"os_pkg_url":"","certificates":["LS0t"],"signatures":[]}`,
		`{"version":1,"os_pkg_url":"ftp://x/os.zip","certificates":[],"signatures":[]}`,
		`{"version":1,"os_pkg_url":"https://x/os.tar","certificates":[],"signatures":[]}`,
		`{"version":1,"os_pkg_url":"","certificates":["!!"],"signatures":["AA=="]}`,
		`{"version":1,"extra":true}`,
		`[]`,
		`{"version":1}{"version":1}`,
	} {
		if _, err := ParseDescriptor([]byte(in)); err == nil {
			t.Errorf("parsed %s", in)
		}
	}
	if _, err := ParseDescriptor([]byte(`{"version":1,"os_pkg_url":"os.zip","certificates":null,"signatures":null}`)); err != nil {
		t.Errorf("relative URL and null arrays: %v", err)
	}
}

func TestCreateRefuses(t *testing.T) {
	for name, o := range map[string]Options{
		"no kernel":  {Initramfs: []byte("i"), KernelName: "k", InitramfsName: "i"},
		"same names": {Kernel: []byte("k"), Initramfs: []byte("i"), KernelName: "x", InitramfsName: "x"},
		"bad url":    {Kernel: []byte("k"), Initramfs: []byte("i"), KernelName: "k", InitramfsName: "i", URL: "file:///os.zip"},
	} {
		if _, _, err := Create(o); err == nil {
			t.Errorf("%s: created", name)
		}
	}
}

// FuzzOpen feeds arbitrary archives and descriptors through every parser:
// errors are fine, panics are not, and whatever opens must be consistent.
func FuzzOpen(f *testing.F) {
	zb, d := mustCreate(f)
	db, _ := d.Marshal()
	f.Add(zb, db)
	f.Add(zipOf(f, "manifest.json", goodManifest, "boot/k", "k", "boot/i", "i"), []byte(`{"version":1,"os_pkg_url":"","certificates":["LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCg=="],"signatures":["AA=="]}`))
	f.Add([]byte("PK\x05\x06"+strings.Repeat("\x00", 18)), []byte(`{}`))
	now := time.Now()
	root := newSigner(f, nil, now.Add(-time.Hour), now.Add(time.Hour))
	f.Fuzz(func(t *testing.T, archive, descriptor []byte) {
		if p, err := Open(archive); err == nil {
			if len(p.Kernel) == 0 || len(p.Initramfs) == 0 || p.Manifest.Version != 1 {
				t.Fatalf("opened an inconsistent package: %+v", p.Manifest)
			}
		}
		if m, err := ParseManifest(descriptor); err == nil && (checkEntryName(m.Kernel) != nil || checkEntryName(m.Initramfs) != nil) {
			t.Fatal("manifest with escaping paths parsed")
		}
		d, err := ParseDescriptor(descriptor)
		if err != nil {
			return
		}
		if res, err := Verify(d, archive, []*x509.Certificate{root.cert}, 1, now); err == nil && res.Valid > 0 {
			t.Fatal("a signature by an unknown key counted")
		}
	})
}
