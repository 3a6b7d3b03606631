package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"patela/internal/testutil"
	"patela/stimage/stboot"
)

// captureStdout runs f with stdout sent to a pipe and returns what it
// printed.
func captureStdout(t *testing.T, f func()) string {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	old := os.Stdout
	os.Stdout = w
	done := make(chan string)
	go func() {
		var sb strings.Builder
		buf := make([]byte, 64<<10)
		for {
			n, err := r.Read(buf)
			sb.Write(buf[:n])
			if err != nil {
				break
			}
		}
		done <- sb.String()
	}()
	f()
	os.Stdout = old
	w.Close()
	return <-done
}

// TestOSPkgPcrs: a signed package and its trust policy give the PCR 12
// and 13 stboot.PCR12/PCR13 compute from the files; an unsigned package
// (stboot would not boot it) and a policy without HTTPS roots are refused.
func TestOSPkgPcrs(t *testing.T) {
	d := t.TempDir()
	p := func(n string) string { return filepath.Join(d, n) }
	write(t, p("vmlinuz"), "kernel bytes")
	write(t, p("initramfs.cpio.gz"), "initramfs bytes")
	stimage(t, "keygen", "certificate", "--is-ca", "--valid-until", "2099-01-01T00:00:00Z", "--cert-out", p("root.pem"), "--key-out", p("root.key"))
	stimage(t, "ospkg", "create", "--out", p("os"), "--url", "https://example.org/os.zip", "--kernel", p("vmlinuz"), "--initramfs", p("initramfs.cpio.gz"))
	pol := p("trust")
	os.Mkdir(pol, 0o755)
	write(t, filepath.Join(pol, "trust_policy.json"), "{\n  \"ospkg_signature_threshold\": 1,\n  \"ospkg_fetch_method\": \"network\"\n}\n")
	os.WriteFile(filepath.Join(pol, "ospkg_signing_root.pem"), read(t, p("root.pem")), 0o644)
	stimageFails(t, "ospkg", "pcrs", "--ospkg", p("os"), "--trust-policy", pol) // unsigned
	stimage(t, "ospkg", "sign", "--key", p("root.key"), "--cert", p("root.pem"), "--ospkg", p("os"))
	stimageFails(t, "ospkg", "pcrs", "--ospkg", p("os"), "--trust-policy", pol) // no tls_roots.pem
	os.WriteFile(filepath.Join(pol, TLSRootsFile), read(t, p("root.pem")), 0o644)
	out := captureStdout(t, func() { stimage(t, "ospkg", "pcrs", "--json", "--ospkg", p("os"), "--trust-policy", pol) })
	var res pcrsJSON
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("%v in %q", err, out)
	}
	want12 := stboot.PCR12(read(t, p("os.zip")), read(t, p("os.json")))
	if res.PCRs["12"] != want12.String() || len(res.PCRs["13"]) != 64 {
		t.Errorf("pcrs %v, want PCR 12 %s", res.PCRs, want12)
	}
	// Whitespace in trust_policy.json does not matter (stboot marshals it).
	write(t, filepath.Join(pol, "trust_policy.json"), `{"ospkg_fetch_method":"network","ospkg_signature_threshold":1}`)
	out2 := captureStdout(t, func() { stimage(t, "ospkg", "pcrs", "--json", "--ospkg", p("os"), "--trust-policy", pol) })
	var res2 pcrsJSON
	json.Unmarshal([]byte(out2), &res2)
	if res2.PCRs["13"] != res.PCRs["13"] {
		t.Errorf("PCR 13 depends on the trust policy's formatting: %s vs %s", res.PCRs["13"], res2.PCRs["13"])
	}
}

// TestUKICommands: uki create writes a UKI whose uki pcrs JSON is
// complete; bad input writes nothing.
func TestUKICommands(t *testing.T) {
	testutil.RequireTool(t, "objcopy", "apt-get install binutils")
	k := "../build/kernel/vmlinuz"
	if _, err := os.Stat(k); err != nil {
		testutil.SkipOrFail(t, "no kernel in build/kernel (just kernel)")
	}
	if _, err := os.Stat("/usr/lib/systemd/boot/efi/linuxx64.efi.stub"); err != nil {
		testutil.SkipOrFail(t, "systemd-stub missing (apt-get install systemd-boot-efi)")
	}
	d := t.TempDir()
	p := func(n string) string { return filepath.Join(d, n) }
	write(t, p("initrd"), "initrd")
	write(t, p("os-release"), "ID=patela\n")
	stimageFails(t, "uki", "create", "--kernel", p("initrd"), "--initramfs", p("initrd"), "--os-release", p("os-release"), "--out", p("bad.efi"))
	if _, err := os.Stat(p("bad.efi")); err == nil {
		t.Error("a refused uki create left its output")
	}
	stimage(t, "uki", "create", "--kernel", k, "--initramfs", p("initrd"), "--cmdline", "console=ttyS0", "--os-release", p("os-release"), "--out", p("u.efi"))
	out := captureStdout(t, func() { stimage(t, "uki", "pcrs", p("u.efi"), "--json", "--boot", "direct") })
	var res pcrsJSON
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("%v in %q", err, out)
	}
	for _, n := range []string{"4", "11", "12"} {
		if len(res.PCRs[n]) != 64 {
			t.Errorf("PCR %s missing: %v", n, res.PCRs)
		}
	}
	if res.Boot != "direct" || len(res.Artifacts["uki"]) != 64 {
		t.Errorf("boot %q artifacts %v", res.Boot, res.Artifacts)
	}
	stimageFails(t, "uki", "pcrs", p("initrd"))
	stimageFails(t, "uki", "pcrs", "--boot", "pxe", p("u.efi"))
}
