// Package pe reads the parts of a PE/COFF image (an EFI application: a
// Linux kernel with its EFI stub, systemd-stub, a UKI) that measured boot
// depends on: the section table, the Authenticode digest UEFI firmware
// extends into PCR 4 when it loads the image, and the two header fields
// that make a build irreproducible (the link time stamp and the checksum).
package pe

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"sort"
)

// Section is one entry of the section table.
type Section struct {
	Name           string // up to 8 bytes, NULs trimmed
	VirtualSize    uint32
	VirtualAddress uint32
	RawSize        uint32 // SizeOfRawData
	RawOffset      uint32 // PointerToRawData
}

// File is a parsed image; it keeps the bytes it was parsed from.
type File struct {
	b        []byte
	coff     int // offset of the COFF file header (after "PE\0\0")
	opt      int // offset of the optional header
	pe32plus bool
	Sections []Section
	// SizeOfHeaders and SectionAlignment from the optional header.
	SizeOfHeaders    uint32
	SectionAlignment uint32
}

var le = binary.LittleEndian

// Parse checks the DOS and PE signatures and reads the headers.
func Parse(b []byte) (*File, error) {
	if len(b) < 0x40 || b[0] != 'M' || b[1] != 'Z' {
		return nil, errors.New("pe: not a PE image (no MZ header)")
	}
	peOff := int(le.Uint32(b[0x3c:]))
	if peOff < 0x40 || peOff+24 > len(b) || !bytes.Equal(b[peOff:peOff+4], []byte("PE\x00\x00")) {
		return nil, errors.New("pe: no PE signature")
	}
	f := &File{b: b, coff: peOff + 4, opt: peOff + 24}
	nsec := int(le.Uint16(b[f.coff+2:]))
	optSize := int(le.Uint16(b[f.coff+16:]))
	if f.opt+optSize > len(b) || optSize < 96 {
		return nil, errors.New("pe: optional header truncated")
	}
	switch le.Uint16(b[f.opt:]) {
	case 0x10b:
	case 0x20b:
		f.pe32plus = true
		if optSize < 112 {
			return nil, errors.New("pe: PE32+ optional header truncated")
		}
	default:
		return nil, fmt.Errorf("pe: unknown optional header magic %#x", le.Uint16(b[f.opt:]))
	}
	f.SectionAlignment = le.Uint32(b[f.opt+32:])
	f.SizeOfHeaders = le.Uint32(b[f.opt+60:])
	st := f.opt + optSize
	if st+nsec*40 > len(b) {
		return nil, errors.New("pe: section table truncated")
	}
	for i := 0; i < nsec; i++ {
		h := b[st+i*40 : st+i*40+40]
		s := Section{
			Name:           string(bytes.TrimRight(h[:8], "\x00")),
			VirtualSize:    le.Uint32(h[8:]),
			VirtualAddress: le.Uint32(h[12:]),
			RawSize:        le.Uint32(h[16:]),
			RawOffset:      le.Uint32(h[20:]),
		}
		if s.RawSize > 0 && (uint64(s.RawOffset)+uint64(s.RawSize) > uint64(len(b))) {
			return nil, fmt.Errorf("pe: section %q extends past the end of the file", s.Name)
		}
		f.Sections = append(f.Sections, s)
	}
	if int(f.SizeOfHeaders) > len(b) || int(f.SizeOfHeaders) < st+nsec*40 {
		return nil, errors.New("pe: SizeOfHeaders does not cover the section table")
	}
	return f, nil
}

// Section returns the named section, or nil.
func (f *File) Section(name string) *Section {
	for i := range f.Sections {
		if f.Sections[i].Name == name {
			return &f.Sections[i]
		}
	}
	return nil
}

// Data returns a section's contents as loaded into memory: VirtualSize
// bytes, zero-filled past the raw data.
func (f *File) Data(s *Section) []byte {
	out := make([]byte, s.VirtualSize)
	n := min(s.VirtualSize, s.RawSize)
	copy(out, f.b[s.RawOffset:s.RawOffset+n])
	return out
}

// checksumOff is the offset of the optional header's CheckSum field.
func (f *File) checksumOff() int { return f.opt + 64 }

