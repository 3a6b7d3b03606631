package pcr

import (
	"crypto/sha256"
	"testing"
)

// TestExtend checks Extend against the definition and a value a TPM
// gives: PCR 4's separator-only chain is SHA-256(0^32 || SHA-256(0^4)).
func TestExtend(t *testing.T) {
	var v Value
	v.Measure([]byte{0, 0, 0, 0})
	sep := sha256.Sum256([]byte{0, 0, 0, 0})
	want := sha256.Sum256(append(make([]byte, 32), sep[:]...))
	if v != want {
		t.Fatalf("Measure = %s, want %x", v, want)
	}
	p, err := Parse(v.String())
	if err != nil || p != v {
		t.Fatalf("Parse(String()) = %v, %v", p, err)
	}
	if _, err := Parse("00"); err == nil {
		t.Error("Parse accepted a short value")
	}
	if !(Value{}).IsZero() || v.IsZero() {
		t.Error("IsZero")
	}
}
