package main

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"patela/internal/atomicfile"
	"patela/internal/cmdline"
	"patela/stimage/keygen"
	"patela/stimage/ospkg"
	"patela/stimage/trust"
)

// flags is a FlagSet whose options answer to both their kebab-case name
// and stmgr's camelCase one.
type flags struct{ *flag.FlagSet }

func (f flags) str(p *string, name, stmgr, def, usage string) {
	f.StringVar(p, name, def, usage)
	if stmgr != "" && stmgr != name {
		f.StringVar(p, stmgr, def, "alias of --"+name)
	}
}

// parse parses a command that takes flags only.
func (f flags) parse(args []string) error {
	_, err := cmdline.Parse(f.FlagSet, args, 0, 0)
	return err
}

// given reports the flags set on the command line, by their kebab-case
// name (stmgr's spelling counts as its flag).
func (f flags) given() map[string]bool {
	set := map[string]bool{}
	f.Visit(func(fl *flag.Flag) {
		name, alias := strings.CutPrefix(fl.Usage, "alias of --")
		if !alias {
			name = fl.Name
		}
		set[name] = true
	})
	return set
}

// pkgPaths maps NAME, NAME.zip or NAME.json to the pair.
func pkgPaths(name string) (zip, desc string, err error) {
	if name == "" {
		return "", "", cmdline.Usagef("--ospkg is required")
	}
	base := strings.TrimSuffix(strings.TrimSuffix(name, ".zip"), ".json")
	return base + ".zip", base + ".json", nil
}

func ospkgCreate(e *env, fs *flag.FlagSet, args []string) error {
	f := flags{fs}
	var out, label, url, kernel, initramfs, kcmdline string
	f.StringVar(&out, "out", "", "output `NAME`: writes NAME.zip and NAME.json (required)")
	f.StringVar(&label, "label", "", "short description (`TEXT`) of the package")
	f.StringVar(&url, "url", "", "os_pkg_url of the descriptor: the zip's absolute `URL`, or a base ending in / (NAME.zip is appended); relative needs ST >= 1.1; empty for initramfs mode")
	f.StringVar(&kernel, "kernel", "", "kernel `FILE` (bzImage) (required)")
	f.StringVar(&initramfs, "initramfs", "", "initramfs `FILE` (required)")
	f.StringVar(&kcmdline, "cmdline", "", "kernel command `LINE`")
	if err := f.parse(args); err != nil {
		return err
	}
	if out == "" || kernel == "" || initramfs == "" {
		return cmdline.Usagef("--out, --kernel and --initramfs are required")
	}
	kb, err := readLimited(kernel, ospkg.MaxEntryBytes)
	if err != nil {
		return err
	}
	ib, err := readLimited(initramfs, ospkg.MaxEntryBytes)
	if err != nil {
		return err
	}
	zp, dp, _ := pkgPaths(out)
	url, relative, err := ospkg.ResolveURL(url, filepath.Base(zp))
	if err != nil {
		return err
	}
	if relative {
		fmt.Fprintf(os.Stderr, "stimage ospkg create: warning: "+ospkg.RelativeURLWarning+"\n", url)
	}
	zb, db, err := ospkg.Create(ospkg.Options{Label: label, URL: url, Kernel: kb, Initramfs: ib,
		KernelName: filepath.Base(kernel), InitramfsName: filepath.Base(initramfs), Cmdline: kcmdline})
	if err != nil {
		return err
	}
	if err := atomicfile.Write(zp, zb, 0o644); err != nil {
		return err
	}
	if err := atomicfile.Write(dp, db, 0o644); err != nil {
		os.Remove(zp)
		return err
	}
	fmt.Fprintf(e.out, "wrote %s (%d bytes, sha256 %x) and %s (unsigned)\n", zp, len(zb), ospkg.Digest(zb), dp)
	return nil
}

