package tor

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"

	"patela/init/reaper"
)

// nofile is tor's RLIMIT_NOFILE, as in Debian's tor@.service.
const nofile = 65536

var raiseNofile sync.Once

// setNofile raises this process's RLIMIT_NOFILE so every child inherits
// nofile. Go cannot run code between fork and exec, and tor reads the
// limit at startup, so a prlimit after Start would race; syscall.Setrlimit
// (not x/sys/unix) also tells os/exec to stop restoring the startup limit
// in children. Without CAP_SYS_RESOURCE (some containers) the hard limit
// cannot be raised: the soft limit then goes as high as it may and the
// returned limit says so.
func setNofile() (uint64, error) {
	var err error
	raiseNofile.Do(func() {
		var lim syscall.Rlimit
		if err = syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
			return
		}
		want := syscall.Rlimit{Cur: nofile, Max: max(lim.Max, nofile)}
		if err = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want); errors.Is(err, syscall.EPERM) && lim.Max < nofile {
			want = syscall.Rlimit{Cur: lim.Max, Max: lim.Max}
			err = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want)
		}
	})
	var lim syscall.Rlimit
	if err == nil {
		err = syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim)
	}
	if err != nil {
		return 0, fmt.Errorf("RLIMIT_NOFILE %d: %w", nofile, err)
	}
	return lim.Cur, nil
}

// asRelay sets cmd to run as uid:gid with no supplementary groups, in its
// own process group, holding CAP_NET_BIND_SERVICE only if bind is set.
func asRelay(cmd *exec.Cmd, uid, gid int, bind bool) {
	attr := &syscall.SysProcAttr{
		Setpgid:    true,
		Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}},
	}
	if bind {
		attr.AmbientCaps = []uintptr{unix.CAP_NET_BIND_SERVICE}
	}
	cmd.SysProcAttr = attr
}

// startNoNewPrivs starts cmd through the reaper with no_new_privs set.
// os/exec has no such option and the flag is per thread and inherited
// across fork: set it on a locked OS thread, fork from that thread, and
// let the thread die with its goroutine (never unlocked) so the flag
// never reaches the agent's other work. For the same reason no
// Pdeathsig: it fires when the forking thread exits.
// ns, if not 0, is the network namespace (an open fd) the child starts
// in, set on that same thread.
func startNoNewPrivs(cmd *exec.Cmd, ns int) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
			errc <- fmt.Errorf("no_new_privs: %w", err)
			return
		}
		if ns != 0 {
			if err := unix.Setns(ns, unix.CLONE_NEWNET); err != nil {
				errc <- fmt.Errorf("entering netns: %w", err)
				return
			}
		}
		errc <- reaper.Start(cmd)
	}()
	return <-errc
}

// VerifyError is tor refusing a torrc.
type VerifyError struct {
	Output string // tor's warnings and errors
}

func (e *VerifyError) Error() string { return "tor --verify-config: " + e.Output }

// verify runs tor --verify-config on path as the relay user (tor checks
// the DataDirectory belongs to whoever runs it).
func verify(ctx context.Context, tor, path string, uid, gid int) error {
	cmd := exec.CommandContext(ctx, tor, "--verify-config", "--defaults-torrc", "/dev/null", "-f", path)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.Dir = "/"
	cmd.Env = []string{}
	asRelay(cmd, uid, gid, false)
	if err := startNoNewPrivs(cmd, 0); err != nil {
		return fmt.Errorf("starting tor --verify-config: %w", err)
	}
	err := reaper.Wait(cmd)
	if err == nil {
		return nil
	}
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ctx.Err() != nil {
		return fmt.Errorf("tor --verify-config: %w", err)
	}
	return &VerifyError{Output: complaints(out.String())}
}

// complaints keeps tor's [warn] and [err] lines (or everything, if none).
func complaints(out string) string {
	var keep []string
	for _, l := range strings.Split(out, "\n") {
		if i := strings.Index(l, "[warn] "); i >= 0 {
			keep = append(keep, l[i+7:])
		} else if i := strings.Index(l, "[err] "); i >= 0 && !strings.Contains(l, "see warnings above") {
			keep = append(keep, l[i+6:])
		}
	}
	if len(keep) == 0 {
		return strings.TrimSpace(out)
	}
	return strings.Join(keep, "; ")
}
