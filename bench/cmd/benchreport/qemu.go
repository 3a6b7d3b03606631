package main

import (
	"context"
	"fmt"
	"io"
	"log"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"time"

	"patela/e2e/harness"
)

// BootRun is the agent booting in QEMU (TCG) with swtpm and the real
// configsrv, built and booted by the e2e harness, and the sizes of what
// it boots.
type BootRun struct {
	InitramfsCPIO  int64          `json:"initramfs_cpio_bytes"`
	InitramfsGzip  int64          `json:"initramfs_gzip_bytes"` // compressed, with Compression (the name is the report's history)
	Compression    string         `json:"initramfs_compression"`
	PackageZip     int64          `json:"ospkg_zip_bytes"`
	PackageJSON    int64          `json:"ospkg_descriptor_bytes"`
	Kernel         int64          `json:"kernel_bytes"`
	InitramfsParts []harnessPart  `json:"initramfs_parts"`
	Build          time.Duration  `json:"build_ns"` // tools, initramfs, signed package
	Boots          []BootTimeline `json:"boots"`
}

type harnessPart struct {
	Name  string `json:"name"`
	Files int    `json:"files"`
	Bytes int64  `json:"bytes"`
}

// BootTimeline is one boot: the agent's own phase timeline (guest uptime)
// and wall-clock marks since QEMU started.
type BootTimeline struct {
	Name          string        `json:"name"`
	Phases        []Phase       `json:"phases"`
	BootComplete  time.Duration `json:"boot_complete_ns"`  // QEMU start → "boot complete" on the console
	GuestUptime   string        `json:"guest_uptime"`      // the agent's since_boot at "boot complete"
	RelaysRunning time.Duration `json:"relays_running_ns"` // QEMU start → the server sees every relay running
	Relays        int           `json:"relays"`
	Note          string        `json:"note,omitempty"`
}

// Phase is one "timeline" console line of the agent.
type Phase struct {
	Name  string `json:"name"`
	Start string `json:"start"` // guest uptime
	Took  string `json:"took"`
}

var (
	timelineRE = regexp.MustCompile(`msg=timeline phase=(\S+) start=(\S+) took=(\S+)`)
	sinceRE    = regexp.MustCompile(`since_boot=(\S+)`)
)

func runBoot(ctx context.Context, work string) (*BootRun, error) {
	if missing := harness.Missing(); len(missing) > 0 {
		return nil, fmt.Errorf("missing host programs: %v", missing)
	}
	ctx, cancel := context.WithTimeout(ctx, 20*time.Minute)
	defer cancel()
	dir := filepath.Join(work, "qemu")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	hlog, err := os.Create(filepath.Join(dir, "harness.log"))
	if err != nil {
		return nil, err
	}
	defer hlog.Close()
	out := harness.SyncWriter(hlog)
	t0 := time.Now()
	tools, err := harness.BuildTools(ctx, filepath.Join(dir, "bin"))
	if err != nil {
		return nil, err
	}
	kernel, err := harness.FetchKernel(ctx, tools.Root, out)
	if err != nil {
		return nil, err
	}
	srv, err := harness.StartServer(ctx, tools, filepath.Join(dir, "server"), out)
	if err != nil {
		return nil, err
	}
	defer srv.Stop()
	im, err := harness.BuildImage(ctx, harness.ImageOptions{Tools: tools, Kernel: kernel, Dir: filepath.Join(dir, "image"),
		ServerCA: srv.CA, Log: out})
	if err != nil {
		return nil, err
	}
	r := &BootRun{Build: time.Since(t0), InitramfsCPIO: im.Report.CPIOBytes, InitramfsGzip: size(im.Initramfs), Compression: im.Report.Compression,
		PackageZip: size(im.Package + ".zip"), PackageJSON: size(im.Package + ".json"), Kernel: size(kernel.Vmlinuz)}
	for _, p := range im.Report.Parts {
		r.InitramfsParts = append(r.InitramfsParts, harnessPart{p.Name, p.Files, p.Bytes})
	}

	state := filepath.Join(dir, "tpm")
	var node int64
	for _, name := range []string{"first boot", "reboot (same TPM)"} {
		log.Printf("  QEMU: %s", name)
		b, id, err := bootOnce(ctx, srv, im, tools, state, node, name, filepath.Join(dir, name+".console"))
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		node = id
		r.Boots = append(r.Boots, *b)
	}
	return r, nil
}

// bootOnce boots the machine on TPM state dir; on the first boot (node 0)
// it enables the node as soon as it shows up pending.
func bootOnce(ctx context.Context, srv *harness.Server, im *harness.Image, tools *harness.Tools, state string, node int64, name, consolePath string) (*BootTimeline, int64, error) {
	tpm, err := harness.StartSWTPM(ctx, state)
	if err != nil {
		return nil, 0, err
	}
	defer tpm.Stop()
	console, err := os.Create(consolePath)
	if err != nil {
		return nil, 0, err
	}
	defer console.Close()
	vm, err := harness.Boot(ctx, harness.VMOptions{Kernel: im.Kernel, Initramfs: im.BootInitramfs, Cmdline: im.Cmdline,
		TPM: tpm, Relay: tools.StdioRelay, ServerAddr: srv.Addr, Timeout: 6 * time.Minute, Console: io.Writer(console)})
	if err != nil {
		return nil, 0, err
	}
	defer vm.Kill()
	b := &BootTimeline{Name: name}
	if node == 0 {
		n, err := srv.WaitNode(ctx, func(n harness.NodeInfo) bool { return n.State == "pending" })
		if err != nil {
			return nil, 0, fmt.Errorf("%w\n%s", err, vm.Tail(30))
		}
		node = n.ID
		if _, err := srv.Admin(ctx, "node", "enable", strconv.FormatInt(node, 10)); err != nil {
			return nil, 0, err
		}
		b.Note = fmt.Sprintf("new node: the attest phase includes waiting pending until the administrator's enable, done by the bench %v after QEMU started", time.Since(vm.Start).Round(10*time.Millisecond))
	}
	line, err := vm.Expect(ctx, "boot complete")
	if err != nil {
		return nil, 0, fmt.Errorf("%w\n%s", err, vm.Tail(30))
	}
	b.BootComplete = line.At
	if m := sinceRE.FindStringSubmatch(line.Text); m != nil {
		b.GuestUptime = m[1]
	}
	rs, err := srv.WaitRelaysRunning(ctx, node, 2, vm.Start)
	if err != nil {
		return nil, 0, fmt.Errorf("%w\n%s", err, vm.Tail(30))
	}
	b.RelaysRunning, b.Relays = time.Since(vm.Start), len(rs)
	for _, l := range vm.Find("msg=timeline") {
		if m := timelineRE.FindStringSubmatch(l.Text); m != nil {
			b.Phases = append(b.Phases, Phase{m[1], m[2], m[3]})
		}
	}
	if len(b.Phases) == 0 {
		return nil, 0, fmt.Errorf("no timeline lines on the console:\n%s", vm.Tail(30))
	}
	return b, node, nil
}

func size(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size()
}
