package pcr

import (
	"crypto/sha256"
	"strings"
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

// TestTextAgreesWithParse: UnmarshalText takes exactly what Parse takes,
// with the same value or error, and reads back what MarshalText writes.
func TestTextAgreesWithParse(t *testing.T) {
	var v Value
	v.Measure([]byte("x"))
	good := v.String()
	for _, s := range []string{good, strings.ToUpper(good), good[:62], good + "00", good[:63] + "g", good[:63], "", "0x" + good[2:],
		strings.Repeat("0", 64), strings.Repeat("f", 128), good[:62] + " 0"} {
		want, werr := Parse(s)
		got := Value{1}
		err := got.UnmarshalText([]byte(s))
		if (err == nil) != (werr == nil) || err != nil && err.Error() != werr.Error() || err == nil && got != want {
			t.Errorf("%q: UnmarshalText %v %v, Parse %v %v", s, got, err, want, werr)
		}
		if err != nil && got != (Value{1}) {
			t.Errorf("%q: refused but changed the value", s)
		}
	}
	text, _ := v.MarshalText()
	var back Value
	if string(text) != good || back.UnmarshalText(text) != nil || back != v {
		t.Errorf("round trip: %s -> %v", text, back)
	}
}
