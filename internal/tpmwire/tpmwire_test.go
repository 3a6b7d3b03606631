package tpmwire

import (
	"bytes"
	"testing"
)

func TestReader(t *testing.T) {
	b := Append2B([]byte{0xAA, 0x01, 0x02}, []byte("key"))
	r := NewReader(b)
	if r.U8() != 0xAA || r.U16() != 0x0102 || !bytes.Equal(r.TPM2B(), []byte("key")) || !r.Done() {
		t.Fatalf("read back %x wrongly", b)
	}
	// A short read marks the reader bad, and every later read too.
	r = NewReader([]byte{0x00, 0x05, 'a', 'b', 0x00, 0x00})
	if v := r.TPM2B(); v != nil || !r.Bad() || r.U32() != 0 || r.Done() {
		t.Fatal("a TPM2B longer than the data was read")
	}
	// Done refuses what is left over.
	r = NewReader([]byte{0x00, 0x00, 0x01})
	if v := r.TPM2B(); v == nil || len(v) != 0 || r.Bad() || r.Done() || !bytes.Equal(r.Rest(), []byte{1}) {
		t.Fatal("an empty TPM2B with a trailing byte")
	}
}
