// Command init is the patela agent: PID 1 of a relay machine's initramfs.
//
// The boot is the list in agent.phases, each phase a method below in the
// same order, timed on the console (see pid1.Timeline):
//
//	signals → mount → reaper → config → shell → modules → etc → entropy →
//	dhcp → clock → client → tpm → attest → specs → vault → reconcile (until
//	a signal) → shutdown: reconcile stopped, relays stopped, relay network
//	torn down, sync, reboot(2)
//
// Signals follow gokrazy and u-root: SIGTERM, SIGUSR2 (and SIGPWR) power
// off, SIGINT (ctrl-alt-del) and SIGUSR1 reboot, at any time, also in the
// middle of a boot phase. A rollout's reboot request in the node's config
// reboots the same way: the relays drain (SIGINT, ShutdownWaitLength) on
// the way down. A fatal error anywhere is printed and the machine
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
// up to the clock check, then the self-test of selftest.go: every
// filesystem mounted, the reaper working (a child that leaves an orphan
// behind: the child's status goes to its owner, the orphan is reaped by
// PID 1), then a child sends SIGTERM to its parent, the agent, and the
// normal power-off path ends the machine.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"sync"
	"syscall"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"patela/init/agentcfg"
	"patela/init/attest"
	"patela/init/cgroup"
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
	"patela/internal/torrc"
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

// subcommand runs the non-PID-1 entry points.
func subcommand(name string, args []string) (int, bool) {
	if name == "tpm" {
		return tpmcli.Main(args), true
	}
	return selftestHelper(name)
}

// agent is the machine's life. Each phase sets the fields it is named
// after; later phases read them.
type agent struct {
	root, configPath, cmdlinePath string // flags

	log     *slog.Logger
	tl      *pid1.Timeline
	actions <-chan pid1.Action // power-off and reboot requests (signals)
	updates chan pid1.Action   // a rollout's reboot request (reconcile)
	delay   time.Duration      // from a fatal error to the reboot

	reaped chan int            // reaper: orphans reaped (the self-test reads them)
	cfg    *agentcfg.Config    // config
	resolv *resolv.File        // etc: the one writer of resolv.conf
	tpm    transport.TPMCloser // entropy (a slow RNG is seeded from it) or tpm
	client *api.Client         // client
	sess   *attest.Session     // tpm: the EK and AK, and the token they earn
	token  string              // attest
	specs  *api.Specs          // specs
	vault  *vault.Vault        // vault
	// shellLocked: the debug shell started after the vault was locked.
	shellLocked bool

	mu       sync.Mutex // the fields below: set by the boot, read by shutdown
	dhcp     *dhcp.Client
	net      *netcfg.Manager
	relays   *tor.Supervisor
	loopDone chan struct{} // closed when the reconcile loop has returned
}

// phase is one step of the boot.
type phase struct {
	name string
	run  func(ctx context.Context) error
	on   bootKind
}

// bootKind says which boots run a phase. A relay machine's and a
// self-test's phases follow the config phase, which tells them apart.
type bootKind int

const (
	everyBoot    bootKind = iota
	relayBoot             // a relay machine: attest, then run the relays
	selftestBoot          // patela.selftest=pid1: the PID-1 self-test instead
)

// phases is the boot, in order.
func (a *agent) phases() []phase {
	return []phase{
		{"mount", a.mount, everyBoot},
		{"reaper", a.startReaper, everyBoot},
		{"config", a.loadConfig, everyBoot},
		{"shell", a.startDebugShell, everyBoot},
		{"modules", a.loadModules, everyBoot},
		{"etc", a.writeEtc, everyBoot},
		{"entropy", a.waitEntropy, everyBoot},
		{"dhcp", a.startDHCP, everyBoot},
		{"clock", a.checkClock, everyBoot},
		{"selftest", a.selftestPID1, selftestBoot},
		{"client", a.newClient, relayBoot},
		{"tpm", a.openTPM, relayBoot},
		{"attest", a.attest, relayBoot},
		{"specs", a.sendSpecs, relayBoot},
		{"vault", a.openVault, relayBoot},
		{"reconcile", a.startReconcile, relayBoot},
	}
}

