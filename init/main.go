// Command init is the patela agent: PID 1 of a relay machine's initramfs.
//
// Boot sequence (each phase is timed on the console, see pid1.Timeline):
//
//	signals → mount → reaper → config → modules → etc → entropy → dhcp →
//	clock → tpm → attest → specs → vault → reconcile (until a signal) →
//	shutdown: reconcile stopped, relays stopped, relay network torn down,
//	sync, reboot(2)
//
// Signals follow gokrazy and u-root: SIGTERM, SIGUSR2 (and SIGPWR) power
// off, SIGINT (ctrl-alt-del) and SIGUSR1 reboot, at any time, also in the
// middle of a boot phase. A fatal error anywhere is printed and the machine
// reboots after a delay (30 s, 5 s under patela.debug; a power-off request
// meanwhile is obeyed); a panic is a fatal error. PID 1 never exits.
//
// Not PID 1, the same sequence runs as an ordinary process against
// --root: nothing is mounted, no module is loaded, the clock is not set,
// and power off/reboot end the process (exit 0/3). Subcommands, only when
// not PID 1:
//
//	init tpm info|ek|clear-vault   the TPM developer CLI (init/tpmcli)
//
// Self-test mode (patela.selftest=pid1 on the kernel command line) needs no
// TPM, and a config server only if the clock is wrong. It runs the phases
// up to the clock check, then checks that every filesystem is mounted and
// the reaper works (a child that leaves an orphan behind: the child's
// status goes to its owner, the orphan is reaped by PID 1), then has a
// child send SIGTERM to its parent, the agent, and the normal power-off
// path ends the machine. It exists for the QEMU test in e2e/pid1_test.go;
// its console lines start "selftest".
package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
	"github.com/vishvananda/netlink"

	"patela/init/agentcfg"
	"patela/init/attest"
	"patela/init/debugshell"
	"patela/init/dhcp"
	"patela/init/netcfg"
	"patela/init/pid1"
	"patela/init/reaper"
	"patela/init/reconcile"
	"patela/init/resolv"
	"patela/init/tor"
	"patela/init/tpmcli"
	"patela/init/tpmdev"
	"patela/init/vault"
	"patela/internal/api"
	"patela/internal/layout"
)

func main() {
	if !pid1.IsPID1() && len(os.Args) > 1 {
		if code, ok := subcommand(os.Args[1], os.Args[2:]); ok {
			os.Exit(code)
		}
	}
	a := &agent{}
	flag.StringVar(&a.root, "root", "", "run against this root directory instead of / (not PID 1)")
	flag.StringVar(&a.configPath, "config", layout.AgentConfig, "agent config, relative to --root")
	flag.StringVar(&a.cmdlinePath, "cmdline", "/proc/cmdline", "kernel command line with patela.KEY=VALUE overrides")
	flag.Parse()
	if pid1.IsPID1() && a.root != "" {
		a.root = "" // PID 1 owns the machine
	}
	a.log = slog.New(pid1.ConsoleHandler(os.Stderr, false))
	a.boot()
}

type agent struct {
	root, configPath, cmdlinePath string

	log     *slog.Logger
	cfg     *agentcfg.Config
	tl      *pid1.Timeline
	actions <-chan pid1.Action
	delay   time.Duration
	reaped  chan int

	resolv *resolv.File

	tpm   transport.TPMCloser
	token string

	mu       sync.Mutex // the fields below, set by the boot goroutine
	dhcp     *dhcp.Client
	net      *netcfg.Manager
	loop     *reconcile.Loop
	loopDone chan struct{}
}

// boot runs the whole life of the machine and never returns. The boot
// phases and the reconcile loop run in their own goroutine; this one owns
// the end: a power-off or reboot request (even in the middle of the boot,
// say while waiting for an administrator to enable the node) or a fatal
// error. Only this goroutine halts the machine.
func (a *agent) boot() {
	a.delay = 30 * time.Second
	defer func() {
		if r := recover(); r != nil {
			pid1.Fatal(fmt.Errorf("panic: %v\n%s", r, debug.Stack()), a.delay, a.actions, a.log)
		}
	}()
	// Signals first: nothing may start a child before PID 1 handles them.
	a.actions = pid1.Signals(a.log)
	a.tl = pid1.NewTimeline(a.log)
	a.log.Info("patela agent starting", "pid", os.Getpid(), "root", a.root, "go", runtime.Version())

	ctx, cancel := context.WithCancel(context.Background())
	bootDone := make(chan struct{})
	failed := make(chan error, 2)
	go func() {
		defer close(bootDone)
		defer func() {
			if r := recover(); r != nil {
				failed <- fmt.Errorf("panic: %v\n%s", r, debug.Stack())
			}
		}()
		if err := a.start(ctx, failed); err != nil {
			failed <- err
		}
	}()
	select {
	case act := <-a.actions:
		// Interrupt whatever phase is running; it ends on ctx.
		cancel()
		select {
		case <-bootDone:
		case <-time.After(10 * time.Second):
			a.log.Warn("boot phase did not stop in 10 s; shutting down anyway")
		}
		a.shutdown(act)
	case err := <-failed:
		pid1.Fatal(err, a.delay, a.actions, a.log)
	}
}

