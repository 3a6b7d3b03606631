package main

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"log"
	"os"
	"path/filepath"
	"regexp"
	"slices"
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
	CPUs           int            `json:"vcpus"`
	Repeat         int            `json:"repeat"` // measured reboots and floor boots per relay count
	Boots          []BootTimeline `json:"boots"`
	Floors         []FloorBoot    `json:"floors"`
	Failed         []string       `json:"failed,omitempty"` // boots that did not finish, with why and their console
	LoadAvg        string         `json:"loadavg_at_start"` // of the QEMU section
	LoadAvgEnd     string         `json:"loadavg_at_end"`
}

// FloorBoot is the boot floor on the same VM: e2e/cmd/floorinit starting
// Relays tors with their keys in place, to every READY=1.
type FloorBoot struct {
	Name        string        `json:"name"`
	Relays      int           `json:"relays"`
	Ready       time.Duration `json:"ready_ns"` // QEMU start → "floor: all N relays READY"
	GuestUptime string        `json:"guest_uptime"`
}

// floorRE is floorinit's last line.
var floorRE = regexp.MustCompile(`floor: all (\d+) relays READY since_boot=(\S+)`)

// boot returns the measured boot (a reboot) of our agent with n relays
// whose time to all relays running is the median of its repeats.
func (b *BootRun) boot(n int) *BootTimeline {
	var all []*BootTimeline
	for i := range b.Boots {
		if bt := &b.Boots[i]; bt.Relays == n && bt.Measured {
			all = append(all, bt)
		}
	}
	return median(all, func(bt *BootTimeline) time.Duration { return bt.AllRunning })
}

// floor returns the floor boot with n relays whose time is the median.
func (b *BootRun) floor(n int) *FloorBoot {
	var all []*FloorBoot
	for i := range b.Floors {
		if b.Floors[i].Relays == n {
			all = append(all, &b.Floors[i])
		}
	}
	return median(all, func(f *FloorBoot) time.Duration { return f.Ready })
}

// samples lists the times of the measured boots with n relays, ours or
// the floor's, in the order they ran.
func (b *BootRun) samples(n int, floor bool) []string {
	var out []string
	if floor {
		for _, f := range b.Floors {
			if f.Relays == n {
				out = append(out, ms(f.Ready))
			}
		}
		return out
	}
	for _, bt := range b.Boots {
		if bt.Relays == n && bt.Measured {
			out = append(out, ms(bt.AllRunning))
		}
	}
	return out
}

// median is the middle element by d (the lower middle of an even count).
func median[T any](xs []*T, d func(*T) time.Duration) *T {
	if len(xs) == 0 {
		return nil
	}
	s := slices.Clone(xs)
	slices.SortFunc(s, func(a, b *T) int { return cmp.Compare(d(a), d(b)) })
	return s[(len(s)-1)/2]
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
	// AllRunning is QEMU start → the agent's "all relays running" (every
	// tor's READY=1), the mark the floor is compared with.
	AllRunning      time.Duration `json:"all_running_ns"`
	GuestAllRunning string        `json:"guest_all_running"`
	Relays          int           `json:"relays"`
	Measured        bool          `json:"measured"` // a reboot: keys in the TPM, the figure compared
	Note            string        `json:"note,omitempty"`
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
	runningRE  = regexp.MustCompile(`msg="all relays running" relays=(\d+) since_boot=(\S+)`)
)

