// Package uki builds Unified Kernel Images on Debian's systemd-stub with
// binutils' objcopy, reproducibly, and predicts the PCRs a UEFI boot of one
// measures: PCR 11 (systemd-stub 252's section measurements), PCR 4 (the
// firmware's Authenticode measurements of the UKI and of the kernel the
// stub loads) and PCR 12 (zero: nothing overrides the embedded command
// line).
package uki

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"patela/stimage/pe"
)

// DefaultStub is Debian's systemd-stub (package systemd-boot-efi).
const DefaultStub = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub"

// Limits on the inputs: a UKI is loaded whole into memory by the firmware.
const (
	MaxKernel    = 128 << 20
	MaxInitramfs = 512 << 20
	MaxCmdline   = 4096
	MaxOSRelease = 64 << 10
)

// Options are the inputs of Create.
type Options struct {
	Stub      string // default DefaultStub
	Objcopy   string // default "objcopy" from PATH
	Kernel    []byte // a bzImage with an EFI stub (a PE image)
	Initramfs []byte
	Cmdline   string
	OSRelease []byte
}

// Sections are added in this order, each at the next section-aligned
// address after the stub's last one.
var sectionOrder = []string{".osrel", ".cmdline", ".linux", ".initrd"}

// Create builds the UKI. objcopy stamps the PE header with the current
// time; the result has the stamp pinned to zero and its checksum
// recomputed, so equal inputs give equal bytes.
func Create(ctx context.Context, o Options) ([]byte, error) {
	if o.Stub == "" {
		o.Stub = DefaultStub
	}
	if o.Objcopy == "" {
		o.Objcopy = "objcopy"
	}
	if err := o.check(); err != nil {
		return nil, err
	}
	stub, err := os.ReadFile(o.Stub)
	if err != nil {
		return nil, fmt.Errorf("uki: systemd-stub: %w (install systemd-boot-efi)", err)
	}
	sf, err := pe.Parse(stub)
	if err != nil {
		return nil, fmt.Errorf("uki: %s: %w", o.Stub, err)
	}
	if sf.Section(".sdmagic") == nil {
		return nil, fmt.Errorf("uki: %s is not systemd-stub (no .sdmagic section)", o.Stub)
	}
	for _, n := range sectionOrder {
		if sf.Section(n) != nil {
			return nil, fmt.Errorf("uki: %s already has a %s section (a UKI, not the stub?)", o.Stub, n)
		}
	}
	align := uint64(sf.SectionAlignment)
	if align == 0 {
		align = 4096
	}
	var end uint64
	for _, s := range sf.Sections {
		end = max(end, uint64(s.VirtualAddress)+uint64(max(s.VirtualSize, s.RawSize)))
	}

	dir, err := os.MkdirTemp("", "patela-uki-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	contents := map[string][]byte{
		".osrel": o.OSRelease, ".cmdline": []byte(o.Cmdline), ".linux": o.Kernel, ".initrd": o.Initramfs,
	}
	args := []string{}
	for _, n := range sectionOrder {
		if len(contents[n]) == 0 {
			continue // no command line: no .cmdline (objcopy adds no empty section)
		}
		p := filepath.Join(dir, strings.TrimPrefix(n, "."))
		if err := os.WriteFile(p, contents[n], 0o600); err != nil {
			return nil, err
		}
		vma := (end + align - 1) / align * align
		args = append(args, "--add-section", n+"="+p, "--change-section-vma", fmt.Sprintf("%s=%#x", n, vma))
		end = vma + uint64(len(contents[n]))
	}
	out := filepath.Join(dir, "uki.efi")
	args = append(args, o.Stub, out)
	cmd := exec.CommandContext(ctx, o.Objcopy, args...)
	if b, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("uki: objcopy: %v: %s", err, bytes.TrimSpace(b))
	}
	raw, err := os.ReadFile(out)
	if err != nil {
		return nil, err
	}
	img, err := pe.Pin(raw, 0)
	if err != nil {
		return nil, fmt.Errorf("uki: objcopy's output: %w", err)
	}
	// objcopy must have kept every byte as given: the stub measures the
	// sections' VirtualSize bytes.
	f, err := pe.Parse(img)
	if err != nil {
		return nil, err
	}
	for _, n := range sectionOrder {
		s := f.Section(n)
		if len(contents[n]) == 0 && s == nil {
			continue
		}
		if s == nil || !bytes.Equal(f.Data(s), contents[n]) {
			return nil, fmt.Errorf("uki: objcopy did not add %s as given", n)
		}
	}
	return img, nil
}

func (o *Options) check() error {
	switch {
	case len(o.Kernel) == 0 || len(o.Kernel) > MaxKernel:
		return fmt.Errorf("uki: kernel is %d bytes (want 1 to %d)", len(o.Kernel), MaxKernel)
	case len(o.Initramfs) == 0 || len(o.Initramfs) > MaxInitramfs:
		return fmt.Errorf("uki: initramfs is %d bytes (want 1 to %d)", len(o.Initramfs), MaxInitramfs)
	case len(o.Cmdline) > MaxCmdline:
		return fmt.Errorf("uki: command line is %d bytes, more than %d", len(o.Cmdline), MaxCmdline)
	case strings.ContainsAny(o.Cmdline, "\x00\n"):
		return errors.New("uki: command line holds a NUL or newline")
	case len(o.OSRelease) == 0 || len(o.OSRelease) > MaxOSRelease:
		return fmt.Errorf("uki: os-release is %d bytes (want 1 to %d)", len(o.OSRelease), MaxOSRelease)
	}
	if err := checkOSRelease(o.OSRelease); err != nil {
		return err
	}
	k, err := pe.Parse(o.Kernel)
	if err != nil {
		return fmt.Errorf("uki: kernel: %w (want a bzImage built with CONFIG_EFI_STUB)", err)
	}
	if k.Section(".sdmagic") != nil {
		return errors.New("uki: the kernel given is systemd-stub or a UKI, not a kernel")
	}
	return nil
}

// checkOSRelease wants os-release(5) lines: KEY=VALUE, comments, blanks,
// with at least ID or NAME (the boot menu's title comes from them).
func checkOSRelease(b []byte) error {
	ok := false
	for i, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, _, found := strings.Cut(line, "=")
		if !found || k == "" || strings.ContainsAny(k, " \t\"'") {
			return fmt.Errorf("uki: os-release line %d: want KEY=VALUE, have %q", i+1, line)
		}
		ok = ok || k == "ID" || k == "NAME"
	}
	if !ok {
		return errors.New("uki: os-release has neither ID= nor NAME=")
	}
	return nil
}
