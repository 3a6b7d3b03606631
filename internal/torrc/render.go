package torrc

import (
	"bytes"
	"fmt"
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
