package tor

// The road of a relay spec, top to bottom: Apply, then its steps in the
// order Apply takes them.

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"time"

	"patela/init/cgroup"
	"patela/internal/api"
	"patela/internal/atomicfile"
	"patela/internal/layout"
)

// Spec is one relay as the server wants it.
type Spec struct {
	Name  string // tor nickname: 1-19 of [a-zA-Z0-9]
	UID   int    // the relay's uid and gid
	Torrc []byte // the server's resolved torrc
	// Family are the family keys the torrc's FamilyId lines name
	// (api.NodeConfig.FamilyKeys), installed in the relay's key directory
	// before tor sees the torrc.
	Family []api.FamilyKey
	// Limits are the relay's cgroup's (with Options.Cgroups); changing
	// them never restarts tor.
	Limits cgroup.Limits
}

var nickname = regexp.MustCompile(`^[a-zA-Z0-9]{1,19}$`)

// check refuses a spec no relay may have.
func (spec Spec) check() error {
	if !nickname.MatchString(spec.Name) {
		return fmt.Errorf("relay name %q: want 1-19 letters and digits", spec.Name)
	}
	if spec.UID <= 0 || spec.UID > 1<<31-2 {
		return fmt.Errorf("relay %s: bad uid %d", spec.Name, spec.UID)
	}
	return nil
}

// account is the user and group relay name runs as.
func account(name string) string { return "_tor-" + name }

// relayPaths are where one relay's files live.
type relayPaths struct {
	data  string // DataDirectory: StateDir/N
	run   string // RunDir/N, for the control and notify sockets
	torrc string // RunDir/N.torrc, the live torrc
}

func (s *Supervisor) paths(name string) relayPaths {
	return relayPaths{
		data:  filepath.Join(s.o.StateDir, name),
		run:   filepath.Join(s.o.RunDir, name),
		torrc: filepath.Join(s.o.RunDir, name+".torrc"),
	}
}

func (p relayPaths) control() string   { return filepath.Join(p.run, "control") }
func (p relayPaths) notify() string    { return filepath.Join(p.run, "notify") }
func (p relayPaths) candidate() string { return p.torrc + ".new" }

// Apply brings relay spec.Name to spec, in one pass:
//
//  1. check the spec, and that no other relay's tor listens on its
//     metrics address;
//  2. a relay whose uid changed is stopped and set up anew below (its
//     DataDirectory must change owner, which a running tor would not
//     survive; its keys stay there and in the vault);
//  3. a new relay gets its account, its private directories, its keys
//     from the vault and its cgroup (Options.Cgroups) with spec.Limits; a
//     running relay's limits are updated in place;
//  4. the torrc is built (buildTorrc), and the family keys its FamilyId
//     lines name go into the key directory, every one checked (a
//     FamilyId without its key is a *FamilyError: tor would exit on it);
//     a relay already running that torrc is left alone, unless it
//     failed, which only a new Apply brings back;
//  5. tor --verify-config checks it, as the relay user, in a candidate
//     file: a refusal is a *VerifyError and the running tor keeps its
//     configuration;
//  6. a new relay's tor starts; a running one takes the torrc by SIGHUP
//     when it can, else restarts; family keys the torrc no longer names
//     are removed.
//
// A new relay that fails a step leaves nothing behind. Apply returns once
// the change is accepted; readiness follows asynchronously (see Status).
// Applies of different relays run in parallel.
func (s *Supervisor) Apply(ctx context.Context, spec Spec) (err error) {
	if err := spec.check(); err != nil {
		return err
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return errors.New("supervisor is shut down")
	}
	defer s.names.lock(spec.Name)()
	release, err := s.metricsAddrFree(spec)
	if err != nil {
		return err
	}
	defer release()
	r := s.relay(spec.Name)
	if r != nil && r.uid != spec.UID {
		s.o.Log.Info("relay uid changed; restarting it", "relay", spec.Name, "from", r.uid, "to", spec.UID)
		s.stopLocked(r)
		s.setRelay(spec.Name, nil)
		r = nil
	}
	p := s.paths(spec.Name)
	var certExpires time.Time
	var cg *cgroup.Group
	if r == nil {
		s.accMu.Lock()
		accErr := s.o.Accounts.Ensure(account(spec.Name), spec.UID, spec.UID)
		s.accMu.Unlock()
		if accErr != nil {
			return fmt.Errorf("relay %s: account: %w", spec.Name, accErr)
		}
		defer func() {
			if err != nil {
				s.tearDown(spec.Name)
			}
		}()
		if err := makeDirs(p, spec.UID); err != nil {
			return fmt.Errorf("relay %s: %w", spec.Name, err)
		}
		if certExpires, err = s.restoreKeys(spec, p); err != nil {
			return err
		}
		if cg, err = s.cgroup(spec); err != nil {
			return err
		}
		defer func() {
			if err != nil {
				cg.Close()
			}
		}()
	} else if err := r.setLimits(spec.Limits); err != nil {
		return fmt.Errorf("relay %s: %w", spec.Name, err)
	}
	d, err := s.torrc(spec, p)
	if err != nil {
		return err
	}
	family, err := familyKeys(spec, p, d.cfg)
	if err != nil {
		return err
	}
	if r == nil || r.differs(d) {
		if err := s.verifyTorrc(ctx, spec, d); err != nil {
			return err
		}
		if r == nil {
			err = s.supervise(spec, p, d, certExpires, cg)
		} else {
			err = r.reload(d)
		}
		if err != nil {
			return err
		}
	}
	if err := pruneFamilyKeys(p, family); err != nil {
		s.o.Log.Warn("removing old family keys", "relay", spec.Name, "err", err)
	}
	return nil
}

