// Command floorinit is PID 1 of the boot floor (bench): the least a
// machine must do to have tor relays running, so that the agent's boot
// can be measured against it on the same VM. It mounts the kernel's
// filesystems, then starts every relay of /floor at once (/floor/NAME:
// torrc, and data, a DataDirectory with the relay's identity and onion
// keys already there), each as its own uid with its own notify socket
// and, while there are no more relays than cores, on a core of its own
// (lo up for their MetricsPorts), waits for every tor's READY=1, prints
//
//	floor: all N relays READY since_boot=1.234s
//
// and powers the machine off. Nothing else: no modules, no network, no
// TPM, no config server, no verification.
package main

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

const (
	floorDir = "/floor"
	runDir   = "/run/tor-instances"
	firstUID = 10001
)

func main() {
	for _, m := range []struct{ src, dst, fs string }{
		{"devtmpfs", "/dev", "devtmpfs"}, {"proc", "/proc", "proc"}, {"sysfs", "/sys", "sysfs"}, {"tmpfs", "/run", "tmpfs"},
	} {
		os.MkdirAll(m.dst, 0o755)
		if err := unix.Mount(m.src, m.dst, m.fs, unix.MS_NOSUID, ""); err != nil && err != unix.EBUSY {
			fmt.Printf("floor: mount %s: %v\n", m.dst, err)
		}
	}
	fmt.Printf("floor: init since_boot=%s\n", uptime())
	go noteRNG()
	if err := loopbackUp(); err != nil {
		fmt.Println("floor: lo:", err) // each tor's MetricsPort is on 127.66.X.Y
	}
	if err := run(); err != nil {
		fmt.Println("floor: failed:", err)
	}
	unix.Sync()
	unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	select {}
}

func run() error {
	ents, err := os.ReadDir(floorDir)
	if err != nil {
		return err
	}
	var names []string
	for _, e := range ents {
		if e.IsDir() {
			names = append(names, e.Name())
		}
	}
	sort.Strings(names)
	// The agent's PID 1 makes RunDir 0755 too: each relay's own directory
	// below it is what tor checks.
	if err := os.MkdirAll(runDir, 0o755); err != nil {
		return err
	}
	ready := make(chan string, len(names))
	exited := make(chan error, len(names))
	for i, name := range names {
		// A core of its own when there are no more relays than cores, as
		// the agent's cpuset runs them: the floor runs tor as we do.
		cpu := -1
		if len(names) <= runtime.NumCPU() {
			cpu = i
		}
		if err := start(name, firstUID+i, cpu, ready, exited); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
	}
	timeout := time.After(5 * time.Minute)
	for range names {
		select {
		case <-ready:
		case err := <-exited:
			return err // its log is on the console above
		case <-timeout:
			return fmt.Errorf("not every tor READY within 5 minutes")
		}
	}
	fmt.Printf("floor: all %d relays READY since_boot=%s\n", len(names), uptime())
	return nil
}

// start starts relay name's tor as uid, on core cpu unless it is -1, and
// sends name to ready on its READY=1, or its exit to exited. tor never
// forks (RunAsDaemon 0), so waiting for each tor is all the reaping PID 1
// has to do.
func start(name string, uid, cpu int, ready chan<- string, exited chan<- error) error {
	data := filepath.Join(floorDir, name, "data")
	run := filepath.Join(runDir, name)
	if err := os.MkdirAll(run, 0o700); err != nil {
		return err
	}
	for _, d := range []string{data, run} {
		// The image's directories are root's, 0755: tor wants its own, 0700.
		if err := filepath.Walk(d, func(p string, fi os.FileInfo, err error) error {
			if err != nil {
				return err
			}
			if fi.IsDir() {
				if err := os.Chmod(p, 0o700); err != nil {
					return err
				}
			}
			return os.Lchown(p, uid, uid)
		}); err != nil {
			return err
		}
	}
	sock := filepath.Join(runDir, name+".notify")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		return err
	}
	os.Chown(sock, uid, uid)
	cmd := exec.Command("/usr/bin/tor", "--defaults-torrc", "/dev/null", "-f", filepath.Join(floorDir, name, "torrc"))
	cmd.Env = []string{"NOTIFY_SOCKET=" + sock}
	cmd.Dir = data
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(uid), Groups: []uint32{}}}
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stdout
	if err := startOn(cmd, cpu); err != nil {
		return err
	}
	go func() { exited <- fmt.Errorf("%s: tor exited: %v", name, cmd.Wait()) }()
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := c.Read(buf)
			if err != nil {
				return
			}
			for _, l := range bytes.Split(buf[:n], []byte("\n")) {
				if string(l) == "READY=1" {
					fmt.Printf("floor: %s READY since_boot=%s\n", name, uptime())
					ready <- name
					return
				}
			}
		}
	}()
	return nil
}

// startOn starts cmd with its affinity set to cpu (all its threads
// inherit it), from a thread of its own that dies with the goroutine, so
// no other goroutine runs with that affinity.
func startOn(cmd *exec.Cmd, cpu int) error {
	if cpu < 0 {
		return cmd.Start()
	}
	errc := make(chan error)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
		var set unix.CPUSet
		set.Set(cpu)
		if err := unix.SchedSetaffinity(0, &set); err != nil {
			errc <- fmt.Errorf("affinity: %w", err)
			return
		}
		errc <- cmd.Start()
	}()
	return <-errc
}

// noteRNG prints when the kernel RNG is initialized (getrandom(2) would
// not block), which tor waits for: on the console beside the agent's
// entropy phase.
func noteRNG() {
	var b [1]byte
	for {
		if _, err := unix.Getrandom(b[:], unix.GRND_NONBLOCK); err == nil {
			fmt.Printf("floor: kernel RNG ready since_boot=%s\n", uptime())
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// loopbackUp sets lo up, as the agent's network has it.
func loopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return err
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	return unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr)
}

func uptime() string {
	b, err := os.ReadFile("/proc/uptime")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return "?"
	}
	s, _ := strconv.ParseFloat(f[0], 64)
	return (time.Duration(s * float64(time.Second))).Round(10 * time.Millisecond).String()
}
