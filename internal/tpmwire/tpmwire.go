// Package tpmwire reads and writes TPM 2.0 wire data by hand, for the few
// structures on hot paths where go-tpm's reflective (un)marshalling costs
// as much as the cryptography. Callers hold their readers and writers to
// go-tpm in their own tests.
package tpmwire

import "encoding/binary"

// Reader consumes big-endian TPM wire data. A read past the end returns
// nil or zero and marks the reader bad; later reads do the same.
type Reader struct {
	b   []byte
	bad bool
}

// NewReader reads b.
func NewReader(b []byte) *Reader { return &Reader{b: b} }

// Take returns the next n bytes.
func (r *Reader) Take(n int) []byte {
	if r.bad || n > len(r.b) {
		r.bad = true
		return nil
	}
	v := r.b[:n]
	r.b = r.b[n:]
	return v
}

func (r *Reader) U8() uint8 {
	if b := r.Take(1); b != nil {
		return b[0]
	}
	return 0
}

func (r *Reader) U16() uint16 {
	if b := r.Take(2); b != nil {
		return binary.BigEndian.Uint16(b)
	}
	return 0
}

func (r *Reader) U32() uint32 {
	if b := r.Take(4); b != nil {
		return binary.BigEndian.Uint32(b)
	}
	return 0
}

// TPM2B returns the buffer of a TPM2B (a u16 size, then that many bytes).
func (r *Reader) TPM2B() []byte { return r.Take(int(r.U16())) }

// Bad reports whether a read ran past the end.
func (r *Reader) Bad() bool { return r.bad }

// Rest is what has not been read.
func (r *Reader) Rest() []byte { return r.b }

// Done reports whether everything was read, exactly: no short read and
// nothing left over.
func (r *Reader) Done() bool { return !r.bad && len(r.b) == 0 }

// Append2B appends v to b as a TPM2B.
func Append2B(b, v []byte) []byte {
	return append(binary.BigEndian.AppendUint16(b, uint16(len(v))), v...)
}
