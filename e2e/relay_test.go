package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"patela/e2e/harness"
)

// machine is what the relay tests share: tools, kernel, a running
// configsrv and a signed, verified OS package, built once.
type machine struct {
	dir    string
	log    *os.File // harness, server and stimage output
	tools  *harness.Tools
	kernel *harness.Kernel
	server *harness.Server
	image  *harness.Image
}

var (
	shared    *machine
	sharedErr error
	once      sync.Once
)

// TestMain stops the shared server and removes its files after the tests.
func TestMain(m *testing.M) {
	code := m.Run()
	if shared != nil {
		shared.server.Stop()
		shared.log.Close()
		os.RemoveAll(shared.dir)
	}
	os.Exit(code)
}

func setup(t *testing.T) *machine {
	t.Helper()
	missing := harness.Missing()
	need(t, strings.Join(missing, ", "), len(missing) == 0)
	once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		m := &machine{}
		if m.dir, sharedErr = os.MkdirTemp("", "patela-e2e-"); sharedErr != nil {
			return
		}
		if m.log, sharedErr = os.Create(filepath.Join(m.dir, "harness.log")); sharedErr != nil {
			return
		}
		log := harness.SyncWriter(m.log)
		start := time.Now()
		if m.tools, sharedErr = harness.BuildTools(ctx, filepath.Join(m.dir, "bin")); sharedErr != nil {
			return
		}
		if m.kernel, sharedErr = harness.FetchKernel(ctx, m.tools.Root, log); sharedErr != nil {
			return
		}
		if m.server, sharedErr = harness.StartServer(ctx, m.tools, filepath.Join(m.dir, "server"), log); sharedErr != nil {
			return
		}
		if m.image, sharedErr = harness.BuildImage(ctx, harness.ImageOptions{Tools: m.tools, Kernel: m.kernel,
			Dir: filepath.Join(m.dir, "image"), ServerCA: m.server.CA, Log: log}); sharedErr != nil {
			m.server.Stop()
			return
		}
		t.Logf("setup (tools, kernel, server, initramfs, signed OS package) took %v\ninitramfs %s:\n%s",
			time.Since(start).Round(time.Millisecond), m.image.Initramfs, m.image.Report)
		shared = m
	})
	if sharedErr != nil {
		t.Fatalf("setup: %v", sharedErr)
	}
	t.Cleanup(func() {
		if t.Failed() {
			b, _ := os.ReadFile(shared.log.Name())
			if len(b) > 6000 {
				b = b[len(b)-6000:]
			}
			t.Logf("harness log (tail):\n%s", b)
		}
	})
	return shared
}

// boot starts a swtpm on stateDir and QEMU on the extracted boot files;
// the console goes to a file whose tail is printed if the test fails.
func (m *machine) boot(t *testing.T, ctx context.Context, stateDir, name string) (*harness.VM, *harness.SWTPM) {
	t.Helper()
	return m.bootNIC(t, ctx, stateDir, name, "")
}

// bootNIC is boot with both NICs of QEMU device model nic ("" for virtio).
func (m *machine) bootNIC(t *testing.T, ctx context.Context, stateDir, name, nic string) (*harness.VM, *harness.SWTPM) {
	t.Helper()
	tpm, err := harness.StartSWTPM(ctx, stateDir)
	if err != nil {
		t.Fatal(err)
	}
	console, err := os.Create(filepath.Join(t.TempDir(), name+".console"))
	if err != nil {
		t.Fatal(err)
	}
	vm, err := harness.Boot(ctx, harness.VMOptions{
		Kernel: m.image.Kernel, Initramfs: m.image.BootInitramfs, Cmdline: m.image.Cmdline,
		TPM: tpm, Relay: m.tools.StdioRelay, ServerAddr: m.server.Addr, Timeout: 4 * time.Minute, Console: console, NIC: nic,
	})
	if err != nil {
		tpm.Stop()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		vm.Kill()
		tpm.Stop()
		console.Close()
		if t.Failed() {
			t.Logf("%s console (last 60 lines):\n%s", name, vm.Tail(60))
		}
	})
	return vm, tpm
}

func fingerprints(rs []harness.RelayInfo) map[string]string {
	out := map[string]string{}
	for _, r := range rs {
		out[r.Name] = r.Fingerprint + " " + r.Ed25519ID
	}
	return out
}