// certDirOff is the offset of the Certificate Table data directory entry
// (index 4): 8 bytes, file offset and size of the attribute certificates.
func (f *File) certDirOff() int {
	if f.pe32plus {
		return f.opt + 112 + 4*8
	}
	return f.opt + 96 + 4*8
}

// numDirs is NumberOfRvaAndSizes.
func (f *File) numDirs() int {
	if f.pe32plus {
		return int(le.Uint32(f.b[f.opt+108:]))
	}
	return int(le.Uint32(f.b[f.opt+92:]))
}

// TimeDateStamp is the link time in the COFF header.
func (f *File) TimeDateStamp() uint32 { return le.Uint32(f.b[f.coff+4:]) }

// CheckSum is the optional header's checksum field.
func (f *File) CheckSum() uint32 { return le.Uint32(f.b[f.checksumOff():]) }

// ComputeCheckSum is the PE image checksum: the file summed as 16-bit
// little-endian words with the carry folded back in, the CheckSum field
// itself counted as zero, plus the file length.
func (f *File) ComputeCheckSum() uint32 {
	skip := f.checksumOff()
	var sum uint64
	for i := 0; i+1 < len(f.b); i += 2 {
		if i == skip || i == skip+2 {
			continue
		}
		sum += uint64(le.Uint16(f.b[i:]))
		sum = (sum & 0xffff) + (sum >> 16)
	}
	if len(f.b)%2 == 1 {
		sum += uint64(f.b[len(f.b)-1])
		sum = (sum & 0xffff) + (sum >> 16)
	}
	sum = (sum & 0xffff) + (sum >> 16)
	return uint32(sum) + uint32(len(f.b))
}

// Pin returns a copy of the image with its link time stamp set to ts and
// its checksum recomputed, so that equal inputs give equal bytes whatever
// time the linker (objcopy) stamped.
func Pin(b []byte, ts uint32) ([]byte, error) {
	out := bytes.Clone(b)
	f, err := Parse(out)
	if err != nil {
		return nil, err
	}
	le.PutUint32(out[f.coff+4:], ts)
	le.PutUint32(out[f.checksumOff():], f.ComputeCheckSum())
	return out, nil
}

// Authenticode is the SHA-256 Authenticode digest of the image, the value
// UEFI firmware measures into PCR 4 (EV_EFI_BOOT_SERVICES_APPLICATION)
// when it loads it: the headers without the CheckSum field and the
// Certificate Table entry, the sections in file order, then whatever
// follows them except the attribute certificates.
func (f *File) Authenticode() ([]byte, error) {
	h := sha256.New()
	b := f.b
	cs := f.checksumOff()
	hdrEnd := int(f.SizeOfHeaders)
	if f.numDirs() > 4 {
		cd := f.certDirOff()
		h.Write(b[:cs])
		h.Write(b[cs+4 : cd])
		h.Write(b[cd+8 : hdrEnd])
	} else {
		h.Write(b[:cs])
		h.Write(b[cs+4 : hdrEnd])
	}
	secs := make([]Section, 0, len(f.Sections))
	for _, s := range f.Sections {
		if s.RawSize > 0 {
			secs = append(secs, s)
		}
	}
	sort.Slice(secs, func(i, j int) bool { return secs[i].RawOffset < secs[j].RawOffset })
	sum := hdrEnd
	for _, s := range secs {
		h.Write(b[s.RawOffset : s.RawOffset+s.RawSize])
		sum = max(sum, int(s.RawOffset+s.RawSize))
	}
	certOff, certSize := 0, 0
	if f.numDirs() > 4 {
		certOff = int(le.Uint32(b[f.certDirOff():]))
		certSize = int(le.Uint32(b[f.certDirOff()+4:]))
	}
	if sum < len(b) {
		end := len(b)
		if certSize > 0 {
			if certOff < sum || certOff+certSize > len(b) {
				return nil, errors.New("pe: attribute certificate table outside the trailing data")
			}
			end = certOff
		}
		h.Write(b[sum:end])
	}
	return h.Sum(nil), nil
}
