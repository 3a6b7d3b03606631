// Package pid1 does what the first process of a diskless machine must:
// mount the kernel's filesystems, catch signals before any child exists,
// load kernel modules in order, wait for the RNG, keep the clock sane,
// write the few files /etc needs, log to the console with a boot
// timeline, and never exit: it powers off or reboots instead.
//
// When the agent is not PID 1 (a host, a test) the same functions run
// against a root directory and leave the host alone: nothing is mounted,
// the clock is not set and "reboot" ends the process.
package pid1

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"patela/internal/layout"
)

// IsPID1 reports whether this process is the machine's init.
func IsPID1() bool { return os.Getpid() == 1 }

// mount is one filesystem PID 1 mounts.
type mount struct {
	source, target, fstype string
	flags                  uintptr
	data                   string
	mode                   os.FileMode
}

const nsd = unix.MS_NOSUID | unix.MS_NODEV

var mounts = []mount{
	{"devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID, "mode=0755", 0o755},
	{"proc", "/proc", "proc", nsd | unix.MS_NOEXEC, "", 0o555},
	{"sysfs", "/sys", "sysfs", nsd | unix.MS_NOEXEC, "", 0o555},
	{"securityfs", "/sys/kernel/security", "securityfs", nsd | unix.MS_NOEXEC, "", 0o755},
	// cgroup v2: each relay's tor in a cgroup of its own (init/cgroup).
	{"cgroup2", "/sys/fs/cgroup", "cgroup2", nsd | unix.MS_NOEXEC, "", 0o755},
	{"devpts", "/dev/pts", "devpts", unix.MS_NOSUID | unix.MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620", 0o755},
	{"tmpfs", "/dev/shm", "tmpfs", nsd, "mode=1777", 0o1777},
	{"tmpfs", "/run", "tmpfs", nsd, "mode=0755", 0o755},
	{"tmpfs", "/tmp", "tmpfs", nsd, "mode=1777", 0o1777},
	{"tmpfs", layout.StateDir, "tmpfs", nsd, "mode=0755", 0o755},
}

// Mount mounts the kernel filesystems and tmpfs directories. Under root
// != "" (not PID 1) it only creates the directories below root. A
// filesystem that is already mounted (EBUSY) is fine: a u-root init may
// have mounted it before us.
func Mount(root string, log *slog.Logger) error {
	var errs []error
	for _, m := range mounts {
		target := filepath.Join(root, m.target)
		if err := os.MkdirAll(target, m.mode); err != nil {
			errs = append(errs, err)
			continue
		}
		if root != "" {
			continue
		}
		err := unix.Mount(m.source, target, m.fstype, m.flags, m.data)
		switch {
		case err == nil:
		case errors.Is(err, unix.EBUSY):
			log.Debug("already mounted", "target", target)
		case m.fstype == "securityfs":
			// Only the TPM event log lives there; the agent runs without it.
			log.Warn("mount failed", "target", target, "err", err)
		default:
			errs = append(errs, fmt.Errorf("mount %s on %s: %w", m.fstype, target, err))
		}
	}
	for _, d := range []string{layout.RunDir, layout.ConfigDir, "/var/log"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			errs = append(errs, err)
		}
	}
	if root == "" {
		// /dev/ptmx for the new devpts instance.
		os.Remove("/dev/ptmx")
		if err := os.Symlink("pts/ptmx", "/dev/ptmx"); err != nil {
			log.Warn("ptmx", "err", err)
		}
	}
	return errors.Join(errs...)
}

// Missing lists the filesystems Mount mounts that mounts (the contents of
// /proc/self/mounts) does not show, as "fstype on target".
func Missing(mountsFile []byte) []string {
	have := map[string]bool{}
	for _, line := range strings.Split(string(mountsFile), "\n") {
		if f := strings.Fields(line); len(f) >= 3 {
			have[f[2]+" on "+f[1]] = true
		}
	}
	var out []string
	for _, m := range mounts {
		if k := m.fstype + " on " + m.target; !have[k] {
			out = append(out, k)
		}
	}
	return out
}

// Action is what a signal asks of the machine.
type Action int

const (
	PowerOff Action = iota
	Reboot
)

func (a Action) String() string {
	if a == Reboot {
		return "reboot"
	}
	return "power off"
}

// Signals installs the handlers PID 1 needs and must be called before any
// child is started: Go's default action for these is to exit, and PID 1
// exiting panics the kernel. The conventions are gokrazy's and u-root's:
// SIGTERM and SIGUSR2 power off, SIGINT (what the kernel sends on
// ctrl-alt-del) and SIGUSR1 reboot; SIGPWR (from a UPS daemon or ACPI)
// powers off. SIGHUP is caught and ignored: a DHCP client or a console
// hangup must not kill init. The channel carries the requested actions.
func Signals(log *slog.Logger) <-chan Action {
	ch := make(chan os.Signal, 8)
	signal.Notify(ch, unix.SIGTERM, unix.SIGUSR2, unix.SIGINT, unix.SIGUSR1, unix.SIGPWR, unix.SIGHUP, unix.SIGPIPE)
	out := make(chan Action, 1)
	go func() {
		for s := range ch {
			switch s {
			case unix.SIGTERM, unix.SIGUSR2, unix.SIGPWR:
				log.Info("signal: power off requested", "signal", s)
				out <- PowerOff
			case unix.SIGINT, unix.SIGUSR1:
				log.Info("signal: reboot requested", "signal", s)
				out <- Reboot
			default:
				log.Debug("signal ignored", "signal", s)
			}
		}
	}()
	if IsPID1() {
		// ctrl-alt-del sends SIGINT to init instead of rebooting at once.
		unix.Reboot(unix.LINUX_REBOOT_CMD_CAD_OFF)
	} else {
		// Orphans of our children come to us, like to PID 1.
		unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
	}
	return out
}

// Halt syncs and powers off or reboots. As PID 1 it never returns; otherwise
// the process exits (0 for power off, 3 for reboot), which is what a host
// test or supervisor can observe.
func Halt(a Action, log *slog.Logger) {
	unix.Sync()
	if !IsPID1() {
		log.Info("not PID 1: exiting instead", "action", a)
		if a == Reboot {
			os.Exit(3)
		}
		os.Exit(0)
	}
	log.Info("halting", "action", a)
	cmd := unix.LINUX_REBOOT_CMD_POWER_OFF
	if a == Reboot {
		cmd = unix.LINUX_REBOOT_CMD_RESTART
	}
	for {
		err := unix.Reboot(cmd)
		log.Error("reboot(2) failed", "err", err)
		time.Sleep(time.Second)
	}
}

// Fatal is the end of every unrecoverable error: print it, leave it on the
// console for delay, and reboot. A power-off or reboot requested on
// actions (nil: none) meanwhile is obeyed at once, so an operator can
// still power off a machine stuck in a crash loop. It never returns.
func Fatal(err error, delay time.Duration, actions <-chan Action, log *slog.Logger) {
	log.Error("FATAL: "+err.Error(), "reboot_in", delay)
	fmt.Fprintf(os.Stderr, "\npatela: fatal: %v\npatela: rebooting in %v\n", err, delay)
	unix.Sync()
	act := Reboot
	select {
	case <-time.After(delay):
	case act = <-actions:
	}
	Halt(act, log)
}
