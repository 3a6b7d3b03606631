package main

import (
	"crypto/ed25519"
	"crypto/x509"
	"flag"
	"fmt"
	"os"
	"time"

	"patela/internal/atomicfile"
	"patela/internal/cmdline"
	"patela/stimage/keygen"
	"patela/stimage/ospkg"
)

// certOpts are keygen certificate's flags.
type certOpts struct {
	isCA                                                     bool
	rootCert, rootKey, leafKey, certOut, keyOut, from, until string
	given                                                    map[string]bool
}

func parseCertOpts(f flags, args []string) (*certOpts, error) {
	o := &certOpts{}
	f.BoolVar(&o.isCA, "is-ca", false, "make a self-signed root certificate (of --root-key or --leaf-key if given, else of a new key)")
	f.BoolVar(&o.isCA, "isCA", false, "alias of --is-ca")
	f.str(&o.rootCert, "root-cert", "rootCert", "rootcert.pem", "root certificate `FILE` that issues a leaf")
	f.str(&o.rootKey, "root-key", "rootKey", "rootkey.pem", "root private key `FILE` that issues a leaf; with --is-ca, the key the root certifies")
	f.str(&o.leafKey, "leaf-key", "leafKey", "", "existing key `FILE` (PEM public or private) to certify; default: a new Ed25519 key written to --key-out")
	f.str(&o.certOut, "cert-out", "certOut", "", "certificate output `FILE` (default cert.pem, rootcert.pem with --is-ca)")
	f.str(&o.keyOut, "key-out", "keyOut", "", "new private key output `FILE` (default key.pem, rootkey.pem with --is-ca)")
	f.str(&o.from, "valid-from", "validFrom", "", "start of validity, an RFC 3339 `TIME` (default now)")
	f.str(&o.until, "valid-until", "validUntil", "", "end of validity, an RFC 3339 `TIME` (default 72h after --valid-from)")
	if err := f.parse(args); err != nil {
		return nil, err
	}
	o.given = f.given()
	return o, o.check()
}

// check refuses the flags the command would otherwise ignore.
func (o *certOpts) check() error {
	switch {
	case o.isCA && o.given["root-cert"]:
		return cmdline.Usagef("--root-cert with --is-ca: a root certificate is self-signed (--root-key names an existing root key)")
	case o.isCA && o.given["root-key"] && o.given["leaf-key"]:
		return cmdline.Usagef("--root-key and --leaf-key with --is-ca: both would name the root's key; give one")
	case o.given["key-out"] && o.existingKey() != "":
		return cmdline.Usagef("--key-out with %s: no key is made when an existing one is certified", o.existingKey())
	}
	if o.certOut == "" {
		o.certOut = map[bool]string{true: "rootcert.pem", false: "cert.pem"}[o.isCA]
	}
	if o.keyOut == "" {
		o.keyOut = map[bool]string{true: "rootkey.pem", false: "key.pem"}[o.isCA]
	}
	return nil
}

// existingKey is the key file to certify, or "" for a new key.
func (o *certOpts) existingKey() string {
	if o.isCA && o.given["root-key"] {
		return o.rootKey
	}
	return o.leafKey
}

func keygenCertificate(e *env, fs *flag.FlagSet, args []string) error {
	o, err := parseCertOpts(flags{fs}, args)
	if err != nil {
		return err
	}
	req := keygen.Request{IsCA: o.isCA}
	if req.NotBefore, req.NotAfter, err = o.validity(); err != nil {
		return err
	}
	newKey, err := o.subject(&req)
	if err != nil {
		return err
	}
	if !o.isCA {
		if req.Parent, req.ParentKey, err = readRoot(o.rootCert, o.rootKey); err != nil {
			return err
		}
	}
	certPEM, err := keygen.Certificate(req)
	if err != nil {
		return err
	}
	// Write the key first: a certificate without its key is useless.
	if newKey != nil {
		kp, err := keygen.MarshalPrivateKey(newKey)
		if err != nil {
			return err
		}
		if err := atomicfile.Write(o.keyOut, kp, 0o600); err != nil {
			return err
		}
		fmt.Fprintf(e.out, "wrote %s\n", o.keyOut)
	}
	if err := atomicfile.Write(o.certOut, certPEM, 0o644); err != nil {
		return err
	}
	fmt.Fprintf(e.out, "wrote %s (valid %s to %s)\n", o.certOut, req.NotBefore.Format(time.RFC3339), req.NotAfter.Format(time.RFC3339))
	return nil
}

func (o *certOpts) validity() (nb, na time.Time, err error) {
	nb = time.Now().UTC().Truncate(time.Second)
	if o.from != "" {
		if nb, err = time.Parse(time.RFC3339, o.from); err != nil {
			return nb, na, fmt.Errorf("--valid-from: %w", err)
		}
	}
	na = nb.Add(keygen.DefaultValidity)
	if o.until != "" {
		if na, err = time.Parse(time.RFC3339, o.until); err != nil {
			return nb, na, fmt.Errorf("--valid-until: %w", err)
		}
	}
	return nb, na, nil
}

// subject sets the key req certifies, and for a root the key that signs
// it: the existing key file, else a new key, which it returns to be
// written.
func (o *certOpts) subject(req *keygen.Request) (newKey ed25519.PrivateKey, err error) {
	path := o.existingKey()
	if path == "" {
		if newKey, err = keygen.NewKey(); err != nil {
			return nil, err
		}
		req.Key = newKey.Public().(ed25519.PublicKey)
		if o.isCA {
			req.ParentKey = newKey
		}
		return newKey, nil
	}
	if !o.isCA {
		req.Key, err = readParsed(path, keygen.ParsePublicKey)
		return nil, err
	}
	// A self-signed root needs its private key.
	if req.ParentKey, err = readParsed(path, keygen.ParsePrivateKey); err != nil {
		return nil, fmt.Errorf("--is-ca needs the root's private key: %w", err)
	}
	req.Key = req.ParentKey.Public().(ed25519.PublicKey)
	return nil, nil
}

// readRoot reads the root certificate and key that issue a leaf.
func readRoot(certPath, keyPath string) (*x509.Certificate, ed25519.PrivateKey, error) {
	cert, err := readParsed(certPath, ospkg.ParseCertificate)
	if err != nil {
		return nil, nil, err
	}
	key, err := readParsed(keyPath, keygen.ParsePrivateKey)
	return cert, key, err
}

// readParsed reads the file at path and parses it; parse errors name the
// file.
func readParsed[T any](path string, parse func([]byte) (T, error)) (T, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		var zero T
		return zero, err
	}
	v, err := parse(b)
	if err != nil {
		return v, fmt.Errorf("%s: %w", path, err)
	}
	return v, nil
}