// runBoot boots, for each relay count of counts in order, the agent
// (first boot or boot with the new count), then repeat times the agent's
// measured reboot and the floor with as many relays, alternately.
func runBoot(ctx context.Context, work string, counts []int, repeat int) (*BootRun, error) {
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

	// 8 vCPUs: allocation gives a node at most one relay per CPU, and the
	// 1- and 8-relay boots (and the floor) must run on the same VM. This
	// host has 2 cores, so under TCG the 8 vCPUs share them: what 8 tors
	// cost at start is paid on 2 cores, by ours and the floor alike.
	r.CPUs, r.Repeat = 8, repeat
	r.LoadAvg = loadAvg()
	defer func() { r.LoadAvgEnd = loadAvg() }()
	state := filepath.Join(dir, "tpm")
	var node int64
	agentOK := true
	// The agent's boots depend on each other (the node's TPM state and
	// enable); a floor depends on nothing, so each floor boots right after
	// the agent's reboot it is compared with (the two see the same load),
	// and also when the agent failed. Tor's own start varies by seconds
	// under TCG (its RSA link key), hence the repeats and medians.
	type step struct {
		name     string
		relays   int
		measured bool
		floor    bool
	}
	var steps []step
	for i, n := range counts {
		first := fmt.Sprintf("boot, %d relays (new)", n)
		if i == 0 {
			first = fmt.Sprintf("first boot, %d relays", n)
		}
		steps = append(steps, step{first, n, false, false})
		for k := range repeat {
			steps = append(steps, step{fmt.Sprintf("reboot %d, %d relays", k+1, n), n, true, false},
				step{fmt.Sprintf("floor %d, %d relays", k+1, n), n, false, true})
		}
	}
	floors := map[int]string{} // relay count → floor image
	for _, step := range steps {
		if step.floor {
			log.Printf("  QEMU: boot %s", step.name)
			fdir := filepath.Join(dir, fmt.Sprintf("floor%d", step.relays))
			f, err := func() (*FloorBoot, error) {
				if floors[step.relays] == "" {
					img, err := harness.FloorImage(ctx, kernel, fdir, step.relays)
					if err != nil {
						return nil, err
					}
					floors[step.relays] = img
				}
				return bootFloor(ctx, floors[step.relays], kernel, tools, fdir, step.name, step.relays, r.CPUs)
			}()
			if err != nil {
				r.Failed = append(r.Failed, fmt.Sprintf("%s: %v", step.name, err))
				continue
			}
			r.Floors = append(r.Floors, *f)
			continue
		}
		if !agentOK {
			r.Failed = append(r.Failed, step.name+": not booted (an earlier boot of the agent failed)")
			continue
		}
		err := func() error {
			for _, kv := range [][2]string{{"max_relays", strconv.Itoa(step.relays)}, {"relay_memory_mb", "64"}} {
				if _, err := srv.Admin(ctx, "node", "set", "--default", kv[0], kv[1]); err != nil {
					return err
				}
			}
			log.Printf("  QEMU: %s", step.name)
			console := filepath.Join(dir, step.name+".console")
			b, id, err := bootOnce(ctx, srv, im, tools, state, node, step.name, step.relays, r.CPUs, console)
			if err != nil {
				return fmt.Errorf("%w (console: %s)", err, console)
			}
			b.Measured = step.measured
			node = id
			r.Boots = append(r.Boots, *b)
			return nil
		}()
		if err != nil {
			agentOK = false
			r.Failed = append(r.Failed, fmt.Sprintf("%s: %v", step.name, err))
		}
	}
	if len(r.Failed) > 0 {
		return r, fmt.Errorf("%d of %d boots failed; the first: %s", len(r.Failed), len(steps), r.Failed[0])
	}
	return r, nil
}

// bootFloor boots the floor image img for n relays on the same VM as the
// agent's (its TPM and NICs attached, unused).
func bootFloor(ctx context.Context, img string, kernel *harness.Kernel, tools *harness.Tools, dir, name string, n, cpus int) (*FloorBoot, error) {
	tpm, err := harness.StartSWTPM(ctx, filepath.Join(dir, "tpm"))
	if err != nil {
		return nil, err
	}
	defer tpm.Stop()
	path := filepath.Join(dir, name+".console")
	console, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	defer console.Close()
	vm, err := harness.Boot(ctx, harness.VMOptions{Kernel: kernel.Vmlinuz, Initramfs: img, Cmdline: harness.Cmdline,
		TPM: tpm, Relay: tools.StdioRelay, CPUs: cpus, Timeout: 6 * time.Minute, Console: io.Writer(console)})
	if err != nil {
		return nil, err
	}
	defer vm.Kill()
	line, err := vm.Expect(ctx, "floor: all")
	if err != nil {
		return nil, fmt.Errorf("%w (console: %s)\n%s", err, path, vm.Tail(30))
	}
	m := floorRE.FindStringSubmatch(line.Text)
	if m == nil || m[1] != strconv.Itoa(n) {
		return nil, fmt.Errorf("floor console: %q", line.Text)
	}
	return &FloorBoot{Name: name, Relays: n, Ready: line.At, GuestUptime: m[2]}, nil
}

// bootOnce boots the machine on TPM state dir; on the first boot (node 0)
// it enables the node as soon as it shows up pending.
func bootOnce(ctx context.Context, srv *harness.Server, im *harness.Image, tools *harness.Tools, state string, node int64, name string, relays, cpus int, consolePath string) (*BootTimeline, int64, error) {
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
		TPM: tpm, Relay: tools.StdioRelay, ServerAddr: srv.Addr, CPUs: cpus, Timeout: 6 * time.Minute, Console: io.Writer(console)})
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
	for {
		line, err := vm.Expect(ctx, "all relays running")
		if err != nil {
			return nil, 0, fmt.Errorf("%w\n%s", err, vm.Tail(30))
		}
		// A first boot may log it for fewer relays on the way (never here:
		// the relays come in one config); take the line for all of them.
		if m := runningRE.FindStringSubmatch(line.Text); m != nil && m[1] == strconv.Itoa(relays) {
			b.AllRunning, b.GuestAllRunning = line.At, m[2]
			break
		}
		return nil, 0, fmt.Errorf("console: %q, want %d relays\n%s", line.Text, relays, vm.Tail(30))
	}
	rs, err := srv.WaitRelaysRunning(ctx, node, relays, vm.Start)
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
