package torrc

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"patela/internal/testutil"
)

// torBinary finds the tor these tests check against. Without it they cannot
// say anything; under CI its absence is a failure, not a skip.
func torBinary(t testing.TB) string {
	t.Helper()
	return testutil.RequireTool(t, "tor", "apt-get install tor")
}

// runTor runs tor on a torrc file with empty defaults, never as a service
// and never with the network (the callers' configs carry DisableNetwork 1).
func runTor(t testing.TB, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, torBinary(t), args...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	return o.String(), e.String(), err
}

// writeFile writes text into a file in dir and returns its path.
func writeFile(t testing.TB, dir, name string, text []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, text, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// baseLevel is the test harness's own level, as the agent adds its own:
// a private DataDirectory and no network.
func baseLevel(t testing.TB) (Level, string) {
	t.Helper()
	dir := t.TempDir()
	c, err := Parse([]byte("DataDirectory " + dir + "\nDisableNetwork 1\n"))
	if err != nil {
		t.Fatal(err)
	}
	return Level{"test", c}, dir
}

// verifyConfig runs `tor --verify-config` on text and fails the test with
// tor's own complaint when tor refuses it.
func verifyConfig(t testing.TB, dir string, text []byte) {
	t.Helper()
	p := writeFile(t, dir, "torrc", text)
	out, _, err := runTor(t, "--defaults-torrc", "/dev/null", "-f", p, "--verify-config")
	if err != nil || !strings.Contains(out, "Configuration was valid") {
		t.Fatalf("tor --verify-config refused:\n%s\n--- tor said:\n%s(%v)", text, out, err)
	}
}

// dumpConfig returns `tor --dump-config full` for the given layers: a
// defaults torrc, a torrc, and command-line options, which tor layers with
// the same "+"/"/" rules Merge implements.
func dumpConfig(t testing.TB, dir string, defaults, torrc []byte, cmdline ...string) string {
	t.Helper()
	d := writeFile(t, dir, "defaults", defaults)
	f := writeFile(t, dir, "main", torrc)
	args := append([]string{"--defaults-torrc", d, "-f", f, "--dump-config", "full"}, cmdline...)
	out, stderr, err := runTor(t, args...)
	if err != nil {
		t.Fatalf("tor %q: %v\n%s", args, err, stderr)
	}
	return out
}

// cmdline turns a config into tor command-line options: --Option value,
// +Option value, /Option. The command line takes values undecoded.
func cmdline(c *Config) []string {
	var args []string
	for _, l := range c.Lines {
		switch l.Op {
		case OpSet:
			args = append(args, "--"+l.Key, unquote(l.Value))
		case OpAppend:
			args = append(args, "+"+l.Key, unquote(l.Value))
		case OpRemove:
			args = append(args, "/"+l.Key)
		}
	}
	return args
}

// unquote decodes a quoted value as tor does; other values are returned as
// they are.
func unquote(v string) string {
	if !strings.HasPrefix(v, `"`) {
		return v
	}
	var b strings.Builder
	for i := 1; i < len(v)-1; i++ {
		if v[i] != '\\' {
			b.WriteByte(v[i])
			continue
		}
		i++
		switch c := v[i]; c {
		case 'n':
			b.WriteByte('\n')
		case 'r':
			b.WriteByte('\r')
		case 't':
			b.WriteByte('\t')
		case 'x', 'X':
			n, _ := strconv.ParseUint(v[i+1:i+3], 16, 8)
			b.WriteByte(byte(n))
			i += 2
		case '0', '1', '2', '3', '4', '5', '6', '7':
			j := i
			for j < i+3 && v[j] >= '0' && v[j] <= '7' {
				j++
			}
			n, _ := strconv.ParseUint(v[i:j], 8, 8)
			b.WriteByte(byte(n))
			i = j - 1
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

// The generated table is exactly what the installed tor lists; a new tor
// means `go generate ./internal/torrc`.
func TestTableMatchesInstalledTor(t *testing.T) {
	out, _, err := runTor(t, "--list-torrc-options")
	if err != nil {
		t.Fatal(err)
	}
	var public []string
	internal := 0
	for _, n := range strings.Fields(out) {
		if strings.HasPrefix(n, "__") {
			internal++
			if _, ok := Canonical(n); ok {
				t.Errorf("internal option %s accepted", n)
			}
			continue
		}
		public = append(public, n)
		if c, ok := Canonical(n); !ok || c != n {
			t.Errorf("tor lists %s; table gives %q, %v", n, c, ok)
		}
	}
	if len(public) != len(torOptions) {
		t.Errorf("tor lists %d public options, table has %d: run go generate", len(public), len(torOptions))
	}
	if internal == 0 {
		t.Errorf("tor listed no internal options; the listing format changed")
	}
	v, _, err := runTor(t, "--version")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(v, "Tor version "+TorVersion+".") {
		// Same options, other release: the table still holds.
		t.Logf("table is from tor %s; installed: %s", TorVersion, strings.SplitN(v, "\n", 2)[0])
	}
}

// dumpValues picks an option's values out of a --dump-config listing,
// decoded as tor escapes them.
func dumpValues(dump, key string) []string {
	var v []string
	for _, l := range strings.Split(dump, "\n") {
		k, val, _ := strings.Cut(l, " ")
		if k == key {
			v = append(v, strings.TrimSpace(unquote(val)))
		}
	}
	return v
}

// Parse reads tricky text the way tor does: tor's own --dump-config of the
// same file gives the same values.
func TestParseAgreesWithTor(t *testing.T) {
	base, dir := baseLevel(t)
	for _, tc := range []struct {
		name, src string
		keys      []string
	}{
		{"trailing comment", "ContactInfo a b   # c\nExitPolicy accept *:80#x\n", []string{"ContactInfo", "ExitPolicy"}},
		{"tabs and CRLF", "ContactInfo\t\tx\ty\r\nNumCPUs 2\r\n", []string{"ContactInfo", "NumCPUs"}},
		{"continuation with comment lines",
			"ExitPolicy accept *:80,\\\n# web\n  accept *:443,\\\n   # tls\n  reject *:*\n", []string{"ExitPolicy"}},
		{"comment continues a continued value", "ContactInfo a \\\nb # note\nc\nNumCPUs 3\n", []string{"ContactInfo", "NumCPUs"}},
		{"continuation after the name", "ContactInfo\\\nx y\n", []string{"ContactInfo"}},
		{"backslashes inside", `ContactInfo a\b\\c` + "\n", []string{"ContactInfo"}},
		{"quoted", `ContactInfo "a # b \x41\102 \"q\" \\ x"  # c` + "\n", []string{"ContactInfo"}},
		{"alias", "MaxConn 4096\nNumCPU 1\n", []string{"ConnLimit", "NumCPUs"}},
		{"clear inside one file", "ExitPolicy accept *:80\n/ExitPolicy\nExitPolicy accept *:443\n+ExitPolicy reject *:*\n", []string{"ExitPolicy"}},
		{"UTF-8", "ContactInfo Zoë ✓ <zoe@example.org>\n", []string{"ContactInfo"}},
		{"single-valued option repeated", "ContactInfo first\nContactInfo second\n", []string{"ContactInfo"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse([]byte(tc.src))
			if err != nil {
				t.Fatal(err)
			}
			dump := dumpConfig(t, dir, nil, []byte(tc.src), cmdline(base.Config)...)
			for _, k := range tc.keys {
				var ours []string
				for _, v := range c.Values(k) {
					ours = append(ours, unquote(v))
				}
				theirs := dumpValues(dump, k)
				if len(theirs) == 1 && len(ours) > 1 && k == "ContactInfo" {
					ours = ours[len(ours)-1:] // tor keeps the last of a single-valued option
				}
				if strings.Join(ours, "\n") != strings.Join(theirs, "\n") {
					t.Errorf("%s: Parse gives %q, tor %q\nsource:\n%s", k, ours, theirs, tc.src)
				}
			}
			// And tor reads our rendering the same way.
			again := dumpConfig(t, dir, nil, c.Render(), cmdline(base.Config)...)
			if again != dump {
				t.Errorf("tor reads Render() differently from the source:\n%s\nvs\n%s", again, dump)
			}
		})
	}
}