// metricsAddrFree refuses a spec whose metrics address another relay's
// tor listens on (uids 65536 apart: layout.MetricsAddr), or that a relay
// being applied at the same time will; release ends this Apply's claim.
func (s *Supervisor) metricsAddrFree(spec Spec) (release func(), err error) {
	want := layout.MetricsAddr(spec.UID)
	s.mapMu.Lock()
	defer s.mapMu.Unlock()
	// Relays being applied count too: Applies run in parallel.
	for name, uid := range s.applying {
		if name != spec.Name && layout.MetricsAddr(uid) == want {
			return nil, fmt.Errorf("relay %s: uid %d would share its metrics address %s with relay %s (uid %d)",
				spec.Name, spec.UID, want, name, uid)
		}
	}
	for name, r := range s.relays {
		if name != spec.Name && layout.MetricsAddr(r.uid) == want {
			return nil, fmt.Errorf("relay %s: uid %d would share its metrics address %s with relay %s (uid %d)",
				spec.Name, spec.UID, want, name, r.uid)
		}
	}
	if s.applying == nil {
		s.applying = map[string]int{}
	}
	s.applying[spec.Name] = spec.UID
	return func() {
		s.mapMu.Lock()
		delete(s.applying, spec.Name)
		s.mapMu.Unlock()
	}, nil
}

// cgroup makes the cgroup a new relay's tor is started in, with its
// limits (nil without Options.Cgroups).
func (s *Supervisor) cgroup(spec Spec) (*cgroup.Group, error) {
	if s.o.Cgroups == nil {
		return nil, nil
	}
	g, err := s.o.Cgroups.Relay(spec.Name)
	if err != nil {
		return nil, fmt.Errorf("relay %s: %w", spec.Name, err)
	}
	if err := g.Set(spec.Limits); err != nil {
		g.Close()
		return nil, fmt.Errorf("relay %s: %w", spec.Name, err)
	}
	return g, nil
}

