package cmdline

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"reflect"
	"strings"
	"text/tabwriter"
)

// aliasPrefix starts the usage of a flag that is another spelling of one
// defined before it ("alias of --is-ca"): listed with it, not on its own.
const aliasPrefix = "alias of --"

// listWidth is the widest synopsis that keeps its help on the same line in
// a command list.
const listWidth = 40

// printHelp is `help`: the program's synopsis, global flags, every
// command in one line each, and the footer.
func (p *Program[E]) printHelp(e E, w io.Writer) {
	gfs := p.globals(e)
	fmt.Fprintf(w, "usage: %s%s COMMAND ...\n\n", p.Name, optional(gfs, ""))
	p.printList(w, p.group(nil))
	if n := countFlags(gfs); n > 0 {
		fmt.Fprintln(w)
		printFlags(w, gfs)
	}
	if p.Footer != "" {
		fmt.Fprintf(w, "\n%s", p.Footer)
	}
	fmt.Fprintf(w, "\n`%s help COMMAND` or `%s COMMAND --help` lists a command's flags.\n", p.Name, p.Name)
}

// printList prints one line per command: words, arguments, help.
func (p *Program[E]) printList(w io.Writer, cs []*Command[E]) {
	width := 0
	for _, c := range cs {
		if l := len(c.synopsis()); l <= listWidth {
			width = max(width, l)
		}
	}
	fmt.Fprintln(w, "commands:")
	for _, c := range cs {
		if s := c.synopsis(); len(s) > listWidth {
			fmt.Fprintf(w, "  %s\n  %-*s  %s\n", s, width, "", c.Help)
		} else {
			fmt.Fprintf(w, "  %-*s  %s\n", width, s, c.Help)
		}
	}
}

// synopsis is the command's words and arguments.
func (c *Command[E]) synopsis() string { return strings.TrimSpace(c.Words + " " + c.Args) }

// printUsages prints the full usage of each command, blank line between.
func (p *Program[E]) printUsages(e E, w io.Writer, cs []*Command[E]) {
	for i, c := range cs {
		if i > 0 {
			fmt.Fprintln(w)
		}
		p.printUsage(w, c, p.describe(e, c))
	}
}

// describe returns c's flags, defined by running it with -help.
func (p *Program[E]) describe(e E, c *Command[E]) *flag.FlagSet {
	fs := flag.NewFlagSet(c.Words, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	if err := c.Run(e, fs, []string{"-help"}); !errors.Is(err, flag.ErrHelp) {
		// A command that does not parse first: a bug the help tests catch.
		panic(fmt.Sprintf("cmdline: %s %s -help returned %v, not flag.ErrHelp", p.Name, c.Words, err))
	}
	return fs
}

// printUsage prints c's synopsis (the optional flags added), its help and
// every flag.
func (p *Program[E]) printUsage(w io.Writer, c *Command[E], fs *flag.FlagSet) {
	fmt.Fprintf(w, "usage: %s %s%s\n  %s\n", p.Name, c.synopsis(), optional(fs, c.Args), c.Help)
	if c.More != "" {
		fmt.Fprintf(w, "  %s\n", strings.ReplaceAll(strings.TrimSpace(c.More), "\n", "\n  "))
	}
	if countFlags(fs) > 0 {
		printFlags(w, fs)
	}
}

// optional is the synopsis of fs's flags that args does not already
// name: " [--json] [--limit N]".
func optional(fs *flag.FlagSet, args string) string {
	named := map[string]bool{}
	for _, f := range strings.FieldsFunc(args, func(r rune) bool { return strings.ContainsRune(" ()[]|", r) }) {
		named[strings.TrimLeft(f, "-")] = true
	}
	var b strings.Builder
	fs.VisitAll(func(f *flag.Flag) {
		if named[f.Name] || strings.HasPrefix(f.Usage, aliasPrefix) {
			return
		}
		if v := valueName(f); v != "" {
			fmt.Fprintf(&b, " [--%s %s]", f.Name, v)
		} else {
			fmt.Fprintf(&b, " [--%s]", f.Name)
		}
	})
	return b.String()
}

// printFlags lists every flag with its aliases, value, help and default.
func printFlags(w io.Writer, fs *flag.FlagSet) {
	aliases := map[string][]string{}
	fs.VisitAll(func(f *flag.Flag) {
		if main, ok := strings.CutPrefix(f.Usage, aliasPrefix); ok {
			aliases[main] = append(aliases[main], "-"+f.Name)
		}
	})
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fs.VisitAll(func(f *flag.Flag) {
		if strings.HasPrefix(f.Usage, aliasPrefix) {
			return
		}
		name := "--" + f.Name
		if a := aliases[f.Name]; len(a) > 0 {
			name += ", " + strings.Join(a, ", ")
		}
		if v := valueName(f); v != "" {
			name += " " + v
		}
		_, help := flag.UnquoteUsage(f)
		fmt.Fprintf(tw, "  %s\t%s%s\n", name, help, defaultText(f))
	})
	tw.Flush()
}

// valueName is what the synopsis calls a flag's value: the word in
// backquotes in its usage, else its type in capitals; "" for a bool.
func valueName(f *flag.Flag) string {
	if b, ok := f.Value.(interface{ IsBoolFlag() bool }); ok && b.IsBoolFlag() {
		return ""
	}
	name, _ := flag.UnquoteUsage(f)
	if name == "" || name == "value" {
		name = "value"
	}
	if !strings.Contains(f.Usage, "`") {
		return strings.ToUpper(name)
	}
	return name
}

func defaultText(f *flag.Flag) string {
	if isZero(f) {
		return ""
	}
	if g, ok := f.Value.(flag.Getter); ok {
		if _, isString := g.Get().(string); isString {
			return fmt.Sprintf(" (default %q)", f.DefValue)
		}
	}
	return fmt.Sprintf(" (default %s)", f.DefValue)
}

// isZero reports whether f's default is its type's zero value, which
// goes without saying (as flag.PrintDefaults decides it).
func isZero(f *flag.Flag) (zero bool) {
	t := reflect.TypeOf(f.Value)
	var z reflect.Value
	if t.Kind() == reflect.Pointer {
		z = reflect.New(t.Elem())
	} else {
		z = reflect.Zero(t)
	}
	defer func() {
		if recover() != nil {
			zero = f.DefValue == ""
		}
	}()
	return f.DefValue == z.Interface().(flag.Value).String()
}

func countFlags(fs *flag.FlagSet) int {
	n := 0
	fs.VisitAll(func(*flag.Flag) { n++ })
	return n
}