// load reads and parses both halves of an OS package.
func load(name string) (zb []byte, d *ospkg.Descriptor, zp, dp string, err error) {
	zp, dp, err = pkgPaths(name)
	if err != nil {
		return
	}
	if zb, err = readLimited(zp, ospkg.MaxArchiveBytes); err != nil {
		return
	}
	var db []byte
	if db, err = readLimited(dp, ospkg.MaxDescriptor); err != nil {
		return
	}
	if d, err = ospkg.ParseDescriptor(db); err != nil {
		err = fmt.Errorf("%s: %w", dp, err)
	}
	return
}

func ospkgSign(e *env, fs *flag.FlagSet, args []string) error {
	f := flags{fs}
	var keyPath, certPath, name string
	f.StringVar(&keyPath, "key", "", "Ed25519 private key `FILE` (PKCS#8 PEM) (required)")
	f.StringVar(&certPath, "cert", "", "certificate `FILE` of that key (required)")
	f.StringVar(&name, "ospkg", "", "OS package `NAME`, NAME.zip or NAME.json (required)")
	if err := f.parse(args); err != nil {
		return err
	}
	if keyPath == "" || certPath == "" {
		return cmdline.Usagef("--key and --cert are required")
	}
	zb, d, zp, dp, err := load(name)
	if err != nil {
		return err
	}
	if _, err := ospkg.Open(zb); err != nil {
		return fmt.Errorf("%s: %w", zp, err)
	}
	kb, err := os.ReadFile(keyPath)
	if err != nil {
		return err
	}
	key, err := keygen.ParsePrivateKey(kb)
	if err != nil {
		return fmt.Errorf("%s: %w", keyPath, err)
	}
	cb, err := os.ReadFile(certPath)
	if err != nil {
		return err
	}
	if err := ospkg.Sign(d, zb, key, cb); err != nil {
		return err
	}
	db, err := d.Marshal()
	if err != nil {
		return err
	}
	if err := atomicfile.Write(dp, db, 0o644); err != nil {
		return err
	}
	fmt.Fprintf(e.out, "signed %s: %s now holds %d signature(s)\n", zp, dp, len(d.Signatures))
	return nil
}

// verified opens and verifies an OS package against a trust policy
// directory or a roots file, printing each signature's fate.
func verified(e *env, f flags, args []string) (*ospkg.Package, error) {
	var policyDir, rootsPath, pkg string
	f.str(&policyDir, "trust-policy", "trustPolicy", "", "trust policy `DIR` (trust_policy.json + ospkg_signing_root.pem)")
	f.str(&rootsPath, "root-certs", "rootCerts", "", "signing root certificate(s) `FILE`, PEM: every signature must be valid, at least one")
	f.StringVar(&pkg, "ospkg", "", "OS package `NAME`, NAME.zip or NAME.json (required)")
	if err := f.parse(args); err != nil {
		return nil, err
	}
	if (policyDir == "") == (rootsPath == "") {
		return nil, cmdline.Usagef("give exactly one of --trust-policy and --root-certs")
	}
	zb, d, zp, _, err := load(pkg)
	if err != nil {
		return nil, err
	}
	p, err := ospkg.Open(zb)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", zp, err)
	}
	res, err := verifyAgainst(d, zb, policyDir, rootsPath)
	if err != nil {
		return nil, err
	}
	if err := e.report(res, zp, p.Manifest.Label); err != nil {
		return nil, err
	}
	if ospkg.IsRelative(d.PkgURL) {
		fmt.Fprintf(e.out, "  warning: "+ospkg.RelativeURLWarning+"\n", d.PkgURL)
	}
	if policyDir != "" {
		return p, e.notChecked(policyDir)
	}
	return p, nil
}

// verifyAgainst checks the package's signatures against a trust policy
// directory (its threshold) or a roots file (every signature, at least one).
func verifyAgainst(d *ospkg.Descriptor, zb []byte, policyDir, rootsPath string) (*ospkg.Result, error) {
	if policyDir != "" {
		pol, rs, err := trust.LoadDir(policyDir)
		if err != nil {
			return nil, err
		}
		return ospkg.Verify(d, zb, rs, pol.SignatureThreshold, time.Now())
	}
	rs, err := trust.LoadRoots(rootsPath)
	if err != nil {
		return nil, err
	}
	return ospkg.Verify(d, zb, rs, max(len(d.Signatures), 1), time.Now())
}

