// Command testinit is PID 1 of a test machine (e2e): it mounts what a Go
// test of the agent's packages needs (devtmpfs, proc, sysfs, cgroup2 on
// /sys/fs/cgroup, tmpfs on /tmp and /run), runs /test with the arguments
// in /test.args (one per line) and CI=true (a test must not skip in the
// machine built for it), reaps every orphan meanwhile, prints
// "testinit: exit N" and powers the machine off.
package main

import (
	"fmt"
	"os"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

func main() {
	for _, m := range []struct{ src, dst, fs, data string }{
		{"devtmpfs", "/dev", "devtmpfs", ""},
		{"proc", "/proc", "proc", ""},
		{"sysfs", "/sys", "sysfs", ""},
		{"cgroup2", "/sys/fs/cgroup", "cgroup2", ""},
		{"tmpfs", "/tmp", "tmpfs", "mode=1777"},
		{"tmpfs", "/run", "tmpfs", "mode=0755"},
	} {
		os.MkdirAll(m.dst, 0o755)
		if err := unix.Mount(m.src, m.dst, m.fs, 0, m.data); err != nil && err != unix.EBUSY {
			fmt.Printf("testinit: mount %s on %s: %v\n", m.fs, m.dst, err)
		}
	}
	code := run()
	fmt.Printf("testinit: exit %d\n", code)
	unix.Sync()
	unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	select {}
}

func run() int {
	b, err := os.ReadFile("/test.args")
	if err != nil {
		fmt.Println("testinit:", err)
		return 125
	}
	args := []string{"/test"}
	for _, a := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if a != "" {
			args = append(args, a)
		}
	}
	p, err := os.StartProcess("/test", args, &os.ProcAttr{
		Dir:   "/tmp",
		Env:   []string{"PATH=/usr/bin:/bin:/usr/sbin:/sbin", "HOME=/tmp", "TMPDIR=/tmp", "CI=true"},
		Files: []*os.File{os.Stdin, os.Stdout, os.Stderr},
	})
	if err != nil {
		fmt.Println("testinit:", err)
		return 126
	}
	for {
		var ws syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &ws, 0, nil)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			fmt.Println("testinit: wait:", err)
			return 127
		}
		if pid == p.Pid {
			return ws.ExitStatus()
		}
	}
}
