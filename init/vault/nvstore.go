package vault

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"patela/init/tpmdev"
	"patela/init/tpmkeys"
)

// Where the bundle ciphertext lives, as recorded in the NV header.
const (
	locNone   = 0
	locNV     = 1
	locMirror = 2
)

// header is the vault's small NV index (tpmkeys.NVHeader), 64 bytes:
//
//	"PTLN" | format u8 | location u8 | data indices u8 | lock PCR u8 (0xFF none) |
//	length u32 | version u64 | SHA-256 of the ciphertext [32] | PCR mask u32 |
//	slot u8 | sealing u8 (0 PolicyPCR, 1 release policy key) | zeros
//
// It says where the ciphertext is and which version and hash to expect, so
// a mirror (or NV) serving an older or different bundle is noticed.
//
// NV data lives in one of two slots of indices. A save writes the slot not
// in use, then switches the header (one 64-byte NV write) to it, then frees
// the old one: a power cut at any point leaves one complete bundle.
type header struct {
	location byte
	slot     int
	count    int
	lock     int
	length   int
	version  uint64
	sum      [32]byte
	pcrMask  uint32
	release  bool // sealed to a release policy key (pcrMask then 0)
}

const (
	headerMagic = "PTLN"
	headerLen   = 64
	nvAlign     = 64
	slotMax     = tpmkeys.NVDataMax / 2 // indices per slot
)

// dataIndex is the i-th data index of a slot.
func dataIndex(slot, i int) tpm2.TPMHandle {
	return tpmkeys.NVData + tpm2.TPMHandle(slot*slotMax+i)
}

func (h *header) marshal() []byte {
	b := make([]byte, headerLen)
	copy(b, headerMagic)
	b[4] = formatV1
	b[5] = h.location
	b[6] = byte(h.count)
	b[7] = 0xFF
	if h.lock >= 0 {
		b[7] = byte(h.lock)
	}
	binary.BigEndian.PutUint32(b[8:], uint32(h.length))
	binary.BigEndian.PutUint64(b[12:], h.version)
	copy(b[20:52], h.sum[:])
	binary.BigEndian.PutUint32(b[52:], h.pcrMask)
	b[56] = byte(h.slot)
	if h.release {
		b[57] = 1
	}
	return b
}

func parseHeader(b []byte) (*header, error) {
	if len(b) != headerLen || string(b[:4]) != headerMagic || b[4] != formatV1 {
		return nil, errors.New("vault NV header is malformed")
	}
	h := &header{
		location: b[5],
		count:    int(b[6]),
		lock:     int(b[7]),
		length:   int(binary.BigEndian.Uint32(b[8:])),
		version:  binary.BigEndian.Uint64(b[12:]),
		pcrMask:  binary.BigEndian.Uint32(b[52:]),
		slot:     int(b[56]),
		release:  b[57] == 1,
	}
	if b[7] == 0xFF {
		h.lock = -1
	}
	copy(h.sum[:], b[20:52])
	if h.location > locMirror || h.count > slotMax || h.slot > 1 {
		return nil, errors.New("vault NV header is malformed")
	}
	return h, nil
}

// ErrNVFull means the TPM has no room for the bundle (or the configured
// cap is reached); the mirror takes it instead.
var ErrNVFull = errors.New("not enough TPM NV space for the key bundle")

// nvStore spreads the ciphertext over as many NV indices as it needs, each
// at most NV_INDEX_MAX bytes, written in NV_BUFFER_MAX chunks.
type nvStore struct {
	t        transport.TPM
	indexMax int
	chunk    int
	capBytes int // 0: no cap beyond the TPM's
}

func newNVStore(t transport.TPM, capBytes int) (*nvStore, error) {
	im, err := tpmdev.Property(t, tpm2.TPMPTNVIndexMax)
	if err != nil {
		return nil, fmt.Errorf("reading NV_INDEX_MAX: %w", err)
	}
	if im < headerLen {
		return nil, fmt.Errorf("TPM NV_INDEX_MAX is %d bytes", im)
	}
	return &nvStore{t: t, indexMax: int(im), chunk: tpmkeys.BufferMax(t), capBytes: capBytes}, nil
}

var owner = tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)}

// size returns an index's data size, or -1 when it is not defined.
func (s *nvStore) size(idx tpm2.TPMHandle) (int, tpm2.TPM2BName, error) {
	rsp, err := tpm2.NVReadPublic{NVIndex: idx}.Execute(s.t)
	if errors.Is(err, tpm2.TPMRCHandle) {
		return -1, tpm2.TPM2BName{}, nil
	}
	if err != nil {
		return 0, tpm2.TPM2BName{}, err
	}
	pub, err := rsp.NVPublic.Contents()
	if err != nil {
		return 0, tpm2.TPM2BName{}, err
	}
	return int(pub.DataSize), rsp.NVName, nil
}

func (s *nvStore) define(idx tpm2.TPMHandle, size int) error {
	_, err := tpm2.NVDefineSpace{
		AuthHandle: owner,
		PublicInfo: tpm2.New2B(tpm2.TPMSNVPublic{
			NVIndex: idx,
			NameAlg: tpm2.TPMAlgSHA256,
			Attributes: tpm2.TPMANV{OwnerWrite: true, OwnerRead: true, NoDA: true,
				NT: tpm2.TPMNTOrdinary},
			DataSize: uint16(size),
		}),
	}.Execute(s.t)
	if errors.Is(err, tpm2.TPMRCNVSpace) || errors.Is(err, tpm2.TPMRCNVSize) {
		return fmt.Errorf("%w: %v", ErrNVFull, err)
	}
	return err
}