// start runs the boot phases and starts the reconcile loop, whose setup
// error, if any, arrives later on failed.
func (a *agent) start(ctx context.Context, failed chan<- error) error {
	phases := []struct {
		name string
		fn   func() error
	}{
		{"mount", func() error { return pid1.Mount(a.root, a.log) }},
		{"reaper", func() error {
			// One reaper for every child, once /proc is there.
			a.reaped = make(chan int, 16)
			go reaper.Loop(context.Background(), func(pid int) {
				a.log.Debug("reaped orphan", "pid", pid)
				select {
				case a.reaped <- pid:
				default:
				}
			})
			return nil
		}},
		{"config", a.loadConfig},
		{"modules", a.loadModules},
		{"etc", func() error {
			a.resolv = &resolv.File{Path: a.path("/etc/resolv.conf")}
			return pid1.WriteEtc(a.root, hostname())
		}},
		{"entropy", func() error { return pid1.WaitEntropy(ctx, 3*time.Second, a.tpmRandom, a.log) }},
		{"dhcp", func() error { return a.startDHCP(ctx) }},
		{"clock", func() error { return a.checkClock(ctx) }},
	}
	for _, p := range phases {
		if err := a.phase(ctx, p.name, p.fn); err != nil {
			return err
		}
		if p.name == "config" && a.cfg.DebugFlag("shell") {
			go func() {
				if err := debugshell.Run(context.Background(), a.log, layout.Shell, debugshell.Console); err != nil {
					a.log.Warn("debug shell", "err", err)
				}
			}()
		}
	}
	if a.cfg.Selftest == "pid1" {
		if err := a.phase(ctx, "selftest", a.selftestPID1); err != nil {
			return err
		}
		a.log.Info("boot complete", "since_boot", pid1.Uptime().Round(time.Millisecond))
		return nil
	}

	client, err := a.apiClient()
	if err != nil {
		return err
	}
	var sess *attest.Session
	var specs *api.Specs
	var v *vault.Vault
	relays := []struct {
		name string
		fn   func() error
	}{
		{"tpm", func() (err error) {
			if a.tpm == nil {
				if a.tpm, err = tpmdev.Open(a.cfg.TPM); err != nil {
					return err
				}
			}
			sess, err = attest.NewSession(a.tpm, client, a.log)
			return err
		}},
		{"attest", func() (err error) {
			a.token, err = sess.Token(ctx)
			return err
		}},
		{"specs", func() error {
			var err error
			if specs, err = readSpecs(a.path("/proc")); err != nil {
				return err
			}
			r, err := client.Specs(ctx, a.token, specs)
			if err == nil {
				a.log.Info("specs sent", "cpus", specs.CPUs, "memory", specs.MemoryBytes, "relays", r.RelayCount)
			}
			return err
		}},
		{"vault", func() (err error) {
			v, err = vault.Open(ctx, a.tpm, vault.Options{
				EKName: sess.EKName(), PCRs: a.cfg.PCRs, Log: a.log,
				Mirror: vault.ServerMirror{Client: client, Tokens: sess},
			})
			if errors.Is(err, vault.ErrOrphaned) || errors.Is(err, vault.ErrKeyLost) {
				// The message says `configsrv keys drop N --yes`: name N.
				err = fmt.Errorf("%w (this machine is configsrv node %d)", err, sess.NodeID())
			}
			return err
		}},
		{"reconcile", func() error {
			n, err := netcfg.New(netcfg.Options{Log: a.log})
			if err != nil {
				return err
			}
			loop := reconcile.New(reconcile.Config{
				Client: client, Tokens: sess, Network: relayNetwork{n, a.resolv}, Keys: v, Log: a.log, Specs: specs,
				Tor: tor.Options{
					Tor:      layout.Tor,
					StateDir: a.path(layout.StateDir),
					RunDir:   a.path(layout.RunDir),
					Accounts: tor.Files{Root: a.path("/")},
				},
			})
			done := make(chan struct{})
			a.mu.Lock()
			a.net, a.loop, a.loopDone = n, loop, done
			a.mu.Unlock()
			go func() {
				defer close(done)
				// Run returns early only for a setup error; otherwise when
				// ctx ends at shutdown.
				if err := loop.Run(ctx); err != nil && ctx.Err() == nil {
					failed <- fmt.Errorf("reconcile: %w", err)
				}
			}()
			return nil
		}},
	}
	for _, p := range relays {
		if err := a.phase(ctx, p.name, p.fn); err != nil {
			return err
		}
	}
	a.log.Info("boot complete", "since_boot", pid1.Uptime().Round(time.Millisecond))
	return nil
}

