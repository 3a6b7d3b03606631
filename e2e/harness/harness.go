// Package harness runs patela end to end on one host: the real configsrv
// as a process with a fresh database, swtpm per machine, the initramfs and
// a signed OS package built from the tree, and QEMU (TCG, hard timeouts)
// booting the kernel and initramfs extracted from the verified package.
//
// The guest's management NIC is QEMU user networking with restrict=on: it
// reaches nothing but the config server, forwarded from 10.0.2.100:443 to
// the server's loopback port through stdiorelay. The relay NIC is a QEMU
// hub port with nothing else on it. Nothing leaves the host.
package harness

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"patela/internal/testutil"
)

// Guest-side constants of the test machine.
const (
	ServerIP  = "10.0.2.100" // the config server as the guest sees it
	ServerURL = "https://" + ServerIP
	MgmtMAC   = "52:54:00:12:34:56"
	RelayMAC  = "52:54:00:12:34:57"
)

// Modules are what the QEMU machine loads: virtio NICs, or Intel's
// e1000e for the machine booted on QEMU's emulated 82574 (VMOptions.NIC),
// nf_tables with NAT and conntrack for the relays' SNAT and marks.
var Modules = []string{"virtio_pci", "virtio_net", "e1000e", "nf_tables", "nft_chain_nat", "nft_nat", "nft_ct"}

// Root finds the module root (the directory holding go.mod) from the
// working directory up.
func Root() (string, error) {
	d, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return d, nil
		}
		p := filepath.Dir(d)
		if p == d {
			return "", errors.New("harness: no go.mod above the working directory")
		}
		d = p
	}
}

// Tools are the host binaries the harness runs, built from the tree.
type Tools struct {
	Root       string
	Configsrv  string
	Stimage    string
	StdioRelay string
	Seize      string // a static /init that tries to unseal the vault (e2e/cmd/seize)
}

// BuildTools builds configsrv, stimage, stdiorelay and seize into dir.
func BuildTools(ctx context.Context, dir string) (*Tools, error) {
	root, err := Root()
	if err != nil {
		return nil, err
	}
	t := &Tools{Root: root, Configsrv: filepath.Join(dir, "configsrv"), Stimage: filepath.Join(dir, "stimage"),
		StdioRelay: filepath.Join(dir, "stdiorelay"), Seize: filepath.Join(dir, "seize")}
	builds := []struct {
		out, pkg string
		cgo      bool
		tags     string
	}{
		// The server's tags are the Justfile's (static SQLite).
		{t.Configsrv, "./configsrv", true, "sqlite_omit_load_extension,osusergo,netgo"},
		{t.Stimage, "./stimage", false, ""},
		{t.StdioRelay, "./e2e/cmd/stdiorelay", false, ""},
		{t.Seize, "./e2e/cmd/seize", false, ""},
	}
	for _, b := range builds {
		args := []string{"build", "-trimpath", "-o", b.out}
		if b.tags != "" {
			args = append(args, "-tags", b.tags)
		}
		cmd := exec.CommandContext(ctx, "go", append(args, b.pkg)...)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED="+map[bool]string{true: "1", false: "0"}[b.cgo])
		if out, err := cmd.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("harness: go build %s: %v\n%s", b.pkg, err, out)
		}
	}
	return t, nil
}

// Kernel is the Debian kernel of scripts/kernel.sh.
type Kernel struct {
	Vmlinuz string
	Modules string // the module tree, build/kernel/modules/<version>
}

// FetchKernel returns build/kernel, running scripts/kernel.sh first when
// it is not there yet (the script caches).
func FetchKernel(ctx context.Context, root string, log io.Writer) (*Kernel, error) {
	k, err := findKernel(root)
	if err == nil {
		return k, nil
	}
	cmd := exec.CommandContext(ctx, filepath.Join(root, "scripts/kernel.sh"))
	cmd.Dir = root
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("harness: scripts/kernel.sh: %w", err)
	}
	return findKernel(root)
}

func findKernel(root string) (*Kernel, error) {
	v := filepath.Join(root, "build/kernel/vmlinuz")
	mods, _ := filepath.Glob(filepath.Join(root, "build/kernel/modules/*"))
	if _, err := os.Stat(v); err != nil || len(mods) != 1 {
		return nil, errors.New("harness: no kernel in build/kernel")
	}
	return &Kernel{Vmlinuz: v, Modules: mods[0]}, nil
}

// Missing lists the host programs the harness needs and cannot find.
func Missing() []string {
	var out []string
	for _, p := range []string{"qemu-system-x86_64", "swtpm", "go"} {
		if _, err := exec.LookPath(p); err != nil {
			out = append(out, p)
		}
	}
	if _, err := os.Stat("/usr/bin/tor"); err != nil {
		out = append(out, "tor")
	}
	return out
}

// SyncWriter makes w safe for concurrent writers.
func SyncWriter(w io.Writer) io.Writer { return testutil.SyncWriter(w) }

func quote(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		if strings.ContainsAny(a, " \t'\"") {
			a = "'" + a + "'"
		}
		q[i] = a
	}
	return strings.Join(q, " ")
}

// terminate sends pid SIGTERM and waits for done (its Wait's result); if
// it has not ended after grace, it kills pid's process group and waits.
func terminate(pid int, done <-chan error, grace time.Duration) {
	syscall.Kill(pid, syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(grace):
		syscall.Kill(-pid, syscall.SIGKILL)
		<-done
	}
}
