package e2e

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"patela/e2e/harness"
	"patela/initramfs/ramfs"
	"patela/internal/testutil"
)

// need skips when a component cannot exist here, except under CI.
func need(t *testing.T, what string, ok bool) {
	t.Helper()
	if ok {
		return
	}
	testutil.SkipOrFail(t, what+" missing (scripts/deps.sh, just kernel)")
}

// TestPID1InQEMU boots the agent as /init of a real initramfs under QEMU
// (TCG) with the Debian kernel, in the self-test mode that needs no config
// server (patela.selftest=pid1, see init/main.go): it must mount, load the
// modules in the resolved order, get a DHCP lease from QEMU's user
// network, print its boot timeline, reap an orphan while the orphan's
// parent's status reaches its owner, and power the VM off on the SIGTERM a
// child sends it. QEMU exiting by itself with status 0 is the power-off.
// It boots twice: with RDRAND trusted, and with it distrusted so that the
// kernel RNG must be seeded from a TPM (swtpm).
func TestPID1InQEMU(t *testing.T) {
	_, err := exec.LookPath("qemu-system-x86_64")
	need(t, "qemu-system-x86_64", err == nil)
	kernel, _ := filepath.Abs("../build/kernel/vmlinuz")
	mods, _ := filepath.Glob(filepath.Join(filepath.Dir(kernel), "modules/*"))
	_, kerr := os.Stat(kernel)
	need(t, "build/kernel (just kernel)", kerr == nil && len(mods) == 1)
	need(t, "tor (the initramfs carries it)", fileExists("/usr/bin/tor"))

	dir := t.TempDir()
	cfg := filepath.Join(dir, "agent.json")
	// The self-test asks the server only for the time, when the RTC is
	// wrong (subtest rtc-2000: QEMU forwards 10.0.2.100:443 to a host
	// HTTPS server whose certificate this CA signed).
	os.WriteFile(cfg, []byte(`{"server_url":"https://10.0.2.100","modules":["virtio_pci","virtio_net","nf_tables"],"sealing":"unmeasured"}`), 0o644)
	ca := filepath.Join(dir, "ca.pem")
	caCert, caKey := newCA(t)
	os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caCert.Raw}), 0o644)
	img := filepath.Join(dir, "initramfs.cpio.xz")
	start := time.Now()
	rep, err := ramfs.Build(context.Background(), ramfs.Options{
		AgentConfig: cfg, CA: ca, KernelModulesDir: mods[0], Out: img,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("initramfs built in %v: modules %v\n%s", time.Since(start).Round(time.Millisecond), rep.Modules, rep)

	t.Run("rdrand", func(t *testing.T) {
		console := bootPID1(t, kernel, img, "", slirp, nil)
		checkPID1(t, console, rep.Modules)
		if !strings.Contains(console, `msg="clock ok (RTC)"`) {
			t.Errorf("clock not accepted from the RTC")
		}
		if !regexp.MustCompile(`msg=timeline phase=entropy start=\S+ took=\d+(\.\d+)?(µs|ms) `).MatchString(console) {
			t.Errorf("entropy not ready at once with -cpu max (RDRAND)")
		}
	})
	// Without crediting RDRAND the kernel RNG stays uninitialized under
	// TCG: the agent must seed it from the TPM (TPM2_GetRandom +
	// RNDADDENTROPY) and go on.
	t.Run("tpm-seeded-rng", func(t *testing.T) {
		_, err := exec.LookPath("swtpm")
		need(t, "swtpm", err == nil)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		tpm, err := harness.StartSWTPM(ctx, t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		defer tpm.Stop()
		console := bootPID1(t, kernel, img, "random.trust_cpu=off random.trust_bootloader=off", slirp, tpm.QEMUArgs())
		checkPID1(t, console, rep.Modules)
		if !strings.Contains(console, `msg="kernel RNG seeded" bytes=32`) {
			t.Errorf("kernel RNG not seeded from the TPM")
		}
	})
	// An RTC in 2000 (a dead battery): before the agent's epoch, so the
	// agent sets the clock from the config server's Date header, over TLS
	// verified against its CA without trusting the local clock.
	t.Run("rtc-2000", func(t *testing.T) {
		srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
		srv.TLS = &tls.Config{Certificates: []tls.Certificate{serverCert(t, caCert, caKey, net.IPv4(10, 0, 2, 100))}}
		srv.StartTLS()
		defer srv.Close()
		port := srv.Listener.Addr().(*net.TCPAddr).Port
		netdev := fmt.Sprintf("%s,guestfwd=tcp:10.0.2.100:443-tcp:127.0.0.1:%d", slirp, port)
		console := bootPID1(t, kernel, img, "", netdev, []string{"-rtc", "base=2000-01-01T00:00:00"})
		checkPID1(t, console, rep.Modules)
		m := regexp.MustCompile(`msg="CLOCK SET from the config server's Date header" was=2000-01-01\S* now=(\S+)`).FindStringSubmatch(console)
		if m == nil {
			t.Fatalf("clock not set from the server")
		}
		now, err := time.Parse(time.RFC3339, m[1]) // slog's format for time values
		if err != nil {
			t.Fatalf("clock line %q: %v", m[0], err)
		}
		if d := time.Since(now); d < 0 || d > 5*time.Minute {
			t.Errorf("clock set to %v, host time %v", now, time.Now())
		}
	})
}

// slirp is QEMU user networking that reaches nothing outside.
const slirp = "user,id=n0,restrict=on"

// bootPID1 boots the image in self-test mode and returns the console once
// QEMU has exited by itself with status 0 (the agent powered off).
func bootPID1(t *testing.T, kernel, img, appendArgs, netdev string, extra []string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	args := []string{
		"-machine", "q35", "-accel", "tcg", "-cpu", "max", "-m", "512", "-smp", "1",
		"-nographic", "-no-reboot", "-monitor", "none", "-serial", "stdio",
		"-kernel", kernel, "-initrd", img,
		"-append", "console=ttyS0 panic=-1 quiet patela.selftest=pid1 patela.reboot_delay=1s patela.dhcp_timeout=30s " + appendArgs,
		"-netdev", netdev, "-device", "virtio-net-pci,netdev=n0",
	}
	cmd := exec.CommandContext(ctx, "qemu-system-x86_64", append(args, extra...)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	err := cmd.Run()
	wall := time.Since(start)
	console := strings.ReplaceAll(out.String(), "\r", "")
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("console:\n%s", console)
		}
	})
	if ctx.Err() != nil {
		t.Fatalf("QEMU still running after 120 s: the agent did not power off")
	}
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatal(err)
	}
	if code := cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("QEMU exit status %d, want 0 (power off)", code)
	}
	t.Logf("QEMU ran %v (wall)", wall.Round(time.Millisecond))
	return console
}

