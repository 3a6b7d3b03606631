package uki

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"patela/internal/testutil"
	"patela/stimage/pe"
)

// inputs are a real kernel (the tree's build/kernel, else the host's) and
// small section files.
func inputs(t *testing.T) Options {
	t.Helper()
	testutil.RequireTool(t, "objcopy", "apt-get install binutils")
	if _, err := os.Stat(DefaultStub); err != nil {
		testutil.SkipOrFail(t, "systemd-stub missing (apt-get install systemd-boot-efi): "+err.Error())
	}
	k, err := os.ReadFile("../../build/kernel/vmlinuz")
	if err != nil {
		testutil.SkipOrFail(t, "no kernel in build/kernel (just kernel): "+err.Error())
	}
	return Options{Kernel: k, Initramfs: []byte("not really a cpio, but the stub does not look"),
		Cmdline: "console=ttyS0 panic=10", OSRelease: []byte("ID=patela\nNAME=\"patela relay\"\nVERSION_ID=test\n")}
}

// TestCreateReproducible: two builds a second apart (objcopy stamps the
// time in seconds) are byte-identical, the header is pinned and its
// checksum valid, and the sections hold the inputs.
func TestCreateReproducible(t *testing.T) {
	o := inputs(t)
	ctx := context.Background()
	a, err := Create(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(1100 * time.Millisecond)
	b, err := Create(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a, b) {
		t.Fatal("two builds from the same inputs differ")
	}
	f, err := pe.Parse(a)
	if err != nil {
		t.Fatal(err)
	}
	if f.TimeDateStamp() != 0 || f.CheckSum() != f.ComputeCheckSum() || f.CheckSum() == 0 {
		t.Errorf("header: time stamp %d, checksum %#x, computed %#x", f.TimeDateStamp(), f.CheckSum(), f.ComputeCheckSum())
	}
	for name, want := range map[string][]byte{".linux": o.Kernel, ".initrd": o.Initramfs, ".cmdline": []byte(o.Cmdline), ".osrel": o.OSRelease} {
		got, err := Section(a, name)
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("section %s: %d bytes, want %d (%v)", name, len(got), len(want), err)
		}
	}
	t.Logf("UKI: %d bytes", len(a))
}

// TestPCR11MatchesSystemdMeasure: the prediction equals systemd-measure's
// (Debian's systemd 252, the stub's own project) for the same sections.
func TestPCR11MatchesSystemdMeasure(t *testing.T) {
	o := inputs(t)
	sm := "/usr/lib/systemd/systemd-measure"
	if _, err := os.Stat(sm); err != nil {
		testutil.SkipOrFail(t, "systemd-measure missing (apt-get install systemd): "+err.Error())
	}
	u, err := Create(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	m, err := Measure(u, BootEntry)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("predicting PCR 4, 11, 12 of a %d-byte UKI took %v", len(u), time.Since(start))
	d := t.TempDir()
	files := map[string][]byte{"linux": o.Kernel, "initrd": o.Initramfs, "cmdline": []byte(o.Cmdline), "osrel": o.OSRelease}
	args := []string{"calculate", "--bank=sha256", "--phase=", "--json=short"}
	for n, b := range files {
		p := filepath.Join(d, n)
		os.WriteFile(p, b, 0o644)
		args = append(args, "--"+n+"="+p)
	}
	out, err := exec.Command(sm, args...).Output()
	if err != nil {
		t.Fatalf("systemd-measure: %v", err)
	}
	var res struct {
		SHA256 []struct {
			PCR  int    `json:"pcr"`
			Hash string `json:"hash"`
		} `json:"sha256"`
	}
	if err := json.Unmarshal(out, &res); err != nil || len(res.SHA256) != 1 || res.SHA256[0].PCR != 11 {
		t.Fatalf("systemd-measure printed %s (%v)", out, err)
	}
	if got := m.PCR11.String(); got != res.SHA256[0].Hash {
		t.Errorf("PCR 11: predicted %s, systemd-measure says %s", got, res.SHA256[0].Hash)
	}
	if !m.PCR12.IsZero() {
		t.Error("PCR 12 must be predicted zero")
	}
	// The boot path changes PCR 4 only.
	md, err := Measure(u, BootDirect)
	if err != nil {
		t.Fatal(err)
	}
	if md.PCR4 == m.PCR4 || md.PCR11 != m.PCR11 {
		t.Error("direct and entry boots: want different PCR 4, equal PCR 11")
	}
	// One byte of initrd changes PCR 4 and 11.
	o.Initramfs = append(o.Initramfs, 0)
	u2, err := Create(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	m2, _ := Measure(u2, BootEntry)
	if m2.PCR4 == m.PCR4 || m2.PCR11 == m.PCR11 {
		t.Error("a changed initrd must change PCR 4 and 11")
	}
}

// TestCreateRefuses bad inputs with a clear error.
func TestCreateRefuses(t *testing.T) {
	o := inputs(t)
	for name, mod := range map[string]func(*Options){
		"no kernel":          func(o *Options) { o.Kernel = nil },
		"kernel not PE":      func(o *Options) { o.Kernel = []byte("ELF?") },
		"empty initramfs":    func(o *Options) { o.Initramfs = nil },
		"newline in cmdline": func(o *Options) { o.Cmdline = "a\nb" },
		"os-release no ID":   func(o *Options) { o.OSRelease = []byte("VERSION=1\n") },
		"os-release garbage": func(o *Options) { o.OSRelease = []byte("hello world\n") },
		"stub is a kernel":   func(o *Options) { o.Stub = "../../build/kernel/vmlinuz" },
	} {
		c := o
		mod(&c)
		if _, err := Create(context.Background(), c); err == nil {
			t.Errorf("%s: accepted", name)
		} else {
			t.Logf("%s: %v", name, err)
		}
	}
	if _, err := Measure([]byte("MZ"), BootEntry); err == nil {
		t.Error("Measure accepted garbage")
	}
	if _, err := ParseBoot("usb"); err == nil {
		t.Error("ParseBoot accepted usb")
	}
}
