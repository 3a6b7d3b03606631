package main

import (
	"crypto/ed25519"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"patela/internal/atomicfile"
	"patela/stimage/keygen"
	"patela/stimage/ospkg"
	"patela/stimage/trust"
)

// flags is a FlagSet whose options answer to both their kebab-case name
// and stmgr's camelCase one.
type flags struct{ *flag.FlagSet }

func newFlags(name string) flags {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(os.Stderr)
	return flags{fs}
}

func (f flags) str(p *string, name, stmgr, def, usage string) {
	f.StringVar(p, name, def, usage)
	if stmgr != "" && stmgr != name {
		f.StringVar(p, stmgr, def, "alias of --"+name)
	}
}

func (f flags) parse(args []string) error {
	if err := f.Parse(args); err != nil {
		return err
	}
	if f.NArg() != 0 {
		return fmt.Errorf("unexpected arguments %q", f.Args())
	}
	return nil
}

func keygenCertificate(args []string) error {
	f := newFlags("keygen certificate")
	var isCA bool
	var rootCert, rootKey, leafKey, certOut, keyOut, from, until string
	f.BoolVar(&isCA, "is-ca", false, "make a self-signed root certificate")
	f.BoolVar(&isCA, "isCA", false, "alias of --is-ca")
	f.str(&rootCert, "root-cert", "rootCert", "rootcert.pem", "root certificate that issues a leaf")
	f.str(&rootKey, "root-key", "rootKey", "rootkey.pem", "root private key that issues a leaf")
	f.str(&leafKey, "leaf-key", "leafKey", "", "existing key (PEM public or private) to certify; default: a new Ed25519 key written to --key-out")
	f.str(&certOut, "cert-out", "certOut", "", "certificate output (default cert.pem, rootcert.pem with --is-ca)")
	f.str(&keyOut, "key-out", "keyOut", "", "new private key output (default key.pem, rootkey.pem with --is-ca)")
	f.str(&from, "valid-from", "validFrom", "", "start of validity, RFC 3339 (default now)")
	f.str(&until, "valid-until", "validUntil", "", "end of validity, RFC 3339 (default 72h after --valid-from)")
	if err := f.parse(args); err != nil {
		return err
	}
	if certOut == "" {
		certOut = map[bool]string{true: "rootcert.pem", false: "cert.pem"}[isCA]
	}
	if keyOut == "" {
		keyOut = map[bool]string{true: "rootkey.pem", false: "key.pem"}[isCA]
	}
	nb := time.Now().UTC().Truncate(time.Second)
	var err error
	if from != "" {
		if nb, err = time.Parse(time.RFC3339, from); err != nil {
			return fmt.Errorf("--valid-from: %w", err)
		}
	}
	na := nb.Add(keygen.DefaultValidity)
	if until != "" {
		if na, err = time.Parse(time.RFC3339, until); err != nil {
			return fmt.Errorf("--valid-until: %w", err)
		}
	}

	var pub ed25519.PublicKey
	var newKey ed25519.PrivateKey
	if leafKey != "" {
		b, err := os.ReadFile(leafKey)
		if err != nil {
			return err
		}
		if pub, err = keygen.ParsePublicKey(b); err != nil {
			return fmt.Errorf("%s: %w", leafKey, err)
		}
	} else {
		if newKey, err = keygen.NewKey(); err != nil {
			return err
		}
		pub = newKey.Public().(ed25519.PublicKey)
	}
	req := keygen.Request{Key: pub, IsCA: isCA, NotBefore: nb, NotAfter: na}
	if isCA {
		if newKey == nil {
			// A self-signed root needs its private key.
			b, _ := os.ReadFile(leafKey)
			if newKey, err = keygen.ParsePrivateKey(b); err != nil {
				return fmt.Errorf("--is-ca with --leaf-key needs the private key: %w", err)
			}
		}
		req.ParentKey = newKey
	} else {
		rc, err := os.ReadFile(rootCert)
		if err != nil {
			return err
		}
		if req.Parent, err = ospkg.ParseCertificate(rc); err != nil {
			return fmt.Errorf("%s: %w", rootCert, err)
		}
		rk, err := os.ReadFile(rootKey)
		if err != nil {
			return err
		}
		if req.ParentKey, err = keygen.ParsePrivateKey(rk); err != nil {
			return fmt.Errorf("%s: %w", rootKey, err)
		}
	}
	certPEM, err := keygen.Certificate(req)
	if err != nil {
		return err
	}
	// Write the key first: a certificate without its key is useless.
	if newKey != nil && leafKey == "" {
		kp, err := keygen.MarshalPrivateKey(newKey)
		if err != nil {
			return err
		}
		if err := atomicfile.Write(keyOut, kp, 0o600); err != nil {
			return err
		}
		fmt.Printf("wrote %s\n", keyOut)
	}
	if err := atomicfile.Write(certOut, certPEM, 0o644); err != nil {
		return err
	}
	fmt.Printf("wrote %s (valid %s to %s)\n", certOut, nb.Format(time.RFC3339), na.Format(time.RFC3339))
	return nil
}

