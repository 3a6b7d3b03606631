package tor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sys/unix"

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
	Since       time.Time
}

// desired is a verified configuration: its torrc text already passed
// tor --verify-config in the file candidate, which install renames over
// the live torrc.
type desired struct {
	spec      Spec
	cfg       *torrc.Config
	text      []byte
	candidate string
	bind      bool
}

// command asks the relay goroutine for a new configuration, or to stop
// (want nil).
type command struct {
	want *desired
	done chan error
}

type proc struct {
	cmd    *exec.Cmd
	pid    int
	exited chan struct{}
	err    error // valid once exited is closed
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

	mu      sync.Mutex
	st      Status // changed only under mu, followed by noteLocked
	cur     *desired
	running *proc

	keySeen, keyPolled string // keyState last captured, last polled
}

type outcome struct {
	started time.Time
	err     error    // why tor exited (or did not start)
	stop    *command // a stop was asked and done
	restart bool     // stopped for a configuration that needs a restart
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

// noteLocked signals the supervisor's Changes if r.st differs from
// before in anything but Since. r.mu must be held, so signals follow the
// changes they announce.
func (r *relay) noteLocked(before Status) {
	now := r.st
	before.Since, now.Since = time.Time{}, time.Time{}
	if before != now && r.changed != nil {
		r.changed()
	}
}

func (r *relay) setState(state api.RelayState, why string) {
	r.mu.Lock()
	before := r.st
	r.st.State, r.st.Since = state, time.Now()
	if why != "" {
		r.st.Error = why
	}
	r.noteLocked(before)
	r.mu.Unlock()
}

// onNotify handles a message from the notify socket.
func (r *relay) onNotify(pid int, key, value string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	defer r.noteLocked(r.st) // runs before the unlock
	if pid == 0 || pid != r.st.PID || value != "1" {
		return
	}
	switch key {
	case "READY":
		if r.st.State == api.RelayStarting || r.st.State == api.RelayReloading {
			r.st.State, r.st.Since = api.RelayRunning, time.Now()
		}
		// tor creates or loads its keys before it reports ready: capture
		// them now rather than at the next poll, so a power cut soon
		// after a first start does not cost the relay its identity.
		select {
		case r.ready <- struct{}{}:
		default:
		}
	case "RELOADING":
		r.st.Reloads++
		r.st.State, r.st.Since = api.RelayReloading, time.Now()
	case "STOPPING":
		r.st.State, r.st.Since = api.RelayStopping, time.Now()
	}
}

func (r *relay) run() {
	defer close(r.done)
	defer r.notify.close()
	pol := restartPolicy{o: r.o}
	for {
		res := r.runOnce()
		if res.stop != nil {
			r.setState(api.RelayStopped, "")
			res.stop.done <- nil
			return
		}
		if res.restart {
			continue
		}
		// tor exited on its own (or could not start).
		delay, n := pol.exited(res.started, time.Now())
		if delay < 0 {
			why := fmt.Sprintf("crash loop: %d exits within %s, last: %v", n, r.o.CrashWindow, res.err)
			r.log.Error("relay failed; not restarting until its configuration changes", "reason", why)
			r.setState(api.RelayFailed, why)
			c := <-r.cmds
			if c.want == nil {
				r.setState(api.RelayStopped, "")
				c.done <- nil
				return
			}
			c.done <- r.install(c.want)
			pol.reset()
			continue
		}
		r.log.Warn("tor exited; restarting", "err", res.err, "in", delay)
		r.setState(api.RelayBackoff, fmt.Sprint(res.err))
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case c := <-r.cmds:
			t.Stop()
			if c.want == nil {
				r.setState(api.RelayStopped, "")
				c.done <- nil
				return
			}
			c.done <- r.install(c.want) // and start it at once
		}
		r.mu.Lock()
		before := r.st
		r.st.Restarts++
		r.noteLocked(before)
		r.mu.Unlock()
	}
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

// runOnce starts tor and supervises it until it exits or a command
// stops it.
func (r *relay) runOnce() outcome {
	started := time.Now()
	p, err := r.start()
	if err != nil {
		r.log.Error("starting tor", "err", err)
		return outcome{started: started, err: err}
	}
	tick := time.NewTicker(r.o.KeyPoll)
	defer tick.Stop()
	for {
		select {
		case <-p.exited:
			r.exited(p)
			return outcome{started: started, err: exitReason(p.err)}
		case c := <-r.cmds:
			if c.want == nil {
				r.stop(p)
				return outcome{stop: &c}
			}
			old := r.current()
			restart := c.want.bind != old.bind || torrc.NeedsRestart(old.cfg, c.want.cfg)
			if err := r.install(c.want); err != nil {
				c.done <- err
				continue
			}
			c.done <- nil
			if restart {
				r.log.Info("configuration needs a restart")
				r.stop(p)
				return outcome{restart: true}
			}
			r.log.Info("configuration reloadable; sending SIGHUP")
			if err := unix.Kill(p.pid, unix.SIGHUP); err != nil {
				r.log.Warn("SIGHUP", "err", err)
			}
		case <-r.ready:
			r.checkKeys(true)
		case <-tick.C:
			r.checkKeys(false)
		}
	}
}

// start verifies the live torrc and starts tor as the relay user.
func (r *relay) start() (*proc, error) {
	d := r.current()
	ctx, cancel := context.WithTimeout(context.Background(), r.o.VerifyTimeout)
	err := verify(ctx, r.o.Tor, r.torrcPath, r.uid, r.gid)
	cancel()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(r.o.Tor, "--defaults-torrc", "/dev/null", "-f", r.torrcPath,
		// tor exits by itself should the agent ever die (tests, dev runs).
		"--__OwningControllerProcess", strconv.Itoa(r.o.Owner))
	cmd.Env = []string{"NOTIFY_SOCKET=" + r.notify.path}
	cmd.Dir = r.dataDir
	cmd.Stdout, cmd.Stderr = r.ring, r.ring
	asRelay(cmd, r.uid, r.gid, d.bind)
	// Hold mu until the pid is recorded so no READY=1 is dropped.
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := startNoNewPrivs(cmd); err != nil {
		return nil, err
	}
	p := &proc{cmd: cmd, pid: cmd.Process.Pid, exited: make(chan struct{})}
	go func() {
		p.err = reaper.Wait(cmd)
		close(p.exited)
	}()
	r.running = p
	before := r.st
	r.st.PID, r.st.State, r.st.Since, r.st.Error = p.pid, api.RelayStarting, time.Now(), ""
	r.noteLocked(before)
	r.log.Info("tor started", "pid", p.pid)
	return p, nil
}

// exited records that p is gone and catches keys tor may have written
// just before.
func (r *relay) exited(p *proc) {
	r.ring.Flush()
	r.mu.Lock()
	r.running = nil
	before := r.st
	r.st.PID, r.st.State, r.st.Since = 0, api.RelayStopped, time.Now()
	r.noteLocked(before)
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

// install makes d the live configuration.
func (r *relay) install(d *desired) error {
	if err := os.Rename(d.candidate, r.torrcPath); err != nil {
		return fmt.Errorf("installing torrc: %w", err)
	}
	r.mu.Lock()
	r.cur = d
	r.mu.Unlock()
	return nil
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
	if r.o.Keys != nil && st != "" {
		changed, err := r.o.Keys.Capture(r.name, r.dataDir)
		if err != nil {
			r.log.Warn("capturing keys", "err", err)
			return
		}
		if changed {
			ctx, cancel := context.WithTimeout(context.Background(), r.o.SaveTimeout)
			err := r.o.Keys.Save(ctx)
			cancel()
			if err != nil {
				r.log.Error("saving keys", "err", err)
				return
			}
			r.log.Info("relay keys saved")
		}
	}
	r.keySeen = st
}

func (r *relay) readFingerprints() {
	fp, ed := fingerprints(r.dataDir)
	r.mu.Lock()
	before := r.st
	r.st.Fingerprint, r.st.Ed25519ID = fp, ed
	r.noteLocked(before)
	r.mu.Unlock()
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