// kind is this boot's kind, once the config is loaded.
func (a *agent) kind() bootKind {
	if a.cfg != nil && a.cfg.Selftest == "pid1" {
		return selftestBoot
	}
	return relayBoot
}

// errShutdown ends the boot when a power-off or reboot request
// interrupted a phase; boot() is already shutting down.
var errShutdown = errors.New("boot interrupted by shutdown")

// start runs the phases of this boot in order, each on the timeline. A
// phase's error is fatal, unless a shutdown interrupted it: then start
// returns errShutdown.
func (a *agent) start(ctx context.Context) error {
	for _, p := range a.phases() {
		if p.on != everyBoot && p.on != a.kind() {
			continue
		}
		err := a.tl.Run(p.name, func() error { return p.run(ctx) })
		switch {
		case err == nil:
		case ctx.Err() != nil:
			a.log.Info("boot phase interrupted by shutdown", "phase", p.name)
			return errShutdown
		default:
			return fmt.Errorf("%s: %w", p.name, err)
		}
	}
	a.log.Info("boot complete", "since_boot", pid1.Uptime().Round(time.Millisecond))
	return nil
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
	a.updates = make(chan pid1.Action, 1)
	a.tl = pid1.NewTimeline(a.log)
	a.log.Info("patela agent starting", "pid", os.Getpid(), "root", a.root, "go", runtime.Version())

	ctx, cancel := context.WithCancel(context.Background())
	bootDone := make(chan struct{})
	failed := make(chan error, 1)
	go func() {
		defer close(bootDone)
		defer func() {
			if r := recover(); r != nil {
				failed <- fmt.Errorf("panic: %v\n%s", r, debug.Stack())
			}
		}()
		if err := a.start(ctx); err != nil && !errors.Is(err, errShutdown) {
			failed <- err
		}
	}()
	var act pid1.Action
	select {
	case act = <-a.actions:
	case act = <-a.updates:
	case err := <-failed:
		pid1.Fatal(err, a.delay, a.actions, a.log) // never returns
	}
	// Interrupt whatever phase is running; it ends on ctx.
	cancel()
	select {
	case <-bootDone:
	case <-time.After(10 * time.Second):
		a.log.Warn("boot phase did not stop in 10 s; shutting down anyway")
	}
	a.shutdown(act)
}

// path resolves a path of the running system under --root.
func (a *agent) path(p string) string { return filepath.Join(a.root, p) }

func (a *agent) mount(context.Context) error { return pid1.Mount(a.root, a.log) }

// startReaper starts the one reaper for every child, once /proc is there.
func (a *agent) startReaper(context.Context) error {
	a.reaped = make(chan int, 16)
	go reaper.Loop(context.Background(), func(pid int) {
		a.log.Debug("reaped orphan", "pid", pid)
		select {
		case a.reaped <- pid:
		default:
		}
	})
	return nil
}

func (a *agent) loadConfig(context.Context) error {
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
		"modules", len(cfg.Modules), "sealing", cfg.Sealing, "pcrs", cfg.PCRs, "debug", cfg.Debug, "selftest", cfg.Selftest)
	if cfg.Sealing == agentcfg.SealingUnmeasured && cfg.Selftest == "" {
		a.log.Warn(unmeasuredWarning)
	}
	return nil
}

// startDebugShell keeps a shell on the console when patela.debug asks for
// one; a production image has none, which debugshell reports. The vault's
// lock PCR is extended first: a boot with a shell never opens the vault.
func (a *agent) startDebugShell(context.Context) error {
	if !a.cfg.DebugFlag("shell") {
		return nil
	}
	if _, err := os.Stat(layout.Shell); err == nil {
		if err := a.lockForShell(); err != nil {
			a.log.Error("debug shell NOT started: the vault's lock PCR could not be extended first", "err", err)
			return nil
		}
		a.shellLocked = true
		a.log.Warn("debug shell: vault locked for this boot (PCR 15 extended) before the shell starts")
	}
	go func() {
		if err := debugshell.Run(context.Background(), a.log, layout.Shell, debugshell.Console); err != nil {
			a.log.Warn("debug shell", "err", err)
		}
	}()
	return nil
}

