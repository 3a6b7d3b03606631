package e2e

import (
	"context"
	"encoding/json"
	"fmt"
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

// releaseImage is a UKI made from an initramfs, as a release A, B, ...
type releaseImage struct{ uki, release string }

// makeRelease builds a UKI around initrd and, with key, a release file
// approved by it (direct boot: QEMU's -kernel under OVMF).
func (m *machine) makeRelease(t *testing.T, ctx context.Context, dir, name, initrd, key string) releaseImage {
	t.Helper()
	r := releaseImage{uki: filepath.Join(dir, name+".efi"), release: filepath.Join(dir, name+".json")}
	m.buildUKI(t, ctx, initrd, harness.Cmdline, r.uki)
	if key != "" {
		if err := m.imageStimage(ctx, "release", "create", "--name", name, "--uki", r.uki, "--boot", "direct",
			"--key", key, "--out", r.release); err != nil {
			t.Fatal(err)
		}
	}
	return r
}

// appendFile writes initrd + a plain cpio holding one more file: another
// image, as far as the measurements go.
func appendFile(t *testing.T, initrd, out, name, content string) {
	t.Helper()
	base, err := os.ReadFile(initrd)
	if err != nil {
		t.Fatal(err)
	}
	extra, err := harness.CPIO(harness.File{Name: name, Data: []byte(content), Mode: 0o644})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(out, append(base, extra...), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestMeasuredBoot is the measured path end to end, on one swtpm, with
// the agent sealing to a release policy key and UKIs booted under OVMF:
// release A's first boot creates the vault sealed to the policy key and
// its relays get fingerprints; release B (another initramfs, approved by
// the same key) opens the same vault with no re-seal and the same
// fingerprints; an image nobody approved cannot, and says so; after A is
// retired, a boot of A is refused and told to boot B.
func TestMeasuredBoot(t *testing.T) {
	m := setup(t)
	missing := harness.MissingUEFI()
	need(t, strings.Join(missing, ", "), len(missing) == 0)
	ctx, cancel := context.WithTimeout(context.Background(), 14*time.Minute)
	defer cancel()
	dir := t.TempDir()
	key := filepath.Join(dir, "policy.key")
	out, err := exec.CommandContext(ctx, m.tools.Stimage, "keygen", "policy-key", "--key-out", key, "--pub-out", filepath.Join(dir, "policy.pub")).Output()
	if err != nil {
		t.Fatal(err)
	}
	keyField := regexp.MustCompile(`"policy_key": "([^"]+)"`).FindSubmatch(out)
	if keyField == nil {
		t.Fatalf("keygen printed %s", out)
	}
	log := harness.SyncWriter(m.log)
	im, err := harness.BuildImage(ctx, harness.ImageOptions{Tools: m.tools, Kernel: m.kernel, Dir: filepath.Join(dir, "image"),
		ServerCA: m.server.CA, PolicyKey: string(keyField[1]), Log: log})
	if err != nil {
		t.Fatal(err)
	}
	initB, initC := filepath.Join(dir, "initrd-b"), filepath.Join(dir, "initrd-c")
	appendFile(t, im.Initramfs, initB, "etc/patela/release-note", "release B\n")
	appendFile(t, im.Initramfs, initC, "etc/patela/release-note", "rebuilt, never approved\n")
	relA := m.makeRelease(t, ctx, dir, "e2e-A", im.Initramfs, key)
	relB := m.makeRelease(t, ctx, dir, "e2e-B", initB, key)
	relC := m.makeRelease(t, ctx, dir, "e2e-C", initC, "")
	for _, r := range []releaseImage{relA, relB} {
		if _, err := m.server.Admin(ctx, "release", "add", r.release); err != nil {
			t.Fatal(err)
		}
	}
	before, err := m.server.Nodes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	known := map[int64]bool{}
	for _, n := range before {
		known[n.ID] = true
	}
	tpmDir := filepath.Join(dir, "tpm")
	boot := func(r releaseImage, name string) (*harness.VM, func()) {
		tpm, err := harness.StartSWTPM(ctx, tpmDir)
		if err != nil {
			t.Fatal(err)
		}
		console, _ := os.Create(filepath.Join(dir, name+".console"))
		vm, err := harness.Boot(ctx, harness.VMOptions{Kernel: r.uki, UEFI: &harness.UEFI{Vars: filepath.Join(dir, "vars.fd")},
			TPM: tpm, Relay: m.tools.StdioRelay, ServerAddr: m.server.Addr, Timeout: 5 * time.Minute, Console: console})
		if err != nil {
			tpm.Stop()
			t.Fatal(err)
		}
		stop := func() {
			if t.Failed() {
				t.Logf("%s console (last 40 lines):\n%s", name, vm.Tail(40))
			}
			vm.Kill()
			tpm.Stop()
			console.Close()
		}
		return vm, stop
	}

	// Release A, first boot.
	vm, stop := boot(relA, "A")
	node, err := m.server.WaitNode(ctx, func(n harness.NodeInfo) bool { return n.State == "pending" && !known[n.ID] })
	if err != nil {
		stop()
		t.Fatal(err)
	}
	if _, err := m.server.Admin(ctx, "node", "enable", fmt.Sprint(node.ID)); err != nil {
		t.Fatal(err)
	}
	relays1, err := m.server.WaitRelaysRunning(ctx, node.ID, 2, vm.Start)
	if err != nil {
		stop()
		t.Fatal(err)
	}
	running1 := time.Since(vm.Start)
	if _, err := vm.Expect(ctx, "key bundle saved", fmt.Sprintf("relays=%d", len(relays1))); err != nil {
		stop()
		t.Fatal(err)
	}
	if len(vm.Find("vault created: new key sealed to the release policy key", "release=e2e-A")) != 1 {
		t.Error("release A's first boot: no vault sealed to the policy key")
	}
	stop()
	t.Logf("release A: relays running (as reported) %v after QEMU start: %v", round(running1), fingerprints(relays1))

	// Release B on the same TPM: the update.
	vm, stop = boot(relB, "B")
	relays2, err := m.server.WaitRelaysRunning(ctx, node.ID, 2, vm.Start)
	if err != nil {
		stop()
		t.Fatal(err)
	}
	running2 := time.Since(vm.Start)
	if f1, f2 := fingerprints(relays1), fingerprints(relays2); !mapsEqual(f1, f2) {
		t.Errorf("fingerprints changed with the update:\n A %v\n B %v", f1, f2)
	}
	if len(vm.Find("vault created")) != 0 || len(vm.Find("vault opened", "release=e2e-B")) != 1 {
		t.Error("release B: want the vault opened with B's approval, no new vault")
	}
	sealing := func() string {
		js, _ := m.server.Admin(ctx, "node", "list", "--json")
		var ns []struct {
			ID      int64  `json:"id"`
			Sealing string `json:"sealing"`
			Release string `json:"release"`
		}
		json.Unmarshal([]byte(js), &ns)
		for _, n := range ns {
			if n.ID == node.ID {
				return n.Sealing + "/" + n.Release
			}
		}
		return ""
	}
	if got := sealing(); got != "release/e2e-B" {
		t.Errorf("node list after release B's boot: sealing %q, want release/e2e-B", got)
	}
	stop()
	t.Logf("release B: same fingerprints, relays running %v after QEMU start", round(running2))

	// Seizure: an image rebuilt with one file more, never approved.
	vm, stop = boot(relC, "C")
	l, err := vm.Expect(ctx, "measured boot: this image cannot unseal the relay keys")
	if err != nil || !strings.Contains(l.Text, "match no registered release") {
		t.Errorf("unapproved image: %q %v", l.Text, err)
	}
	if len(vm.Find("vault opened")) != 0 || len(vm.Find("vault created")) != 0 {
		t.Error("the unapproved image touched the vault")
	}
	stop()

	// Retired release: A is refused and told to boot B.
	if _, err := m.server.Admin(ctx, "release", "retire", "e2e-A"); err != nil {
		t.Fatal(err)
	}
	vm, stop = boot(relA, "A-retired")
	l, err = vm.Expect(ctx, "release e2e-A is retired")
	if err != nil || !strings.Contains(l.Text, "e2e-B (uki)") {
		t.Errorf("retired release: %q %v", l.Text, err)
	}
	stop()
	if got := sealing(); got != "release/" {
		t.Errorf("node list after the retired release's boot: sealing %q, want release/ (no approval given)", got)
	}
}
