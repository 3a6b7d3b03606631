// Package reconcile is the agent's steady state: it long-polls the
// node's desired state from the config server (or, from a server that
// does not long-poll, fetches it every poll interval), converges the
// relay network and the supervised relays to each new one without
// disturbing relays that did not change, and sends heartbeats: after
// each change and on their own timer, with a metrics summary of the node
// and its relays (each tor's MetricsPort, scraped then), and within
// seconds of a change the supervisor reports (a relay ready, exited,
// restarted), without one. A config that asks this boot to end (a
// rollout's turn) is handed to Config.Reboot. A server that cannot be
// reached changes nothing: the relays keep running and the loop retries
// with backoff.
//
// A server that withdraws the node's right to run relays (disabled,
// banned, or removed, so that attesting again makes it a new pending
// node) is obeyed at once: every relay is stopped, its keys kept sealed
// in the vault, and the loop keeps asking, with backoff up to RetryMax,
// until the node is enabled again; then the relays start again with the
// same keys. Nothing here reboots the machine on a refusal.
package reconcile

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"patela/init/cgroup"
	"patela/init/netcfg"
	"patela/init/procfs"
	"patela/init/tor"
	"patela/internal/api"
	"patela/internal/membudget"
)

// Tokens hands out bearer tokens (*attest.Session).
type Tokens interface {
	Token(ctx context.Context) (string, error)
}

// invalidator is implemented by *attest.Session: a token the server
// refused is dropped, so the next Token attests again.
type invalidator interface {
	Invalidate(token string)
}

// Network converges the relay network (*netcfg.Manager).
type Network interface {
	Apply(ctx context.Context, want netcfg.Relays) error
}

// Relays runs the node's tor relays (*tor.Supervisor).
type Relays interface {
	Apply(ctx context.Context, spec tor.Spec) error
	Remove(ctx context.Context, name string) error
	// Stop stops a relay and keeps its keys (the node was disabled).
	Stop(ctx context.Context, name string) error
	Status() []tor.Status
	// Changes signals after what Status reports changed.
	Changes() <-chan struct{}
	// Metrics scrapes the relays whose tor runs.
	Metrics(ctx context.Context) []api.RelayMetrics
}

// Config wires the loop. Client, Tokens, Network and Relays are required.
type Config struct {
	Client  *api.Client
	Tokens  Tokens
	Network Network
	Relays  Relays
	Log     *slog.Logger

	// Specs, if set, is posted before the first config fetch and after
	// each change, so relays the administrator allows (max_relays,
	// relay_memory_mb) are allocated or freed without a reboot.
	Specs *api.Specs

	// LongPollWait is how long a config fetch asks the server to hold it
	// waiting for a change; default 30 min (the server may hold it less).
	LongPollWait time.Duration
	// PollInterval overrides the server's poll_interval_s when > 0: the
	// round interval with a server that does not long-poll (the server's
	// minimum is 10 s; tests poll faster).
	PollInterval time.Duration
	// HeartbeatInterval overrides the server's heartbeat_interval_s
	// when > 0.
	HeartbeatInterval time.Duration
	// Parallel is how many relays are verified and started at once;
	// default the number of CPUs.
	Parallel int
	// RetryMin and RetryMax bound the backoff after a failed round;
	// defaults 2 s and 60 s, never more than the poll interval.
	RetryMin, RetryMax time.Duration
	// ProcRoot is where boot_id and uptime are read; default "/proc".
	ProcRoot string

	// Reboot, if set, is called once when the config asks this boot to
	// end (a rollout's turn, api.Reboot naming this boot's id): main then
	// reboots as on ctrl-alt-del, draining the relays first.
	Reboot func(*api.Reboot)

	// HeartbeatDelay is how long after the supervisor reports a relay
	// change the loop waits, gathering further changes, before it sends
	// a heartbeat of its own; default 1 s. HeartbeatGap is the least time
	// between two such heartbeats, so a relay in a crash loop cannot
	// flood the server; default 5 s. Neither affects the poll rounds.
	HeartbeatDelay, HeartbeatGap time.Duration
}