func (s *nvStore) undefine(idx tpm2.TPMHandle) error {
	n, name, err := s.size(idx)
	if err != nil || n < 0 {
		return err
	}
	_, err = tpm2.NVUndefineSpace{AuthHandle: owner, NVIndex: tpm2.NamedHandle{Handle: idx, Name: name}}.Execute(s.t)
	return err
}

// ensure makes idx exactly size bytes, redefining it if needed.
func (s *nvStore) ensure(idx tpm2.TPMHandle, size int) error {
	have, _, err := s.size(idx)
	if err != nil {
		return err
	}
	if have == size {
		return nil
	}
	if have >= 0 {
		if err := s.undefine(idx); err != nil {
			return err
		}
	}
	return s.define(idx, size)
}

func (s *nvStore) write(idx tpm2.TPMHandle, data []byte) error {
	for off := 0; off < len(data); off += s.chunk {
		// The index's Name changes with its first write: read it each time.
		_, name, err := s.size(idx)
		if err != nil {
			return err
		}
		end := min(off+s.chunk, len(data))
		if _, err := (tpm2.NVWrite{
			AuthHandle: owner,
			NVIndex:    tpm2.NamedHandle{Handle: idx, Name: name},
			Data:       tpm2.TPM2BMaxNVBuffer{Buffer: data[off:end]},
			Offset:     uint16(off),
		}).Execute(s.t); err != nil {
			return fmt.Errorf("writing NV 0x%08x: %w", uint32(idx), err)
		}
	}
	return nil
}

func (s *nvStore) read(idx tpm2.TPMHandle, size int) ([]byte, error) {
	have, name, err := s.size(idx)
	if err != nil {
		return nil, err
	}
	if have < size {
		return nil, fmt.Errorf("NV 0x%08x holds %d bytes, want %d", uint32(idx), max(have, 0), size)
	}
	return tpmkeys.ReadNV(s.t, owner, tpm2.NamedHandle{Handle: idx, Name: name}, size)
}

// readHeader returns nil, nil when there is no header.
func (s *nvStore) readHeader() (*header, error) {
	n, _, err := s.size(tpmkeys.NVHeader)
	if err != nil {
		return nil, err
	}
	if n < 0 {
		return nil, nil
	}
	b, err := s.read(tpmkeys.NVHeader, headerLen)
	if errors.Is(err, tpm2.TPMRCNVUninitialized) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return parseHeader(b)
}

func (s *nvStore) writeHeader(h *header) error {
	if err := s.ensure(tpmkeys.NVHeader, headerLen); err != nil {
		return fmt.Errorf("vault NV header: %w", err)
	}
	return s.write(tpmkeys.NVHeader, h.marshal())
}

// layout splits n bytes over indices: sizes rounded up to nvAlign so small
// changes reuse the same indices.
func (s *nvStore) layout(n int) []int {
	var sizes []int
	for n > 0 {
		sz := min(s.indexMax, n)
		sizes = append(sizes, min(s.indexMax, (sz+nvAlign-1)/nvAlign*nvAlign))
		n -= sz
	}
	return sizes
}

// writeData stores data over the NV indices of a slot and returns how many
// it used. All indices are defined before any byte is written, so running
// out of space writes nothing.
func (s *nvStore) writeData(slot int, data []byte) (int, error) {
	sizes := s.layout(len(data))
	total := 0
	for _, sz := range sizes {
		total += sz
	}
	if len(sizes) > slotMax || (s.capBytes > 0 && total > s.capBytes) {
		return 0, fmt.Errorf("%w: %d bytes over %d indices (cap %d)", ErrNVFull, total, len(sizes), s.capBytes)
	}
	for i, sz := range sizes {
		if err := s.ensure(dataIndex(slot, i), sz); err != nil {
			return 0, err
		}
	}
	for i := range sizes {
		off := i * s.indexMax
		if err := s.write(dataIndex(slot, i), data[off:min(off+s.indexMax, len(data))]); err != nil {
			return 0, err
		}
	}
	return len(sizes), nil
}

func (s *nvStore) readData(h *header) ([]byte, error) {
	out := make([]byte, 0, h.length)
	for i := 0; i < h.count; i++ {
		n := min(s.indexMax, h.length-len(out))
		b, err := s.read(dataIndex(h.slot, i), n)
		if err != nil {
			return nil, err
		}
		out = append(out, b...)
	}
	if len(out) != h.length {
		return nil, fmt.Errorf("NV holds %d bytes of the bundle, the header says %d", len(out), h.length)
	}
	return out, nil
}

// freeExcept undefines every data index but the first count of slot.
func (s *nvStore) freeExcept(slot, count int) error {
	hs, err := tpmdev.Handles(s.t, tpm2.TPMHTNVIndex)
	if err != nil {
		return err
	}
	for _, h := range hs {
		inUse := h >= dataIndex(slot, 0) && h < dataIndex(slot, count)
		if !inUse && h >= tpmkeys.NVData && h < tpmkeys.NVData+tpmkeys.NVDataMax {
			if err := s.undefine(h); err != nil {
				return err
			}
		}
	}
	return nil
}

// usage returns how many vault indices exist and their total size.
func (s *nvStore) usage() (n, bytes int, err error) {
	hs, err := tpmdev.Handles(s.t, tpm2.TPMHTNVIndex)
	if err != nil {
		return 0, 0, err
	}
	for _, h := range hs {
		if h >= tpmkeys.NVHeader && h < tpmkeys.NVData+tpmkeys.NVDataMax {
			sz, _, err := s.size(h)
			if err != nil {
				return 0, 0, err
			}
			n++
			bytes += sz
		}
	}
	return n, bytes, nil
}
