package edcert

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha512"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"patela/internal/testutil"
)

// expand is how tor (and RFC 8032) turns a seed into an expanded key.
func expand(seed []byte) []byte {
	h := sha512.Sum512(seed)
	h[0] &= 248
	h[31] &= 127
	h[31] |= 64
	return h[:]
}

// Signing with the expanded key is exactly Ed25519: the same signature as
// crypto/ed25519 with the seed, for many keys and messages.
func TestSignIsEd25519(t *testing.T) {
	for i := range 64 {
		seed := bytes.Repeat([]byte{byte(i)}, 32)
		priv := ed25519.NewKeyFromSeed(seed)
		msg := bytes.Repeat([]byte{byte(i), 0x5a}, i)
		got, err := sign(expand(seed), msg)
		if err != nil {
			t.Fatal(err)
		}
		if want := ed25519.Sign(priv, msg); !bytes.Equal(got, want) {
			t.Fatalf("key %d: signature differs from crypto/ed25519", i)
		}
		if pub, _ := Public(expand(seed)); !bytes.Equal(pub, priv.Public().(ed25519.PublicKey)) {
			t.Fatalf("key %d: public key differs", i)
		}
	}
}

func TestIssueParse(t *testing.T) {
	master, err := NewSecret()
	if err != nil {
		t.Fatal(err)
	}
	exp := time.Date(2027, 1, 2, 3, 45, 0, 0, time.UTC)
	s, err := Issue(master, exp)
	if err != nil {
		t.Fatal(err)
	}
	if len(s.CertFile) != 172 || len(s.SecretFile) != 96 || len(s.PublicFile) != 64 {
		t.Fatalf("file sizes %d %d %d, want tor's 172 96 64", len(s.CertFile), len(s.SecretFile), len(s.PublicFile))
	}
	c, err := ParseCert(s.CertFile)
	if err != nil {
		t.Fatal(err)
	}
	mpub, _ := Public(master)
	spub, _ := Public(s.SecretFile[32:])
	if !bytes.Equal(c.Master, mpub) || !bytes.Equal(c.SigningKey, spub) || !c.Expires.Equal(exp.Truncate(time.Hour)) || !s.Expires.Equal(c.Expires) {
		t.Fatalf("parsed %+v", c)
	}
	bad := bytes.Clone(s.CertFile)
	bad[40] ^= 1 // a bit of the certified key
	if _, err := ParseCert(bad); err == nil {
		t.Error("a tampered certificate parsed")
	}
	if _, err := ParseCert(s.SecretFile); err == nil {
		t.Error("a secret key file parsed as a certificate")
	}
}

// A certificate tor made itself parses, with the master tor wrote.
func TestParseTorCert(t *testing.T) {
	testutil.RequireTool(t, "tor", "apt-get install tor")
	dir := t.TempDir()
	rc := filepath.Join(dir, "torrc")
	os.WriteFile(rc, nil, 0o600)
	if out, err := exec.Command("tor", "--list-fingerprint", "--DisableNetwork", "1", "--DataDirectory", dir,
		"--ORPort", "127.0.0.1:auto", "--defaults-torrc", rc, "-f", rc, "--Log", "err stderr").CombinedOutput(); err != nil {
		t.Fatalf("tor: %v\n%s", err, out)
	}
	read := func(n string) []byte {
		b, err := os.ReadFile(filepath.Join(dir, "keys", n))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	c, err := ParseCert(read(FileSigningCert))
	if err != nil {
		t.Fatal(err)
	}
	master := read(FileMasterSecret)
	pub, _ := Public(master[32:])
	spub, _ := Public(read(FileSigningKey)[32:])
	if !bytes.Equal(c.Master, pub) || !bytes.Equal(c.SigningKey, spub) || !bytes.HasPrefix(read(FileSigningKey), []byte(HeaderSigningSecret)) {
		t.Fatal("tor's certificate does not certify tor's signing key by tor's master")
	}
	if d := time.Until(c.Expires); d < 29*24*time.Hour || d > 31*24*time.Hour {
		t.Errorf("tor's default lifetime: expires in %v", d)
	}
}
