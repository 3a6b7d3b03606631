package cli

import (
	"flag"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestHelp: `help`, `help GROUP`, `GROUP --help`, `help COMMAND` and
// `COMMAND --help` print to stdout, exit 0, name every flag the command
// takes, and touch no database.
func TestHelp(t *testing.T) {
	db := filepath.Join(t.TempDir(), "p.db")
	for _, args := range [][]string{{"help"}, {"--help"}, {"-h"}} {
		r := run(t, db, "", args...)
		if r.code != 0 || r.err != "" || !strings.HasPrefix(r.out, "usage: configsrv [--db PATH] COMMAND ...\n") {
			t.Fatalf("configsrv %s: exit %d, stderr %q, stdout:\n%s", args, r.code, r.err, r.out)
		}
		for _, want := range []string{"  serve (--dir DIR", "  node show (--default | ID)", "  node set (--default | ID) KEY VALUE",
			"  torrc resolve --relay NAME", "  keys drop NODE_ID --yes", "  audit ", "--db PATH", "Exit status: 0 done, 1 failed, 2 usage error"} {
			if !strings.Contains(r.out, want) {
				t.Errorf("configsrv %s lacks %q:\n%s", args, want, r.out)
			}
		}
	}
	serve := ok(t, db, "serve", "--help")
	if ok(t, db, "help", "serve") != serve {
		t.Error("help serve and serve --help differ")
	}
	for _, f := range []string{"dir DIR", "listen ADDR", "tls-cert FILE", "tls-key FILE", "biscuit-key FILE", "token-ttl DURATION",
		"ek-ca DIR", "ek-allowlist FILE", "attest-rate N", "attest-burst N", "max-pending N", "max-challenges N", "pending-expiry DURATION",
		"enroll-interval DURATION", "enroll-burst N", "node-rate N", "node-burst N"} {
		if !strings.Contains(serve, "  --"+f) {
			t.Errorf("serve --help lacks --%s:\n%s", f, serve)
		}
	}
	node := ok(t, db, "help", "node")
	if ok(t, db, "node", "--help") != node || ok(t, db, "node", "-h") != node {
		t.Error("help node and node --help differ")
	}
	for _, c := range commands {
		if !strings.HasPrefix(c.Words, "node ") {
			if strings.Contains(node, "usage: configsrv "+c.Words+" ") {
				t.Errorf("help node shows %s", c.Words)
			}
			continue
		}
		if !strings.Contains(node, "usage: configsrv "+c.Words+" ") {
			t.Errorf("help node lacks %s:\n%s", c.Words, node)
		}
	}
	if !strings.Contains(node, "KEY is one of dns,") {
		t.Errorf("help node does not list the setting keys:\n%s", node)
	}
	for _, c := range commands {
		words := strings.Fields(c.Words)
		out := ok(t, db, append(words, "--help")...)
		if !strings.HasPrefix(out, "usage: configsrv "+c.Words) || ok(t, db, append([]string{"help"}, words...)...) != out {
			t.Errorf("%s --help:\n%s", c.Words, out)
		}
		fs := flag.NewFlagSet(c.Words, flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		c.Run(&env{}, fs, []string{"-help"})
		fs.VisitAll(func(f *flag.Flag) {
			if !strings.Contains(out, "  --"+f.Name+" ") && !strings.Contains(out, "  --"+f.Name+"\t") &&
				!strings.Contains(out, "  --"+f.Name+"  ") {
				t.Errorf("%s --help does not list --%s:\n%s", c.Words, f.Name, out)
			}
		})
	}
	if _, err := os.Stat(db); err == nil {
		t.Error("asking for help created the database")
	}
}

// TestUsageErrors: a command line that fits no command exits 2 and prints
// the usage nearest to what was typed; a command that fails exits 1.
func TestUsageErrors(t *testing.T) {
	db := filepath.Join(t.TempDir(), "p.db")
	for _, tc := range []struct {
		args       []string
		want, not  string // on stderr; not: a usage line that must be absent
		nearUsages []string
	}{
		{nil, "no command", "", []string{"  init --dir DIR", "  audit"}},
		{[]string{"frobnicate"}, "unknown command frobnicate", "", []string{"  node list", "  pool add"}},
		{[]string{"nod", "list"}, `unknown command nod (did you mean "node"?)`, "pool add", []string{"  node list", "  node show (--default | ID)"}},
		{[]string{"node", "lst"}, `unknown command node lst (did you mean "node list"?)`, "node show", []string{"  node list"}},
		{[]string{"node", "frob"}, "unknown command node frob", "pool add", []string{"  node list", "  node unset (--default | ID) KEY"}},
		{[]string{"node"}, "node needs a subcommand", "pool add", []string{"  node enable ID"}},
		{[]string{"help", "frob"}, "unknown command frob", "", []string{"  node list"}},
		{[]string{"help", "node", "frob"}, "unknown command node frob", "pool add", []string{"  node ban ID"}},
		{[]string{"--nope", "node", "list"}, "flag provided but not defined: -nope", "", []string{"  node list"}},
		{[]string{"node", "list", "extra"}, "configsrv node list: takes 0 argument(s), got 1", "pool add", []string{"usage: configsrv node list [--json]", "--json  JSON output"}},
		{[]string{"node", "list", "--nope"}, "node list: flag provided but not defined: -nope", "", []string{"usage: configsrv node list [--json]"}},
		{[]string{"audit", "--limit", "many"}, `invalid value "many" for flag -limit`, "", []string{"usage: configsrv audit [--json] [--limit N]"}},
		{[]string{"serve", "--listen", "127.0.0.1:0"}, "serve needs --dir DIR", "", []string{"--tls-cert FILE"}},
		{[]string{"torrc", "show"}, "give exactly one of --default, --node ID, --relay NAME", "", []string{"usage: configsrv torrc show"}},
	} {
		r := run(t, db, "", tc.args...)
		if r.code != 2 || r.out != "" || !strings.Contains(r.err, tc.want) || tc.not != "" && strings.Contains(r.err, tc.not) {
			t.Errorf("configsrv %q: exit %d, stdout %q, stderr:\n%s\nwant exit 2 and %q", tc.args, r.code, r.out, r.err, tc.want)
			continue
		}
		for _, u := range tc.nearUsages {
			if !strings.Contains(r.err, u) {
				t.Errorf("configsrv %q: stderr lacks the usage %q:\n%s", tc.args, u, r.err)
			}
		}
	}
	if _, err := os.Stat(db); err == nil {
		t.Error("a usage error created the database")
	}
	// Failures exit 1 and print no usage.
	fails(t, db, "no such file", "node", "show", "1")
	if r := run(t, db, "", "node", "show", "1"); strings.Contains(r.err, "usage:") {
		t.Errorf("a failure printed the usage:\n%s", r.err)
	}
}