// TestRelayMachine is the machine's life: first boot → pending →
// enabled by the administrator → two relays running with fingerprints
// reported; a power cycle with the same TPM → same node, same relays, same
// fingerprints, keys restored from the TPM and no new vault key; a fresh
// TPM → a new pending node.
func TestRelayMachine(t *testing.T) {
	m := setup(t)
	ctx, cancel := context.WithTimeout(context.Background(), 12*time.Minute)
	defer cancel()
	tpmA := filepath.Join(t.TempDir(), "tpm-a")

	// Other tests may have left nodes behind: only a new one is ours.
	before, err := m.server.Nodes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	known := map[int64]bool{}
	for _, n := range before {
		known[n.ID] = true
	}

	// Boot 1: a machine the server has never seen.
	vm, tpm := m.boot(t, ctx, tpmA, "boot1")
	pending, err := m.server.WaitNode(ctx, func(n harness.NodeInfo) bool { return n.State == "pending" && !known[n.ID] })
	if err != nil {
		t.Fatalf("%v\n%s", err, vm.Tail(40))
	}
	atPending := time.Since(vm.Start)
	if _, err := vm.Expect(ctx, fmt.Sprintf("configsrv node enable %d", pending.ID)); err != nil {
		t.Fatal(err)
	}
	if _, err := m.server.Admin(ctx, "node", "enable", fmt.Sprint(pending.ID)); err != nil {
		t.Fatal(err)
	}
	enabledAt := time.Since(vm.Start)
	relays1, err := m.server.WaitRelaysRunning(ctx, pending.ID, 2, vm.Start)
	if err != nil {
		t.Fatalf("%v\n%s", err, vm.Tail(40))
	}
	running1 := time.Since(vm.Start)
	ready1 := readyAt(vm, relays1)
	// Pull the plug only once the TPM holds every relay's keys.
	saved, err := vm.Expect(ctx, "key bundle saved", fmt.Sprintf("relays=%d", len(relays1)))
	if err != nil {
		t.Fatal(err)
	}
	if len(vm.Find("vault created")) != 1 {
		t.Errorf("first boot: want one new vault key, console shows %d", len(vm.Find("vault created")))
	}
	t.Logf("boot 1 (times from QEMU start): node pending at %v, enabled at %v, all %d tor ready at %v, running as reported to the server at %v, keys in the TPM at %v: %v",
		round(atPending), round(enabledAt), len(relays1), round(ready1), round(running1), round(saved.At), fingerprints(relays1))
	vm.Kill()
	tpm.Stop()

	// Boot 2: same TPM state, power cycled.
	vm, tpm = m.boot(t, ctx, tpmA, "boot2")
	relays2, err := m.server.WaitRelaysRunning(ctx, pending.ID, 2, vm.Start)
	if err != nil {
		t.Fatalf("%v\n%s", err, vm.Tail(40))
	}
	running2 := time.Since(vm.Start)
	t.Logf("boot 2 (same TPM, times from QEMU start): all %d tor ready at %v, running as reported to the server at %v",
		len(relays2), round(readyAt(vm, relays2)), round(running2))
	if f1, f2 := fingerprints(relays1), fingerprints(relays2); !mapsEqual(f1, f2) {
		t.Errorf("fingerprints changed across the reboot:\n before %v\n after  %v", f1, f2)
	}
	nodes, err := m.server.Nodes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var ours []harness.NodeInfo
	for _, n := range nodes {
		if !known[n.ID] {
			ours = append(ours, n)
		}
	}
	if len(ours) != 1 || ours[0].ID != pending.ID || ours[0].State != "enabled" {
		t.Errorf("after the reboot the server has new nodes %+v, want only node %d, enabled", ours, pending.ID)
	}
	if n := len(vm.Find("vault created")); n != 0 {
		t.Errorf("reboot created a new vault key in the TPM (%d times)", n)
	}
	if len(vm.Find("vault opened")) == 0 {
		t.Error("reboot: the console never says the vault was opened")
	}
	for _, r := range relays2 {
		if len(vm.Find("keys", "restored=true", r.Name)) == 0 {
			t.Errorf("reboot: no \"keys restored=true\" line for relay %s", r.Name)
		}
	}
	vm.Kill()
	tpm.Stop()

	// Boot 3: a fresh TPM is a different machine.
	vm, _ = m.boot(t, ctx, filepath.Join(t.TempDir(), "tpm-b"), "boot3")
	fresh, err := m.server.WaitNode(ctx, func(n harness.NodeInfo) bool { return n.State == "pending" && n.ID != pending.ID && !known[n.ID] })
	if err != nil {
		t.Fatalf("%v\n%s", err, vm.Tail(40))
	}
	t.Logf("boot 3 (fresh TPM): new pending node %d at %v", fresh.ID, round(time.Since(vm.Start)))
}

