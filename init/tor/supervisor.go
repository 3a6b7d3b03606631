// Package tor runs a node's tor relays without systemd: per relay a user,
// a private DataDirectory, a torrc built from the server's, and one
// supervised tor process (own process group, the relay's uid, no new
// privileges, RLIMIT_NOFILE 65536), restarted with capped backoff, reloaded
// with SIGHUP when it can be, its output kept in a ring buffer and mirrored
// to the console, its keys captured into the key vault. Every child goes
// through init/reaper.
//
// A spec's road is apply.go, read top to bottom; relay.go is one relay's
// goroutine (start, reload, restart, stop, backoff), proc.go how tor is
// started and verified, torrc.go the one torrc builder, keys.go and
// accounts.go what a relay keeps and runs as.
package tor

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"patela/init/cgroup"
)

// Options configure a Supervisor. Zero durations take the defaults.
type Options struct {
	Tor      string // tor binary; default "tor" from PATH
	StateDir string // DataDirectory of relay N is StateDir/N (tmpfs in production)
	RunDir   string // RunDir/N.torrc and RunDir/N/{control,notify}
	Accounts Accounts
	Keys     Keys // the relays' long-term keys (required)
	Log      *slog.Logger

	// SigningKeyLifetime is how long the signing certificates the agent
	// issues are valid (default 30 days, tor's); a relay's is renewed,
	// and tor sent SIGHUP, once less than SigningKeyRenew (default 7
	// days) is left. Now is the clock they are measured on (tests).
	SigningKeyLifetime, SigningKeyRenew time.Duration
	Now                                 func() time.Time

	StopTimeout   time.Duration // SIGINT to SIGKILL; default 60 s (Debian's TimeoutStopSec)
	BackoffMin    time.Duration // first restart delay; at least (and default) 1 s
	BackoffMax    time.Duration // default 60 s
	StableAfter   time.Duration // a run this long resets the backoff; default 5 min
	CrashLimit    int           // this many exits within CrashWindow: failed; default 5
	CrashWindow   time.Duration // default 5 min
	KeyPoll       time.Duration // key and fingerprint poll; default 10 s
	VerifyTimeout time.Duration // default 60 s
	SaveTimeout   time.Duration // Keys.Save; default 60 s
	SaveRetryMin  time.Duration // first retry after a failed save; default 1 s
	SaveRetryMax  time.Duration // default 5 min
	LogLines      int           // lines kept per relay; default 1000
	Owner         int           // tor's __OwningControllerProcess; default this process
	ScrapeTimeout time.Duration // one MetricsPort scrape (Metrics); default 5 s
	// Cgroups, if set, is where each relay's tor runs in a cgroup of its
	// own with its Spec.Limits (init/cgroup); nil: in the agent's.
	Cgroups *cgroup.Tree

	// NetNS is the network namespace (an open fd) tor runs in, and the
	// agent reaches its MetricsPort in; 0: the agent's. Tests give tor a
	// namespace of their own to listen in.
	NetNS int
}

