package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"patela/internal/atomicfile"
	"patela/internal/cmdline"
	"patela/stimage/ospkg"
	"patela/stimage/stboot"
	"patela/stimage/trust"
	"patela/stimage/uki"
)

// TLSRootsFile is the HTTPS roots file of a trust policy directory (ST
// 1.x's name; stboot v0.2.2 has ISRG Root X1 at /etc/ssl/certs).
const TLSRootsFile = "tls_roots.pem"

func ukiCreate(e *env, fs *flag.FlagSet, args []string) error {
	f := flags{fs}
	var kernel, initramfs, kcmdline, osrel, out, stub string
	f.str(&kernel, "kernel", "", "", "kernel `FILE` (bzImage with an EFI stub) (required)")
	f.str(&initramfs, "initramfs", "", "", "initramfs `FILE` (required)")
	f.str(&kcmdline, "cmdline", "", "", "kernel command `LINE` embedded in the UKI")
	f.str(&osrel, "os-release", "osRelease", "", "os-release `FILE` for the .osrel section (required)")
	f.str(&out, "out", "", "", "UKI output `FILE` (required)")
	f.str(&stub, "stub", "", uki.DefaultStub, "systemd-stub `FILE` to build on")
	if err := f.parse(args); err != nil {
		return err
	}
	if kernel == "" || initramfs == "" || osrel == "" || out == "" {
		return cmdline.Usagef("--kernel, --initramfs, --os-release and --out are required")
	}
	o := uki.Options{Stub: stub, Cmdline: kcmdline}
	var err error
	if o.Kernel, err = readLimited(kernel, uki.MaxKernel); err != nil {
		return err
	}
	if o.Initramfs, err = readLimited(initramfs, uki.MaxInitramfs); err != nil {
		return err
	}
	if o.OSRelease, err = readLimited(osrel, uki.MaxOSRelease); err != nil {
		return err
	}
	u, err := uki.Create(context.Background(), o)
	if err != nil {
		return err
	}
	if err := atomicfile.Write(out, u, 0o644); err != nil {
		return err
	}
	m, err := uki.Measure(u, uki.BootEntry)
	if err != nil {
		return err
	}
	fmt.Fprintf(e.out, "wrote %s (%d bytes, sha256 %x, PCR 11 %s)\n", out, len(u), m.FileSHA256, m.PCR11)
	return nil
}

// pcrsJSON is the --json form of the pcrs commands: expected SHA-256 PCR
// values by index, plus what they were computed from.
type pcrsJSON struct {
	PCRs      map[string]string `json:"pcrs"`
	Boot      string            `json:"boot,omitempty"`
	Artifacts map[string]string `json:"artifacts"`
	Sections  any               `json:"sections,omitempty"`
}

func ukiPcrs(e *env, fs *flag.FlagSet, args []string) error {
	var boot string
	var asJSON bool
	flags{fs}.str(&boot, "boot", "", string(uki.BootEntry), "how the firmware starts the UKI (`MODE`): entry (UEFI boot entry, ESP) or direct (QEMU -kernel under OVMF)")
	fs.BoolVar(&asJSON, "json", false, "print JSON")
	pos, err := cmdline.Parse(fs, args, 1, 1)
	if err != nil {
		return err
	}
	name := pos[0]
	b, err := uki.ParseBoot(boot)
	if err != nil {
		return err
	}
	u, err := readLimited(name, uki.MaxKernel+uki.MaxInitramfs+1<<20)
	if err != nil {
		return err
	}
	start := time.Now()
	m, err := uki.Measure(u, b)
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	took := time.Since(start)
	if asJSON {
		return e.printJSON(pcrsJSON{
			PCRs: map[string]string{"4": m.PCR4.String(), "11": m.PCR11.String(), "12": m.PCR12.String()},
			Boot: string(b),
			Artifacts: map[string]string{"uki": fmt.Sprintf("%x", m.FileSHA256),
				"uki_authenticode": fmt.Sprintf("%x", m.UKIAuthenticode), "linux_authenticode": fmt.Sprintf("%x", m.LinuxAuthenticode)},
			Sections: m.Sections,
		})
	}
	fmt.Fprintf(e.out, "PCR 4  %s  firmware: UKI %x then its kernel %x (Authenticode), boot %s\n", m.PCR4, m.UKIAuthenticode[:8], m.LinuxAuthenticode[:8], b)
	fmt.Fprintf(e.out, "PCR 11 %s  systemd-stub:", m.PCR11)
	for _, s := range m.Sections {
		fmt.Fprintf(e.out, " %s", s.Name)
	}
	fmt.Fprintf(e.out, "\nPCR 12 %s  no command line override, no credentials\n", m.PCR12)
	fmt.Fprintf(e.out, "(%x, predicted in %v)\n", m.FileSHA256, took.Round(time.Millisecond))
	return nil
}

