// Package debugshell keeps a root shell on the console of a debug image.
// The production initramfs has no shell, so Run finds none and returns; the
// --debug image has /bin/sh (u-root's gosh), which the agent starts only
// when the kernel command line says patela.debug=shell (or all).
package debugshell

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"syscall"
	"time"

	"patela/init/reaper"
)

// Console is the kernel's console, where the shell runs (the shell
// itself is layout.Shell).
const Console = "/dev/console"

// Env is the shell's environment: u-root's busybox commands live in /bbin.
var Env = []string{"PATH=/bbin:/bin:/usr/bin:/usr/sbin:/sbin", "HOME=/", "TERM=linux"}

// ErrNoShell means the image has no shell: the production flavour.
var ErrNoShell = errors.New("debugshell: no shell in this image (build it with initramfs --debug)")

// Run starts shell on console as a session leader with console as its
// controlling terminal, starts a new one whenever it exits, and kills it
// when ctx ends. It returns ErrNoShell at once when shell does not exist,
// otherwise ctx's error. Every start goes through the reaper.
func Run(ctx context.Context, log *slog.Logger, shell, console string) error {
	if _, err := os.Stat(shell); err != nil {
		return ErrNoShell
	}
	for {
		if err := once(ctx, log, shell, console); err != nil {
			log.Warn("debug shell", "err", err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second): // no busy loop if the shell dies at once
		}
	}
}

func once(ctx context.Context, log *slog.Logger, shell, console string) error {
	tty, err := os.OpenFile(console, os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		return fmt.Errorf("open console: %w", err)
	}
	defer tty.Close()
	cmd := exec.Command(shell)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = tty, tty, tty
	cmd.Env = Env
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	if err := reaper.Start(cmd); err != nil {
		return fmt.Errorf("start %s: %w", shell, err)
	}
	log.Warn("debug shell running on the console (patela.debug=shell)", "shell", shell, "pid", cmd.Process.Pid)
	done := make(chan error, 1)
	go func() { done <- reaper.Wait(cmd) }()
	select {
	case err := <-done:
		log.Info("debug shell exited; starting another", "err", err)
		return nil
	case <-ctx.Done():
		// The shell leads its own session: kill the whole group.
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
		return nil
	}
}
