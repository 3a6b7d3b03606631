package harness

import (
	"bufio"
	"context"

	"fmt"
	"io"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// VMOptions describe one boot of the test machine.
type VMOptions struct {
	Kernel, Initramfs, Cmdline string
	TPM                        *SWTPM        // nil: none
	Relay                      string        // stdiorelay binary
	ServerAddr                 string        // 127.0.0.1:PORT the guest's 10.0.2.100:443 reaches; "": nothing
	CPUs                       int           // vCPUs; default 2
	Timeout                    time.Duration // hard limit on QEMU's life (default 5 min)
	Console                    io.Writer     // every console line, as it arrives (may be nil)
	// UEFI boots under OVMF (uefi.go); Kernel is then a UKI (or empty with
	// an ESP), Initramfs empty, and an empty Cmdline keeps the UKI's own.
	UEFI *UEFI
	// NIC is the QEMU device model of both NICs: "virtio-net-pci" (the
	// default) or an emulated Intel NIC such as "e1000e", whose driver
	// the image must carry (Modules has it).
	NIC string
}

// Line is one line of the serial console, stamped with the time since
// QEMU started.
type Line struct {
	At   time.Duration
	Text string
}

// VM is a running QEMU (TCG).
type VM struct {
	Start time.Time

	cmd    *exec.Cmd
	cancel context.CancelFunc
	stdin  io.WriteCloser
	done   chan struct{}
	err    error

	mu      sync.Mutex
	lines   []Line
	changed chan struct{} // closed and replaced on every new line
}

// Boot starts QEMU: q35, TCG with -cpu max (RDRAND seeds the guest's RNG),
// 1 GiB, 2 CPUs (VMOptions.CPUs), no reboot (a reboot or power-off ends QEMU), the serial
// console on a pipe, the TPM, a management NIC on restricted user
// networking whose only way out is 10.0.2.100:443 → the config server,
// and a relay NIC on an otherwise empty hub.
func Boot(ctx context.Context, o VMOptions) (*VM, error) {
	if o.Timeout == 0 {
		o.Timeout = 5 * time.Minute
	}
	if o.NIC == "" {
		o.NIC = "virtio-net-pci"
	}
	if o.CPUs == 0 {
		o.CPUs = 2
	}
	mgmt := "user,id=mgmt,restrict=on"
	if o.ServerAddr != "" {
		mgmt += fmt.Sprintf(",guestfwd=tcp:%s:443-cmd:%s %s", ServerIP, o.Relay, o.ServerAddr)
	}
	args := []string{
		"-machine", "q35", "-accel", "tcg", "-cpu", "max", "-m", "1024", "-smp", strconv.Itoa(o.CPUs),
		"-nographic", "-no-reboot", "-monitor", "none", "-serial", "stdio",
		"-netdev", mgmt,
		"-device", o.NIC + ",netdev=mgmt,mac=" + MgmtMAC + ",addr=0x3",
		"-netdev", "hubport,id=relay,hubid=1",
		"-device", o.NIC + ",netdev=relay,mac=" + RelayMAC + ",addr=0x4",
	}
	if o.Kernel != "" {
		args = append(args, "-kernel", o.Kernel)
	}
	if o.Initramfs != "" {
		args = append(args, "-initrd", o.Initramfs)
	}
	if o.Cmdline != "" {
		args = append(args, "-append", o.Cmdline)
	}
	if o.UEFI != nil {
		ua, err := o.UEFI.args()
		if err != nil {
			return nil, err
		}
		args = append(args, ua...)
	}
	if o.TPM != nil {
		args = append(args, o.TPM.QEMUArgs()...)
	}
	if o.UEFI != nil {
		// No option ROMs: OVMF would try PXE on the NICs before the ESP.
		for i, a := range args {
			if strings.HasPrefix(a, o.NIC+",") {
				args[i] = a + ",romfile="
			}
		}
	}
	qctx, cancel := context.WithTimeout(ctx, o.Timeout)
	cmd := exec.CommandContext(qctx, "qemu-system-x86_64", args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	stdin, err := cmd.StdinPipe()
	if err != nil {
		cancel()
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		cancel()
		return nil, err
	}
	var errb strings.Builder
	cmd.Stderr = &errb
	vm := &VM{cmd: cmd, cancel: cancel, stdin: stdin, done: make(chan struct{}), changed: make(chan struct{})}
	vm.Start = time.Now()
	if err := cmd.Start(); err != nil {
		cancel()
		return nil, fmt.Errorf("harness: starting QEMU: %w", err)
	}
	read := make(chan struct{})
	go func() {
		defer close(read)
		r := bufio.NewReader(out)
		for {
			s, err := r.ReadString('\n')
			if s != "" {
				vm.add(strings.TrimRight(s, "\r\n"), o.Console)
			}
			if err != nil {
				return
			}
		}
	}()
	go func() {
		<-read
		err := cmd.Wait()
		if qctx.Err() == context.DeadlineExceeded {
			err = fmt.Errorf("QEMU killed after the %v hard timeout", o.Timeout)
		} else if err != nil && errb.Len() > 0 {
			err = fmt.Errorf("%w: %s", err, strings.TrimSpace(errb.String()))
		}
		vm.mu.Lock()
		vm.err = err
		vm.mu.Unlock()
		close(vm.done)
		cancel()
	}()
	return vm, nil
}

func (vm *VM) add(text string, mirror io.Writer) {
	// Strip the terminal escapes SeaBIOS and the kernel print.
	text = strings.Map(func(r rune) rune {
		if r == 0x1b {
			return -1
		}
		return r
	}, text)
	vm.mu.Lock()
	l := Line{At: time.Since(vm.Start), Text: text}
	vm.lines = append(vm.lines, l)
	close(vm.changed)
	vm.changed = make(chan struct{})
	vm.mu.Unlock()
	if mirror != nil {
		fmt.Fprintf(mirror, "[%6.2fs] %s\n", l.At.Seconds(), text)
	}
}

// Lines returns the console so far.
func (vm *VM) Lines() []Line {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	return append([]Line(nil), vm.lines...)
}

// Tail returns the last n console lines as text, for error messages.
func (vm *VM) Tail(n int) string {
	ls := vm.Lines()
	if len(ls) > n {
		ls = ls[len(ls)-n:]
	}
	var b strings.Builder
	for _, l := range ls {
		fmt.Fprintf(&b, "[%6.2fs] %s\n", l.At.Seconds(), l.Text)
	}
	return b.String()
}

// Expect waits for a console line containing every one of the substrings
// and returns it; it fails when ctx ends or QEMU exits first.
func (vm *VM) Expect(ctx context.Context, substrings ...string) (Line, error) {
	seen := 0
	for {
		vm.mu.Lock()
		lines, changed := vm.lines[seen:], vm.changed
		seen = len(vm.lines)
		vm.mu.Unlock()
		for _, l := range lines {
			if containsAll(l.Text, substrings) {
				return l, nil
			}
		}
		select {
		case <-changed:
		case <-vm.done:
			// Lines may have arrived just before the exit.
			vm.mu.Lock()
			rest := vm.lines[seen:]
			vm.mu.Unlock()
			for _, l := range rest {
				if containsAll(l.Text, substrings) {
					return l, nil
				}
			}
			return Line{}, fmt.Errorf("QEMU exited (%v) before the console showed %q", vm.Err(), substrings)
		case <-ctx.Done():
			return Line{}, fmt.Errorf("console never showed %q: %w", substrings, ctx.Err())
		}
	}
}

// Find returns every console line so far that contains all substrings.
func (vm *VM) Find(substrings ...string) []Line {
	var out []Line
	for _, l := range vm.Lines() {
		if containsAll(l.Text, substrings) {
			out = append(out, l)
		}
	}
	return out
}

func containsAll(s string, subs []string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}

// Done is closed when QEMU has exited.
func (vm *VM) Done() <-chan struct{} { return vm.done }

// Err is why QEMU exited (nil for a clean power-off or reboot).
func (vm *VM) Err() error {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	return vm.err
}

// Kill pulls the plug: QEMU dies at once, as a machine losing power. What
// the agent saved in the TPM stays; swtpm saves its state as QEMU goes.
func (vm *VM) Kill() {
	vm.cancel()
	<-vm.done
	vm.stdin.Close()
}

// Type sends keystrokes to the serial console.
func (vm *VM) Type(s string) error {
	_, err := io.WriteString(vm.stdin, s)
	return err
}