// report prints each signature's fate and the verdict; a package short of
// its threshold is an error.
func (e *env) report(res *ospkg.Result, zp, label string) error {
	for _, s := range res.Signatures {
		if s.Valid {
			fmt.Fprintf(e.out, "  signature %d: valid (%s)\n", s.Index, s.Subject)
		} else {
			fmt.Fprintf(e.out, "  signature %d: does not count: %s\n", s.Index, s.Reason)
		}
	}
	if !res.OK() {
		return fmt.Errorf("%s: %d valid signature(s), %d required: REFUSED", zp, res.Valid, res.Threshold)
	}
	fmt.Fprintf(e.out, "%s: %d valid signature(s), threshold %d: OK (label %q)\n", zp, res.Valid, res.Threshold, label)
	return nil
}

// notChecked says what of the trust policy directory stboot reads that
// verify did not.
func (e *env) notChecked(policyDir string) error {
	other, err := trust.OtherFiles(policyDir)
	if err != nil {
		return err
	}
	fmt.Fprintf(e.out, "  not checked: Sigsum policies and proofs, decryption identities (encrypted packages) and TLS roots; read only %s and %s", trust.PolicyFile, trust.RootsFile)
	if len(other) > 0 {
		fmt.Fprintf(e.out, ", not %s", strings.Join(other, ", "))
	}
	fmt.Fprintln(e.out)
	return nil
}

func ospkgVerify(e *env, fs *flag.FlagSet, args []string) error {
	_, err := verified(e, flags{fs}, args)
	return err
}

// ospkgExtract verifies, then writes the kernel, initramfs and cmdline to
// a directory, as stboot would hand them to kexec.
func ospkgExtract(e *env, fs *flag.FlagSet, args []string) error {
	out := fs.String("out", "", "`DIR` for kernel, initramfs and cmdline (required)")
	p, err := verified(e, flags{fs}, args)
	if err != nil {
		return err
	}
	if *out == "" {
		return cmdline.Usagef("--out is required")
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		return err
	}
	for n, b := range map[string][]byte{"kernel": p.Kernel, "initramfs": p.Initramfs, "cmdline": []byte(p.Manifest.Cmdline)} {
		if err := atomicfile.Write(filepath.Join(*out, n), b, 0o644); err != nil {
			return err
		}
	}
	fmt.Fprintf(e.out, "extracted kernel, initramfs and cmdline into %s\n", *out)
	return nil
}

// checkJSON is a check command: stmgr's JSON string argument, or a file
// holding it, parsed by parse and printed back as stboot reads it.
func checkJSON[T any](e *env, fs *flag.FlagSet, args []string, parse func([]byte) (T, error)) error {
	pos, err := cmdline.Parse(fs, args, 1, 1)
	if err != nil {
		return err
	}
	b := []byte(strings.TrimSpace(pos[0]))
	if !bytes.HasPrefix(b, []byte("{")) {
		if b, err = readLimited(pos[0], 1<<20); err != nil {
			return err
		}
	}
	v, err := parse(b)
	if err != nil {
		return err
	}
	return e.printJSON(v)
}

func trustpolicyCheck(e *env, fs *flag.FlagSet, args []string) error {
	return checkJSON(e, fs, args, trust.ParsePolicy)
}

func hostconfigCheck(e *env, fs *flag.FlagSet, args []string) error {
	return checkJSON(e, fs, args, func(b []byte) (*trust.HostConfig, error) {
		h, notes, err := trust.ParseHostConfig(b)
		for _, n := range notes {
			fmt.Fprintln(os.Stderr, "stimage hostconfig check: note:", n)
		}
		return h, err
	})
}
