// Package reaper lets PID 1 reap orphans without stealing the exit status
// of the children it started itself.
//
// Every child the agent starts goes through Start (or Run), which records
// its pid while holding the same lock the reaper takes; the reaper only
// collects zombies whose parent is this process and whose pid is not
// recorded, so a supervised tor is always waited for by its own cmd.Wait.
package reaper

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

var (
	mu    sync.Mutex
	owned = map[int]*exec.Cmd{}
)

// Start starts cmd and records it as owned: its status is left for
// cmd.Wait, which the caller must call through Wait.
func Start(cmd *exec.Cmd) error {
	mu.Lock()
	defer mu.Unlock()
	if err := cmd.Start(); err != nil {
		return err
	}
	owned[cmd.Process.Pid] = cmd
	return nil
}

// Wait waits for a command started with Start and forgets it.
func Wait(cmd *exec.Cmd) error {
	err := cmd.Wait()
	mu.Lock()
	if owned[cmd.Process.Pid] == cmd {
		delete(owned, cmd.Process.Pid)
	}
	mu.Unlock()
	return err
}

// Run starts cmd and waits for it.
func Run(cmd *exec.Cmd) error {
	if err := Start(cmd); err != nil {
		return err
	}
	return Wait(cmd)
}

// Output runs cmd and returns its standard output, like cmd.Output.
func Output(cmd *exec.Cmd) ([]byte, error) {
	var out bytes.Buffer
	cmd.Stdout = &out
	err := Run(cmd)
	return out.Bytes(), err
}

// CombinedOutput runs cmd and returns its standard output and error.
func CombinedOutput(cmd *exec.Cmd) ([]byte, error) {
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	err := Run(cmd)
	return out.Bytes(), err
}

// Reap collects every zombie child of this process that nobody owns and
// returns their pids.
func Reap() []int {
	mu.Lock()
	defer mu.Unlock()
	self := os.Getpid()
	var reaped []int
	for _, pid := range zombieChildren(self) {
		if _, ok := owned[pid]; ok {
			continue
		}
		var ws unix.WaitStatus
		if got, err := unix.Wait4(pid, &ws, unix.WNOHANG, nil); err == nil && got == pid {
			reaped = append(reaped, pid)
		}
	}
	return reaped
}

// Loop reaps orphans on every SIGCHLD (and every few seconds, in case a
// signal was coalesced) until ctx ends. onReap may be nil.
func Loop(ctx context.Context, onReap func(pid int)) {
	ch := make(chan os.Signal, 16)
	signal.Notify(ch, unix.SIGCHLD)
	defer signal.Stop(ch)
	tick := time.NewTicker(5 * time.Second)
	defer tick.Stop()
	for {
		for _, pid := range Reap() {
			if onReap != nil {
				onReap(pid)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-ch:
		case <-tick.C:
		}
	}
}

// Owned reports how many started children are not yet waited for.
func Owned() int {
	mu.Lock()
	defer mu.Unlock()
	return len(owned)
}

// zombieChildren lists pids in state Z whose parent is ppid.
func zombieChildren(ppid int) []int {
	d, err := os.Open("/proc")
	if err != nil {
		return nil
	}
	names, _ := d.Readdirnames(-1)
	d.Close()
	var pids []int
	for _, n := range names {
		pid, err := strconv.Atoi(n)
		if err != nil {
			continue
		}
		stat, err := os.ReadFile("/proc/" + n + "/stat")
		if err != nil {
			continue
		}
		// The command name may hold spaces and parentheses: parse after
		// the last ')'. Fields then: state, ppid.
		i := bytes.LastIndexByte(stat, ')')
		if i < 0 {
			continue
		}
		f := bytes.Fields(stat[i+1:])
		if len(f) < 2 || string(f[0]) != "Z" {
			continue
		}
		if p, err := strconv.Atoi(string(f[1])); err == nil && p == ppid {
			pids = append(pids, pid)
		}
	}
	return pids
}