// readyAt is when the last of the relays told the agent it was ready
// (tor's sd_notify READY=1, mirrored on the console).
func readyAt(vm *harness.VM, rs []harness.RelayInfo) time.Duration {
	var last time.Duration
	for _, r := range rs {
		ls := vm.Find("Signaled readiness", "relay="+r.Name)
		if len(ls) == 0 {
			return 0
		}
		last = max(last, ls[0].At)
	}
	return last
}

func round(d time.Duration) time.Duration { return d.Round(10 * time.Millisecond) }

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// TestTamperedPackage: the OS package verifies as built; a flipped byte
// in its archive, or an archive rebuilt around a modified initramfs and
// shipped with the original descriptor, makes `stimage ospkg verify`
// refuse it.
func TestTamperedPackage(t *testing.T) {
	m := setup(t)
	ctx := context.Background()
	if err := m.image.Verify(ctx, m.image.Package); err != nil {
		t.Fatalf("the built package does not verify: %v", err)
	}
	dir := t.TempDir()
	zb, err := os.ReadFile(m.image.Package + ".zip")
	if err != nil {
		t.Fatal(err)
	}
	db, err := os.ReadFile(m.image.Package + ".json")
	if err != nil {
		t.Fatal(err)
	}

	flipped := filepath.Join(dir, "flipped")
	zb = slices.Clone(zb)
	zb[len(zb)/2] ^= 0x01
	os.WriteFile(flipped+".zip", zb, 0o644)
	os.WriteFile(flipped+".json", db, 0o644)
	if err := m.image.Verify(ctx, flipped); err == nil {
		t.Error("stimage ospkg verify accepted an archive with a flipped byte")
	} else {
		t.Logf("flipped byte refused: %v", err)
	}

	// A well-formed archive with one byte added to the initramfs.
	ir, err := os.ReadFile(m.image.Initramfs)
	if err != nil {
		t.Fatal(err)
	}
	evil := filepath.Join(dir, "initramfs.cpio.xz")
	os.WriteFile(evil, append(ir, 0), 0o644)
	rebuilt := filepath.Join(dir, "rebuilt")
	if err := m.image.Stimage(ctx, "ospkg", "create", "--out", rebuilt, "--label", "patela relay machine", "--url", "https://boot.example.org/patela/patela-os.zip",
		"--kernel", m.kernel.Vmlinuz, "--initramfs", evil, "--cmdline", harness.Cmdline); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(rebuilt+".json", db, 0o644)
	err = m.image.Verify(ctx, rebuilt)
	if err == nil {
		t.Fatal("stimage ospkg verify accepted a rebuilt archive under the original signatures")
	}
	if !strings.Contains(err.Error(), "0 valid signature(s), 2 required: REFUSED") {
		t.Errorf("unexpected refusal: %v", err)
	}
}

// TestOSPackageReproducible: creating the OS package again from the same
// kernel and initramfs gives the same archive bytes, and two unsigned
// descriptors are equal too.
func TestOSPackageReproducible(t *testing.T) {
	m := setup(t)
	ctx := context.Background()
	dir := t.TempDir()
	for _, name := range []string{"a", "b"} {
		if err := m.image.Stimage(ctx, "ospkg", "create", "--out", filepath.Join(dir, name), "--label", "patela relay machine",
			"--url", "https://boot.example.org/patela/patela-os.zip", "--kernel", m.kernel.Vmlinuz, "--initramfs", m.image.Initramfs, "--cmdline", harness.Cmdline); err != nil {
			t.Fatal(err)
		}
	}
	read := func(p string) []byte {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	signed := read(m.image.Package + ".zip")
	for _, p := range []string{"a.zip", "b.zip"} {
		if !slices.Equal(read(filepath.Join(dir, p)), signed) {
			t.Errorf("%s differs from the signed package's archive built earlier from the same inputs", p)
		}
	}
	if !slices.Equal(read(filepath.Join(dir, "a.json")), read(filepath.Join(dir, "b.json"))) {
		t.Error("two unsigned descriptors differ")
	}
	t.Logf("OS package archive: %d bytes", len(signed))
}
