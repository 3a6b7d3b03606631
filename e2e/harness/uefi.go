package harness

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Debian's OVMF (package ovmf): a 4 MiB build that measures into the TPM.
const (
	OVMFCode = "/usr/share/OVMF/OVMF_CODE_4M.fd"
	OVMFVars = "/usr/share/OVMF/OVMF_VARS_4M.fd"
)

// UEFI boots the VM under OVMF instead of SeaBIOS: VMOptions.Kernel is then
// a UKI passed with -kernel (OVMF loads it directly, see uki.BootDirect),
// or, with ESP set, nothing, and the firmware's boot manager starts the
// UKI from the ESP disk image (uki.BootEntry).
type UEFI struct {
	Vars string // writable copy of OVMF_VARS (created from OVMFVars if missing)
	ESP  string // raw FAT image with EFI/BOOT/BOOTX64.EFI, or ""
}

// args are QEMU's firmware and disk options. -nodefaults keeps QEMU's
// empty CD-ROM out of the boot manager's PCR 4 events.
func (u *UEFI) args() ([]string, error) {
	if _, err := os.Stat(u.Vars); err != nil {
		b, err := os.ReadFile(OVMFVars)
		if err != nil {
			return nil, fmt.Errorf("harness: OVMF (apt-get install ovmf): %w", err)
		}
		if err := os.WriteFile(u.Vars, b, 0o600); err != nil {
			return nil, err
		}
	}
	a := []string{"-nodefaults",
		"-drive", "if=pflash,format=raw,unit=0,readonly=on,file=" + OVMFCode,
		"-drive", "if=pflash,format=raw,unit=1,file=" + u.Vars}
	if u.ESP != "" {
		a = append(a, "-drive", "if=none,id=esp,format=raw,readonly=on,file="+u.ESP, "-device", "virtio-blk-pci,drive=esp,bootindex=0")
	}
	return a, nil
}

// ESPImage writes a 64 MiB FAT32 image (fixed volume id, no partition
// table, so nothing of it lands in PCR 5) holding the UKI at the
// removable-media path EFI/BOOT/BOOTX64.EFI.
func ESPImage(ctx context.Context, uki, out string) error {
	if err := os.Truncate(out, 0); err != nil && !os.IsNotExist(err) {
		return err
	}
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	err = f.Truncate(64 << 20)
	f.Close()
	if err != nil {
		return err
	}
	for _, c := range [][]string{
		{"mkfs.vfat", "-F", "32", "-i", "7061746c", out},
		{"mmd", "-i", out, "::/EFI", "::/EFI/BOOT"},
		{"mcopy", "-i", out, uki, "::/EFI/BOOT/BOOTX64.EFI"},
	} {
		if b, err := exec.CommandContext(ctx, c[0], c[1:]...).CombinedOutput(); err != nil {
			return fmt.Errorf("harness: %s: %v: %s (apt-get install dosfstools mtools)", quote(c), err, strings.TrimSpace(string(b)))
		}
	}
	return nil
}

// MissingUEFI lists what a UEFI boot needs and this host lacks.
func MissingUEFI() []string {
	var out []string
	for _, p := range []string{OVMFCode, OVMFVars, "/usr/lib/systemd/boot/efi/linuxx64.efi.stub"} {
		if _, err := os.Stat(p); err != nil {
			out = append(out, filepath.Base(p))
		}
	}
	for _, p := range []string{"objcopy", "mkfs.vfat", "mcopy"} {
		if _, err := exec.LookPath(p); err != nil {
			out = append(out, p)
		}
	}
	return out
}
