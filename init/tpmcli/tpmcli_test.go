package tpmcli

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"patela/init/tpmdev"
	"patela/init/tpmkeys"
	"patela/init/vault"
	"patela/internal/swtpmtest"
)

func run(args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	code := Run(args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestEK(t *testing.T) {
	tp := swtpmtest.Start(t)
	code, out, errs := run("tpm", "--tpm", "unix:"+tp.Socket, "ek")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	dev, _ := tpmdev.Open("unix:" + tp.Socket)
	defer dev.Close()
	k, err := tpmkeys.EK(dev, tpm2.TPMAlgECC)
	if err != nil {
		t.Fatal(err)
	}
	k.Close(dev)
	id, err := tpmkeys.Identity(k.Public)
	if err != nil || strings.TrimSpace(out) != id.String() {
		t.Fatalf("ek printed %q", out)
	}
	// The flag may follow the command; --rsa names the other EK.
	_, rsaOut, _ := run("ek", "--rsa", "--tpm", "unix:"+tp.Socket)
	if len(strings.TrimSpace(rsaOut)) != 64 || rsaOut == out {
		t.Fatalf("rsa ek printed %q", rsaOut)
	}
}

func TestInfoAndClearVault(t *testing.T) {
	tp := swtpmtest.Start(t)
	spec := "unix:" + tp.Socket
	code, out, errs := run("--tpm", spec, "info")
	if code != 0 || !strings.Contains(out, "vault           none") || !strings.Contains(out, "AK              none") {
		t.Fatalf("fresh TPM: exit %d\n%s%s", code, out, errs)
	}
	if !strings.Contains(out, "manufacturer    IBM") || !strings.Contains(out, "NV_INDEX_MAX 2048") {
		t.Fatalf("fresh TPM info:\n%s", out)
	}

	dev, err := tpmdev.Open(spec)
	if err != nil {
		t.Fatal(err)
	}
	ek, _ := tpmkeys.EK(dev, tpm2.TPMAlgECC)
	ek.Close(dev)
	if _, err := vault.Open(context.Background(), dev, vault.Options{EKName: ek.Name.Buffer, PCRs: []int{7}}); err != nil {
		t.Fatal(err)
	}
	dev.Close()
	_, out, _ = run("--tpm", spec, "info")
	if !strings.Contains(out, "PCRs [7 15], lock PCR 15") || !strings.Contains(out, "none saved yet") ||
		!strings.Contains(out, "counter         no rollback counter") {
		t.Fatalf("info with a vault:\n%s", out)
	}
	t.Logf("tpm info:\n%s", out)

	code, out, errs = run("--tpm", spec, "clear-vault")
	if code != 2 || !strings.Contains(errs, "--yes") {
		t.Fatalf("clear-vault without --yes: exit %d %q", code, errs)
	}
	if _, out, _ = run("--tpm", spec, "info"); !strings.Contains(out, "sealed key at") {
		t.Fatal("clear-vault without --yes changed the TPM")
	}
	if code, out, errs = run("--tpm", spec, "clear-vault", "--yes"); code != 0 || !strings.Contains(out, "vault cleared") {
		t.Fatalf("clear-vault --yes: exit %d %s%s", code, out, errs)
	}
	if _, out, _ = run("--tpm", spec, "info"); !strings.Contains(out, "vault           none") || !strings.Contains(out, "vault uses 0 indices") {
		t.Fatalf("after clear:\n%s", out)
	}
	if _, out, _ = run("--tpm", spec, "clear-vault", "--yes"); !strings.Contains(out, "nothing cleared") {
		t.Fatalf("second clear: %s", out)
	}
}

func TestBadUsage(t *testing.T) {
	for _, args := range [][]string{nil, {"tpm"}, {"frobnicate"}, {"info", "extra"}, {"--nope"}} {
		if code, _, _ := run(args...); code != 2 {
			t.Errorf("%q: exit %d, want 2", args, code)
		}
	}
	if code, _, errs := run("--tpm", "unix:/nonexistent", "info"); code != 1 || errs == "" {
		t.Errorf("missing device: exit %d %q", code, errs)
	}
	for _, tc := range []struct{ args, want string }{
		{"ek --rsa --ecc", "--rsa and --ecc exclude each other"},
		{"clear-vault --yes extra", "takes 0 argument(s), got 1"},
		{"inf", `unknown command inf (did you mean "info"?)`},
		{"", "init tpm: no command"},
	} {
		code, out, errs := run(strings.Fields(tc.args)...)
		if code != 2 || out != "" || !strings.Contains(errs, tc.want) || !strings.Contains(errs, "usage: init tpm") && !strings.Contains(errs, "commands:") {
			t.Errorf("tpm %s: exit %d, stdout %q, stderr:\n%s\nwant exit 2 and %q", tc.args, code, out, errs, tc.want)
		}
	}
}

// TestHelp: help exits 0 on stdout and names every flag, without opening
// a TPM.
func TestHelp(t *testing.T) {
	for _, tc := range []struct {
		args string
		want []string
	}{
		{"help", []string{"usage: init tpm [--tpm DEVICE] COMMAND", "  info ", "  ek ", "  clear-vault --yes ", "--tpm DEVICE", "Exit status: 0 done, 1 failed, 2 usage error"}},
		{"--help", []string{"usage: init tpm [--tpm DEVICE] COMMAND"}},
		{"info --help", []string{"usage: init tpm info [--ecc] [--rsa] [--tpm DEVICE]", "--ecc ", "--rsa ", "--tpm DEVICE "}},
		{"help ek", []string{"usage: init tpm ek [--ecc] [--rsa] [--tpm DEVICE]"}},
		{"clear-vault --help", []string{"usage: init tpm clear-vault --yes [--tpm DEVICE]", "--yes ", "--tpm DEVICE "}},
	} {
		code, out, errs := run(append([]string{"--tpm", "unix:/nonexistent"}, strings.Fields(tc.args)...)...)
		for _, w := range tc.want {
			if code != 0 || errs != "" || !strings.Contains(out, w) {
				t.Errorf("tpm %s: exit %d, stderr %q, lacks %q:\n%s", tc.args, code, errs, w, out)
			}
		}
	}
	if code, out, _ := run("tpm", "--help"); code != 0 || !strings.HasPrefix(out, "usage: init tpm [--tpm DEVICE] COMMAND") {
		t.Errorf("tpm --help: exit %d\n%s", code, out)
	}
}
