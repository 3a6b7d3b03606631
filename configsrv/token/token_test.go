package token

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/biscuit-auth/biscuit-go/v2"
	"github.com/biscuit-auth/biscuit-go/v2/parser"
)

func TestIssueVerify(t *testing.T) {
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	a := New(key, time.Hour)
	now := time.Now()
	want := Claims{Node: 42, Epoch: 3}
	rand.Read(want.EK[:])
	tok, exp, err := a.Issue(want, now)
	if err != nil {
		t.Fatal(err)
	}
	if d := exp.Sub(now); d <= 59*time.Minute || d > time.Hour {
		t.Fatalf("expiry in %s", d)
	}
	for i := 0; i < 2; i++ { // the second goes through the cache
		if c, err := a.Verify(tok, now); err != nil || c != want {
			t.Fatalf("verify %d: %+v %v", i, c, err)
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
	tok, _, _ := a.Issue(Claims{Node: 1}, time.Now())
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

// A token as servers before the token epoch issued it (node and expiry
// only) is refused, so every node attests again after the upgrade; so is
// one whose EK claim has the wrong size.
func TestOlderTokensRefused(t *testing.T) {
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	exp := time.Now().Add(time.Hour).Truncate(time.Second)
	ek := `hex:` + strings.Repeat("ab", 32)
	for name, facts := range map[string]string{
		"node only":       `node(7);`,
		"no epoch":        `node(7, ` + ek + `);`,
		"short EK":        `node(7, hex:abcd, 0);`,
		"EK as a string":  `node(7, "x", 0);`,
		"two node facts":  `node(7, ` + ek + `, 0); node(8, ` + ek + `, 0);`,
		"epoch as string": `node(7, ` + ek + `, "0");`,
		"claims apart":    `node(7); ek(` + ek + `); epoch(0);`,
	} {
		b := biscuit.NewBuilder(key)
		blk, err := parser.FromStringBlock(facts + ` expires(` + exp.Format(time.RFC3339) + `);`)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if err := b.AddBlock(blk); err != nil {
			t.Fatal(err)
		}
		tok, err := b.Build()
		if err != nil {
			t.Fatal(err)
		}
		raw, _ := tok.Serialize()
		if c, err := New(key, time.Hour).Verify(base64.StdEncoding.EncodeToString(raw), time.Now()); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: %+v %v, want ErrInvalid", name, c, err)
		}
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