// Loop is the reconcile loop.
type Loop struct {
	cfg    Config
	log    *slog.Logger
	relays Relays

	applied  map[string]api.Relay     // relays as last applied successfully
	limited  map[string]cgroup.Limits // their cgroup limits as last applied
	refused  map[string]error         // relays whose desired state was refused
	reported []api.RelayStatus        // the relays of the last heartbeat the server took
	hb       heartbeatState           // Run's
	leaving  bool                     // Reboot was called
	revoked  *api.Error               // why the relays are stopped; nil while they may run
	placed   api.SpecsResponse        // the last specs answer
	running  bool                     // every applied relay was running at the last look
}

// refresher is implemented by *attest.Session: when its token is renewed.
type refresher interface {
	RefreshAt() time.Time
}

// New checks cfg and prepares the loop.
func New(cfg Config) (*Loop, error) {
	if cfg.Client == nil || cfg.Tokens == nil || cfg.Network == nil || cfg.Relays == nil {
		return nil, errors.New("reconcile.Config needs Client, Tokens, Network and Relays")
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.RetryMin <= 0 {
		cfg.RetryMin = 2 * time.Second
	}
	if cfg.RetryMax <= 0 {
		cfg.RetryMax = time.Minute
	}
	if cfg.ProcRoot == "" {
		cfg.ProcRoot = "/proc"
	}
	if cfg.HeartbeatDelay <= 0 {
		cfg.HeartbeatDelay = time.Second
	}
	if cfg.HeartbeatGap <= 0 {
		cfg.HeartbeatGap = 5 * time.Second
	}
	if cfg.Parallel <= 0 {
		cfg.Parallel = runtime.NumCPU()
	}
	if cfg.LongPollWait <= 0 {
		cfg.LongPollWait = 30 * time.Minute
	}
	return &Loop{cfg: cfg, log: cfg.Log, relays: cfg.Relays, applied: map[string]api.Relay{}, limited: map[string]cgroup.Limits{}, refused: map[string]error{}}, nil
}

// Run reconciles until ctx ends, and returns ctx's error.
//
// The config is long-polled: each fetch sends the ETag of the config
// applied last and asks the server to hold it (LongPollWait, no longer
// than the token lives), so a change arrives within about a second and
// an idle node costs a request per wait. After a change (and at the
// start) the specs are posted again before the next fetch, so an
// allocation the administrator changed takes effect. Heartbeats have
// their own timer (the server's heartbeat_interval_s) and follow every
// applied change and every relay change the supervisor reports. A server
// that answers without an ETag does not long-poll (an older one): the
// loop then fetches every poll interval, each round with its heartbeat,
// as before. A failed fetch is retried with backoff, first without a
// wait (a probe), which is followed by a heartbeat once it succeeds.
func (l *Loop) Run(ctx context.Context) error {
	var (
		etag      string // of the config applied last; "" fetches at once
		needSpecs = true
		probe     = true // the next fetch asks for no wait
		retry     = l.cfg.RetryMin
		interval  = l.interval(0)
		hbEvery   = l.heartbeatEvery(nil)
		longPoll  bool // the server tags configs, so it long-polls
	)
	results := make(chan fetched, 1)
	fetching := false
	startFetch := func() {
		fetching = true
		e, specs, wait := etag, needSpecs, !probe
		go func() { results <- l.fetch(ctx, e, specs, wait) }()
	}
	nextFetch := time.NewTimer(0)
	defer nextFetch.Stop()
	l.hb = heartbeatState{retry: l.cfg.RetryMin, timer: time.NewTimer(time.Hour)}
	l.hb.timer.Stop()
	defer l.hb.timer.Stop()
	var changeHB <-chan time.Time // a change heartbeat is pending
	for {
		select {
		case <-ctx.Done():
			if fetching {
				<-results
			}
			return ctx.Err()

		case <-nextFetch.C:
			startFetch()

		case f := <-results:
			fetching = false
			if f.err != nil {
				if ctx.Err() != nil {
					continue
				}
				probe = true
				wait := min(retry, interval)
				if l.obey(ctx, f.err); l.revoked != nil {
					// Every relay stopped: the config is applied anew
					// once the node may run them again.
					etag = ""
					l.log.Debug("relays stopped by the config server; asking again", "err", f.err, "retry_in", wait)
				} else {
					l.log.Warn("reconcile failed; relays keep running", "err", f.err, "retry_in", wait)
				}
				retry = min(2*retry, l.cfg.RetryMax)
				nextFetch.Reset(wait)
				continue
			}
			l.allowed()
			needSpecs = needSpecs && !f.specsSent
			recovered := probe
			probe = false
			longPoll = f.res.ETag != ""
			if cfg := f.res.Config; cfg != nil {
				interval, hbEvery = l.interval(cfg.PollIntervalS), l.heartbeatEvery(cfg)
				if l.leave(cfg) {
					continue // no more fetches: the machine is going down
				}
				needSpecs = true
				if err := l.apply(ctx, cfg); err != nil {
					// Fetched again after the backoff, and applied anew.
					etag, probe = "", true
					wait := min(retry, interval)
					l.log.Warn("reconcile failed; relays keep running", "err", err, "retry_in", wait)
					retry = min(2*retry, l.cfg.RetryMax)
					l.beat(ctx, hbEvery, longPoll)
					nextFetch.Reset(wait)
					continue
				}
				etag = f.res.ETag
				l.noteRunning()
				l.beat(ctx, hbEvery, longPoll)
			} else if recovered {
				l.beat(ctx, hbEvery, longPoll)
			}
			retry = l.cfg.RetryMin
			if longPoll {
				startFetch()
			} else {
				nextFetch.Reset(interval)
			}

		case <-l.hb.timer.C:
			l.beat(ctx, hbEvery, longPoll)

		case <-l.relays.Changes():
			l.noteRunning()
			// Only while the server takes heartbeats: otherwise the retry
			// of the failed one reads the newest state.
			if l.hb.sent && changeHB == nil {
				changeHB = time.After(max(l.cfg.HeartbeatDelay, time.Until(l.hb.changeAt.Add(l.cfg.HeartbeatGap))))
			}

		case <-changeHB:
			changeHB = nil
			st := l.status()
			if slices.EqualFunc(st.Relays, l.reported, api.RelayStatus.Equal) {
				continue
			}
			l.hb.changeAt = time.Now()
			if l.beatStatus(ctx, st, hbEvery, longPoll) {
				l.log.Debug("heartbeat sent after a relay change", "relays", len(st.Relays))
			}
		}
	}
}

// fetched is one fetch's outcome.
type fetched struct {
	res       *api.ConfigResult
	specsSent bool
	err       error
}

// fetch posts the specs (when specs) and fetches the config unless it is
// still the one etag names, long-polled when wait.
func (l *Loop) fetch(ctx context.Context, etag string, specs, wait bool) fetched {
	var f fetched
	f.err = l.call(ctx, func(tok string) error {
		if specs && l.cfg.Specs != nil && !f.specsSent {
			if err := l.specs(ctx, tok); err != nil {
				return err
			}
			f.specsSent = true
		}
		var d time.Duration
		if wait && etag != "" {
			d = l.cfg.LongPollWait
			if r, ok := l.cfg.Tokens.(refresher); ok {
				if left := time.Until(r.RefreshAt()); left > time.Second {
					d = min(d, left)
				}
			}
		}
		var err error
		if f.res, err = l.cfg.Client.ConfigWait(ctx, tok, etag, d); err != nil {
			return fmt.Errorf("fetching config: %w", err)
		}
		return nil
	})
	return f
}

// heartbeatState is the heartbeat timer's: when the next periodic
// heartbeat is due, and whether the server took the last one.
type heartbeatState struct {
	timer    *time.Timer
	retry    time.Duration // after a failed heartbeat
	sent     bool
	changeAt time.Time // when the last change heartbeat was sent
}

// beat sends a heartbeat now, with the metrics summary.
func (l *Loop) beat(ctx context.Context, every time.Duration, periodic bool) {
	st := l.status()
	st.Metrics = l.metrics(ctx)
	l.beatStatus(ctx, st, every, periodic)
}

// beatStatus sends st and sets the heartbeat timer: the next periodic
// heartbeat after every (only when periodic: a server that does not
// long-poll gets one with each round), or a retry with backoff after a
// failure. It reports whether the server took it.
func (l *Loop) beatStatus(ctx context.Context, st *api.Status, every time.Duration, periodic bool) bool {
	err := l.heartbeat(ctx, st)
	l.hb.timer.Stop()
	if err != nil {
		if ctx.Err() != nil {
			return false
		}
		l.hb.sent = false
		if l.obey(ctx, err); l.revoked == nil {
			l.log.Warn("heartbeat failed; relays keep running", "err", err, "retry_in", l.hb.retry)
		}
		l.hb.timer.Reset(l.hb.retry)
		l.hb.retry = min(2*l.hb.retry, l.cfg.RetryMax)
		return false
	}
	l.hb.sent, l.hb.retry = true, l.cfg.RetryMin
	if periodic {
		l.hb.timer.Reset(every)
	}
	return true
}

// Once runs one round: specs, config (at once), network, relays,
// heartbeat. It returns the poll interval a server that does not
// long-poll asks for.
func (l *Loop) Once(ctx context.Context) (time.Duration, error) {
	f := l.fetch(ctx, "", true, false)
	if f.err != nil {
		l.obey(ctx, f.err)
		return l.interval(0), f.err
	}
	l.allowed()
	cfg := f.res.Config
	if l.leave(cfg) {
		return l.interval(cfg.PollIntervalS), nil
	}
	applyErr := l.apply(ctx, cfg)
	st := l.status()
	st.Metrics = l.metrics(ctx)
	hbErr := l.heartbeat(ctx, st)
	l.obey(ctx, hbErr)
	return l.interval(cfg.PollIntervalS), errors.Join(applyErr, hbErr)
}

// leave reports whether the machine is going down: cfg asks this boot to
// end (a rollout's turn), which is handed to Config.Reboot once, or it
// did already. Nothing more is applied: the relays are drained on the way
// down.
func (l *Loop) leave(cfg *api.NodeConfig) bool {
	if l.leaving {
		return true
	}
	if r := cfg.Reboot; r != nil && l.cfg.Reboot != nil && r.BootID != "" && r.BootID == l.bootID() {
		l.log.Info("rollout: the config server asks this machine to reboot to update it", "release", r.Release, "boot_id", r.BootID)
		l.leaving = true
		l.cfg.Reboot(r)
		return true
	}
	return false
}

// specs posts the node's specs. Only a refusal of the node or its token
// and an unreachable server end the round; any other answer (an older
// server's 409 when its pools are full) is logged and the round goes on
// to the config, so the relays the node has keep running and reporting.
func (l *Loop) specs(ctx context.Context, tok string) error {
	r, err := l.cfg.Client.Specs(ctx, tok, l.cfg.Specs)
	if err != nil {
		ae, ok := api.AsError(err)
		if !ok || ae.Revoked() || ae.TokenRefused() {
			return fmt.Errorf("posting specs: %w", err)
		}
		l.log.Warn("the config server did not take the specs; running the relays it gives", "err", err)
		return nil
	}
	if *r != l.placed && r.Unplaced > 0 {
		l.log.Warn("the config server could not place all this node's relays; running those it placed",
			"placed", r.RelayCount, "wanted", r.RelaysWanted, "reason", r.UnplacedReason)
	}
	l.placed = *r
	return nil
}

// allowed notes a config answer: the node may run relays (again).
func (l *Loop) allowed() {
	if l.revoked != nil {
		l.log.Warn("the config server lets this node run relays again: starting them", "was", l.revoked.Code)
		l.revoked = nil
	}
}

// obey stops every relay, keeping its keys, when err says the server
// withdrew the node's right to run them, and says so on the console
// once per refusal.
func (l *Loop) obey(ctx context.Context, err error) {
	ae, ok := api.AsError(err)
	if !ok || !ae.Revoked() {
		return
	}
	stopped := 0
	for _, st := range l.relays.Status() {
		if err := l.relays.Stop(ctx, st.Name); err != nil {
			l.log.Error("stopping relay", "relay", st.Name, "err", err)
			continue
		}
		stopped++
	}
	clear(l.applied)
	clear(l.limited)
	clear(l.refused)
	l.reported = nil
	if l.revoked != nil && l.revoked.Code == ae.Code && l.revoked.NodeID == ae.NodeID && stopped == 0 {
		return
	}
	l.revoked = ae
	id := ae.NodeID
	switch ae.Code {
	case api.CodeBanned:
		l.log.Error(fmt.Sprintf("this node is BANNED by the config server: relays stopped, keys kept sealed; no reboot; `configsrv node enable %d` lifts the ban", id),
			"relays_stopped", stopped)
	case api.CodePending:
		l.log.Warn(fmt.Sprintf("this node is pending at the config server (as node %d: removed and enrolled anew?): relays stopped, keys kept sealed; waiting for `configsrv node enable %d`", id, id),
			"relays_stopped", stopped)
	default:
		l.log.Warn(fmt.Sprintf("this node is disabled by the config server: relays stopped, keys kept sealed; waiting for `configsrv node enable %d`", id),
			"relays_stopped", stopped)
	}
}

// heartbeat posts st and remembers its relays once the server took it.
func (l *Loop) heartbeat(ctx context.Context, st *api.Status) error {
	err := l.call(ctx, func(tok string) error {
		if err := l.cfg.Client.Status(ctx, tok, st); err != nil {
			return fmt.Errorf("heartbeat: %w", err)
		}
		return nil
	})
	if err == nil {
		l.reported = st.Relays
	}
	return err
}

// heartbeatEvery is the periodic heartbeat's interval: the override, the
// server's heartbeat_interval_s, else the poll interval.
func (l *Loop) heartbeatEvery(cfg *api.NodeConfig) time.Duration {
	switch {
	case l.cfg.HeartbeatInterval > 0:
		return l.cfg.HeartbeatInterval
	case cfg != nil && cfg.HeartbeatIntervalS >= 10:
		return time.Duration(cfg.HeartbeatIntervalS) * time.Second
	case cfg != nil:
		return l.interval(cfg.PollIntervalS)
	}
	return l.interval(0)
}

func (l *Loop) interval(serverS int) time.Duration {
	if l.cfg.PollInterval > 0 {
		return l.cfg.PollInterval
	}
	if serverS < 10 {
		serverS = 300 // the server's default; it never sends less than 10
	}
	return time.Duration(serverS) * time.Second
}

// call runs fn with a token; if the server answers 401 (token expired or
// revoked) it gets a fresh token and tries once more.
func (l *Loop) call(ctx context.Context, fn func(token string) error) error {
	tok, err := l.cfg.Tokens.Token(ctx)
	if err != nil {
		return fmt.Errorf("token: %w", err)
	}
	err = fn(tok)
	if ae, ok := api.AsError(err); !ok || !ae.TokenRefused() {
		return err
	}
	l.log.Info("token refused; attesting again", "err", err)
	if inv, ok := l.cfg.Tokens.(invalidator); ok {
		inv.Invalidate(tok)
	}
	if tok, err = l.cfg.Tokens.Token(ctx); err != nil {
		return fmt.Errorf("token: %w", err)
	}
	return fn(tok)
}

// same reports whether relay a can stay as it is to become b.
func same(a, b api.Relay) bool {
	return a.TorrcSHA256 == b.TorrcSHA256 && a.UID == b.UID && a.IPv4 == b.IPv4 &&
		a.IPv6 == b.IPv6 && a.ORPort == b.ORPort
}

// apply converges to cfg: the network first (addresses must exist before
// tor binds them), then relays removed, then relays added or changed.
// A relay the supervisor refuses is reported and the others go on.
func (l *Loop) apply(ctx context.Context, cfg *api.NodeConfig) error {
	start := time.Now()
	want := map[string]api.Relay{}
	var errs []error
	for _, r := range cfg.Relays {
		if _, dup := want[r.Name]; dup {
			return fmt.Errorf("config names relay %q twice; nothing applied", r.Name)
		}
		want[r.Name] = r
	}
	if err := l.cfg.Network.Apply(ctx, netcfg.Relays{Network: cfg.Network, Relays: cfg.Relays}); err != nil {
		return fmt.Errorf("network: %w (relays left as they are)", err)
	}
	changed := 0
	// Removals wait for tor to stop (ShutdownWaitLength): all at once.
	var gone []string
	for _, st := range l.relays.Status() {
		if _, ok := want[st.Name]; !ok {
			gone = append(gone, st.Name)
		}
	}
	for i, err := range parallel(len(gone), len(gone), func(i int) error { return l.relays.Remove(ctx, gone[i]) }) {
		if err != nil {
			errs = append(errs, fmt.Errorf("removing %s: %w", gone[i], err))
		}
		delete(l.applied, gone[i])
		delete(l.limited, gone[i])
		changed++
		l.log.Info("relay removed", "relay", gone[i])
	}
	for name := range l.refused {
		if _, ok := want[name]; !ok {
			delete(l.refused, name)
		}
	}
	limits := l.limits(cfg.Relays)
	var todo []api.Relay
	for _, n := range slices.Sorted(maps.Keys(want)) {
		if prev, ok := l.applied[n]; !ok || !same(prev, want[n]) || l.limited[n] != limits[n] {
			todo = append(todo, want[n])
		}
	}
	// Each relay's tor --verify-config is CPU work: as many at once as
	// the node has CPUs.
	for i, err := range parallel(len(todo), l.cfg.Parallel, func(i int) error {
		return l.applyRelay(ctx, todo[i], cfg.FamilyKeys, limits[todo[i].Name])
	}) {
		r := todo[i]
		if err != nil {
			l.refused[r.Name] = err
			errs = append(errs, err)
			l.log.Error("relay refused", "relay", r.Name, "err", err)
			continue
		}
		_, existed := l.applied[r.Name]
		l.applied[r.Name], l.limited[r.Name] = r, limits[r.Name]
		delete(l.refused, r.Name)
		changed++
		l.log.Info("relay applied", "relay", r.Name, "new", !existed, "uid", r.UID, "torrc_sha256", r.TorrcSHA256)
	}
	if changed > 0 {
		l.log.Info("config applied", "changes", changed, "took", time.Since(start))
	}
	return errors.Join(errs...)
}

// parallel runs f(0..n-1), at most limit at a time, and returns their
// errors by index.
func parallel(n, limit int, f func(i int) error) []error {
	errs := make([]error, n)
	sem := make(chan struct{}, max(limit, 1))
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			errs[i] = f(i)
		}()
	}
	wg.Wait()
	return errs
}

