package main

// The PID-1 self-test (patela.selftest=pid1), for the QEMU test in
// e2e/pid1_test.go and TestSelftestOnHost; its console lines start
// "selftest". The agent starts itself again as the helpers below.

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"patela/init/pid1"
	"patela/init/reaper"
)

// selftestPID1 checks what only PID 1 can: a child's status reaches the
// code that started it while the orphan it leaves behind is reaped, and a
// SIGTERM sent to PID 1 by another process powers the machine off.
func (a *agent) selftestPID1(context.Context) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	if pid1.IsPID1() {
		mounts, err := os.ReadFile("/proc/self/mounts")
		if err != nil {
			return err
		}
		if missing := pid1.Missing(mounts); len(missing) > 0 {
			return fmt.Errorf("not mounted: %s", strings.Join(missing, ", "))
		}
		a.log.Info("selftest: every filesystem mounted")
	}
	if err := a.selftestOrphan(self); err != nil {
		return err
	}
	if n := zombies(); n != 0 {
		return fmt.Errorf("%d zombies left", n)
	}
	// The last step goes through the real power-off path: another process
	// sends SIGTERM to PID 1, boot() receives the action and shuts down.
	kill := exec.Command(self, "selftest-sigterm")
	if err := reaper.Run(kill); err != nil {
		return fmt.Errorf("selftest sigterm child: %w", err)
	}
	a.log.Info("selftest: passed; a child sent SIGTERM to the agent")
	return nil
}

// selftestOrphan starts a child that leaves an orphan behind: the child's
// status must reach this code, the orphan the reaper.
func (a *agent) selftestOrphan(self string) error {
	// Drain orphans reaped so far (none expected).
	for len(a.reaped) > 0 {
		<-a.reaped
	}
	var out bytes.Buffer
	child := exec.Command(self, "selftest-child")
	child.Stdout = &out
	if err := reaper.Run(child); err != nil {
		return fmt.Errorf("selftest child: %w", err)
	}
	orphan, err := strconv.Atoi(strings.TrimSpace(out.String()))
	if err != nil {
		return fmt.Errorf("selftest child printed %q", out.String())
	}
	a.log.Info("selftest: child exited, status collected by its owner", "child", child.Process.Pid, "status", child.ProcessState.ExitCode(), "orphan", orphan)
	deadline := time.After(10 * time.Second)
	for {
		select {
		case pid := <-a.reaped:
			if pid != orphan {
				a.log.Info("selftest: reaped another orphan", "pid", pid)
				continue
			}
			a.log.Info("selftest: orphan reaped by the agent", "pid", pid, "pid1", pid1.IsPID1())
			return nil
		case <-deadline:
			return fmt.Errorf("orphan %d was not reaped", orphan)
		}
	}
}

// zombies counts zombie children of this process.
func zombies() int {
	n := 0
	ents, _ := os.ReadDir("/proc")
	me := strconv.Itoa(os.Getpid())
	for _, e := range ents {
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		i := bytes.LastIndexByte(b, ')')
		if f := strings.Fields(string(b[i+1:])); i > 0 && len(f) > 1 && f[0] == "Z" && f[1] == me {
			n++
		}
	}
	return n
}

// selftestHelper runs the processes the self-test starts, and reports
// whether name is one of them.
func selftestHelper(name string) (int, bool) {
	switch name {
	case "selftest-child":
		// Start a grandchild and exit without waiting: it becomes an
		// orphan, reparented to PID 1.
		self, _ := os.Executable()
		gc := exec.Command(self, "selftest-grandchild")
		if err := gc.Start(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1, true
		}
		fmt.Println(gc.Process.Pid)
		return 0, true
	case "selftest-grandchild":
		time.Sleep(300 * time.Millisecond)
		return 0, true
	case "selftest-sigterm":
		// The parent is the agent: PID 1 in the VM, a plain process on a
		// host (where PID 1 must never be signalled).
		if err := syscall.Kill(os.Getppid(), syscall.SIGTERM); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1, true
		}
		return 0, true
	}
	return 0, false
}
