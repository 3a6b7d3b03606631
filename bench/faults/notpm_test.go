package faults_test

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"

	"patela/bench/srvproc"
	"patela/init/netnstest"
	"patela/init/tpmdev"
	"patela/internal/swtpmtest"
	"patela/internal/testutil"
)

// The TPM is not there when the agent reaches its tpm phase: the agent
// binary (run as an ordinary process under --root, in a network namespace
// with a DHCP server, as on a machine) prints a clear fatal error naming
// the TPM and takes the reboot path, without a panic. On the next boot,
// with swtpm up, the same agent passes the tpm phase and goes on to
// attest.
func TestTPMUnavailableAtBoot(t *testing.T) {
	netnstest.RequireRoot(t)
	missing := filepath.Join(t.TempDir(), "swtpm-sock")
	// The transport itself: a clear error, twice in a row (no state left
	// behind by the first failure).
	for range 2 {
		if _, err := tpmdev.Open("unix:" + missing); err == nil || !strings.Contains(err.Error(), "opening TPM unix:"+missing) {
			t.Fatalf("tpmdev.Open of a missing swtpm: %v", err)
		}
	}

	agent := buildAgent(t)
	srv := srvproc.StartT(t, bin)
	ns := dhcpNetns(t)
	root := t.TempDir()
	writeAgentConfig(t, root, srv, "unix:"+missing)

	console, code := runAgent(t, agent, ns, root, "", 60*time.Second)
	if code != 3 {
		t.Errorf("agent exited %d, want 3 (the reboot path of a non-PID-1 agent)", code)
	}
	for _, want := range []string{
		"msg=timeline phase=dhcp",
		"patela: fatal: tpm: opening TPM unix:" + missing,
		"patela: rebooting in 200ms",
		`not PID 1: exiting instead" action=reboot`,
	} {
		if !strings.Contains(console, want) {
			t.Errorf("console lacks %q", want)
		}
	}
	for _, l := range strings.Split(console, "\n") {
		if strings.Contains(l, "patela: fatal:") {
			t.Logf("console: %s", l)
		}
	}
	if strings.Contains(console, "panic") || strings.Contains(console, "goroutine ") {
		t.Errorf("the agent panicked")
	}
	if t.Failed() {
		t.Fatalf("console:\n%s", console)
	}

	// Next boot: the TPM is back.
	tp := swtpmtest.Start(t)
	writeAgentConfig(t, root, srv, "unix:"+tp.Socket)
	// The server is on the host's loopback, out of the namespace's reach:
	// the agent must pass the tpm phase and then keep retrying attestation.
	console, _ = runAgent(t, agent, ns, root, `attestation failed, retrying" attempt=2`, 60*time.Second)
	for _, want := range []string{"msg=timeline phase=tpm", `msg="TPM identity"`, `attestation failed, retrying" attempt=2`} {
		if !strings.Contains(console, want) {
			t.Errorf("second boot: console lacks %q", want)
		}
	}
	if strings.Contains(console, "fatal") || strings.Contains(console, "panic") {
		t.Errorf("second boot failed")
	}
	if t.Failed() {
		t.Logf("console:\n%s", console)
	}
}

func buildAgent(t *testing.T) string {
	t.Helper()
	root, err := srvproc.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "init")
	cmd := exec.Command("go", "build", "-trimpath", "-o", out, "./init")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./init: %v\n%s", err, b)
	}
	return out
}

// dhcpNetns is a namespace whose eth0 leads to a Go DHCP server handing
// out 192.0.2.9/24.
func dhcpNetns(t *testing.T) *netnstest.NS {
	t.Helper()
	cli, srv := netnstest.New(t), netnstest.New(t)
	netnstest.Veth(t, cli, "eth0", srv, "srv0")
	srv.Addr(t, "srv0", "192.0.2.1/24")
	srv.ServeDHCPv4(t, "srv0", dhcpv4.WithYourIP(net.IPv4(192, 0, 2, 9)),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.IPv4(192, 0, 2, 1))), dhcpv4.WithNetmask(net.CIDRMask(24, 32)),
		dhcpv4.WithRouter(net.IPv4(192, 0, 2, 1)), dhcpv4.WithLeaseTime(600))
	return cli
}

func writeAgentConfig(t *testing.T, root string, srv *srvproc.Server, tpm string) {
	t.Helper()
	dir := filepath.Join(root, "etc/patela")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "server-ca.pem"), srv.CA, 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, _ := json.Marshal(map[string]any{
		"server_url": srv.URL, "sealing": "unmeasured", "server_ca": "/etc/patela/server-ca.pem", "tpm": tpm,
		"mgmt_interface": "eth0", "dhcp_timeout": "20s", "reboot_delay": "200ms",
	})
	if err := os.WriteFile(filepath.Join(dir, "agent.json"), cfg, 0o644); err != nil {
		t.Fatal(err)
	}
}

// runAgent runs the agent in ns until it exits or, when until is set,
// until its console shows until (then it is killed). It returns the
// console and the exit code (-1 when killed).
func runAgent(t *testing.T, agent string, ns *netnstest.NS, root, until string, limit time.Duration) (string, int) {
	t.Helper()
	cmdline := filepath.Join(t.TempDir(), "cmdline")
	if err := os.WriteFile(cmdline, []byte("console=ttyS0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	var out testutil.SyncBuffer
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", ns.Name, agent, "--root", root, "--cmdline", cmdline)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	if until != "" {
		for !strings.Contains(out.String(), until) {
			select {
			case err := <-done:
				t.Fatalf("agent ended (%v) before its console showed %q:\n%s", err, until, out.String())
			case <-time.After(20 * time.Millisecond):
			}
		}
		cmd.Process.Kill()
		<-done
		return out.String(), -1
	}
	err := <-done
	if ctx.Err() != nil {
		t.Fatalf("agent still running after %v:\n%s", limit, out.String())
	}
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatal(err)
	}
	return out.String(), cmd.ProcessState.ExitCode()
}
