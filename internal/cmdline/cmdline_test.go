package cmdline

import (
	"bytes"
	"errors"
	"flag"
	"slices"
	"strings"
	"testing"
)

type env struct{ ran []string }

func record(e *env, fs *flag.FlagSet, args []string) error {
	verbose := fs.Bool("verbose", false, "say more")
	fs.BoolVar(verbose, "v", false, aliasPrefix+"verbose")
	out := fs.String("out", "", "write to `FILE`")
	pos, err := Parse(fs, args, 0, 2)
	if err != nil {
		return err
	}
	if slices.Contains(pos, "fail") {
		return errors.New("it failed")
	}
	e.ran = append(e.ran, fs.Name()+" "+strings.Join(pos, ",")+" "+*out)
	return nil
}

var prog = &Program[*env]{Name: "prog", Commands: []Command[*env]{
	{Words: "pkg sign", Args: "[NAME...]", Help: "sign it", Run: record},
	{Words: "pkg verify", Help: "check it", Run: record},
	{Words: "pkg view", Help: "show it", Run: record},
	{Words: "status", Help: "how it is", Run: record},
}}

func runProg(args ...string) (*env, int, string, string) {
	var out, errb bytes.Buffer
	e := &env{}
	code := prog.Main(e, args, &out, &errb)
	return e, code, out.String(), errb.String()
}

func TestProgram(t *testing.T) {
	// Flags anywhere, "--" ends them.
	e, code, _, errs := runProg("pkg", "sign", "a", "--out", "f", "--", "-b")
	if code != ExitOK || len(e.ran) != 1 || e.ran[0] != "pkg sign a,-b f" {
		t.Fatalf("exit %d %q %s", code, e.ran, errs)
	}
	if _, code, _, errs := runProg("pkg", "sign", "fail"); code != ExitFailure || errs != "prog pkg sign: it failed\n" {
		t.Fatalf("failure: exit %d %q", code, errs)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"pkg", "sign", "a", "b", "c"}, "prog pkg sign: takes 0 to 2 arguments, got 3\nusage: prog pkg sign [NAME...] [--out FILE] [--verbose]\n"},
		{[]string{"pkg", "vrfy"}, "prog: unknown command pkg vrfy (did you mean \"pkg verify\"?)\ncommands:\n  pkg verify  check it\n"},
		// One edit from view, three from verify.
		{[]string{"pkg", "vew"}, "(did you mean \"pkg view\"?)"},
		// Too far from every word to guess: the group's usage.
		{[]string{"pkg", "vi"}, "unknown command pkg vi\ncommands:\n  pkg sign [NAME...]"},
		{[]string{"stat"}, "(did you mean \"status\"?)"},
		{[]string{"xyzzy"}, "unknown command xyzzy\ncommands:\n"},
	} {
		e, code, out, errs := runProg(tc.args...)
		if code != ExitUsage || out != "" || len(e.ran) != 0 || !strings.Contains(errs, tc.want) {
			t.Errorf("%q: exit %d, ran %q, stdout %q, stderr:\n%s\nwant %q", tc.args, code, e.ran, out, errs, tc.want)
		}
	}
	_, code, out, _ := runProg("pkg", "sign", "--help")
	want := "usage: prog pkg sign [NAME...] [--out FILE] [--verbose]\n  sign it\n  --out FILE     write to FILE\n  --verbose, -v  say more\n"
	if code != ExitOK || out != want {
		t.Errorf("pkg sign --help: exit %d\n%s\nwant\n%s", code, out, want)
	}
	if _, code, out2, _ := runProg("help", "pkg", "sign"); code != ExitOK || out2 != out {
		t.Errorf("help pkg sign: exit %d\n%s", code, out2)
	}
	if _, code, out, _ := runProg("pkg", "--help"); code != ExitOK || strings.Count(out, "usage: prog pkg ") != 3 || strings.Contains(out, "status") {
		t.Errorf("pkg --help: exit %d\n%s", code, out)
	}
}
