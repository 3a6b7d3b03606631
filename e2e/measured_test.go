package e2e

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"patela/e2e/harness"
)

// ukiPCRs runs `stimage uki pcrs --json` on a UKI.
func (m *machine) ukiPCRs(t *testing.T, ctx context.Context, uki, boot string) map[string]string {
	t.Helper()
	out, err := exec.CommandContext(ctx, m.tools.Stimage, "uki", "pcrs", "--boot", boot, "--json", uki).Output()
	if err != nil {
		t.Fatalf("stimage uki pcrs: %v", err)
	}
	var res struct {
		PCRs map[string]string `json:"pcrs"`
	}
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("stimage uki pcrs printed %s: %v", out, err)
	}
	return res.PCRs
}

// buildUKI makes a UKI from the tree's kernel and an initramfs.
func (m *machine) buildUKI(t *testing.T, ctx context.Context, initramfs, cmdline, out string) {
	t.Helper()
	osrel := filepath.Join(filepath.Dir(out), "os-release")
	os.WriteFile(osrel, []byte("ID=patela\nNAME=\"patela relay machine\"\nVERSION_ID=e2e\n"), 0o644)
	if err := m.imageStimage(ctx, "uki", "create", "--kernel", m.kernel.Vmlinuz, "--initramfs", initramfs,
		"--cmdline", cmdline, "--os-release", osrel, "--out", out); err != nil {
		t.Fatal(err)
	}
}

func (m *machine) imageStimage(ctx context.Context, args ...string) error {
	return m.image.Stimage(ctx, args...)
}

var probeRE = regexp.MustCompile(`^pcrprobe pcr (\d+) ([0-9a-f]{64})$`)

// TestUKIPCRs boots a UKI built by stimage under OVMF with swtpm, once
// as QEMU's -kernel and once from an ESP disk through the firmware's boot
// manager, with pcrprobe as /init, and checks the PCRs the guest's kernel
// reads against `stimage uki pcrs` for that boot path: PCR 4 (firmware
// Authenticode measurements), 11 (systemd-stub's sections), 12 (zero, the
// embedded command line) and 15 (zero: nothing before the agent uses it).
func TestUKIPCRs(t *testing.T) {
	m := setup(t)
	missing := harness.MissingUEFI()
	need(t, strings.Join(missing, ", "), len(missing) == 0)
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	dir := t.TempDir()
	probe, err := os.ReadFile(m.tools.PCRProbe)
	if err != nil {
		t.Fatal(err)
	}
	cp, err := harness.CPIO(harness.File{Name: "init", Data: probe, Mode: 0o755})
	if err != nil {
		t.Fatal(err)
	}
	initrd := filepath.Join(dir, "probe.cpio")
	os.WriteFile(initrd, cp, 0o644)
	uki := filepath.Join(dir, "probe.efi")
	m.buildUKI(t, ctx, initrd, "console=ttyS0 panic=10 quiet", uki)
	esp := filepath.Join(dir, "esp.img")
	if err := harness.ESPImage(ctx, uki, esp); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		boot string
		o    harness.VMOptions
	}{
		{"direct", harness.VMOptions{Kernel: uki, UEFI: &harness.UEFI{Vars: filepath.Join(dir, "vars-direct.fd")}}},
		{"entry", harness.VMOptions{UEFI: &harness.UEFI{Vars: filepath.Join(dir, "vars-entry.fd"), ESP: esp}}},
	} {
		want := m.ukiPCRs(t, ctx, uki, c.boot)
		tpm, err := harness.StartSWTPM(ctx, filepath.Join(dir, "tpm-"+c.boot))
		if err != nil {
			t.Fatal(err)
		}
		o := c.o
		o.TPM, o.Relay, o.ServerAddr, o.Timeout = tpm, m.tools.StdioRelay, m.server.Addr, 3*time.Minute
		vm, err := harness.Boot(ctx, o)
		if err != nil {
			tpm.Stop()
			t.Fatal(err)
		}
		_, err = vm.Expect(ctx, "pcrprobe done")
		took := time.Since(vm.Start)
		vm.Kill()
		tpm.Stop()
		if err != nil {
			t.Fatalf("%s boot: %v\n%s", c.boot, err, vm.Tail(30))
		}
		got := map[string]string{}
		for _, l := range vm.Find("pcrprobe pcr ") {
			if mm := probeRE.FindStringSubmatch(strings.TrimSpace(l.Text)); mm != nil {
				got[mm[1]] = mm[2]
			}
		}
		zero := strings.Repeat("0", 64)
		for _, n := range []string{"4", "11", "12"} {
			if got[n] != want[n] {
				t.Errorf("%s boot: PCR %s in the guest %q, stimage predicts %q", c.boot, n, got[n], want[n])
			}
		}
		if got["15"] != zero {
			t.Errorf("%s boot: PCR 15 is %q, want zero", c.boot, got["15"])
		}
		t.Logf("%s boot: PCR 4, 11, 12 as predicted (PCR 11 %s); probe done %v after QEMU start", c.boot, got["11"][:16], took.Round(10*time.Millisecond))
	}
}
