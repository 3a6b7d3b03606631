package harness

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"patela/initramfs/ramfs"
)

// Cmdline is the kernel command line the OS package carries.
const Cmdline = "console=ttyS0 panic=10 quiet"

// ImageOptions describe the machine image to build.
type ImageOptions struct {
	Tools    *Tools
	Kernel   *Kernel
	Dir      string // work directory: keys, initramfs, package, extracted boot files
	ServerCA string // PEM the agent trusts for the config server
	Debug    bool   // debug initramfs (shell with patela.debug=shell)
	// PolicyKey (base64 PKIX DER) makes a release image: the vault is
	// sealed to the release policy key. Empty: "unmeasured" sealing, for
	// the direct-kernel boots, which measure nothing.
	PolicyKey string
	Log       io.Writer
}

// Image is a built, signed and verified OS package and the boot files
// extracted from it.
type Image struct {
	Initramfs   string // as built
	Report      *ramfs.Report
	Package     string // NAME of NAME.zip + NAME.json
	TrustPolicy string // directory: trust_policy.json (threshold 2) + ospkg_signing_root.pem
	// Boot files extracted from the verified package, what stboot would
	// kexec (no stboot binary exists here: QEMU boots them directly).
	Kernel, BootInitramfs, Cmdline string

	tools *Tools
	log   io.Writer
}

// BuildImage builds the initramfs (agent, tor, modules, agent config, CA),
// makes a root and a signing certificate, creates the OS package, signs it
// with both, verifies it against a threshold-2 trust policy and extracts
// the boot files.
func BuildImage(ctx context.Context, o ImageOptions) (*Image, error) {
	if err := os.MkdirAll(o.Dir, 0o755); err != nil {
		return nil, err
	}
	p := func(n string) string { return filepath.Join(o.Dir, n) }
	ac := map[string]any{
		"server_url": ServerURL,
		"mgmt_mac":   MgmtMAC,
		"modules":    Modules,
		"sealing":    "unmeasured",
	}
	if o.PolicyKey != "" {
		ac["sealing"], ac["policy_key"] = "release", o.PolicyKey
	}
	cfg, _ := json.MarshalIndent(ac, "", "  ")
	if err := os.WriteFile(p("agent.json"), cfg, 0o644); err != nil {
		return nil, err
	}
	im := &Image{Initramfs: p("initramfs.cpio.xz"), Package: p("patela-os"), TrustPolicy: p("trust"), tools: o.Tools, log: o.Log}
	rep, err := ramfs.Build(ctx, ramfs.Options{
		AgentConfig: p("agent.json"), CA: o.ServerCA, KernelModulesDir: o.Kernel.Modules,
		Debug: o.Debug, Out: im.Initramfs,
	})
	if err != nil {
		return nil, err
	}
	im.Report = rep

	steps := [][]string{
		{"keygen", "certificate", "--is-ca", "--valid-until", "2099-01-01T00:00:00Z", "--cert-out", p("root.pem"), "--key-out", p("root.key")},
		{"keygen", "certificate", "--root-cert", p("root.pem"), "--root-key", p("root.key"), "--cert-out", p("signer.pem"), "--key-out", p("signer.key")},
		{"ospkg", "create", "--out", im.Package, "--label", "patela relay machine", "--url", "https://boot.example.org/patela/patela-os.zip",
			"--kernel", o.Kernel.Vmlinuz, "--initramfs", im.Initramfs, "--cmdline", Cmdline},
		{"ospkg", "sign", "--key", p("root.key"), "--cert", p("root.pem"), "--ospkg", im.Package},
		{"ospkg", "sign", "--key", p("signer.key"), "--cert", p("signer.pem"), "--ospkg", im.Package},
	}
	for _, s := range steps {
		if err := im.Stimage(ctx, s...); err != nil {
			return nil, err
		}
	}
	if err := os.MkdirAll(im.TrustPolicy, 0o755); err != nil {
		return nil, err
	}
	root, err := os.ReadFile(p("root.pem"))
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(im.TrustPolicy, "trust_policy.json"), []byte(`{"ospkg_signature_threshold": 2, "ospkg_fetch_method": "network"}`+"\n"), 0o644); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(im.TrustPolicy, "ospkg_signing_root.pem"), root, 0o644); err != nil {
		return nil, err
	}
	boot := p("boot")
	if err := im.Stimage(ctx, "ospkg", "extract", "--trust-policy", im.TrustPolicy, "--ospkg", im.Package, "--out", boot); err != nil {
		return nil, err
	}
	im.Kernel, im.BootInitramfs = filepath.Join(boot, "kernel"), filepath.Join(boot, "initramfs")
	cl, err := os.ReadFile(filepath.Join(boot, "cmdline"))
	if err != nil {
		return nil, err
	}
	im.Cmdline = string(cl)
	return im, nil
}

// Verify runs `stimage ospkg verify` on a package against the image's
// trust policy.
func (im *Image) Verify(ctx context.Context, pkg string) error {
	return im.Stimage(ctx, "ospkg", "verify", "--trust-policy", im.TrustPolicy, "--ospkg", pkg)
}

// Stimage runs the stimage binary, logging its output.
func (im *Image) Stimage(ctx context.Context, args ...string) error {
	cmd := exec.CommandContext(ctx, im.tools.Stimage, args...)
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	fmt.Fprintf(im.log, "$ stimage %s\n%s", quote(args), out.String())
	if err != nil {
		return fmt.Errorf("stimage %s: %v: %s", quote(args), err, strings.TrimSpace(out.String()))
	}
	return nil
}