func (o *Options) defaults() error {
	dur := func(d *time.Duration, def time.Duration) {
		if *d <= 0 {
			*d = def
		}
	}
	if o.Tor == "" {
		o.Tor = "tor"
	}
	if p, err := exec.LookPath(o.Tor); err == nil {
		o.Tor = p
	} else {
		return err
	}
	if o.StateDir == "" || o.RunDir == "" || o.Accounts == nil || o.Keys == nil {
		return errors.New("tor: StateDir, RunDir, Accounts and Keys are required")
	}
	dur(&o.SigningKeyLifetime, 30*24*time.Hour)
	dur(&o.SigningKeyRenew, 7*24*time.Hour)
	// tor exits when its certificate has less than a day left
	// (TestingSigningKeySlop): renew well before, and never at once.
	if o.SigningKeyRenew < 36*time.Hour || o.SigningKeyRenew > o.SigningKeyLifetime/2 {
		return fmt.Errorf("tor: SigningKeyRenew %v must be at least 36h and at most half of SigningKeyLifetime %v",
			o.SigningKeyRenew, o.SigningKeyLifetime)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	dur(&o.StopTimeout, 60*time.Second)
	o.BackoffMin = max(o.BackoffMin, time.Second) // never restart faster than 1 s
	dur(&o.BackoffMax, 60*time.Second)
	dur(&o.StableAfter, 5*time.Minute)
	dur(&o.CrashWindow, 5*time.Minute)
	dur(&o.KeyPoll, 10*time.Second)
	dur(&o.VerifyTimeout, 60*time.Second)
	dur(&o.SaveTimeout, 60*time.Second)
	dur(&o.SaveRetryMin, time.Second)
	dur(&o.SaveRetryMax, 5*time.Minute)
	dur(&o.ScrapeTimeout, 5*time.Second)
	if o.CrashLimit <= 0 {
		o.CrashLimit = 5
	}
	if o.LogLines <= 0 {
		o.LogLines = 1000
	}
	if o.Owner == 0 {
		o.Owner = os.Getpid()
	}
	return nil
}

// Supervisor runs a set of relays. Its methods may be called from any
// goroutine: changes to different relays run in parallel (tor
// --verify-config is most of an Apply's time), changes to one relay one
// at a time.
type Supervisor struct {
	o      Options
	mu     sync.RWMutex // Apply and Remove share it, Shutdown takes it alone
	mapMu  sync.RWMutex // guards relays, so Status never waits for a stop
	relays map[string]*relay
	// applying holds the relays whose Apply runs (name → uid), under mapMu.
	applying map[string]int
	names    keyedMutex // serialises the changes of each relay
	accMu    sync.Mutex // Accounts rewrites one passwd file for all relays
	closed   bool       // after Shutdown: Apply refuses
	saver    *saver

	changes chan struct{} // one pending signal at most; see Changes
	scraper *http.Client  // of Metrics
}

// New checks o and prepares the state and run directories.
func New(o Options) (*Supervisor, error) {
	if err := o.defaults(); err != nil {
		return nil, err
	}
	if n, err := setNofile(); err != nil {
		return nil, err
	} else if n < nofile {
		o.Log.Warn("cannot raise RLIMIT_NOFILE (no CAP_SYS_RESOURCE); tor gets less", "want", nofile, "got", n)
	}
	for _, d := range []string{o.StateDir, o.RunDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	s := &Supervisor{o: o, relays: map[string]*relay{}, changes: make(chan struct{}, 1),
		scraper: newScraper(o.NetNS, o.ScrapeTimeout)}
	s.saver = newSaver(&s.o, s.signal)
	return s, nil
}

// Changes returns a channel that receives a value after what Status
// reports changed: a relay added or removed, or a relay's state, pid,
// restarts, reloads, fingerprints or error. Signals coalesce: the channel
// holds at most one, the supervisor never waits for a reader, and each
// signal is sent after the change it announces is visible, so a reader
// that calls Status after every receive never misses the latest state
// (it may see a change before its signal, then find nothing new).
// There is one channel per Supervisor, for one reader.
func (s *Supervisor) Changes() <-chan struct{} { return s.changes }

// signal announces a change on Changes without ever blocking: a full
// channel already holds a signal the reader has not taken.
func (s *Supervisor) signal() {
	select {
	case s.changes <- struct{}{}:
	default:
	}
}

// Remove stops relay name, wipes its directories and deletes its
// account. Its keys are not deleted: the vault keeps them, retired, for
// the node's retention period, and restores them should the relay come
// back. Removing an unknown relay is not an error.
func (s *Supervisor) Remove(ctx context.Context, name string) error {
	return s.drop(ctx, name, true)
}

// Stop stops relay name and wipes its directories (the key files on
// tmpfs with them) and account, but keeps its keys in the vault, sealed
// and not retired (however long the node stays disabled): a later Apply
// restores them, so the relay comes back with the same identity.
// Stopping an unknown relay is not an error.
func (s *Supervisor) Stop(ctx context.Context, name string) error {
	return s.drop(ctx, name, false)
}

func (s *Supervisor) drop(ctx context.Context, name string, retire bool) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	defer s.names.lock(name)()
	r := s.relay(name)
	if r == nil {
		return nil
	}
	s.stopLocked(r)
	errs := []error{s.tearDown(name)}
	if retire {
		if err := s.o.Keys.Retire(name); err != nil {
			errs = append(errs, err)
		}
	}
	s.saver.request()
	// Gone from Status only once nothing of it is left.
	s.setRelay(name, nil)
	if retire {
		s.o.Log.Info("relay removed", "relay", name)
	} else {
		s.o.Log.Info("relay stopped; its keys stay in the vault", "relay", name)
	}
	return errors.Join(errs...)
}

// stopLocked stops r's tor and waits for its goroutine.
func (s *Supervisor) stopLocked(r *relay) {
	c := command{done: make(chan error, 1)}
	select {
	case r.cmds <- c:
		<-c.done
	case <-r.done:
	}
	<-r.done
}

// tearDown removes what Apply set up for relay name: its directories and
// files, and its account.
func (s *Supervisor) tearDown(name string) error {
	p := s.paths(name)
	s.accMu.Lock()
	acc := s.o.Accounts.Remove(account(name))
	s.accMu.Unlock()
	var cg error
	if s.o.Cgroups != nil {
		cg = s.o.Cgroups.Remove(name)
	}
	return errors.Join(os.RemoveAll(p.data), os.RemoveAll(p.run), os.RemoveAll(p.torrc),
		os.RemoveAll(p.candidate()), acc, cg)
}

// Shutdown stops every relay in parallel (SIGINT, SIGKILL after
// StopTimeout) and returns once every tor has exited. If ctx ends first,
// the remaining ones are killed at once.
func (s *Supervisor) Shutdown(ctx context.Context) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	var wg sync.WaitGroup
	for _, r := range s.relays {
		wg.Add(1)
		go func() {
			defer wg.Done()
			stopped := make(chan struct{})
			go func() { s.stopLocked(r); close(stopped) }()
			select {
			case <-stopped:
			case <-ctx.Done():
				r.log.Warn("shutdown out of time; SIGKILL")
				r.kill()
				<-stopped
			}
		}()
	}
	wg.Wait()
	s.saver.close()
	s.mapMu.Lock()
	clear(s.relays)
	s.mapMu.Unlock()
}