func (l *Loop) applyRelay(ctx context.Context, r api.Relay, family []api.FamilyKey, lim cgroup.Limits) error {
	sum := sha256.Sum256([]byte(r.Torrc))
	if !strings.EqualFold(hex.EncodeToString(sum[:]), r.TorrcSHA256) {
		return fmt.Errorf("relay %s: torrc_sha256 does not match its torrc", r.Name)
	}
	return l.relays.Apply(ctx, tor.Spec{Name: r.Name, UID: r.UID, Torrc: []byte(r.Torrc), Family: family, Limits: lim})
}

// limits are the relays' cgroup limits: each its share of the node's
// memory (internal/membudget, the rule the server's MaxMemInQueues
// follows too), and, when there are no more relays than cores, a core of
// its own, by uid order. The node's own specs are the inputs, not
// anything the server says.
func (l *Loop) limits(relays []api.Relay) map[string]cgroup.Limits {
	out := map[string]cgroup.Limits{}
	if l.cfg.Specs == nil {
		for _, r := range relays {
			out[r.Name] = cgroup.Limits{CPU: -1}
		}
		return out
	}
	b := membudget.For(l.cfg.Specs.MemoryBytes, len(relays))
	byUID := slices.SortedFunc(slices.Values(relays), func(a, b api.Relay) int { return a.UID - b.UID })
	for i, r := range byUID {
		cpu := -1
		if len(relays) <= l.cfg.Specs.CPUs {
			cpu = i
		}
		out[r.Name] = cgroup.Limits{MemoryMax: b.PerRelay, CPU: cpu}
	}
	return out
}

