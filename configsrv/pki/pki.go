// Package pki creates the server's key material once: a private CA
// (ECDSA P-256) the agents trust, a TLS server certificate it signs, and the
// Biscuit root key. It never overwrites a file.
package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"

	"patela/configsrv/token"
)

// File names inside the init directory.
const (
	CACert     = "ca.pem"
	CAKey      = "ca-key.pem"
	ServerCert = "server.pem"
	ServerKey  = "server-key.pem"
	BiscuitKey = "biscuit.key"
)

// Init creates what is missing in dir for a server reachable at names (DNS
// names or IP addresses) and returns the files it created.
func Init(dir string, names []string) ([]string, error) {
	if len(names) == 0 {
		return nil, errors.New("at least one server name is needed")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	p := func(n string) string { return filepath.Join(dir, n) }
	var created []string

	caCert, caKey, err := loadPair(p(CACert), p(CAKey))
	if errors.Is(err, os.ErrNotExist) {
		caCert, caKey, err = newCert(nil, nil, "patela config server CA", nil)
		if err == nil {
			err = writePair(p(CACert), p(CAKey), caCert, caKey)
		}
		if err == nil {
			created = append(created, p(CACert), p(CAKey))
		}
	}
	if err != nil {
		return created, err
	}

	_, _, err = loadPair(p(ServerCert), p(ServerKey))
	if errors.Is(err, os.ErrNotExist) {
		cert, key, err2 := newCert(caCert, caKey, names[0], names)
		if err2 == nil {
			err2 = writePair(p(ServerCert), p(ServerKey), cert, key)
		}
		if err2 != nil {
			return created, err2
		}
		created = append(created, p(ServerCert), p(ServerKey))
		err = nil
	}
	if err != nil {
		return created, err
	}

	if _, err := os.Stat(p(BiscuitKey)); errors.Is(err, os.ErrNotExist) {
		if err := token.GenerateKey(p(BiscuitKey)); err != nil {
			return created, err
		}
		created = append(created, p(BiscuitKey))
	} else if err != nil {
		return created, err
	}
	return created, nil
}

// loadPair reads a certificate and its key. It returns an error wrapping
// os.ErrNotExist only when both files are missing; one without the other
// is an error of its own.
func loadPair(certPath, keyPath string) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	cb, cerr := os.ReadFile(certPath)
	kb, kerr := os.ReadFile(keyPath)
	switch {
	case errors.Is(cerr, os.ErrNotExist) && errors.Is(kerr, os.ErrNotExist):
		return nil, nil, cerr
	case cerr != nil:
		return nil, nil, fmt.Errorf("%s exists but %v", keyPath, cerr)
	case kerr != nil:
		return nil, nil, fmt.Errorf("%s exists but %v", certPath, kerr)
	}
	c, _ := pem.Decode(cb)
	k, _ := pem.Decode(kb)
	if c == nil || k == nil {
		return nil, nil, fmt.Errorf("%s or %s is not PEM", certPath, keyPath)
	}
	cert, err := x509.ParseCertificate(c.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", certPath, err)
	}
	key, err := x509.ParseECPrivateKey(k.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", keyPath, err)
	}
	return cert, key, nil
}

func newCert(parent *x509.Certificate, parentKey *ecdsa.PrivateKey, cn string, names []string) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: cn, Organization: []string{"patela"}},
		NotBefore:    now.Add(-time.Hour),
	}
	if parent == nil {
		tmpl.NotAfter = now.AddDate(20, 0, 0)
		tmpl.IsCA = true
		tmpl.BasicConstraintsValid = true
		tmpl.MaxPathLenZero = true
		tmpl.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageCRLSign
		parent, parentKey = tmpl, key
	} else {
		tmpl.NotAfter = now.AddDate(5, 0, 0)
		tmpl.KeyUsage = x509.KeyUsageDigitalSignature
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		for _, n := range names {
			if ip := net.ParseIP(n); ip != nil {
				tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
			} else {
				tmpl.DNSNames = append(tmpl.DNSNames, n)
			}
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		return nil, nil, err
	}
	cert, err := x509.ParseCertificate(der)
	return cert, key, err
}

func writePair(certPath, keyPath string, cert *x509.Certificate, key *ecdsa.PrivateKey) error {
	kd, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	if err := writeNew(keyPath, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kd}), 0o600); err != nil {
		return err
	}
	if err := writeNew(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}), 0o644); err != nil {
		os.Remove(keyPath)
		return err
	}
	return nil
}

// writeNew creates path with data; it fails if path exists.
func writeNew(path string, data []byte, mode os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		os.Remove(path)
		return err
	}
	return f.Close()
}
