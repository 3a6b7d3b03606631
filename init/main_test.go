package main

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"

	"patela/init/netnstest"
	"patela/init/reaper"
)

// TestSelftestOnHost runs the agent binary as an ordinary process (not
// PID 1) under --root, inside a network namespace with a Go DHCP server
// at the other end of a veth: it must run the phases up to DHCP, pass the
// reaper self-test, take the SIGTERM its child sends through the power-off
// path, and exit 0, leaving resolv.conf from the lease under its root.
func TestSelftestOnHost(t *testing.T) {
	cli, srv := netnstest.New(t), netnstest.New(t)
	netnstest.Veth(t, cli, "eth0", srv, "srv0")
	srv.Addr(t, "srv0", "192.0.2.1/24")
	srv.ServeDHCPv4(t, "srv0", dhcpv4.WithYourIP(net.IPv4(192, 0, 2, 9)),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.IPv4(192, 0, 2, 1))), dhcpv4.WithNetmask(net.CIDRMask(24, 32)),
		dhcpv4.WithRouter(net.IPv4(192, 0, 2, 1)), dhcpv4.WithDNS(net.IPv4(192, 0, 2, 53)), dhcpv4.WithLeaseTime(600))

	dir := t.TempDir()
	bin := buildAgent(t, dir)
	root := filepath.Join(dir, "root")
	os.MkdirAll(filepath.Join(root, "etc/patela"), 0o755)
	os.WriteFile(filepath.Join(root, "etc/patela/agent.json"), []byte(`{"modules":["virtio_net"]}`), 0o644)
	cmdline := filepath.Join(dir, "cmdline")
	os.WriteFile(cmdline, []byte("console=ttyS0 patela.selftest=pid1 patela.mgmt_interface=eth0 patela.dhcp_timeout=20s\n"), 0o644)

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", cli.Name, bin, "--root", root, "--cmdline", cmdline)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := reaper.Run(cmd)
	console := out.String()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) || ctx.Err() != nil {
		t.Fatalf("agent: %v\n%s", err, console)
	}
	if code := cmd.ProcessState.ExitCode(); code != 0 {
		t.Fatalf("agent exited %d, want 0 (power off)\n%s", code, console)
	}
	for _, re := range []string{
		`msg=timeline phase=mount start=\S+ took=`,
		`msg=timeline phase=config `,
		`msg=timeline phase=entropy `,
		`msg="DHCP lease" interface=eth0 addr=192.0.2.9/24`,
		`msg=timeline phase=dhcp `,
		`selftest: orphan reaped by the agent`,
		`msg=timeline phase=selftest `,
		`signal: power off requested`,
		`not PID 1: exiting instead" action="power off"`,
	} {
		if !regexp.MustCompile(re).MatchString(console) {
			t.Errorf("console lacks %s", re)
		}
	}
	rc, err := os.ReadFile(filepath.Join(root, "etc/resolv.conf"))
	if err != nil || !strings.Contains(string(rc), "nameserver 192.0.2.53") {
		t.Errorf("resolv.conf under root: %q %v", rc, err)
	}
	if t.Failed() {
		t.Logf("console:\n%s", console)
	}
}

func buildAgent(t *testing.T, dir string) string {
	bin := filepath.Join(dir, "init")
	build := exec.Command("go", "build", "-o", bin, ".")
	if out, err := reaper.CombinedOutput(build); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// TestFatalConfigOnHost: a typo on the kernel command line stops the boot
// with a message naming it, then the agent waits to reboot; a SIGTERM in
// that wait powers off at once (exit 0 when not PID 1).
func TestFatalConfigOnHost(t *testing.T) {
	dir := t.TempDir()
	bin := buildAgent(t, dir)
	root := filepath.Join(dir, "root")
	os.MkdirAll(filepath.Join(root, "etc/patela"), 0o755)
	os.WriteFile(filepath.Join(root, "etc/patela/agent.json"), []byte(`{"server_url":"https://192.0.2.10","sealing":"unmeasured"}`), 0o644)
	cmdline := filepath.Join(dir, "cmdline")
	os.WriteFile(cmdline, []byte("console=ttyS0 patela.sever_url=https://192.0.2.11\n"), 0o644)

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "--root", root, "--cmdline", cmdline)
	out := runUntil(t, cmd, "rebooting in")
	if code := cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("exit %d, want 0 (power off during the reboot delay)", code)
	}
	for _, want := range []string{`FATAL: config: agent config`, `unknown key \"sever_url\"`, `patela: rebooting in 30s`, `action="power off"`} {
		if !strings.Contains(out, want) {
			t.Errorf("console lacks %s:\n%s", want, out)
		}
	}
}

