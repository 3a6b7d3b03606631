package harness

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"time"

	"patela/initramfs/ramfs"
)

// InitImageOptions describe an initramfs with another program than the
// agent as /init, built the agent image's way (internal/ramfs: the same
// tor and libraries, the same xz), with Files appended.
type InitImageOptions struct {
	Kernel  *Kernel
	Dir     string // work directory
	InitPkg string // Go package built as /init
	Files   []File // appended (uncompressed) after the built archive
}

// InitImage builds the image of o and returns its path and report.
func InitImage(ctx context.Context, o InitImageOptions) (string, *ramfs.Report, error) {
	if err := os.MkdirAll(o.Dir, 0o755); err != nil {
		return "", nil, err
	}
	p := func(n string) string { return filepath.Join(o.Dir, n) }
	// The builder wants an agent config and a CA; this /init reads neither.
	if err := os.WriteFile(p("agent.json"), []byte(`{"server_url": "`+ServerURL+`", "sealing": "unmeasured"}`+"\n"), 0o644); err != nil {
		return "", nil, err
	}
	if err := os.WriteFile(p("ca.pem"), throwawayCA(), 0o644); err != nil {
		return "", nil, err
	}
	built := p("built.cpio.xz")
	rep, err := ramfs.Build(ctx, ramfs.Options{AgentPkg: o.InitPkg, AgentConfig: p("agent.json"), CA: p("ca.pem"),
		KernelModulesDir: o.Kernel.Modules, Modules: []string{}, Out: built})
	if err != nil {
		return "", nil, err
	}
	if len(o.Files) == 0 {
		return built, rep, nil
	}
	b, err := os.ReadFile(built)
	if err != nil {
		return "", nil, err
	}
	img, err := Append(b, o.Files...)
	if err != nil {
		return "", nil, err
	}
	out := p("initramfs.cpio")
	return out, rep, os.WriteFile(out, img, 0o644)
}

// throwawayCA is a CA certificate nobody holds the key of.
func throwawayCA() []byte {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "unused"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true}
	der, _ := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}
