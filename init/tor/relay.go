package tor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"patela/init/cgroup"
	"patela/init/reaper"
	"patela/init/tor/logring"
	"patela/internal/api"
	"patela/internal/torrc"
)

// Status is a snapshot of one relay.
type Status struct {
	Name        string
	UID         int
	State       api.RelayState
	PID         int // 0 when no tor runs
	Restarts    int // restarts after unexpected exits (config changes not counted)
	Reloads     int // RELOADING=1 messages received
	Fingerprint string
	Ed25519ID   string
	Error       string // why the last tor exited or failed to start
	// Refused lists the options of the server's torrc the node did not
	// pass to tor (torrc.ForNode), sorted, unique, comma-separated.
	Refused string
	// KeysUnsaved: the relay's keys are not yet saved in the vault (a
	// save failed and is retried); a reboot now would lose its identity.
	KeysUnsaved bool
	Since       time.Time
}

// desired is a relay's configuration: the torrc tor runs (cfg, rendered
// as text), built by Supervisor.torrc. Once its text has passed tor
// --verify-config in the file candidate, install renames that over the
// live torrc.
type desired struct {
	cfg       *torrc.Config
	text      []byte
	candidate string
	bind      bool     // tor keeps CAP_NET_BIND_SERVICE (needsBindCap)
	dropped   []string // the server's options left out (torrc.ForNode)
}

// command asks the relay goroutine for a new configuration, or to stop
// (want nil).
type command struct {
	want *desired
	done chan error
}

type proc struct {
	oomKills int // of its cgroup when it started
	cmd      *exec.Cmd
	pid      int
	started  time.Time
	exited   chan struct{}
	err      error // valid once exited is closed
}

// relay owns one tor process: its goroutine run is the only code that
// starts, signals or waits for it.
type relay struct {
	o         *Options
	name      string
	uid, gid  int
	dataDir   string
	torrcPath string
	notify    *notifySocket
	ring      *logring.Ring
	log       *slog.Logger
	cmds      chan command
	done      chan struct{}
	ready     chan struct{} // READY=1 seen: tor has written its keys
	changed   func()        // the supervisor's Changes signal; nil: none
	save      func()        // asks the supervisor's saver for a save

	mu      sync.Mutex
	st      Status // changed only through update
	cur     *desired
	running *proc
	cg      *cgroup.Group // nil: tor runs in the agent's cgroup
	limits  cgroup.Limits // as last set on cg
	// verified is the torrc Apply verified before install made it live:
	// the start that follows needs no second tor --verify-config (each
	// costs 0.5-0.9 s on a slow machine). Later starts verify again.
	verified *desired

	keySeen, keyPolled string    // keyState last captured, last polled
	certExpires        time.Time // the signing certificate issued last

	load loadCounters // overload signs at the last scrape (metrics.go), under mu
}

// newRelay is a relay about to start; Supervisor.supervise starts it.
func newRelay(o *Options, spec Spec, p relayPaths, n *notifySocket, cg *cgroup.Group, changed, save func()) *relay {
	log := o.Log.With("relay", spec.Name)
	return &relay{
		o: o, name: spec.Name, uid: spec.UID, gid: spec.UID, cg: cg, limits: spec.Limits,
		dataDir: p.data, torrcPath: p.torrc,
		notify: n, ring: logring.New(o.LogLines, log), log: log, changed: changed, save: save,
		cmds: make(chan command), done: make(chan struct{}), ready: make(chan struct{}, 1),
		st: Status{Name: spec.Name, UID: spec.UID, State: api.RelayStarting, Since: time.Now()},
	}
}

// differs reports whether d would change what r runs: another torrc, or
// any torrc for a failed relay, which only a new configuration brings
// back.
func (r *relay) differs(d *desired) bool {
	return string(d.text) != string(r.current().text) || r.status().State == api.RelayFailed
}

// reload hands r's goroutine d, verified: a running tor takes it by
// SIGHUP or restarts, a failed or backing-off one starts at once.
func (r *relay) reload(d *desired) error {
	c := command{want: d, done: make(chan error, 1)}
	select {
	case r.cmds <- c:
	case <-r.done:
		return fmt.Errorf("relay %s is stopped", r.name)
	}
	return <-c.done
}

func (r *relay) current() *desired {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.cur
}

func (r *relay) status() Status {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.st
}

// update changes r's status with change, under r.mu.
func (r *relay) update(change func(st *Status)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.updateLocked(change)
}

// updateLocked is update with r.mu held: it applies change and signals
// the supervisor's Changes if the status now differs in anything but
// Since. The signal follows the change it announces.
func (r *relay) updateLocked(change func(st *Status)) {
	before := r.st
	change(&r.st)
	now := r.st
	before.Since, now.Since = time.Time{}, time.Time{}
	if before != now && r.changed != nil {
		r.changed()
	}
}

