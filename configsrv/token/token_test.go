package token

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/biscuit-auth/biscuit-go/v2"
	"github.com/biscuit-auth/biscuit-go/v2/parser"
)

func TestIssueVerify(t *testing.T) {
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	a := New(key, time.Hour)
	now := time.Now()
	tok, exp, err := a.Issue(42, now)
	if err != nil {
		t.Fatal(err)
	}
	if d := exp.Sub(now); d <= 59*time.Minute || d > time.Hour {
		t.Fatalf("expiry in %s", d)
	}
	for i := 0; i < 2; i++ { // the second goes through the cache
		if id, err := a.Verify(tok, now); err != nil || id != 42 {
			t.Fatalf("verify %d: %d %v", i, id, err)
		}
	}
	// Expiry holds for fresh and cached tokens alike.
	if _, err := a.Verify(tok, exp); !errors.Is(err, ErrInvalid) {
		t.Fatalf("cached token at expiry: %v", err)
	}
	if _, err := New(key, time.Hour).Verify(tok, exp.Add(time.Second)); !errors.Is(err, ErrInvalid) {
		t.Fatalf("fresh verifier after expiry: %v", err)
	}
	_, other, _ := ed25519.GenerateKey(rand.Reader)
	if _, err := New(other, time.Hour).Verify(tok, now); !errors.Is(err, ErrInvalid) {
		t.Fatalf("other root key: %v", err)
	}
}

// An attenuated token (a block appended by whoever holds it, here one
// adding a fact for another node) is refused.
func TestAttenuatedRefused(t *testing.T) {
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	a := New(key, time.Hour)
	tok, _, _ := a.Issue(1, time.Now())
	raw, _ := base64.StdEncoding.DecodeString(tok)
	b, err := biscuit.Unmarshal(raw)
	if err != nil {
		t.Fatal(err)
	}
	blk, err := parser.FromStringBlock(`node(2);`)
	if err != nil {
		t.Fatal(err)
	}
	bb := b.CreateBlock()
	bb.AddBlock(blk)
	b2, err := b.Append(rand.Reader, bb.Build())
	if err != nil {
		t.Fatal(err)
	}
	raw2, _ := b2.Serialize()
	if _, err := a.Verify(base64.StdEncoding.EncodeToString(raw2), time.Now()); !errors.Is(err, ErrInvalid) {
		t.Fatalf("attenuated token: %v", err)
	}
}

func TestKeyFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "biscuit.key")
	if err := GenerateKey(p); err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(p)
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v", fi.Mode())
	}
	if err := GenerateKey(p); err == nil {
		t.Fatal("GenerateKey overwrote a key")
	}
	if _, err := LoadKey(p); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(p+"2", []byte("junk"), 0o600)
	if _, err := LoadKey(p + "2"); err == nil {
		t.Fatal("loaded junk")
	}
}
