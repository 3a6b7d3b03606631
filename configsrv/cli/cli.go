// Package cli is the configsrv command line: the administrator's whole
// surface (nodes, settings, pools, torrc levels, relays, key mirror, audit
// log), key material creation, and the server itself. The commands are
// one table (commands.go); internal/cmdline finds them, writes their usage
// and maps their errors to exit codes.
package cli

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/user"
	"strconv"
	"strings"
	"text/tabwriter"

	"patela/configsrv/store"
	"patela/internal/cmdline"
	"patela/internal/termsafe"
)

// env carries what every command needs.
type env struct {
	ctx    context.Context
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
	db     string
	st     *store.Store
	actor  string
}

// Main runs the command line args (without the program name) and returns
// the exit status: 0 done, 1 failed, 2 usage error.
func Main(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	e := &env{ctx: context.Background(), stdin: stdin, stdout: stdout, stderr: stderr, db: os.Getenv("PATELA_DB")}
	if e.db == "" {
		e.db = "patela.db"
	}
	defer func() {
		if e.st != nil {
			e.st.Close()
		}
	}()
	return program.Main(e, args, stdout, stderr)
}

// globals defines the flags that come before the command.
func globals(e *env, fs *flag.FlagSet) {
	fs.StringVar(&e.db, "db", e.db, "the SQLite database `PATH`; $PATELA_DB sets the default")
}

// A command opens the database to read, and then it must exist (a
// mistyped --db must not silently create an empty one), or to write, and
// then it is created if missing.
const (
	toRead  = false
	toWrite = true
)

// open opens the database (once).
func (e *env) open(write bool) (*store.Store, error) {
	if e.st != nil {
		return e.st, nil
	}
	if !write {
		if _, err := os.Stat(e.db); err != nil {
			return nil, fmt.Errorf("database %s: %w (set --db or PATELA_DB)", e.db, err)
		}
	}
	// One we create is 0600 (store.Open); one that exists must be so too.
	if err := store.CheckMode(e.db); err != nil {
		return nil, err
	}
	st, err := store.Open(e.db)
	if err != nil {
		return nil, err
	}
	e.st = st
	if e.actor == "" {
		e.actor = "admin"
		if u, err := user.Current(); err == nil {
			e.actor = "admin:" + u.Username
		}
	}
	return st, nil
}

// parse parses a command's flags and its positional arguments, [min, max]
// of them.
func parse(fs *flag.FlagSet, args []string, min, max int) ([]string, error) {
	return cmdline.Parse(fs, args, min, max)
}

// start parses a command's line, then opens the database.
func (e *env) start(fs *flag.FlagSet, args []string, min, max int, write bool) ([]string, *store.Store, error) {
	pos, err := parse(fs, args, min, max)
	if err != nil {
		return nil, nil, err
	}
	st, err := e.open(write)
	return pos, st, err
}

// startNode is start for a command whose one argument is a node id.
func (e *env) startNode(fs *flag.FlagSet, args []string, write bool) (int64, *store.Store, error) {
	pos, err := parse(fs, args, 1, 1)
	if err != nil {
		return 0, nil, err
	}
	id, err := nodeID(pos[0])
	if err != nil {
		return 0, nil, err
	}
	st, err := e.open(write)
	return id, st, err
}

// nodeID parses a node id argument.
func nodeID(s string) (int64, error) {
	id, err := strconv.ParseInt(s, 10, 64)
	if err != nil || id <= 0 {
		return 0, fmt.Errorf("%q is not a node id (a positive integer)", s)
	}
	return id, nil
}

// nodeTarget names node id in the audit log.
func nodeTarget(id int64) string { return fmt.Sprintf("node:%d", id) }

// done finishes an admin action that returned err: if it succeeded, its
// audit row is written, then msg printed. If the audit row cannot be
// written the command fails: the action happened, so say so.
func (e *env) done(err error, action, target, details, msg string) error {
	if err != nil {
		return err
	}
	if err := e.st.Audit(e.ctx, e.actor, action, target, details); err != nil {
		return fmt.Errorf("%s %s done, but writing the audit log failed: %w", action, target, err)
	}
	fmt.Fprintln(e.stdout, msg)
	return nil
}

// jsonFlag defines the --json flag every listing takes.
func jsonFlag(fs *flag.FlagSet) *bool { return fs.Bool("json", false, "JSON output") }

// list runs a listing command: no arguments, the items get reads as JSON
// or as a table of header and one row per item.
func list[T any](e *env, fs *flag.FlagSet, args []string, get func(*store.Store) ([]T, error), header string, row func(T) []string) error {
	asJSON := jsonFlag(fs)
	_, st, err := e.start(fs, args, 0, 0, toRead)
	if err != nil {
		return err
	}
	items, err := get(st)
	if err != nil {
		return err
	}
	return listing(e, *asJSON, items, header, row)
}

// listing prints items as JSON (an empty list, never null) or as a table
// of header and one row per item.
func listing[T any](e *env, asJSON bool, items []T, header string, row func(T) []string) error {
	if asJSON {
		if items == nil {
			items = []T{}
		}
		return e.json(items)
	}
	rows := make([][]string, 0, len(items))
	for _, it := range items {
		rows = append(rows, row(it))
	}
	return e.table(header, rows)
}

func (e *env) json(v any) error {
	enc := json.NewEncoder(e.stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// table prints a table; every cell is escaped for the terminal (cells
// carry what nodes report).
func (e *env) table(header string, rows [][]string) error {
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, header)
	for _, r := range rows {
		cells := make([]string, len(r))
		for i, c := range r {
			cells[i] = termsafe.String(c)
		}
		fmt.Fprintln(tw, strings.Join(cells, "\t"))
	}
	return tw.Flush()
}