// pkgPaths maps NAME, NAME.zip or NAME.json to the pair.
func pkgPaths(name string) (zip, desc string, err error) {
	if name == "" {
		return "", "", errors.New("--ospkg is required")
	}
	base := strings.TrimSuffix(strings.TrimSuffix(name, ".zip"), ".json")
	return base + ".zip", base + ".json", nil
}

func ospkgCreate(args []string) error {
	f := newFlags("ospkg create")
	var out, label, url, kernel, initramfs, cmdline string
	f.str(&out, "out", "", "", "output NAME: writes NAME.zip and NAME.json (required)")
	f.str(&label, "label", "", "", "short description of the package")
	f.str(&url, "url", "", "", "os_pkg_url of the descriptor (the zip's URL, may be relative); empty for initramfs mode")
	f.str(&kernel, "kernel", "", "", "kernel (bzImage) (required)")
	f.str(&initramfs, "initramfs", "", "", "initramfs (required)")
	f.str(&cmdline, "cmdline", "", "", "kernel command line")
	if err := f.parse(args); err != nil {
		return err
	}
	if out == "" || kernel == "" || initramfs == "" {
		return errors.New("--out, --kernel and --initramfs are required")
	}
	kb, err := readLimited(kernel, ospkg.MaxEntryBytes)
	if err != nil {
		return err
	}
	ib, err := readLimited(initramfs, ospkg.MaxEntryBytes)
	if err != nil {
		return err
	}
	zb, db, err := ospkg.Create(ospkg.Options{Label: label, URL: url, Kernel: kb, Initramfs: ib,
		KernelName: filepath.Base(kernel), InitramfsName: filepath.Base(initramfs), Cmdline: cmdline})
	if err != nil {
		return err
	}
	zp, dp, _ := pkgPaths(out)
	if err := atomicfile.Write(zp, zb, 0o644); err != nil {
		return err
	}
	if err := atomicfile.Write(dp, db, 0o644); err != nil {
		os.Remove(zp)
		return err
	}
	fmt.Printf("wrote %s (%d bytes, sha256 %x) and %s (unsigned)\n", zp, len(zb), ospkg.Digest(zb), dp)
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

func ospkgSign(args []string) error {
	f := newFlags("ospkg sign")
	var keyPath, certPath, name string
	f.str(&keyPath, "key", "", "", "Ed25519 private key (PKCS#8 PEM) (required)")
	f.str(&certPath, "cert", "", "", "certificate of that key (required)")
	f.str(&name, "ospkg", "", "", "OS package NAME, NAME.zip or NAME.json (required)")
	if err := f.parse(args); err != nil {
		return err
	}
	if keyPath == "" || certPath == "" {
		return errors.New("--key and --cert are required")
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
	fmt.Printf("signed %s: %s now holds %d signature(s)\n", zp, dp, len(d.Signatures))
	return nil
}

// verified opens and verifies an OS package against a trust policy
// directory or a roots file, printing each signature's fate.
func verified(args []string, name string, extra func(flags)) (*ospkg.Package, error) {
	f := newFlags(name)
	var policyDir, rootsPath, pkg string
	f.str(&policyDir, "trust-policy", "trustPolicy", "", "trust policy directory (trust_policy.json + ospkg_signing_root.pem)")
	f.str(&rootsPath, "root-certs", "rootCerts", "", "signing root certificate(s), PEM: every signature must be valid, at least one")
	f.str(&pkg, "ospkg", "", "", "OS package NAME, NAME.zip or NAME.json (required)")
	if extra != nil {
		extra(f)
	}
	if err := f.parse(args); err != nil {
		return nil, err
	}
	if (policyDir == "") == (rootsPath == "") {
		return nil, errors.New("give exactly one of --trust-policy and --root-certs")
	}
	zb, d, zp, _, err := load(pkg)
	if err != nil {
		return nil, err
	}
	p, err := ospkg.Open(zb)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", zp, err)
	}
	var threshold int
	var res *ospkg.Result
	if policyDir != "" {
		pol, rs, err := trust.LoadDir(policyDir)
		if err != nil {
			return nil, err
		}
		threshold = pol.SignatureThreshold
		res, err = ospkg.Verify(d, zb, rs, threshold, time.Now())
		if err != nil {
			return nil, err
		}
	} else {
		rs, err := trust.LoadRoots(rootsPath)
		if err != nil {
			return nil, err
		}
		threshold = max(len(d.Signatures), 1)
		res, err = ospkg.Verify(d, zb, rs, threshold, time.Now())
		if err != nil {
			return nil, err
		}
	}
	for _, s := range res.Signatures {
		if s.Valid {
			fmt.Printf("  signature %d: valid (%s)\n", s.Index, s.Subject)
		} else {
			fmt.Printf("  signature %d: does not count: %s\n", s.Index, s.Reason)
		}
	}
	if !res.OK() {
		return nil, fmt.Errorf("%s: %d valid signature(s), %d required: REFUSED", zp, res.Valid, res.Threshold)
	}
	fmt.Printf("%s: %d valid signature(s), threshold %d: OK (label %q)\n", zp, res.Valid, res.Threshold, p.Manifest.Label)
	return p, nil
}

func ospkgVerify(args []string) error {
	_, err := verified(args, "ospkg verify", nil)
	return err
}

// ospkgExtract verifies, then writes the kernel, initramfs and cmdline to
// a directory, as stboot would hand them to kexec.
func ospkgExtract(args []string) error {
	var out string
	p, err := verified(args, "ospkg extract", func(f flags) {
		f.str(&out, "out", "", "", "directory for kernel, initramfs and cmdline (required)")
	})
	if err != nil {
		return err
	}
	if out == "" {
		return errors.New("--out is required")
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	for n, b := range map[string][]byte{"kernel": p.Kernel, "initramfs": p.Initramfs, "cmdline": []byte(p.Manifest.Cmdline)} {
		if err := atomicfile.Write(filepath.Join(out, n), b, 0o644); err != nil {
			return err
		}
	}
	fmt.Printf("extracted kernel, initramfs and cmdline into %s\n", out)
	return nil
}

// jsonArg takes stmgr's JSON string argument, or a file name.
func jsonArg(args []string) ([]byte, error) {
	if len(args) != 1 {
		return nil, errors.New("want one argument: the JSON text or a file holding it")
	}
	if s := strings.TrimSpace(args[0]); strings.HasPrefix(s, "{") {
		return []byte(s), nil
	}
	return readLimited(args[0], 1<<20)
}

func trustpolicyCheck(args []string) error {
	b, err := jsonArg(args)
	if err != nil {
		return err
	}
	p, err := trust.ParsePolicy(b)
	if err != nil {
		return err
	}
	return printJSON(p)
}

func hostconfigCheck(args []string) error {
	b, err := jsonArg(args)
	if err != nil {
		return err
	}
	h, err := trust.ParseHostConfig(b)
	if err != nil {
		return err
	}
	return printJSON(h)
}