// Status returns every relay's state, sorted by name.
func (s *Supervisor) Status() []Status {
	s.mapMu.RLock()
	rs := make([]*relay, 0, len(s.relays))
	for _, r := range s.relays {
		rs = append(rs, r)
	}
	s.mapMu.RUnlock()
	out := make([]Status, 0, len(rs))
	for _, r := range rs {
		st := r.status()
		st.KeysUnsaved = s.o.Keys.Unsaved(st.Name)
		out = append(out, st)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// relay returns relay name, nil if none.
func (s *Supervisor) relay(name string) *relay {
	s.mapMu.RLock()
	defer s.mapMu.RUnlock()
	return s.relays[name]
}

// Logs returns the last lines tor wrote for relay name.
func (s *Supervisor) Logs(name string) []string {
	r := s.relay(name)
	if r == nil {
		return nil
	}
	return r.ring.Lines()
}

func (s *Supervisor) setRelay(name string, r *relay) {
	s.mapMu.Lock()
	defer s.mapMu.Unlock()
	if r == nil {
		delete(s.relays, name)
	} else {
		s.relays[name] = r
	}
	s.signal()
}

// chownTree gives path and everything below it to uid:gid.
func chownTree(path string, uid, gid int) error {
	return filepath.WalkDir(path, func(p string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, uid, gid)
	})
}

// keyedMutex is a mutex per name, made on first use and dropped when
// nobody holds or waits for it.
type keyedMutex struct {
	mu sync.Mutex
	m  map[string]*keyedEntry
}

type keyedEntry struct {
	sync.Mutex
	users int
}

// lock locks name and returns its unlock.
func (k *keyedMutex) lock(name string) (unlock func()) {
	k.mu.Lock()
	if k.m == nil {
		k.m = map[string]*keyedEntry{}
	}
	e := k.m[name]
	if e == nil {
		e = &keyedEntry{}
		k.m[name] = e
	}
	e.users++
	k.mu.Unlock()
	e.Lock()
	return func() {
		e.Unlock()
		k.mu.Lock()
		if e.users--; e.users == 0 {
			delete(k.m, name)
		}
		k.mu.Unlock()
	}
}