// ospkgMeasure verifies an OS package against a trust policy directory
// and predicts stboot's PCR 12 and 13 for it.
func ospkgMeasure(pkg, policyDir, tlsRoots string) (pcr12, pcr13 string, arts map[string]string, err error) {
	if policyDir == "" {
		return "", "", nil, cmdline.Usagef("--trust-policy is required")
	}
	if tlsRoots == "" {
		tlsRoots = filepath.Join(policyDir, TLSRootsFile)
	}
	zb, d, zp, dp, err := load(pkg)
	if err != nil {
		return "", "", nil, err
	}
	db, err := os.ReadFile(dp)
	if err != nil {
		return "", "", nil, err
	}
	p, err := ospkg.Open(zb)
	if err != nil {
		return "", "", nil, fmt.Errorf("%s: %w", zp, err)
	}
	pol, roots, err := trust.LoadDir(policyDir)
	if err != nil {
		return "", "", nil, err
	}
	res, err := ospkg.Verify(d, zb, roots, pol.SignatureThreshold, time.Now())
	if err != nil {
		return "", "", nil, err
	}
	if !res.OK() {
		return "", "", nil, fmt.Errorf("%s: %d valid signature(s), %d required: stboot would not boot it", zp, res.Valid, res.Threshold)
	}
	https, err := trust.LoadRoots(tlsRoots)
	if err != nil {
		// Any certificate will do for HTTPS roots, CA or not.
		b, rerr := os.ReadFile(tlsRoots)
		if rerr != nil {
			return "", "", nil, fmt.Errorf("HTTPS roots (stboot measures them into PCR 13): %w", rerr)
		}
		if https, err = ospkg.ParseCertificates(b); err != nil {
			return "", "", nil, fmt.Errorf("%s: %w", tlsRoots, err)
		}
	}
	v13, err := stboot.PCR13(stboot.Policy{SignatureThreshold: pol.SignatureThreshold, FetchMethod: pol.FetchMethod}, roots, https)
	if err != nil {
		return "", "", nil, err
	}
	arts = map[string]string{"archive": fmt.Sprintf("%x", ospkg.Digest(zb)), "descriptor": sha256hex(db),
		"kernel": sha256hex(p.Kernel), "initramfs": sha256hex(p.Initramfs)}
	return stboot.PCR12(zb, db).String(), v13.String(), arts, nil
}

func ospkgPcrs(e *env, fs *flag.FlagSet, args []string) error {
	f := flags{fs}
	var pkg, policyDir, tlsRoots string
	var asJSON bool
	f.str(&pkg, "ospkg", "", "", "OS package `NAME`, NAME.zip or NAME.json (required; signed: the descriptor as served)")
	f.str(&policyDir, "trust-policy", "trustPolicy", "", "stboot's trust policy `DIR` (required)")
	f.str(&tlsRoots, "tls-roots", "tlsRoots", "", "stboot's HTTPS roots `FILE`, PEM (default DIR/"+TLSRootsFile+")")
	f.BoolVar(&asJSON, "json", false, "print JSON")
	if err := f.parse(args); err != nil {
		return err
	}
	p12, p13, arts, err := ospkgMeasure(pkg, policyDir, tlsRoots)
	if err != nil {
		return err
	}
	if asJSON {
		return e.printJSON(pcrsJSON{PCRs: map[string]string{"12": p12, "13": p13}, Artifacts: arts})
	}
	fmt.Fprintf(e.out, "PCR 12 %s  stboot v0.2.2: archive %s…, then descriptor %s…\n", p12, arts["archive"][:16], arts["descriptor"][:16])
	fmt.Fprintf(e.out, "PCR 13 %s  stboot v0.2.2: trust policy, signing root, HTTPS roots\n", p13)
	return nil
}