// phase runs one boot phase on the timeline. Its error is fatal, unless a
// shutdown interrupted it.
func (a *agent) phase(ctx context.Context, name string, fn func() error) error {
	err := a.tl.Run(name, fn)
	switch {
	case err == nil:
		return nil
	case ctx.Err() != nil:
		a.log.Info("boot phase interrupted by shutdown", "phase", name)
		runtime.Goexit() // the boot goroutine ends here; boot() halts
	}
	return fmt.Errorf("%s: %w", name, err)
}

// path resolves a path of the running system under --root.
func (a *agent) path(p string) string { return filepath.Join(a.root, p) }

func (a *agent) loadConfig() error {
	cmdline, err := os.ReadFile(a.cmdlinePath)
	if err != nil {
		return fmt.Errorf("reading kernel command line: %w", err)
	}
	cfg, err := agentcfg.Load(a.path(a.configPath), string(cmdline))
	if err != nil {
		return err
	}
	a.cfg = cfg
	a.delay = time.Duration(cfg.RebootDelay)
	if cfg.Debugging() {
		a.log = slog.New(pid1.ConsoleHandler(os.Stderr, true))
	}
	a.log.Info("config", "server", cfg.ServerURL, "mgmt", cfg.MgmtInterface+cfg.MgmtMAC, "tpm", cfg.TPM,
		"modules", len(cfg.Modules), "pcrs", cfg.PCRs, "debug", cfg.Debug, "selftest", cfg.Selftest)
	return nil
}

func (a *agent) loadModules() error {
	if !pid1.IsPID1() {
		a.log.Info("not PID 1: kernel modules left to the host", "modules", a.cfg.Modules)
		return nil
	}
	return pid1.LoadModules(a.cfg.ModuleDir, a.cfg.Modules, a.log)
}

// tpmRandom seeds the kernel RNG from the TPM when it is slow to
// initialize (no RDRAND, no virtio-rng).
func (a *agent) tpmRandom() ([]byte, error) {
	if a.tpm == nil {
		t, err := tpmdev.Open(a.cfg.TPM)
		if err != nil {
			return nil, err
		}
		a.tpm = t
	}
	r, err := tpm2.GetRandom{BytesRequested: 32}.Execute(a.tpm)
	if err != nil {
		return nil, fmt.Errorf("TPM2_GetRandom: %w", err)
	}
	return r.RandomBytes.Buffer, nil
}

func (a *agent) startDHCP(ctx context.Context) error {
	dctx, cancel := context.WithTimeout(ctx, time.Duration(a.cfg.DHCPTimeout))
	defer cancel()
	// The NIC appears when its driver has probed it, which may trail the
	// module load a little.
	ifname, err := mgmtInterface(a.cfg)
	for err != nil {
		select {
		case <-dctx.Done():
			return err
		case <-time.After(100 * time.Millisecond):
		}
		ifname, err = mgmtInterface(a.cfg)
	}
	d, err := dhcp.Start(dctx, dhcp.Config{
		Interface: ifname,
		Resolv:    a.resolv,
		IPv6:      true,
		Log:       a.log,
	})
	if err != nil {
		return err
	}
	a.mu.Lock()
	a.dhcp = d
	a.mu.Unlock()
	return nil
}

// mgmtInterface picks the management NIC: by name, by MAC, or the first
// Ethernet link (lowest index) when the config names none.
func mgmtInterface(cfg *agentcfg.Config) (string, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return "", err
	}
	mac, _ := net.ParseMAC(cfg.MgmtMAC)
	for _, l := range links {
		at := l.Attrs()
		switch {
		case cfg.MgmtInterface != "":
			if at.Name == cfg.MgmtInterface {
				return at.Name, nil
			}
		case mac != nil:
			if bytes.Equal(at.HardwareAddr, mac) {
				return at.Name, nil
			}
		case l.Type() == "device" && len(at.HardwareAddr) == 6 && at.Flags&net.FlagLoopback == 0:
			return at.Name, nil
		}
	}
	var names []string
	for _, l := range links {
		names = append(names, l.Attrs().Name)
	}
	return "", fmt.Errorf("management interface (name %q, MAC %q) not found among %v (missing driver module?)",
		cfg.MgmtInterface, cfg.MgmtMAC, names)
}

