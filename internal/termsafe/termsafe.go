// Package termsafe makes text from an untrusted source safe to print on
// a terminal: control characters (C0, DEL, C1: escape sequences, carriage
// returns, newlines), Unicode bidirectional formatting characters and
// invalid UTF-8 are shown as Go escapes (\x1b, \r, \u202e), so what a
// node reported can neither drive an administrator's terminal nor fake
// a line of output.
package termsafe

import (
	"fmt"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// String returns s with every unsafe character escaped; safe text is
// returned as it is.
func String(s string) string {
	if !strings.ContainsFunc(s, unsafe) && utf8.ValidString(s) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && n == 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case unsafe(r):
			q := strconv.QuoteRuneToASCII(r)
			b.WriteString(q[1 : len(q)-1])
		default:
			b.WriteString(s[i : i+n])
		}
		i += n
	}
	return b.String()
}

// unsafe reports control characters and the bidirectional formatting
// characters that reorder what a terminal shows (U+061C, U+200E, U+200F,
// U+202A-U+202E, U+2066-U+2069).
func unsafe(r rune) bool {
	return unicode.IsControl(r) || r == 0x061c || r == 0x200e || r == 0x200f ||
		r >= 0x202a && r <= 0x202e || r >= 0x2066 && r <= 0x2069
}
