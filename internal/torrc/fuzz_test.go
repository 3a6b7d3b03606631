package torrc

import (
	"bytes"
	"errors"
	"slices"
	"testing"
)

// The corpus in testdata/fuzz holds the tricky cases (continuations,
// comments inside them, quotes, CRLF, bad bytes); these add the basics.
var fuzzSeeds = []string{
	"",
	"ContactInfo ops@example.org\nExitRelay 1\nExitPolicy accept *:443\n",
	"+ExitPolicy reject *:*\n/ContactInfo\n",
	"ExitPolicy accept *:80,\\\n# c\n reject *:*\n",
	"ContactInfo \"a # b \\x41\"  # c\n",
}

// sameLines compares what Render keeps: op, key, value.
func sameLines(a, b *Config) bool {
	return slices.EqualFunc(a.Lines, b.Lines, func(x, y Line) bool {
		return x.Op == y.Op && x.Key == y.Key && x.Value == y.Value
	})
}

// checkParse is the property every input must have: Parse either refuses it
// with a line number inside the input, or accepts it and Render is a fixed
// point that reads back as the same lines.
func checkParse(t *testing.T, src []byte) *Config {
	c, err := Parse(src)
	if _, uerr := ParseUser(src); err != nil && uerr == nil {
		t.Fatalf("ParseUser accepts what Parse refuses: %q", src)
	}
	if err != nil {
		var pe *ParseError
		if !errors.As(err, &pe) {
			t.Fatalf("error %v is not a *ParseError", err)
		}
		if pe.Line < 1 || pe.Line > bytes.Count(src, []byte{'\n'})+1 {
			t.Fatalf("error %v names a line outside the input (%d lines)", err, bytes.Count(src, []byte{'\n'})+1)
		}
		return nil
	}
	r := c.Render()
	c2, err := Parse(r)
	if err != nil {
		t.Fatalf("Parse(Render(Parse(%q))) = %v\nrendered:\n%s", src, err, r)
	}
	if r2 := c2.Render(); !bytes.Equal(r, r2) {
		t.Fatalf("Render is not a fixed point for %q:\n%q\n%q", src, r, r2)
	}
	if !sameLines(c, c2) {
		t.Fatalf("Render(Parse(%q)) reads back as other lines:\n%v\n%v", src, c.Lines, c2.Lines)
	}
	return c
}

func FuzzParse(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, src []byte) { checkParse(t, src) })
}

// Merging accepted levels gives a resolved torrc: it reads back, resolving
// it again changes nothing, and its explanation reads as the same torrc.
func FuzzMerge(f *testing.F) {
	f.Add([]byte("ExitPolicy accept *:80\nContactInfo a\n"), []byte("+ExitPolicy reject *:*\n"), []byte("/ContactInfo\nContactInfo b\n"))
	f.Add([]byte("HiddenServiceDir /a\nHiddenServicePort 80\n"), []byte("+HiddenServicePort 81\nNumCPUs 1\n"), []byte("/HiddenServiceDir\n"))
	f.Add([]byte("MaxConn 1\n"), []byte("connlimit 2\n"), []byte("+ConnLimit 3\n"))
	f.Fuzz(func(t *testing.T, a, b, c []byte) {
		var lv []Level
		for i, src := range [][]byte{a, b, c} {
			cfg := checkParse(t, src)
			if cfg == nil {
				return
			}
			lv = append(lv, Level{[]string{"global", "node", "relay"}[i], cfg})
		}
		m := Merge(lv...)
		for _, l := range m.Lines {
			if l.Op != OpSet || l.Level == "" {
				t.Fatalf("unresolved line in Merge result: %+v", l)
			}
		}
		r := m.Render()
		back := checkParse(t, r)
		if back == nil {
			t.Fatalf("merged torrc does not parse:\n%s", r)
		}
		if again := Merge(Level{"x", back}).Render(); !bytes.Equal(again, r) {
			t.Fatalf("resolving a merged torrc changed it:\n%s\n---\n%s", r, again)
		}
		e, err := Parse(m.Explain())
		if err != nil || !bytes.Equal(e.Render(), r) {
			t.Fatalf("Explain does not read as Render (%v):\n%s", err, m.Explain())
		}
		if NeedsRestart(m, back) {
			t.Fatalf("NeedsRestart between a torrc and its own rendering")
		}
	})
}
