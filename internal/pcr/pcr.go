// Package pcr computes SHA-256 PCR values the way a TPM extends them, for
// predicting what a boot chain will measure.
package pcr

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
)

// Value is a SHA-256 bank PCR value; the zero Value is a PCR after reset.
type Value [sha256.Size]byte

// Extend does what TPM2_PCR_Extend does: v = SHA-256(v || digest).
func (v *Value) Extend(digest []byte) {
	h := sha256.New()
	h.Write(v[:])
	h.Write(digest)
	h.Sum(v[:0])
}

// Measure extends v with the SHA-256 of data, as a measured-boot component
// logs an event whose digest is the data's hash.
func (v *Value) Measure(data []byte) {
	d := sha256.Sum256(data)
	v.Extend(d[:])
}

// String is lower-case hex.
func (v Value) String() string { return hex.EncodeToString(v[:]) }

// IsZero reports whether v was never extended.
func (v Value) IsZero() bool { return v == Value{} }

// Parse reads a value written as 64 hex digits (either case).
func Parse(s string) (Value, error) {
	var v Value
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != len(v) {
		return v, fmt.Errorf("PCR value %q: want %d hex digits", s, 2*len(v))
	}
	copy(v[:], b)
	return v, nil
}

// MarshalText writes the value as hex (JSON strings, map values).
// One allocation: quotes and evidence carry 16 of them.
func (v Value) MarshalText() ([]byte, error) {
	return hex.AppendEncode(make([]byte, 0, 2*len(v)), v[:]), nil
}

// UnmarshalText reads 64 hex digits (what Parse takes), decoding in place.
func (v *Value) UnmarshalText(b []byte) error {
	var p Value
	if len(b) != 2*len(p) { // first: hex.Decode needs room for all of b
		_, err := Parse(string(b)) // its error
		return err
	}
	if _, err := hex.Decode(p[:], b); err != nil {
		_, err = Parse(string(b))
		return err
	}
	*v = p
	return nil
}
