package testutil

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"strings"
	"testing"
)

// KeyLeak finds a key in each form an attack could serve it, and nothing
// in a body without it.
func TestKeyLeak(t *testing.T) {
	k, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	der := x509.MarshalPKCS1PrivateKey(k)
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: der})
	b64 := base64.StdEncoding.EncodeToString(der)
	for name, body := range map[string][]byte{
		"pem":              append([]byte("HTTP/1.0 200 OK\r\n\r\n"), keyPEM...),
		"der":              append([]byte("x"), der...),
		"der tail":         der[len(der)/2-1:],
		"base64":           []byte(b64),
		"base64 wrapped":   []byte(strings.Join([]string{b64[:70], b64[70:140], b64[140:]}, "\n")),
		"base64 shifted":   []byte(base64.StdEncoding.EncodeToString(der[1:])),
		"base64url":        []byte(base64.RawURLEncoding.EncodeToString(der)),
		"pem without tags": []byte(strings.Join(strings.Split(string(keyPEM), "\n")[1:5], "\n")),
	} {
		if KeyLeak(body, keyPEM) == "" {
			t.Errorf("%s: leak not found", name)
		}
	}
	other, _ := rsa.GenerateKey(rand.Reader, 1024)
	if how := KeyLeak(x509.MarshalPKCS1PublicKey(&other.PublicKey), keyPEM); how != "" {
		t.Errorf("another key's public part reported as %s", how)
	}
	if how := KeyLeak([]byte("404 Not found"), keyPEM); how != "" {
		t.Errorf("a 404 reported as %s", how)
	}
}
