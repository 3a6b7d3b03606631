package torrc

import (
	"bytes"
	"fmt"
	"strings"
	"unicode/utf8"
)

// Parse reads a torrc. Every option tor knows is accepted, including the
// managed ones: this is the entry point for text the system itself wrote.
func Parse(src []byte) (*Config, error) { return parse(src, false) }

// ParseUser reads a torrc an admin imports: as Parse, but an option the
// admin does not own (OwnerOf) is an error naming its line.
func ParseUser(src []byte) (*Config, error) { return parse(src, true) }

func parse(src []byte, user bool) (*Config, error) {
	if err := checkText(src); err != nil {
		return nil, err
	}
	c := &Config{Lines: make([]Line, 0, bytes.Count(src, []byte{'\n'})/2+1)}
	s := scanner{src: src, line: 1}
	for {
		e, ok, err := s.next()
		if err != nil {
			return nil, err
		}
		if !ok {
			return c, nil
		}
		l, err := e.check(user)
		if err != nil {
			return nil, err
		}
		c.Lines = append(c.Lines, l)
	}
}

// checkText refuses bytes tor would misread: invalid UTF-8 and NUL (tor
// reads the file as a C string and would stop there).
func checkText(src []byte) error {
	for n := 1; len(src) > 0; n++ {
		l := src
		if i := bytes.IndexByte(src, '\n'); i >= 0 {
			l, src = src[:i], src[i+1:]
		} else {
			src = nil
		}
		if !utf8.Valid(l) {
			return &ParseError{n, "not valid UTF-8"}
		}
		if bytes.IndexByte(l, 0) >= 0 {
			return &ParseError{n, "NUL byte"}
		}
	}
	return nil
}

// entry is one key and value as tor's reader splits them.
type entry struct {
	key, value string
	quoted     bool
	cont       bool // the value spanned lines ('\' continuation)
	line       int
}

// scanner walks the source exactly as tor's parse_config_line_from_str_verbose
// does, counting lines as it goes.
type scanner struct {
	src  []byte
	i    int
	line int // line number of src[cnt]
	cnt  int // bytes counted into line so far
}

// lineAt returns the 1-based line of src[i]; i never decreases between calls.
func (s *scanner) lineAt(i int) int {
	s.line += bytes.Count(s.src[s.cnt:i], []byte{'\n'})
	s.cnt = i
	return s.line
}

// isSpace is tor's TOR_ISSPACE.
func isSpace(b byte) bool {
	return b == ' ' || b == '\t' || b == '\n' || b == '\r' || b == '\v' || b == '\f'
}

func (s *scanner) at(i int) byte {
	if i < len(s.src) {
		return s.src[i]
	}
	return 0
}

// next returns the next entry; ok is false at the end of the source.
func (s *scanner) next() (e entry, ok bool, err error) {
	src, i := s.src, s.i
	// Skip blank space and comment lines up to the next option name.
	for {
		for i < len(src) && isSpace(src[i]) {
			i++
		}
		if s.at(i) != '#' {
			break
		}
		for i < len(src) && src[i] != '\n' {
			i++
		}
	}
	if i == len(src) {
		s.i = i
		return e, false, nil
	}
	e.line = s.lineAt(i)
	k := i
	for i < len(src) && !isSpace(src[i]) && src[i] != '#' && !(src[i] == '\\' && s.at(i+1) == '\n') {
		i++
	}
	e.key = string(src[k:i])
	for s.at(i) == ' ' || s.at(i) == '\t' {
		i++
	}
	v := i
	if s.at(i) == '"' {
		end, err := scanQuoted(src, i)
		if err != "" {
			return e, false, &ParseError{e.line, err}
		}
		e.value, e.quoted, i = string(src[v:end]), true, end
		for s.at(i) == ' ' || s.at(i) == '\t' {
			i++
		}
		if s.at(i) == '\r' && s.at(i+1) == '\n' {
			i++
		}
		if i < len(src) && src[i] != '#' && src[i] != '\n' {
			return e, false, &ParseError{e.line, "data after the closing quote"}
		}
	} else {
		for i < len(src) && src[i] != '\n' && (src[i] != '#' || e.cont) {
			switch {
			case src[i] == '\\' && s.at(i+1) == '\n':
				e.cont = true
				i += 2
			case src[i] == '#':
				for i < len(src) && src[i] != '\n' {
					i++
				}
				if i < len(src) {
					i++
				}
			default:
				i++
			}
		}
		end := i
		if s.at(i) == '\n' {
			i++
		}
		for end > v && isSpace(src[end-1]) {
			end--
		}
		e.value = string(src[v:end])
		if e.cont {
			e.value = join(e.value)
		}
	}
	if s.at(i) == '#' {
		for i < len(src) && src[i] != '\n' {
			i++
		}
	}
	for i < len(src) && isSpace(src[i]) {
		i++
	}
	s.i = i
	return e, true, nil
}

