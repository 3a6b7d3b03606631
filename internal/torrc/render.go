package torrc

import (
	"bytes"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Render writes c as torrc text, one option per line in c's order, names in
// tor's spelling and values as written. Parse(Render(c)) gives c back (less
// source line numbers and levels), so rendering is a fixed point.
func (c *Config) Render() []byte {
	n := 0
	for _, l := range c.Lines {
		n += len(l.Key) + len(l.Value) + 3
	}
	var b bytes.Buffer
	b.Grow(n)
	for _, l := range c.Lines {
		writeLine(&b, l)
		b.WriteByte('\n')
	}
	return b.Bytes()
}

// Explain writes c as Render does, with each line followed by a comment
// saying which level and source line it came from; the text is still a
// valid torrc.
func (c *Config) Explain() []byte {
	width := 0
	for _, l := range c.Lines {
		width = max(width, len(l.Op.prefix())+len(l.Key)+1+utf8.RuneCountInString(l.Value))
	}
	width = min(width, 72)
	var b bytes.Buffer
	for _, l := range c.Lines {
		n := b.Len()
		writeLine(&b, l)
		for w := utf8.RuneCount(b.Bytes()[n:]); w < width; w++ {
			b.WriteByte(' ')
		}
		level := l.Level
		if level == "" {
			level = "-"
		}
		fmt.Fprintf(&b, "  # %s, line %d\n", level, l.Line)
	}
	return b.Bytes()
}

func writeLine(b *bytes.Buffer, l Line) {
	b.WriteString(l.Op.prefix())
	b.WriteString(l.Key)
	if l.Op != OpRemove {
		b.WriteByte(' ')
		b.WriteString(l.Value)
	}
}

// ListenPort extracts the port of an ORPort-style value: "9001",
// "192.0.2.10:443 NoAdvertise", "[2001:db8::10]:443"; 0 for "auto", "0"
// or anything else.
func ListenPort(v string) int {
	f := strings.Fields(v)
	if len(f) == 0 {
		return 0
	}
	a := f[0]
	if i := strings.LastIndexByte(a, ':'); i >= 0 {
		a = a[i+1:]
	}
	p, err := strconv.Atoi(a)
	if err != nil || p < 0 || p > 65535 {
		return 0
	}
	return p
}
