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

var seizeRE = regexp.MustCompile(`seize: pcr (\d+) ([0-9a-f]{64})`)

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

// appendFiles writes initrd + a plain cpio holding more files (replacing
// any of the same name): another image, as far as the measurements go.
func appendFiles(t *testing.T, initrd, out string, files ...harness.File) {
	t.Helper()
	base, err := os.ReadFile(initrd)
	if err != nil {
		t.Fatal(err)
	}
	b, err := harness.Append(base, files...)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(out, b, 0o644); err != nil {
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
	key, keyField := policyKey(ctx, t, m, dir)
	log := harness.SyncWriter(m.log)
	im, err := harness.BuildImage(ctx, harness.ImageOptions{Tools: m.tools, Kernel: m.kernel, Dir: filepath.Join(dir, "image"),
		ServerCA: m.server.CA, PolicyKey: string(keyField[1]), Log: log})
	if err != nil {
		t.Fatal(err)
	}
	initB, initC := filepath.Join(dir, "initrd-b"), filepath.Join(dir, "initrd-c")
	appendFiles(t, im.Initramfs, initB, harness.File{Name: "etc/patela/release-note", Data: []byte("release B\n"), Mode: 0o644})
	relA := m.makeRelease(t, ctx, dir, "e2e-A", im.Initramfs, key)
	relB := m.makeRelease(t, ctx, dir, "e2e-B", initB, key)
	// The seized machine's image: the real one with seize as /init (the
	// agent stays at /bin/init) and the public release files.
	seize, err := os.ReadFile(m.tools.Seize)
	if err != nil {
		t.Fatal(err)
	}
	extra := []harness.File{{Name: "init", Data: seize, Mode: 0o755}}
	for _, r := range []releaseImage{relA, relB} {
		b, _ := os.ReadFile(r.release)
		extra = append(extra, harness.File{Name: "seize/" + filepath.Base(r.release), Data: b, Mode: 0o644})
	}
	appendFiles(t, im.Initramfs, initC, extra...)
	relC := m.makeRelease(t, ctx, dir, "e2e-C", initC, "")
	espC := filepath.Join(dir, "esp-c.img")
	if err := harness.ESPImage(ctx, relC.uki, espC); err != nil {
		t.Fatal(err)
	}
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
	boot := func(r releaseImage, name string, esp string) (*harness.VM, func()) {
		tpm, err := harness.StartSWTPM(ctx, tpmDir)
		if err != nil {
			t.Fatal(err)
		}
		console, _ := os.Create(filepath.Join(dir, name+".console"))
		o := harness.VMOptions{Kernel: r.uki, UEFI: &harness.UEFI{Vars: filepath.Join(dir, "vars.fd")}}
		if esp != "" {
			o = harness.VMOptions{UEFI: &harness.UEFI{Vars: filepath.Join(dir, "vars.fd"), ESP: esp}}
		}
		o.TPM, o.Relay, o.ServerAddr, o.Timeout, o.Console = tpm, m.tools.StdioRelay, m.server.Addr, 5*time.Minute, console
		vm, err := harness.Boot(ctx, o)
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
	vm, stop := boot(relA, "A", "")
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
	vm, stop = boot(relB, "B", "")
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

	// Seizure: the same TPM boots an image nobody approved, from an ESP
	// through the firmware's boot manager (the production UEFI path),
	// whose /init tries every way to unseal, then runs the real agent.
	wantC := m.ukiPCRs(t, ctx, relC.uki, "entry")
	vm, stop = boot(relC, "C", espC)
	if _, err := vm.Expect(ctx, "seize: done"); err != nil {
		t.Errorf("%v\n%s", err, vm.Tail(40))
		stop()
		t.FailNow()
	}
	gotC := map[string]string{}
	for _, l := range vm.Find("seize: pcr ") {
		if mm := seizeRE.FindStringSubmatch(l.Text); mm != nil {
			gotC[mm[1]] = mm[2]
		}
	}
	for _, n := range []string{"4", "11", "12"} {
		if gotC[n] != wantC[n] {
			t.Errorf("ESP boot: PCR %s in the guest %q, stimage uki pcrs --boot entry predicts %q", n, gotC[n], wantC[n])
		}
	}
	refused := vm.Find("seize: refused:")
	if len(vm.Find("UNSEALED")) != 0 || len(vm.Find("seize: done: unsealed nothing")) != 1 || len(refused) < 6 {
		t.Errorf("seizure: %d refusals, console:\n%s", len(refused), vm.Tail(40))
	}
	for _, l := range refused {
		t.Logf("%s", strings.TrimSpace(l.Text))
	}
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
	vm, stop = boot(relA, "A-retired", "")
	l, err = vm.Expect(ctx, "release e2e-A is retired")
	if err != nil || !strings.Contains(l.Text, "e2e-B (uki)") {
		t.Errorf("retired release: %q %v", l.Text, err)
	}
	stop()
	if got := sealing(); got != "release/" {
		t.Errorf("node list after the retired release's boot: sealing %q, want release/ (no approval given)", got)
	}
}

// policyKey makes a release policy key in dir with stimage, as an operator
// would, and returns its file and the agent.json value keygen printed
// (keyField[1]).
func policyKey(ctx context.Context, t *testing.T, m *machine, dir string) (string, [][]byte) {
	t.Helper()
	key := filepath.Join(dir, "policy.key")
	out, err := exec.CommandContext(ctx, m.tools.Stimage, "keygen", "policy-key", "--key-out", key, "--pub-out", filepath.Join(dir, "policy.pub")).Output()
	if err != nil {
		t.Fatal(err)
	}
	keyField := regexp.MustCompile(`"policy_key": "([^"]+)"`).FindSubmatch(out)
	if keyField == nil {
		t.Fatalf("keygen printed %s", out)
	}
	return key, keyField
}