// setState moves r to state; why, if set, becomes its Error.
func (r *relay) setState(state api.RelayState, why string) {
	r.update(func(st *Status) {
		st.State, st.Since = state, time.Now()
		if why != "" {
			st.Error = why
		}
	})
}

// onNotify handles a message from the notify socket.
func (r *relay) onNotify(pid int, key, value string) {
	r.update(func(st *Status) {
		if pid == 0 || pid != st.PID || value != "1" {
			return
		}
		switch key {
		case "READY":
			if st.State == api.RelayStarting || st.State == api.RelayReloading {
				st.State, st.Since = api.RelayRunning, time.Now()
			}
			// tor creates or loads its keys before it reports ready:
			// capture them now rather than at the next poll, so a power
			// cut soon after a first start does not cost the relay its
			// identity.
			select {
			case r.ready <- struct{}{}:
			default:
			}
		case "RELOADING":
			st.Reloads++
			st.State, st.Since = api.RelayReloading, time.Now()
		case "STOPPING":
			st.State, st.Since = api.RelayStopping, time.Now()
		}
	})
}

// outcome is what the relay goroutine does after an event.
type outcome int

const (
	carryOn outcome = iota // tor runs on: reloaded, or the new torrc could not be installed
	restart                // start tor (again) with the installed torrc
	stopped                // the relay is stopped: its goroutine ends
	died                   // tor exited on its own, or could not start
)

// run is the relay's goroutine: it starts tor, supervises it, restarts
// it after an exit (with backoff, until a crash loop fails the relay)
// and carries out the supervisor's commands, until a stop.
func (r *relay) run() {
	defer close(r.done)
	defer r.notify.close()
	if r.cg != nil {
		defer r.cg.Close()
	}
	pol := restartPolicy{o: r.o}
	for {
		started := time.Now()
		o, err := r.runOnce()
		if o == died {
			o = r.afterExit(&pol, started, err)
		}
		if o == stopped {
			return
		}
	}
}

// runOnce starts tor and supervises it until it exits or a command
// stops it: the outcome is died, restart or stopped.
func (r *relay) runOnce() (outcome, error) {
	p, err := r.start()
	if err != nil {
		r.log.Error("starting tor", "err", err)
		return died, err
	}
	tick := time.NewTicker(r.o.KeyPoll)
	defer tick.Stop()
	for {
		select {
		case <-p.exited:
			r.exited(p)
			return died, r.exitReason(p)
		case c := <-r.cmds:
			if o := r.handle(c, p); o != carryOn {
				return o, nil
			}
		case <-r.ready:
			r.checkKeys(true)
		case <-tick.C:
			r.renewCert(p)
			r.checkKeys(false)
		}
	}
}

// handle carries out command c; p is the running tor, nil if none. A
// stop stops tor. A new configuration is installed: tor, if it runs, is
// sent SIGHUP when the change allows, else stopped for a restart.
func (r *relay) handle(c command, p *proc) outcome {
	if c.want == nil {
		if p != nil {
			r.stop(p)
		}
		r.setState(api.RelayStopped, "")
		c.done <- nil
		return stopped
	}
	if p == nil {
		c.done <- r.install(c.want)
		return restart
	}
	old := r.current()
	needsRestart := c.want.bind != old.bind || torrc.NeedsRestart(old.cfg, c.want.cfg)
	if err := r.install(c.want); err != nil {
		c.done <- err
		return carryOn
	}
	c.done <- nil
	if needsRestart {
		r.log.Info("configuration needs a restart")
		r.stop(p)
		return restart
	}
	r.log.Info("configuration reloadable; sending SIGHUP")
	if err := unix.Kill(p.pid, unix.SIGHUP); err != nil {
		r.log.Warn("SIGHUP", "err", err)
	}
	return carryOn
}

// afterExit waits after tor exited on its own: the backoff delay, or,
// once the relay has failed (a crash loop), until a command brings a new
// configuration. A command meanwhile is handled at once.
func (r *relay) afterExit(pol *restartPolicy, started time.Time, why error) outcome {
	delay, n := pol.exited(started, time.Now())
	var wake <-chan time.Time // nil once failed: only a command wakes it
	if delay < 0 {
		msg := fmt.Sprintf("crash loop: %d exits within %s, last: %v", n, r.o.CrashWindow, why)
		r.log.Error("relay failed; not restarting until its configuration changes", "reason", msg)
		r.setState(api.RelayFailed, msg)
	} else {
		r.log.Warn("tor exited; restarting", "err", why, "in", delay)
		r.setState(api.RelayBackoff, fmt.Sprint(why))
		t := time.NewTimer(delay)
		defer t.Stop()
		wake = t.C
	}
	select {
	case <-wake:
	case c := <-r.cmds:
		if r.handle(c, nil) == stopped {
			return stopped
		}
		if delay < 0 {
			pol.reset() // a new configuration: a fresh start, not a restart
			return restart
		}
	}
	r.update(func(st *Status) { st.Restarts++ })
	return restart
}