// status is the heartbeat: every supervised relay, plus those whose
// desired state was refused before they ever ran.
func (l *Loop) status() *api.Status {
	s := &api.Status{BootID: l.bootID(), UptimeS: l.uptime(), Relays: []api.RelayStatus{}}
	seen := map[string]bool{}
	for _, st := range l.relays.Status() {
		seen[st.Name] = true
		rs := api.RelayStatus{
			Name: st.Name, Fingerprint: st.Fingerprint, Ed25519ID: st.Ed25519ID,
			State: st.State, Restarts: st.Restarts, KeysUnsaved: st.KeysUnsaved,
			// The served torrc it runs: the server flags one it no
			// longer serves.
			TorrcSHA256: strings.ToLower(l.applied[st.Name].TorrcSHA256),
		}
		if st.Refused != "" {
			rs.RefusedOptions = strings.Split(st.Refused, ",")
		}
		s.Relays = append(s.Relays, rs)
	}
	for name := range l.refused {
		if !seen[name] {
			s.Relays = append(s.Relays, api.RelayStatus{Name: name, State: api.RelayRefused})
		}
	}
	sort.Slice(s.Relays, func(i, j int) bool { return s.Relays[i].Name < s.Relays[j].Name })
	return s
}

// metrics is the metrics summary of the heartbeats after a change and on
// the timer: the relays' scrapes and the node's own figures. Change
// heartbeats carry none, so the server keeps the figures of the last.
func (l *Loop) metrics(ctx context.Context) *api.NodeMetrics {
	m := &api.NodeMetrics{Relays: l.relays.Metrics(ctx)}
	var err error
	if m.AgentRSSBytes, err = procfs.RSS(l.cfg.ProcRoot, "self"); err != nil {
		l.log.Debug("agent RSS", "err", err)
	}
	if m.MemAvailableBytes, m.MemTotalBytes, err = procfs.Memory(l.cfg.ProcRoot); err != nil {
		l.log.Debug("node memory", "err", err)
	}
	return m
}