// makeDirs makes a relay's directories, owned by its uid: DataDirectory
// 02700 like Debian's tor-instance-create, the run directory 0700 for the
// control socket tor creates there.
func makeDirs(p relayPaths, uid int) error {
	for _, d := range []struct {
		path string
		mode fs.FileMode
	}{{p.data, 0o700 | fs.ModeSetgid}, {p.run, 0o700}} {
		if err := os.MkdirAll(d.path, 0o700); err != nil {
			return err
		}
		if err := chownTree(d.path, uid, uid); err != nil {
			return err
		}
		if err := os.Chmod(d.path, d.mode); err != nil {
			return err
		}
	}
	return nil
}

// restoreKeys puts the relay's keys from the vault into its
// DataDirectory, a new relay's identity made by the vault first, and
// issues its signing key and certificate: tor never gets the master key.
// A new or returning identity is saved at once (and retried).
func (s *Supervisor) restoreKeys(spec Spec, p relayPaths) (certExpires time.Time, err error) {
	created, err := s.o.Keys.Ensure(spec.Name)
	if err != nil {
		return time.Time{}, fmt.Errorf("relay %s: %w", spec.Name, err)
	}
	if _, err := s.o.Keys.Restore(spec.Name, p.data, spec.UID, spec.UID); err != nil {
		return time.Time{}, fmt.Errorf("relay %s: restoring keys: %w", spec.Name, err)
	}
	restored := !created // an identity the vault held before this Apply
	exp, err := s.o.Keys.Issue(spec.Name, p.data, spec.UID, spec.UID, s.o.Now().Add(s.o.SigningKeyLifetime))
	if err != nil {
		return time.Time{}, fmt.Errorf("relay %s: %w", spec.Name, err)
	}
	s.o.Log.Info("keys", "relay", spec.Name, "restored", restored, "new_identity", created, "signing_cert_expires", exp)
	if s.o.Keys.Unsaved(spec.Name) {
		s.saver.request()
	}
	return exp, nil
}

// torrc is the torrc tor will run for spec (buildTorrc), not yet written.
func (s *Supervisor) torrc(spec Spec, p relayPaths) (*desired, error) {
	cfg, dropped, err := buildTorrc(spec.Torrc, p.data, p.control(), layout.MetricsAddr(spec.UID))
	if err != nil {
		return nil, fmt.Errorf("relay %s: %w", spec.Name, err)
	}
	d := &desired{cfg: cfg, text: cfg.Render(), candidate: p.candidate(), bind: needsBindCap(cfg)}
	for _, l := range dropped {
		d.dropped = append(d.dropped, l.Key)
	}
	return d, nil
}

// verifyTorrc writes d into its candidate file and has tor check it as
// the relay user; a refused candidate is removed.
func (s *Supervisor) verifyTorrc(ctx context.Context, spec Spec, d *desired) error {
	if err := atomicfile.Write(d.candidate, d.text, 0o644); err != nil {
		return fmt.Errorf("relay %s: %w", spec.Name, err)
	}
	ctx, cancel := context.WithTimeout(ctx, s.o.VerifyTimeout)
	defer cancel()
	if err := verify(ctx, s.o.Tor, d.candidate, spec.UID, spec.UID); err != nil {
		os.Remove(d.candidate)
		return fmt.Errorf("relay %s: %w", spec.Name, err)
	}
	return nil
}

// supervise starts a new relay: its notify socket, its goroutine, its
// tor running d.
func (s *Supervisor) supervise(spec Spec, p relayPaths, d *desired, certExpires time.Time, cg *cgroup.Group) error {
	n, err := listenNotify(p.notify(), spec.UID, spec.UID)
	if err != nil {
		return fmt.Errorf("relay %s: notify socket: %w", spec.Name, err)
	}
	r := newRelay(&s.o, spec, p, n, cg, s.signal, s.saver.request)
	r.certExpires = certExpires
	if err := r.install(d); err != nil {
		n.close()
		return fmt.Errorf("relay %s: %w", spec.Name, err)
	}
	r.keySeen, _ = keyState(p.data) // restored keys are already in the vault
	go n.read(r.onNotify)
	go r.run()
	s.setRelay(spec.Name, r)
	return nil
}
