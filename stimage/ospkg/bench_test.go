package ospkg

import (
	"crypto/rand"
	"crypto/x509"
	"testing"
	"time"
)

// benchPackage is a package the size of patela's (8 MB kernel, 11 MB
// initramfs, random so nothing compresses) signed by a root and a leaf.
func benchPackage(b *testing.B) ([]byte, *Descriptor, []*x509.Certificate) {
	k, i := make([]byte, 8<<20), make([]byte, 11<<20)
	rand.Read(k)
	rand.Read(i)
	zb, db, err := Create(Options{Kernel: k, Initramfs: i, KernelName: "vmlinuz", InitramfsName: "initramfs.cpio.gz"})
	if err != nil {
		b.Fatal(err)
	}
	d, err := ParseDescriptor(db)
	if err != nil {
		b.Fatal(err)
	}
	now := time.Now()
	root := newSigner(b, nil, now.Add(-time.Hour), now.Add(time.Hour))
	leaf := newSigner(b, root, now.Add(-time.Hour), now.Add(time.Hour))
	for _, s := range []*signer{root, leaf} {
		if err := Sign(d, zb, s.key, s.pem); err != nil {
			b.Fatal(err)
		}
	}
	return zb, d, []*x509.Certificate{root.cert}
}

// BenchmarkVerify: hashing the archive and checking two signatures and
// chains, as stboot does before kexec.
func BenchmarkVerify(b *testing.B) {
	zb, d, roots := benchPackage(b)
	b.SetBytes(int64(len(zb)))
	for b.Loop() {
		res, err := Verify(d, zb, roots, 2, time.Now())
		if err != nil || !res.OK() {
			b.Fatal(err, res)
		}
	}
}

// BenchmarkOpen: checking the archive and extracting kernel and initramfs.
func BenchmarkOpen(b *testing.B) {
	zb, _, _ := benchPackage(b)
	b.SetBytes(int64(len(zb)))
	for b.Loop() {
		if _, err := Open(zb); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkCreate: building the archive from kernel and initramfs.
func BenchmarkCreate(b *testing.B) {
	k, i := make([]byte, 8<<20), make([]byte, 11<<20)
	rand.Read(k)
	rand.Read(i)
	b.SetBytes(int64(len(k) + len(i)))
	for b.Loop() {
		if _, _, err := Create(Options{Kernel: k, Initramfs: i, KernelName: "vmlinuz", InitramfsName: "initramfs.cpio.gz"}); err != nil {
			b.Fatal(err)
		}
	}
}