// noteRunning logs, on the console the boot is timed from, the moment
// every relay the node should run is running (READY=1): at boot, and
// after any relay stopped running.
func (l *Loop) noteRunning() {
	n := 0
	for _, st := range l.relays.Status() {
		if _, ok := l.applied[st.Name]; ok && st.State == api.RelayRunning {
			n++
		}
	}
	all := n > 0 && n == len(l.applied)
	if all && !l.running {
		l.log.Info("all relays running", "relays", n, "since_boot", l.sinceBoot())
	}
	l.running = all
}

// sinceBoot is the machine's uptime.
func (l *Loop) sinceBoot() time.Duration {
	return time.Duration(l.uptimeSeconds() * float64(time.Second)).Round(10 * time.Millisecond)
}

// uptimeSeconds reads /proc/uptime; 0 when it cannot.
func (l *Loop) uptimeSeconds() float64 {
	b, err := os.ReadFile(l.cfg.ProcRoot + "/uptime")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0
	}
	s, _ := strconv.ParseFloat(f[0], 64)
	return s
}

func (l *Loop) bootID() string {
	b, err := os.ReadFile(l.cfg.ProcRoot + "/sys/kernel/random/boot_id")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

func (l *Loop) uptime() int64 { return int64(l.uptimeSeconds()) }