// join removes what tor removes from a continued value: each "\\\n" and
// each comment up to and including its newline.
func join(v string) string {
	var b strings.Builder
	for i := 0; i < len(v); {
		switch {
		case v[i] == '#':
			for i < len(v) && v[i] != '\n' {
				i++
			}
			if i < len(v) {
				i++
			}
		case v[i] == '\\' && i+1 < len(v) && v[i+1] == '\n':
			i += 2
		default:
			b.WriteByte(v[i])
			i++
		}
	}
	return b.String()
}

// scanQuoted checks a quoted value the way tor's unescape_string decodes it
// and returns the index just past the closing quote, or an error message.
func scanQuoted(src []byte, i int) (int, string) {
	isOct := func(b byte) bool { return '0' <= b && b <= '7' }
	isHex := func(b byte) bool {
		return '0' <= b && b <= '9' || 'a' <= b && b <= 'f' || 'A' <= b && b <= 'F'
	}
	at := func(j int) byte {
		if j < len(src) {
			return src[j]
		}
		return 0
	}
	for j := i + 1; ; {
		switch at(j) {
		case 0, '\n':
			return 0, "quoted value has no closing quote on its line"
		case '"':
			return j + 1, ""
		case '\\':
			switch c := at(j + 1); {
			case c == 'x' || c == 'X':
				if !isHex(at(j+2)) || !isHex(at(j+3)) {
					return 0, `bad \x escape in quoted value`
				}
				if at(j+2) == '0' && at(j+3) == '0' {
					return 0, "quoted value contains a NUL byte"
				}
				j += 4
			case isOct(c):
				n, k := 0, j+1
				for ; k < j+4 && isOct(at(k)); k++ {
					n = n*8 + int(at(k)-'0')
				}
				if n > 255 {
					return 0, "octal escape above \\377 in quoted value"
				}
				if n == 0 {
					return 0, "quoted value contains a NUL byte"
				}
				j = k
			case c == 'n' || c == 'r' || c == 't' || c == '"' || c == '\\' || c == '\'':
				j += 2
			default:
				return 0, fmt.Sprintf("bad escape %q in quoted value", string(rune(c)))
			}
		default:
			j++
		}
	}
}

// check checks an entry and turns it into a Line.
func (e *entry) check(user bool) (Line, error) {
	bad := func(format string, a ...any) (Line, error) {
		return Line{}, &ParseError{e.line, fmt.Sprintf(format, a...)}
	}
	l := Line{Op: OpSet, Line: e.line}
	name := e.key
	switch {
	case strings.HasPrefix(name, "+"):
		l.Op, name = OpAppend, name[1:]
	case strings.HasPrefix(name, "/"):
		l.Op, name = OpRemove, name[1:]
	}
	switch {
	case name == "":
		return bad("missing option name")
	case strings.HasPrefix(name, "\ufeff"):
		return bad("byte order mark before %q: save the file as UTF-8 without BOM", name[len("\ufeff"):])
	case strings.EqualFold(name, "%include"):
		return bad("%%include is not supported: the torrc must be self-contained")
	case strings.HasPrefix(name, "__"):
		return bad("%s is an internal tor option", name)
	case name == "l":
		return bad("unknown option %q (tor's command-line abbreviation of Log does not apply in a torrc)", name)
	}
	key, ok := Canonical(name)
	if !ok {
		if t, obs := obsolete[lower(name)]; obs {
			return bad("%s (an old name of %s) is obsolete: tor ignores it", name, t)
		}
		return bad("unknown option %q", name)
	}
	l.Key = key
	if o := OwnerOf(key); user && o != OwnerAdmin {
		if o == OwnerForbidden {
			return bad("%s is refused: %s; nodes never pass it to tor", key, Refusal(key))
		}
		return bad("%s is managed by patela (%s) and cannot be set in an imported torrc", key, Refusal(key))
	}

	v := e.value
	if e.cont {
		// A continued value may begin or end with the continuation's
		// blanks; a one-line rendering cannot, so they go.
		v = strings.Trim(v, " \t")
	}
	if l.Op == OpRemove {
		if v != "" {
			return bad("/%s takes no value (it removes the option's lines from lower levels)", key)
		}
		return l, nil
	}
	if v == "" || v == `""` {
		// tor reads an empty value as "reset to the default", or for a
		// list skips it with a warning; neither is worth writing down.
		return bad("%s has no value", key)
	}
	for _, r := range v {
		if r < 0x20 && r != '\t' || r == 0x7f {
			return bad("control character %q in the value of %s", r, key)
		}
	}
	if !e.quoted {
		// Rendered on one line, these would read differently.
		if strings.HasSuffix(v, `\`) {
			return bad(`the value of %s ends with '\'`, key)
		}
		if strings.HasPrefix(v, `"`) {
			return bad("the continued value of %s begins with a quote", key)
		}
	}
	l.Value = v
	return l, nil
}
