package e2e

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"patela/e2e/harness"
	"patela/initramfs/ramfs"
)

// TestDebugShell boots the debug flavour of the image with
// patela.debug=shell: a shell (u-root's gosh) answers on the serial
// console while the agent goes on booting. (The production image has no
// shell at all: initramfs/ramfs TestProduction.)
func TestDebugShell(t *testing.T) {
	m := setup(t)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	dir := t.TempDir()
	img := filepath.Join(dir, "debug.cpio.xz")
	rep, err := ramfs.Build(ctx, ramfs.Options{
		AgentConfig: filepath.Join(filepath.Dir(m.image.Initramfs), "agent.json"), CA: m.server.CA,
		KernelModulesDir: m.kernel.Modules, Debug: true, Out: img,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("debug initramfs:\n%s", rep)
	tpm, err := harness.StartSWTPM(ctx, filepath.Join(dir, "tpm"))
	if err != nil {
		t.Fatal(err)
	}
	defer tpm.Stop()
	console, err := os.Create(filepath.Join(dir, "console"))
	if err != nil {
		t.Fatal(err)
	}
	defer console.Close()
	vm, err := harness.Boot(ctx, harness.VMOptions{
		Kernel: m.kernel.Vmlinuz, Initramfs: img, Cmdline: harness.Cmdline + " patela.debug=shell",
		TPM: tpm, Relay: m.tools.StdioRelay, ServerAddr: m.server.Addr, Timeout: 3 * time.Minute, Console: console,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Kill()
	if _, err := vm.Expect(ctx, "debug shell running on the console"); err != nil {
		t.Fatalf("%v\n%s", err, vm.Tail(30))
	}
	// Keep typing until the shell has answered: the first keystrokes may
	// arrive before it reads the console. $((6*7)) proves a shell
	// evaluated the line; the echo of the typed text shows no 42.
	deadline := time.Now().Add(60 * time.Second)
	for {
		if err := vm.Type("echo dbg-$((6*7)) in $(pwd)\n"); err != nil {
			t.Fatal(err)
		}
		sctx, scancel := context.WithTimeout(ctx, 3*time.Second)
		_, err := vm.Expect(sctx, "dbg-42 in /")
		scancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the debug shell never answered on the console\n%s", vm.Tail(30))
		}
	}
	// u-root's ls exits 0 only if both exist; the marker is computed, so
	// the echo of the typed line (which the prompt may split) cannot match.
	if err := vm.Type("ls /bbin/gosh /usr/bin/tor && echo tools-$((6*7))\n"); err != nil {
		t.Fatal(err)
	}
	if _, err := vm.Expect(ctx, "tools-42"); err != nil {
		t.Fatalf("%v\n%s", err, vm.Tail(30))
	}
}