// checkClock makes the clock good enough for TLS. The kernel has already
// set it from the RTC (CONFIG_RTC_HCTOSYS); a machine with a dead RTC
// battery boots in 1970 or 2000, before the agent's epoch and the CA's
// NotBefore, and every certificate would look not yet valid. Then the
// config server's Date header is used, read over TLS verified without
// trusting the local clock (see pid1.ServerTime).
func (a *agent) checkClock(ctx context.Context) error {
	// A missing CA is reported by the phases that need it; the clock
	// needs it only when it is wrong.
	ca, caErr := os.ReadFile(a.path(a.cfg.ServerCA))
	floor := pid1.Epoch
	if caErr == nil {
		floor = pid1.ClockFloor(ca)
	}
	if now := time.Now(); !now.Before(floor) {
		a.log.Info("clock ok (RTC)", "now", now.UTC().Format(time.RFC3339))
		return nil
	}
	if caErr != nil {
		return fmt.Errorf("clock %v is before %v and cannot be set from the server: %w", time.Now().UTC(), floor, caErr)
	}
	var err error
	a.log.Warn("clock is before the agent epoch / CA validity; asking the config server", "now", time.Now().UTC(), "floor", floor.UTC())
	var t time.Time
	for n := 0; ; n++ {
		if t, err = pid1.ServerTime(ctx, a.cfg.ServerURL, ca, floor); err == nil {
			break
		}
		a.log.Warn("config server time unavailable", "err", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(min(time.Second<<min(n, 5), 30*time.Second)):
		}
	}
	return pid1.SetClock(t, a.log)
}

func (a *agent) apiClient() (*api.Client, error) {
	ca, err := os.ReadFile(a.path(a.cfg.ServerCA))
	if err != nil {
		return nil, fmt.Errorf("server CA: %w", err)
	}
	return api.NewClient(a.cfg.ServerURL, ca)
}

// relayNetwork applies the node's network: the relay side through netcfg,
// and the resolvers the server names (exit relays resolve through them)
// into resolv.conf, in place of the DHCP lease's.
type relayNetwork struct {
	*netcfg.Manager
	dns *resolv.File
}

func (n relayNetwork) Apply(ctx context.Context, want netcfg.Relays) error {
	if err := n.dns.SetServer(want.Network.DNS); err != nil {
		return err
	}
	return n.Manager.Apply(ctx, want)
}

// readSpecs reads the hardware the server sizes relays by.
func readSpecs(proc string) (*api.Specs, error) {
	s := &api.Specs{}
	f, err := os.Open(filepath.Join(proc, "cpuinfo"))
	if err != nil {
		return nil, err
	}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		switch {
		case !ok:
		case k == "processor":
			s.CPUs++
		case k == "model name" && s.CPUModel == "":
			s.CPUModel = v
		}
	}
	f.Close()
	mem, err := os.ReadFile(filepath.Join(proc, "meminfo"))
	if err != nil {
		return nil, err
	}
	for _, line := range strings.Split(string(mem), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "MemTotal:" {
			kb, err := strconv.ParseUint(f[1], 10, 64)
			if err != nil {
				return nil, fmt.Errorf("meminfo: %q", line)
			}
			s.MemoryBytes = kb * 1024
		}
	}
	if s.CPUs == 0 || s.MemoryBytes == 0 {
		return nil, fmt.Errorf("could not read CPU count (%d) or memory (%d) from %s", s.CPUs, s.MemoryBytes, proc)
	}
	return s, nil
}

