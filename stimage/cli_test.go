package main

import (
	"bytes"
	"flag"
	"io"
	"path/filepath"
	"strings"
	"testing"
)

func runOut(args ...string) (code int, stdout, stderr string) {
	var out, errb bytes.Buffer
	code = program.Main(&env{out: &out}, args, &out, &errb)
	return code, out.String(), errb.String()
}

// TestHelpAndExitCodes: help exits 0 on stdout and lists every flag
// (stmgr's spellings with the flag they alias); a command line that fits
// no command exits 2 with the nearest usage; a command that fails exits 1.
func TestHelpAndExitCodes(t *testing.T) {
	code, out, _ := runOut("help")
	for _, w := range []string{"keygen certificate", "ospkg create --out NAME", "ospkg sign", "ospkg verify", "ospkg extract",
		"ospkg pcrs", "uki create", "uki pcrs UKI", "keygen policy-key", "release create --name NAME", "release approve --key FILE --release FILE",
		"trustpolicy check (JSON | FILE)", "hostconfig check"} {
		if code != 0 || !strings.Contains(out, "  "+w) {
			t.Errorf("help: exit %d, lacks %q:\n%s", code, w, out)
		}
	}
	for _, c := range program.Commands {
		code, out, errs := runOut(append(strings.Fields(c.Words), "--help")...)
		if code != 0 || errs != "" || !strings.HasPrefix(out, "usage: stimage "+c.Words) {
			t.Errorf("%s --help: exit %d %q\n%s", c.Words, code, errs, out)
		}
		fs := flag.NewFlagSet(c.Words, flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		c.Run(&env{out: io.Discard}, fs, []string{"-help"})
		fs.VisitAll(func(f *flag.Flag) {
			name := "--" + f.Name
			if strings.HasPrefix(f.Usage, "alias of --") {
				name = ", -" + f.Name
			}
			if !strings.Contains(out, name+" ") && !strings.Contains(out, name+",") && !strings.Contains(out, name+"\n") {
				t.Errorf("%s --help does not list %s:\n%s", c.Words, name, out)
			}
		})
	}
	if _, out, _ := runOut("keygen", "certificate", "--help"); !strings.Contains(out, "--is-ca, -isCA ") || !strings.Contains(out, "--root-key, -rootKey FILE") {
		t.Errorf("keygen certificate --help:\n%s", out)
	}

	d := t.TempDir()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "stimage: no command"},
		{[]string{"frobnicate"}, "unknown command frobnicate"},
		{[]string{"ospkg"}, "ospkg needs a subcommand"},
		{[]string{"ospkg", "sgn"}, `did you mean "ospkg sign"?`},
		{[]string{"ospkg", "sign"}, "--key and --cert are required\nusage: stimage ospkg sign --key FILE"},
		{[]string{"ospkg", "sign", "--key", "k", "--cert", "c"}, "--ospkg is required"},
		{[]string{"ospkg", "sign", "--nope"}, "flag provided but not defined: -nope"},
		{[]string{"ospkg", "verify", "--ospkg", "x"}, "give exactly one of --trust-policy and --root-certs"},
		{[]string{"ospkg", "create", "--out", "x", "extra"}, "takes 0 argument(s), got 1"},
		{[]string{"trustpolicy", "check"}, "takes 1 argument(s), got 0"},
		{[]string{"uki", "pcrs"}, "takes 1 argument(s), got 0"},
		{[]string{"keygen", "certificate", "--valid-until", "2030-01-01T00:00:00Z", "extra", "--cert-out", filepath.Join(d, "c.pem")}, "takes 0 argument(s)"},
	} {
		code, out, errs := runOut(tc.args...)
		if code != 2 || out != "" || !strings.Contains(errs, tc.want) || !strings.Contains(errs, "usage: stimage") && !strings.Contains(errs, "commands:") {
			t.Errorf("stimage %q: exit %d, stdout %q, stderr:\n%s\nwant exit 2 and %q", tc.args, code, out, errs, tc.want)
		}
	}
	for _, args := range [][]string{
		{"ospkg", "verify", "--root-certs", filepath.Join(d, "none.pem"), "--ospkg", filepath.Join(d, "none")},
		{"trustpolicy", "check", `{"ospkg_signature_threshold": 0, "ospkg_fetch_method": "network"}`},
		{"hostconfig", "check", filepath.Join(d, "missing.json")},
		{"keygen", "certificate", "--valid-from", "yesterday", "--cert-out", filepath.Join(d, "c.pem")},
	} {
		if code, out, errs := runOut(args...); code != 1 || out != "" || errs == "" || strings.Contains(errs, "usage:") {
			t.Errorf("stimage %q: exit %d, stdout %q, stderr %q; want exit 1, an error and no usage", args, code, out, errs)
		}
	}
	if m, _ := filepath.Glob(filepath.Join(d, "*")); len(m) != 0 {
		t.Errorf("refused commands wrote %v", m)
	}
}