// checkPID1 checks the console of a self-test boot.
func checkPID1(t *testing.T, console string, modules []string) {
	t.Helper()
	var loaded []string
	for _, m := range regexp.MustCompile(`msg=module name=(\S+) status=`).FindAllStringSubmatch(console, -1) {
		loaded = append(loaded, m[1])
	}
	if !slices.Equal(loaded, modules) {
		t.Errorf("modules loaded %v, want %v", loaded, modules)
	}
	for _, re := range []string{
		`msg=timeline phase=mount start=\S+ took=\S+`,
		`selftest: every filesystem mounted`,
		`msg=timeline phase=modules `,
		`msg=timeline phase=entropy `,
		// restrict=on: slirp leases an address but names no router or DNS.
		`msg="DHCP lease" interface=eth0 addr=10\.0\.2\.15/24 `,
		`msg=timeline phase=dhcp `,
		`selftest: child exited, status collected by its owner" child=\d+ status=0 orphan=\d+`,
		`selftest: orphan reaped by the agent" pid=\d+ pid1=true`,
		`signal: power off requested" signal=terminated`,
		`msg=halting action="power off"`,
	} {
		if !regexp.MustCompile(re).MatchString(console) {
			t.Errorf("console lacks %s", re)
		}
	}
	if strings.Contains(console, "FATAL") || strings.Contains(console, "Kernel panic") {
		t.Errorf("fatal error on the console")
	}
	var timeline []string
	for _, line := range strings.Split(console, "\n") {
		if strings.Contains(line, "msg=timeline") {
			timeline = append(timeline, line)
		}
	}
	t.Logf("boot timeline:\n%s", strings.Join(timeline, "\n"))
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

func newCA(t *testing.T) (*x509.Certificate, *ecdsa.PrivateKey) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "pid1 test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c, k
}

func serverCert(t *testing.T, ca *x509.Certificate, caKey *ecdsa.PrivateKey, ip net.IP) tls.Certificate {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: ip.String()},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(24 * time.Hour),
		IPAddresses: []net.IP{ip}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		KeyUsage: x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &k.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der, ca.Raw}, PrivateKey: k}
}