// restartPolicy is systemd's Restart=on-failure with a start limit:
// delays double from BackoffMin to BackoffMax, a run of StableAfter resets
// them, and CrashLimit exits within CrashWindow mean failed.
type restartPolicy struct {
	o     *Options
	fails []time.Time
	next  time.Duration
}

// exited records an exit of a run begun at started and returns the delay
// before the next start, or -1 when the relay has failed; n is the number
// of exits within the window.
func (p *restartPolicy) exited(started, now time.Time) (delay time.Duration, n int) {
	if p.next == 0 || now.Sub(started) >= p.o.StableAfter {
		p.reset()
	}
	kept := p.fails[:0]
	for _, t := range p.fails {
		if now.Sub(t) < p.o.CrashWindow {
			kept = append(kept, t)
		}
	}
	p.fails = append(kept, now)
	if len(p.fails) >= p.o.CrashLimit {
		return -1, len(p.fails)
	}
	delay = p.next
	p.next = min(2*p.next, p.o.BackoffMax)
	return delay, len(p.fails)
}

func (p *restartPolicy) reset() {
	p.fails, p.next = nil, p.o.BackoffMin
}

// start verifies the live torrc (unless Apply just did) and starts tor as
// the relay user.
func (r *relay) start() (*proc, error) {
	r.mu.Lock()
	d := r.cur
	fresh := r.verified == d
	r.verified = nil
	r.mu.Unlock()
	if !fresh {
		ctx, cancel := context.WithTimeout(context.Background(), r.o.VerifyTimeout)
		err := verify(ctx, r.o.Tor, r.torrcPath, r.uid, r.gid)
		cancel()
		if err != nil {
			return nil, err
		}
	}
	cmd := exec.Command(r.o.Tor, "--defaults-torrc", "/dev/null", "-f", r.torrcPath,
		// tor exits by itself should the agent ever die (tests, dev runs).
		"--__OwningControllerProcess", strconv.Itoa(r.o.Owner))
	cmd.Env = []string{"NOTIFY_SOCKET=" + r.notify.path}
	cmd.Dir = r.dataDir
	cmd.Stdout, cmd.Stderr = r.ring, r.ring
	asRelay(cmd, r.uid, r.gid, d.bind)
	if r.cg != nil {
		// Born in its cgroup: no allocation of tor's escapes the limit.
		cmd.SysProcAttr.UseCgroupFD, cmd.SysProcAttr.CgroupFD = true, r.cg.FD()
	}
	// Hold mu until the pid is recorded so no READY=1 is dropped.
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := startNoNewPrivs(cmd, r.o.NetNS); err != nil {
		return nil, err
	}
	p := &proc{cmd: cmd, pid: cmd.Process.Pid, started: time.Now(), exited: make(chan struct{})}
	if r.cg != nil {
		p.oomKills = r.cg.OOMKills()
	}
	go func() {
		p.err = reaper.Wait(cmd)
		close(p.exited)
	}()
	r.running = p
	r.updateLocked(func(st *Status) {
		st.PID, st.State, st.Since, st.Error = p.pid, api.RelayStarting, time.Now(), ""
	})
	r.log.Info("tor started", "pid", p.pid)
	return p, nil
}

// exited records that p is gone and catches keys tor may have written
// just before.
func (r *relay) exited(p *proc) {
	r.ring.Flush()
	r.mu.Lock()
	r.running = nil
	r.updateLocked(func(st *Status) {
		st.PID, st.State, st.Since = 0, api.RelayStopped, time.Now()
	})
	r.mu.Unlock()
	r.checkKeys(true)
}

// stop sends SIGINT (tor closes its listeners and exits after
// ShutdownWaitLength), then SIGKILL to the process group after
// StopTimeout.
func (r *relay) stop(p *proc) {
	r.setState(api.RelayStopping, "")
	unix.Kill(-p.pid, unix.SIGINT)
	t := time.NewTimer(r.o.StopTimeout)
	defer t.Stop()
	select {
	case <-p.exited:
	case <-t.C:
		r.log.Warn("tor did not stop in time; SIGKILL", "after", r.o.StopTimeout)
		unix.Kill(-p.pid, unix.SIGKILL)
		<-p.exited
	}
	r.exited(p)
}

