package uki

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"

	"patela/internal/pcr"
	"patela/stimage/pe"
)

// Boot is how the firmware reaches the UKI, which decides the order of
// the events in PCR 4.
type Boot string

const (
	// BootEntry: the UEFI boot manager starts the UKI from a boot entry or
	// the removable-media path of a disk's ESP (a physical machine, a
	// Proxmox VM). At ReadyToBoot the firmware logs "Calling EFI
	// Application from Boot Option" and the PCR 0-7 separators, then loads
	// the UKI.
	BootEntry Boot = "entry"
	// BootDirect: the firmware loads the UKI before ReadyToBoot, as OVMF
	// does with QEMU's -kernel; the UKI's measurement comes first.
	BootDirect Boot = "direct"
)

// ParseBoot reads a Boot name.
func ParseBoot(s string) (Boot, error) {
	switch b := Boot(s); b {
	case BootEntry, BootDirect:
		return b, nil
	}
	return "", fmt.Errorf("boot %q: want %q (UEFI boot entry, ESP) or %q (QEMU -kernel under OVMF)", s, BootEntry, BootDirect)
}

// stubSections are the sections systemd-stub 252 measures into PCR 11, in
// the order it measures them (.pcrsig, also known to it, is not measured).
var stubSections = []string{".linux", ".osrel", ".cmdline", ".initrd", ".splash", ".dtb", ".pcrpkey"}

// Event strings and data UEFI firmware (the TCG PC Client spec) extends
// into PCR 4 around the boot application.
var (
	callingBootOption = []byte("Calling EFI Application from Boot Option")
	separator         = []byte{0, 0, 0, 0}
)

// SectionDigest is one measured section.
type SectionDigest struct {
	Name   string `json:"name"`
	Size   int    `json:"size"`
	SHA256 string `json:"sha256"`
}

// Measurement is what a boot of the UKI extends, in the SHA-256 bank.
type Measurement struct {
	Boot Boot
	// PCR4: firmware (Authenticode of the UKI and of its .linux, loaded by
	// the stub with LoadImage) around the ReadyToBoot events.
	PCR4 pcr.Value
	// PCR11: systemd-stub's measurements of its sections.
	PCR11 pcr.Value
	// PCR12: zero; systemd-stub extends it only for a command line passed
	// by the boot loader (which replaces the embedded one when Secure Boot
	// is off) or credentials, neither of which a release boot has.
	PCR12 pcr.Value
	// Authenticode digests of the UKI and of the kernel inside it, and the
	// SHA-256 of the whole file.
	UKIAuthenticode, LinuxAuthenticode []byte
	FileSHA256                         []byte
	Sections                           []SectionDigest
}

// Measure predicts the PCRs a boot of the UKI u measures.
func Measure(u []byte, boot Boot) (*Measurement, error) {
	if _, err := ParseBoot(string(boot)); err != nil {
		return nil, err
	}
	f, err := pe.Parse(u)
	if err != nil {
		return nil, fmt.Errorf("uki: %w", err)
	}
	if f.Section(".sdmagic") == nil {
		return nil, errors.New("uki: not a systemd-stub image (no .sdmagic section)")
	}
	lin := f.Section(".linux")
	if lin == nil {
		return nil, errors.New("uki: no .linux section")
	}
	m := &Measurement{Boot: boot}
	sum := sha256.Sum256(u)
	m.FileSHA256 = sum[:]
	if m.UKIAuthenticode, err = f.Authenticode(); err != nil {
		return nil, fmt.Errorf("uki: %w", err)
	}
	kernel := f.Data(lin)
	kf, err := pe.Parse(kernel)
	if err != nil {
		return nil, fmt.Errorf("uki: .linux: %w", err)
	}
	if m.LinuxAuthenticode, err = kf.Authenticode(); err != nil {
		return nil, fmt.Errorf("uki: .linux: %w", err)
	}
	for _, n := range stubSections {
		s := f.Section(n)
		if s == nil {
			continue
		}
		data := f.Data(s)
		m.PCR11.Measure(append([]byte(n), 0)) // the name with its NUL
		m.PCR11.Measure(data)
		d := sha256.Sum256(data)
		m.Sections = append(m.Sections, SectionDigest{Name: n, Size: len(data), SHA256: hex.EncodeToString(d[:])})
	}
	if boot == BootDirect {
		m.PCR4.Extend(m.UKIAuthenticode)
	}
	m.PCR4.Measure(callingBootOption)
	m.PCR4.Measure(separator)
	if boot == BootEntry {
		m.PCR4.Extend(m.UKIAuthenticode)
	}
	m.PCR4.Extend(m.LinuxAuthenticode)
	return m, nil
}

// Section returns the contents of a named section of the UKI u, or nil
// when it has none.
func Section(u []byte, name string) ([]byte, error) {
	f, err := pe.Parse(u)
	if err != nil {
		return nil, fmt.Errorf("uki: %w", err)
	}
	s := f.Section(name)
	if s == nil {
		return nil, nil
	}
	return f.Data(s), nil
}
