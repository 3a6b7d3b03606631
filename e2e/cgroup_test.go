package e2e

import (
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"patela/e2e/harness"
)

// TestCgroupsInVM runs init/tor's cgroup test (a relay over its memory
// limit killed and restarted alone, the others untouched) with real tor
// inside the Debian kernel under QEMU, where cgroup v2 has its memory
// controller whatever the host's cgroup setup: test binary as a child of
// a minimal PID 1 (e2e/cmd/testinit) that mounts cgroup2, with the
// image's tor, and the relays' keys in the real vault on the machine's
// TPM (a swtpm attached to QEMU).
func TestCgroupsInVM(t *testing.T) {
	missing := harness.Missing()
	need(t, strings.Join(missing, ", "), len(missing) == 0)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	root, err := harness.Root()
	if err != nil {
		t.Fatal(err)
	}
	kernel, err := harness.FetchKernel(ctx, root, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	test := filepath.Join(dir, "tor.test")
	build := exec.CommandContext(ctx, "go", "test", "-c", "-o", test, "./init/tor")
	build.Dir = root
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go test -c ./init/tor: %v\n%s", err, out)
	}
	bin, err := os.ReadFile(test)
	if err != nil {
		t.Fatal(err)
	}
	img, _, err := harness.InitImage(ctx, harness.InitImageOptions{Kernel: kernel, Dir: filepath.Join(dir, "image"),
		InitPkg: "patela/e2e/cmd/testinit", Files: []harness.File{
			{Name: "test", Data: bin, Mode: 0o755},
			// The relays' keys go to the real vault on the machine's TPM.
			{Name: "test.args", Data: []byte("-test.run=^TestCgroupOOM$\n-test.v\n-test.count=1\n-tpm-device=/dev/tpmrm0\n"), Mode: 0o644},
		}})
	if err != nil {
		t.Fatal(err)
	}
	console, err := os.Create(filepath.Join(dir, "console"))
	if err != nil {
		t.Fatal(err)
	}
	defer console.Close()
	tpm, err := harness.StartSWTPM(ctx, filepath.Join(dir, "tpm"))
	if err != nil {
		t.Fatal(err)
	}
	defer tpm.Stop()
	vm, err := harness.Boot(ctx, harness.VMOptions{Kernel: kernel.Vmlinuz, Initramfs: img, Cmdline: "console=ttyS0 panic=-1 quiet",
		TPM: tpm, Timeout: 7 * time.Minute, Console: console})
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Kill()
	line, err := vm.Expect(ctx, "testinit: exit")
	if err != nil {
		t.Fatalf("%v\n%s", err, vm.Tail(60))
	}
	if line.Text != "testinit: exit 0" || len(vm.Find("--- PASS: TestCgroupOOM")) != 1 {
		t.Fatalf("the cgroup test in the VM: %s\n%s", line.Text, vm.Tail(80))
	}
	for _, l := range vm.Find("tor killed by the OOM killer") {
		t.Logf("guest: %s", strings.TrimSpace(l.Text))
	}
	t.Logf("TestCgroupOOM passed in the VM at %v", line.At.Round(time.Millisecond))
}