func (a *agent) loadModules(context.Context) error {
	if !pid1.IsPID1() {
		a.log.Info("not PID 1: kernel modules left to the host", "modules", a.cfg.Modules)
		return nil
	}
	return pid1.LoadModules(a.cfg.ModuleDir, a.cfg.Modules, a.log)
}

func (a *agent) writeEtc(context.Context) error {
	a.resolv = &resolv.File{Path: a.path("/etc/resolv.conf")}
	return pid1.WriteEtc(a.root, hostname())
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

func (a *agent) waitEntropy(ctx context.Context) error {
	return pid1.WaitEntropy(ctx, 3*time.Second, a.tpmRandom, a.log)
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

// newClient makes the config server's client, trusting only its CA. It
// does not connect yet.
func (a *agent) newClient(context.Context) error {
	ca, err := os.ReadFile(a.path(a.cfg.ServerCA))
	if err != nil {
		return fmt.Errorf("server CA: %w", err)
	}
	a.client, err = api.NewClient(a.cfg.ServerURL, ca)
	return err
}

// openTPM opens the TPM (unless seeding the RNG already did) and loads
// the EK and AK.
func (a *agent) openTPM(context.Context) (err error) {
	if a.tpm == nil {
		if a.tpm, err = tpmdev.Open(a.cfg.TPM); err != nil {
			return err
		}
	}
	a.sess, err = attest.NewSession(a.tpm, a.client, a.log, attest.WithEventLog(a.path(attest.EventLogPath)))
	return err
}

// attest earns the first token. It waits out every refusal (pending,
// disabled, banned, keys refused) with a console line saying what an
// administrator can do: rebooting would change none of them.
func (a *agent) attest(ctx context.Context) error {
	tok, err := a.sess.Wait(ctx)
	a.token = tok.Value
	return err
}

// sendSpecs reports the hardware; the server sizes the relays from it.
// Only reading the hardware can fail the boot: whatever the server
// answers (the pools full, the node disabled meanwhile), the reconcile
// loop sends the specs again every round and acts on the answer.
func (a *agent) sendSpecs(ctx context.Context) error {
	specs, err := readSpecs(a.path("/proc"))
	if err != nil {
		return err
	}
	a.specs = specs
	r, err := a.client.Specs(ctx, a.token, specs)
	if err != nil {
		a.log.Warn("specs not taken; the reconcile loop sends them again", "err", err)
		return nil
	}
	a.log.Info("specs sent", "cpus", specs.CPUs, "memory", specs.MemoryBytes, "relays", r.RelayCount)
	if r.Unplaced > 0 {
		a.log.Warn("the config server could not place all this node's relays; running those it placed",
			"placed", r.RelayCount, "wanted", r.RelaysWanted, "reason", r.UnplacedReason)
	}
	return nil
}

func (a *agent) openVault(ctx context.Context) (err error) {
	rp, err := a.releasePolicy(ctx)
	if err != nil {
		return err
	}
	a.vault, err = vault.Open(ctx, a.tpm, vault.Options{
		EKName: a.sess.EKName(), PCRs: a.cfg.PCRs, Log: a.log, Release: rp,
		Retention: time.Duration(a.cfg.KeyRetention),
		Mirror:    vault.ServerMirror{Client: a.client, Tokens: a.sess},
	})
	if errors.Is(err, vault.ErrLocked) && a.shellLocked {
		err = fmt.Errorf("%w: the debug shell locked it; a boot with a debug shell never opens the vault", err)
	}
	if errors.Is(err, vault.ErrOrphaned) || errors.Is(err, vault.ErrKeyLost) {
		// The message says `configsrv keys drop N --yes`: name N.
		err = fmt.Errorf("%w (this machine is configsrv node %d)", err, a.sess.NodeID())
	}
	return err
}

// What main wires into the reconcile loop and the supervisor.
var (
	_ reconcile.Tokens = (*attest.Session)(nil)
	_ interface {
		RefreshAt() time.Time // reconcile caps its long polls by it
	} = (*attest.Session)(nil)
	_ reconcile.Network = relayNetwork{}
	_ reconcile.Relays  = (*tor.Supervisor)(nil)
	_ tor.Keys          = (*vault.Vault)(nil)
	_ tor.Accounts      = tor.Files{}
	_ vault.Tokens      = (*attest.Session)(nil)
)

// startReconcile builds the relay network, the relay supervisor and the
// reconcile loop, and runs the loop until shutdown.
func (a *agent) startReconcile(ctx context.Context) error {
	n, err := netcfg.New(netcfg.Options{Log: a.log})
	if err != nil {
		return err
	}
	sup, err := tor.New(tor.Options{
		Cgroups:  a.relayCgroups(),
		Tor:      layout.Tor,
		StateDir: a.path(layout.StateDir),
		RunDir:   a.path(layout.RunDir),
		Accounts: tor.Files{Root: a.path("/")},
		Keys:     a.vault,
		Log:      a.log,
	})
	if err != nil {
		n.Close()
		return err
	}
	loop, err := reconcile.New(reconcile.Config{
		Client: a.client, Tokens: a.sess, Network: relayNetwork{n, a.resolv}, Relays: sup, Log: a.log, Specs: a.specs,
		Reboot: func(*api.Reboot) {
			select {
			case a.updates <- pid1.Reboot:
			default: // a shutdown is already under way
			}
		},
	})
	if err != nil {
		n.Close()
		return err
	}
	done := make(chan struct{})
	a.mu.Lock()
	a.net, a.relays, a.loopDone = n, sup, done
	a.mu.Unlock()
	go func() {
		defer close(done)
		loop.Run(ctx) // until ctx ends at shutdown
	}()
	return nil
}

// relayCgroups is where the relays' cgroups live (init/cgroup), below the
// cgroup2 root PID 1 mounted. Without it (not PID 1, or a kernel without
// the memory controller) the relays share the machine's memory, which
// the console says.
func (a *agent) relayCgroups() *cgroup.Tree {
	if !pid1.IsPID1() {
		return nil
	}
	t, err := cgroup.Open(layout.RelayCgroups)
	if err != nil {
		a.log.Error("relays run without memory limits", "err", err)
		return nil
	}
	return t
}

// relayNetwork applies the node's network: the relay side through netcfg,
// and the resolvers the server names (exit relays resolve through them)
// into resolv.conf, in place of the DHCP lease's.
type relayNetwork struct {
	*netcfg.Manager
	dns *resolv.File
}

func (n relayNetwork) Apply(ctx context.Context, want netcfg.Relays) error {
	if err := n.dns.SetServer(want.Network.DNS, anyExit(want.Relays)); err != nil {
		return err
	}
	return n.Manager.Apply(ctx, want)
}

// anyExit reports whether a relay of the config would be an exit, which
// must not resolve through a public resolver. A torrc that does not
// parse counts as an exit (the supervisor refuses it anyway).
func anyExit(relays []api.Relay) bool {
	for _, r := range relays {
		c, err := torrc.Parse([]byte(r.Torrc))
		if err != nil || torrc.IsExit(c) {
			return true
		}
	}
	return false
}

// shutdown stops everything in order, bounded, then halts.
func (a *agent) shutdown(act pid1.Action) {
	a.log.Info("shutting down", "action", act)
	start := pid1.Uptime()
	a.mu.Lock()
	loopDone, relays, n, d := a.loopDone, a.relays, a.net, a.dhcp
	a.mu.Unlock()
	if loopDone != nil {
		// boot() has cancelled the loop's context: no reconcile round may
		// run (and re-apply the network) while the machine goes down.
		select {
		case <-loopDone:
		case <-time.After(30 * time.Second):
			a.log.Warn("reconcile loop did not stop in 30 s; shutting down anyway")
		}
	}
	if relays != nil {
		// tor's SIGINT exit takes up to ShutdownWaitLength (30 s by default);
		// the supervisor escalates to SIGKILL itself, this bounds the rest.
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		relays.Shutdown(ctx)
		cancel()
	}
	if n != nil {
		if err := n.Teardown(); err != nil {
			a.log.Warn("relay network teardown", "err", err)
		}
	}
	if d != nil {
		d.Stop() // nothing released: the next boot asks for the same lease
	}
	a.log.Info("timeline", "phase", "shutdown", "start", start.Round(10*time.Millisecond), "took", (pid1.Uptime() - start).Round(time.Millisecond))
	pid1.Halt(act, a.log)
}