// kill ends the running tor at once (shutdown out of time).
func (r *relay) kill() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.running != nil {
		unix.Kill(-r.running.pid, unix.SIGKILL)
	}
}

// install makes d the live configuration. The options it refused are
// logged when they differ from the last configuration's, so a server
// that keeps sending them is not logged every round.
func (r *relay) install(d *desired) error {
	if err := os.Rename(d.candidate, r.torrcPath); err != nil {
		return fmt.Errorf("installing torrc: %w", err)
	}
	refused := refusedList(d.dropped)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.cur, r.verified = d, d // every desired passed verifyTorrc before install
	if refused != r.st.Refused && refused != "" {
		r.log.Warn("options the node does not pass to tor (not on its allowlist)", "options", refused)
	}
	r.updateLocked(func(st *Status) { st.Refused = refused })
	return nil
}

// refusedList is dropped as Status.Refused words it.
func refusedList(dropped []string) string {
	s := slices.Clone(dropped)
	slices.Sort(s)
	return strings.Join(slices.Compact(s), ",")
}

// checkKeys refreshes the fingerprints and captures tor's key files into
// the vault when they changed (new relay, onion key rotation). Unless
// forced, a change must hold for two polls, so a key set tor is still
// writing is not captured half-way. The fingerprints come first: they
// are public, and Status (hence the heartbeat) should not wait for a
// vault save, nor lose them when one fails.
func (r *relay) checkKeys(force bool) {
	r.readFingerprints()
	st, err := keyState(r.dataDir)
	if err != nil {
		r.log.Warn("reading keys", "err", err)
		return
	}
	polled := r.keyPolled
	r.keyPolled = st
	if st == r.keySeen || (!force && st != polled) {
		return
	}
	if st != "" {
		changed, err := r.o.Keys.Capture(r.name, r.dataDir)
		if err != nil {
			r.log.Warn("capturing keys", "err", err)
			return
		}
		if changed {
			r.save()
			if r.changed != nil {
				r.changed() // KeysUnsaved until the saver succeeds
			}
		}
	}
	r.keySeen = st
}

// renewCert issues a new signing key and certificate once the current
// one has less than SigningKeyRenew left, and has the running tor p load
// it by SIGHUP (tor reloads its ed25519 keys on HUP; its identity, from
// the same master, is unchanged). A failure is retried at the next poll:
// a week is left.
func (r *relay) renewCert(p *proc) {
	now := r.o.Now()
	if r.certExpires.Sub(now) >= r.o.SigningKeyRenew {
		return
	}
	exp, err := r.o.Keys.Issue(r.name, r.dataDir, r.uid, r.gid, now.Add(r.o.SigningKeyLifetime))
	if err != nil {
		r.log.Error("renewing the signing certificate", "err", err, "expires", r.certExpires)
		return
	}
	r.log.Info("signing certificate renewed; sending SIGHUP", "was", r.certExpires, "expires", exp)
	r.certExpires = exp
	if err := unix.Kill(p.pid, unix.SIGHUP); err != nil {
		r.log.Warn("SIGHUP", "err", err)
	}
}

func (r *relay) readFingerprints() {
	fp, ed := fingerprints(r.dataDir)
	r.update(func(st *Status) { st.Fingerprint, st.Ed25519ID = fp, ed })
}

// exitReason is why p exited: the wait status, and whether the kernel
// killed it for memory (the relay outgrew its cgroup's memory.max).
func (r *relay) exitReason(p *proc) error {
	why := exitReason(p.err)
	if r.cg != nil && r.cg.OOMKills() > p.oomKills {
		why = fmt.Errorf("%w: killed for memory (cgroup memory.max %d MiB)", why, r.limits.MemoryMax>>20)
		r.log.Error("tor killed by the OOM killer in its cgroup; the other relays are untouched", "memory_max", r.limits.MemoryMax)
	}
	return why
}

// setLimits applies l to r's cgroup if they changed (no restart needed).
func (r *relay) setLimits(l cgroup.Limits) error {
	if r.cg == nil {
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if l == r.limits {
		return nil
	}
	if err := r.cg.Set(l); err != nil {
		return err
	}
	r.log.Info("cgroup limits", "memory_max", l.MemoryMax, "cpu", l.CPU)
	r.limits = l
	return nil
}

// exitReason words a wait error.
func exitReason(err error) error {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return fmt.Errorf("tor %s", ee.ProcessState)
	}
	if err == nil {
		return errors.New("tor exited with status 0")
	}
	return err
}