// shutdown stops everything in order, bounded, then halts.
func (a *agent) shutdown(act pid1.Action) {
	a.log.Info("shutting down", "action", act)
	start := pid1.Uptime()
	a.mu.Lock()
	loop, n, loopDone := a.loop, a.net, a.loopDone
	a.mu.Unlock()
	if loop != nil {
		// boot() has cancelled the loop's context: no reconcile round may
		// run (and re-apply the network) while the machine goes down.
		select {
		case <-loopDone:
		case <-time.After(30 * time.Second):
			a.log.Warn("reconcile loop did not stop in 30 s; shutting down anyway")
		}
		// tor's SIGINT exit takes up to ShutdownWaitLength (30 s by default);
		// the supervisor escalates to SIGKILL itself, this bounds the rest.
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		loop.Shutdown(ctx)
		cancel()
	}
	if n != nil {
		if err := n.Teardown(); err != nil {
			a.log.Warn("relay network teardown", "err", err)
		}
	}
	a.mu.Lock()
	d := a.dhcp
	a.mu.Unlock()
	if d != nil {
		d.Stop() // nothing released: the next boot asks for the same lease
	}
	a.log.Info("timeline", "phase", "shutdown", "start", start.Round(10*time.Millisecond), "took", (pid1.Uptime() - start).Round(time.Millisecond))
	pid1.Halt(act, a.log)
}

func hostname() string {
	if pid1.IsPID1() {
		h := "patela"
		syscall.Sethostname([]byte(h))
		return h
	}
	h, _ := os.Hostname()
	return h
}

// selftestPID1 checks what only PID 1 can: a child's status reaches the
// code that started it while the orphan it leaves behind is reaped, and a
// SIGTERM sent to PID 1 by another process powers the machine off.
func (a *agent) selftestPID1() error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	if pid1.IsPID1() {
		mounts, err := os.ReadFile("/proc/self/mounts")
		if err != nil {
			return err
		}
		if missing := pid1.Missing(mounts); len(missing) > 0 {
			return fmt.Errorf("not mounted: %s", strings.Join(missing, ", "))
		}
		a.log.Info("selftest: every filesystem mounted")
	}
	// Drain orphans reaped so far (none expected).
	for len(a.reaped) > 0 {
		<-a.reaped
	}
	var out bytes.Buffer
	child := exec.Command(self, "selftest-child")
	child.Stdout = &out
	if err := reaper.Run(child); err != nil {
		return fmt.Errorf("selftest child: %w", err)
	}
	orphan, err := strconv.Atoi(strings.TrimSpace(out.String()))
	if err != nil {
		return fmt.Errorf("selftest child printed %q", out.String())
	}
	a.log.Info("selftest: child exited, status collected by its owner", "child", child.Process.Pid, "status", child.ProcessState.ExitCode(), "orphan", orphan)
	deadline := time.After(10 * time.Second)
	for {
		select {
		case pid := <-a.reaped:
			if pid != orphan {
				a.log.Info("selftest: reaped another orphan", "pid", pid)
				continue
			}
			a.log.Info("selftest: orphan reaped by the agent", "pid", pid, "pid1", pid1.IsPID1())
		case <-deadline:
			return fmt.Errorf("orphan %d was not reaped", orphan)
		}
		break
	}
	if n := zombies(); n != 0 {
		return fmt.Errorf("%d zombies left", n)
	}
	// The last step goes through the real power-off path: another process
	// sends SIGTERM to PID 1, boot() receives the action and shuts down.
	kill := exec.Command(self, "selftest-sigterm")
	if err := reaper.Run(kill); err != nil {
		return fmt.Errorf("selftest sigterm child: %w", err)
	}
	a.log.Info("selftest: passed; a child sent SIGTERM to the agent")
	return nil
}

// zombies counts zombie children of this process.
func zombies() int {
	n := 0
	ents, _ := os.ReadDir("/proc")
	me := strconv.Itoa(os.Getpid())
	for _, e := range ents {
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		i := bytes.LastIndexByte(b, ')')
		if f := strings.Fields(string(b[i+1:])); i > 0 && len(f) > 1 && f[0] == "Z" && f[1] == me {
			n++
		}
	}
	return n
}

// subcommand runs the non-PID-1 entry points.
func subcommand(name string, args []string) (int, bool) {
	switch name {
	case "tpm":
		return tpmcli.Main(args), true
	case "selftest-child":
		// Start a grandchild and exit without waiting: it becomes an
		// orphan, reparented to PID 1.
		self, _ := os.Executable()
		gc := exec.Command(self, "selftest-grandchild")
		if err := gc.Start(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1, true
		}
		fmt.Println(gc.Process.Pid)
		return 0, true
	case "selftest-grandchild":
		time.Sleep(300 * time.Millisecond)
		return 0, true
	case "selftest-sigterm":
		// The parent is the agent: PID 1 in the VM, a plain process on a
		// host (where PID 1 must never be signalled).
		if err := syscall.Kill(os.Getppid(), syscall.SIGTERM); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1, true
		}
		return 0, true
	}
	return 0, false
}
