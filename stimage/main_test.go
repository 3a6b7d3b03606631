package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"patela/stimage/ospkg"
)

// stimage runs the command in-process and fails the test on error.
func stimage(t *testing.T, args ...string) {
	t.Helper()
	if rc := run(args); rc != 0 {
		t.Fatalf("stimage %s: exit %d", strings.Join(args, " "), rc)
	}
}

// stimageFails runs the command and fails the test if it succeeds.
func stimageFails(t *testing.T, args ...string) {
	t.Helper()
	if rc := run(args); rc == 0 {
		t.Fatalf("stimage %s succeeded, want failure", strings.Join(args, " "))
	}
}

func write(t *testing.T, p, s string) {
	t.Helper()
	if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

func read(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestStmgrFlow is stmgr's own end-to-end flow: root certificate, create,
// sign with the root, a leaf certificate, sign with the leaf, two
// certificates in the descriptor, a threshold-2 trust policy, verify.
func TestStmgrFlow(t *testing.T) {
	d := t.TempDir()
	p := func(n string) string { return filepath.Join(d, n) }
	write(t, p("vmlinuz"), "kernel bytes")
	write(t, p("initramfs.cpio.gz"), "initramfs bytes")

	stimage(t, "keygen", "certificate", "--is-ca", "--cert-out", p("rootcert.pem"), "--key-out", p("rootkey.pem"))
	stimage(t, "ospkg", "create", "--out", p("os"), "--label", "patela test", "--url", "https://example.org/os.zip",
		"--kernel", p("vmlinuz"), "--initramfs", p("initramfs.cpio.gz"), "--cmdline", "console=ttyS0")
	stimage(t, "ospkg", "sign", "--key", p("rootkey.pem"), "--cert", p("rootcert.pem"), "--ospkg", p("os"))
	// stmgr spelling of the flags.
	stimage(t, "keygen", "certificate", "-rootCert", p("rootcert.pem"), "-rootKey", p("rootkey.pem"),
		"-certOut", p("cert.pem"), "-keyOut", p("key.pem"))
	stimage(t, "ospkg", "sign", "--key", p("key.pem"), "--cert", p("cert.pem"), "--ospkg", p("os.json"))

	desc, err := ospkg.ParseDescriptor(read(t, p("os.json")))
	if err != nil {
		t.Fatal(err)
	}
	if len(desc.Certificates) != 2 || len(desc.Signatures) != 2 {
		t.Fatalf("descriptor has %d certificates, %d signatures; want 2, 2", len(desc.Certificates), len(desc.Signatures))
	}
	if !bytes.HasPrefix(read(t, p("os.json")), []byte("{\n  \"version\": 1,\n  \"os_pkg_url\": \"https://example.org/os.zip\",\n  \"certificates\": [\n    \"LS0tLS1CRUdJTi")) {
		t.Errorf("descriptor is not in stmgr's shape:\n%s", read(t, p("os.json")))
	}

	pol := filepath.Join(d, "policy")
	os.Mkdir(pol, 0o755)
	write(t, filepath.Join(pol, "trust_policy.json"), `{"ospkg_signature_threshold": 2, "ospkg_fetch_method": "network"}`)
	write(t, filepath.Join(pol, "ospkg_signing_root.pem"), string(read(t, p("rootcert.pem"))))
	stimage(t, "ospkg", "verify", "--trust-policy", pol, "--ospkg", p("os"))
	stimage(t, "ospkg", "verify", "-rootCerts", p("rootcert.pem"), "-ospkg", p("os.zip"))
	stimage(t, "ospkg", "extract", "--trust-policy", pol, "--ospkg", p("os"), "--out", p("x"))
	if got := string(read(t, p("x/initramfs"))); got != "initramfs bytes" {
		t.Errorf("extracted initramfs %q", got)
	}
	if got := string(read(t, p("x/cmdline"))); got != "console=ttyS0" {
		t.Errorf("extracted cmdline %q", got)
	}

	// The same key cannot sign twice.
	before := read(t, p("os.json"))
	stimageFails(t, "ospkg", "sign", "--key", p("key.pem"), "--cert", p("cert.pem"), "--ospkg", p("os"))
	if !bytes.Equal(before, read(t, p("os.json"))) {
		t.Error("a refused signature changed the descriptor")
	}

	// Threshold 3 cannot be met by two keys.
	write(t, filepath.Join(pol, "trust_policy.json"), `{"ospkg_signature_threshold": 3, "ospkg_fetch_method": "network"}`)
	stimageFails(t, "ospkg", "verify", "--trust-policy", pol, "--ospkg", p("os"))
	write(t, filepath.Join(pol, "trust_policy.json"), `{"ospkg_signature_threshold": 2, "ospkg_fetch_method": "network"}`)

	// One flipped byte in the archive: no signature counts.
	zb := read(t, p("os.zip"))
	i := bytes.Index(zb, []byte("initramfs bytes"))
	zb[i] ^= 1
	if err := os.WriteFile(p("os.zip"), zb, 0o644); err != nil {
		t.Fatal(err)
	}
	stimageFails(t, "ospkg", "verify", "--trust-policy", pol, "--ospkg", p("os"))
	stimageFails(t, "ospkg", "verify", "--root-certs", p("rootcert.pem"), "--ospkg", p("os"))
	stimageFails(t, "ospkg", "extract", "--root-certs", p("rootcert.pem"), "--ospkg", p("os"), "--out", p("y"))
	if _, err := os.Stat(p("y")); err == nil {
		t.Error("extract of a refused package created its output directory")
	}
}

// TestCreateReproducible: the same inputs give the same archive and
// descriptor bytes.
func TestCreateReproducible(t *testing.T) {
	d := t.TempDir()
	p := func(n string) string { return filepath.Join(d, n) }
	write(t, p("vmlinuz"), strings.Repeat("k", 10000))
	write(t, p("initrd"), strings.Repeat("i", 10000))
	args := func(out string) []string {
		return []string{"ospkg", "create", "--out", p(out), "--kernel", p("vmlinuz"), "--initramfs", p("initrd"), "--cmdline", "quiet", "--label", "x"}
	}
	stimage(t, args("a")...)
	time.Sleep(1100 * time.Millisecond) // a timestamp leaking in would now differ
	os.Chtimes(p("vmlinuz"), time.Now(), time.Now())
	stimage(t, args("b")...)
	for _, ext := range []string{".zip", ".json"} {
		if !bytes.Equal(read(t, p("a"+ext)), read(t, p("b"+ext))) {
			t.Errorf("two builds of %s differ", ext)
		}
	}
}

// TestExpiredAndForeign: an expired leaf and a leaf of another root do not
// count; the root's own signature still does.
func TestExpiredAndForeign(t *testing.T) {
	d := t.TempDir()
	p := func(n string) string { return filepath.Join(d, n) }
	write(t, p("k"), "kernel")
	write(t, p("i"), "initramfs")
	stimage(t, "keygen", "certificate", "--is-ca", "--cert-out", p("root.pem"), "--key-out", p("root.key"))
	stimage(t, "keygen", "certificate", "--is-ca", "--cert-out", p("other.pem"), "--key-out", p("other.key"))
	stimage(t, "keygen", "certificate", "--root-cert", p("root.pem"), "--root-key", p("root.key"),
		"--valid-from", "2020-01-01T00:00:00Z", "--valid-until", "2020-02-01T00:00:00Z", "--cert-out", p("old.pem"), "--key-out", p("old.key"))
	stimage(t, "keygen", "certificate", "--root-cert", p("other.pem"), "--root-key", p("other.key"), "--cert-out", p("foreign.pem"), "--key-out", p("foreign.key"))
	stimage(t, "ospkg", "create", "--out", p("os"), "--kernel", p("k"), "--initramfs", p("i"))
	stimage(t, "ospkg", "sign", "--key", p("old.key"), "--cert", p("old.pem"), "--ospkg", p("os"))
	stimage(t, "ospkg", "sign", "--key", p("foreign.key"), "--cert", p("foreign.pem"), "--ospkg", p("os"))
	stimageFails(t, "ospkg", "verify", "--root-certs", p("root.pem"), "--ospkg", p("os"))

	pol := p("pol")
	os.Mkdir(pol, 0o755)
	write(t, filepath.Join(pol, "trust_policy.json"), `{"ospkg_signature_threshold": 1, "ospkg_fetch_method": "initramfs"}`)
	write(t, filepath.Join(pol, "ospkg_signing_root.pem"), string(read(t, p("root.pem"))))
	stimageFails(t, "ospkg", "verify", "--trust-policy", pol, "--ospkg", p("os"))
	stimage(t, "ospkg", "sign", "--key", p("root.key"), "--cert", p("root.pem"), "--ospkg", p("os"))
	stimage(t, "ospkg", "verify", "--trust-policy", pol, "--ospkg", p("os"))

	// A leaf cannot issue certificates, and a key must match its certificate.
	stimageFails(t, "keygen", "certificate", "--root-cert", p("foreign.pem"), "--root-key", p("foreign.key"), "--cert-out", p("x.pem"), "--key-out", p("x.key"))
	stimageFails(t, "ospkg", "sign", "--key", p("other.key"), "--cert", p("root.pem"), "--ospkg", p("os"))
}

func TestChecks(t *testing.T) {
	stimage(t, "trustpolicy", "check", `{"ospkg_signature_threshold": 2, "ospkg_fetch_method": "network"}`)
	stimage(t, "hostconfig", "check", `{"ospkg_pointer": "https://example.org/os.json", "network_mode": "static", "host_ip": "10.0.2.15/24", "gateway": "10.0.2.2", "dns": ["10.0.2.3"], "network_interfaces": [{"interface_name": "eth0", "mac_address": "52:54:00:12:34:56"}], "identity": "legacy"}`)
	for _, bad := range []string{
		`{"ospkg_signature_threshold": 0, "ospkg_fetch_method": "network"}`,
		`{"ospkg_signature_threshold": 1, "ospkg_fetch_method": "carrier-pigeon"}`,
		`{"ospkg_signature_threshold": 1}`,
		`{"ospkg_signature_threshold": 1, "ospkg_fetch_method": "network", "boot_mode": "x"}`,
	} {
		stimageFails(t, "trustpolicy", "check", bad)
	}
	for _, bad := range []string{
		`{"network_mode": "dhcp"}`,
		`{"ospkg_pointer": "x", "network_mode": "static", "gateway": "10.0.2.2"}`,
		`{"ospkg_pointer": "x", "network_mode": "static", "host_ip": "10.0.2.15", "gateway": "10.0.2.2"}`,
		`{"ospkg_pointer": "x", "network_mode": "dhcp", "bonding_mode": "802.3ad"}`,
		`{"ospkg_pointer": "x", "network_mode": "dhcp", "network_interfaces": [{"interface_name": "eth0", "mac_address": "nope"}]}`,
		`{"ospkg_pointer": "x", "network_mode": "wifi"}`,
	} {
		stimageFails(t, "hostconfig", "check", bad)
	}
	stimage(t, "hostconfig", "check", `{"network_mode": "dhcp", "dns": "192.0.2.53", "provisioning_urls": ["https://boot.example.org/os.json"], "version": 1}`)
	stimageFails(t, "hostconfig", "check", `{"network_mode": "dhcp", "ospkg_pointer": "https://boot.example.org/os.json", "network_interfaces": ["eth0"]}`)
	stimageFails(t, "trustpolicy", "check", `{"ospkg_signature_threshold": 1, "ospkg_fetch_method": "network", "decryption_identities": []}`)
	stimageFails(t, "ospkg", "frobnicate")
}

// TestCreateURL: a base URL gets the zip's name (stboot v0.2.2 needs an
// absolute os_pkg_url); a relative one is still written (ST >= 1.1
// resolves it) with a warning; a URL no stboot fetches writes nothing.
func TestCreateURL(t *testing.T) {
	d := t.TempDir()
	p := func(n string) string { return filepath.Join(d, n) }
	write(t, p("k"), "kernel")
	write(t, p("i"), "initramfs")
	for url, want := range map[string]string{
		"https://boot.example.org/os/":              "https://boot.example.org/os/patela-os.zip",
		"https://boot.example.org/os/patela-os.zip": "https://boot.example.org/os/patela-os.zip",
		"patela-os.zip":                             "patela-os.zip",
	} {
		stimage(t, "ospkg", "create", "--out", p("patela-os"), "--kernel", p("k"), "--initramfs", p("i"), "--url", url)
		desc, err := ospkg.ParseDescriptor(read(t, p("patela-os.json")))
		if err != nil || desc.PkgURL != want {
			t.Errorf("--url %s: os_pkg_url %q (%v), want %q", url, desc.PkgURL, err, want)
		}
	}
	stimageFails(t, "ospkg", "create", "--out", p("bad"), "--kernel", p("k"), "--initramfs", p("i"), "--url", "ftp://boot.example.org/os.zip")
	if _, err := os.Stat(p("bad.zip")); err == nil {
		t.Error("a refused create wrote bad.zip")
	}
}