// TestPowerOffDuringBoot: a machine stuck in a boot phase (here DHCP, with
// no server on the link) still powers off at once on SIGTERM.
func TestPowerOffDuringBoot(t *testing.T) {
	cli, srv := netnstest.New(t), netnstest.New(t)
	netnstest.Veth(t, cli, "eth0", srv, "srv0")
	dir := t.TempDir()
	bin := buildAgent(t, dir)
	root := filepath.Join(dir, "root")
	os.MkdirAll(filepath.Join(root, "etc/patela"), 0o755)
	os.WriteFile(filepath.Join(root, "etc/patela/agent.json"), []byte(`{"server_url":"https://192.0.2.10","mgmt_interface":"eth0","sealing":"unmeasured"}`), 0o644)
	cmdline := filepath.Join(dir, "cmdline")
	os.WriteFile(cmdline, []byte("console=ttyS0\n"), 0o644)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", cli.Name, bin, "--root", root, "--cmdline", cmdline)
	console := runUntil(t, cmd, "DHCP: requesting a lease")
	if code := cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("exit %d, want 0 (power off)", code)
	}
	for _, want := range []string{`boot phase interrupted by shutdown" phase=dhcp`, `signal: power off requested`, `not PID 1: exiting instead" action="power off"`} {
		if !strings.Contains(console, want) {
			t.Errorf("console lacks %s", want)
		}
	}
	if strings.Contains(console, "FATAL") {
		t.Error("an interrupted phase was reported as fatal")
	}
	if t.Failed() {
		t.Logf("console:\n%s", console)
	}
}

// runUntil starts cmd, sends it SIGTERM once its output contains marker,
// waits for it and returns the output.
func runUntil(t *testing.T, cmd *exec.Cmd, marker string) string {
	t.Helper()
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := reaper.Start(cmd); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	var console bytes.Buffer
	seen, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 4096)
		signalled := false
		for {
			n, err := pr.Read(buf)
			console.Write(buf[:n])
			if !signalled && strings.Contains(console.String(), marker) {
				signalled = true
				close(seen)
			}
			if err != nil {
				return
			}
		}
	}()
	select {
	case <-seen:
		cmd.Process.Signal(syscall.SIGTERM)
	case <-done:
	}
	reaper.Wait(cmd)
	<-done
	return console.String()
}

func TestReadSpecs(t *testing.T) {
	proc := t.TempDir()
	os.WriteFile(filepath.Join(proc, "cpuinfo"), []byte("processor\t: 0\nmodel name\t: QEMU Virtual CPU version 2.5+\n\nprocessor\t: 1\nmodel name\t: QEMU Virtual CPU version 2.5+\n"), 0o644)
	os.WriteFile(filepath.Join(proc, "meminfo"), []byte("MemTotal:        1004960 kB\nMemFree:          900000 kB\n"), 0o644)
	s, err := readSpecs(proc)
	if err != nil {
		t.Fatal(err)
	}
	if s.CPUs != 2 || s.MemoryBytes != 1004960*1024 || s.CPUModel != "QEMU Virtual CPU version 2.5+" {
		t.Errorf("specs %+v", s)
	}
	os.WriteFile(filepath.Join(proc, "meminfo"), []byte("MemFree: 1 kB\n"), 0o644)
	if _, err := readSpecs(proc); err == nil || !strings.Contains(err.Error(), "memory (0)") {
		t.Errorf("no MemTotal: err = %v", err)
	}
}
