// Package cli is the configsrv command line: the administrator's whole
// surface (nodes, settings, pools, torrc levels, relays, key mirror, audit
// log), key material creation, and the server itself.
package cli

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/user"
	"strconv"
	"strings"
	"text/tabwriter"

	"patela/configsrv/store"
)

const usage = `usage: configsrv [--db PATH] COMMAND ...

  init --dir DIR [--name NAME,...]        create CA, server certificate and biscuit key
  serve --dir DIR | --tls-cert F --tls-key F --biscuit-key F [--listen ADDR] ...
  node list [--json]
  node show ID [--json]
  node enable|disable|ban|remove ID
  node set (--default | ID) KEY VALUE     keys: dns, ipv4_gateway, ipv6_gateway, max_relays,
  node unset (--default | ID) KEY               poll_interval_s, relay_interface, relay_memory_mb
  pool add CIDR --gateway IP
  pool list [--json]
  pool remove CIDR
  torrc import FILE|- (--default | --node ID | --relay NAME)
  torrc show (--default | --node ID | --relay NAME)
  torrc resolve --relay NAME [--explain]
  torrc diff --relay NAME FILE|-
  relay list [--node ID] [--json]
  keys show NODE_ID [--json]              version, size and update time of the mirrored key bundle
  keys drop NODE_ID --yes                 delete it (after a TPM clear): the relays get NEW identities
  audit [--limit N] [--json]

The database is --db, else $PATELA_DB, else ./patela.db.
`

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

// usageError is printed with a pointer to the usage.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, a ...any) error { return usageError{fmt.Sprintf(format, a...)} }

// Main runs the command line args (without the program name) and returns
// the exit status.
func Main(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	e := &env{ctx: context.Background(), stdin: stdin, stdout: stdout, stderr: stderr}
	return e.run(args)
}

func (e *env) run(args []string) int {
	err := e.dispatch(args)
	if e.st != nil {
		e.st.Close()
	}
	if err == nil {
		return 0
	}
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprint(e.stdout, usage)
		return 0
	}
	fmt.Fprintln(e.stderr, "configsrv:", err)
	var ue usageError
	if errors.As(err, &ue) {
		fmt.Fprintln(e.stderr, "run `configsrv help` for usage")
	}
	return 1
}

func (e *env) dispatch(args []string) error {
	e.db = os.Getenv("PATELA_DB")
	if e.db == "" {
		e.db = "patela.db"
	}
	// Global flags come before the command.
	for len(args) > 0 && strings.HasPrefix(args[0], "-") {
		a := args[0]
		switch {
		case a == "--db" || a == "-db":
			if len(args) < 2 {
				return usagef("--db needs a path")
			}
			e.db, args = args[1], args[2:]
		case strings.HasPrefix(a, "--db=") || strings.HasPrefix(a, "-db="):
			e.db, args = a[strings.IndexByte(a, '=')+1:], args[1:]
		case a == "-h" || a == "--help" || a == "-help":
			return flag.ErrHelp
		default:
			return usagef("unknown flag %s", a)
		}
	}
	if len(args) == 0 {
		return usagef("no command")
	}
	cmd, rest := args[0], args[1:]
	sub := func() (string, []string, error) {
		if len(rest) == 0 {
			return "", nil, usagef("%s needs a subcommand", cmd)
		}
		return rest[0], rest[1:], nil
	}
	switch cmd {
	case "help":
		return flag.ErrHelp
	case "init":
		return e.cmdInit(rest)
	case "serve":
		return e.cmdServe(rest)
	case "node":
		s, r, err := sub()
		if err != nil {
			return err
		}
		return e.cmdNode(s, r)
	case "pool":
		s, r, err := sub()
		if err != nil {
			return err
		}
		return e.cmdPool(s, r)
	case "torrc":
		s, r, err := sub()
		if err != nil {
			return err
		}
		return e.cmdTorrc(s, r)
	case "relay":
		s, r, err := sub()
		if err != nil {
			return err
		}
		if s != "list" {
			return usagef("unknown command relay %s", s)
		}
		return e.cmdRelayList(r)
	case "keys":
		s, r, err := sub()
		if err != nil {
			return err
		}
		return e.cmdKeys(s, r)
	case "audit":
		return e.cmdAudit(rest)
	}
	return usagef("unknown command %q", cmd)
}

// open opens the database (once), creating it if needed.
func (e *env) open() (*store.Store, error) {
	if e.st != nil {
		return e.st, nil
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

// openExisting opens the database for a command that only reads: a
// mistyped --db must not silently create an empty one.
func (e *env) openExisting() (*store.Store, error) {
	if _, err := os.Stat(e.db); err != nil {
		return nil, fmt.Errorf("database %s: %w (set --db or PATELA_DB)", e.db, err)
	}
	return e.open()
}

// audit records an admin action that has succeeded. If the audit row
// cannot be written the command fails: the action happened, so say so.
func (e *env) audit(action, target, details string) error {
	if err := e.st.Audit(e.ctx, e.actor, action, target, details); err != nil {
		return fmt.Errorf("%s %s done, but writing the audit log failed: %w", action, target, err)
	}
	return nil
}

// parse parses fs allowing flags and positional arguments in any order,
// and checks the positional count is within [min, max].
func parse(fs *flag.FlagSet, args []string, min, max int) ([]string, error) {
	fs.SetOutput(io.Discard)
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, usagef("%s: %v", fs.Name(), err)
		}
		args = fs.Args()
		if len(args) == 0 {
			break
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
	if len(pos) < min || len(pos) > max {
		if min == max {
			return nil, usagef("%s takes %d argument(s), got %d", fs.Name(), min, len(pos))
		}
		return nil, usagef("%s takes %d to %d arguments, got %d", fs.Name(), min, max, len(pos))
	}
	return pos, nil
}

// nodeID parses a node id argument.
func nodeID(s string) (int64, error) {
	id, err := strconv.ParseInt(s, 10, 64)
	if err != nil || id <= 0 {
		return 0, fmt.Errorf("%q is not a node id (a positive integer)", s)
	}
	return id, nil
}

// parseNodeID parses flags and exactly one positional argument, a node id.
func parseNodeID(fs *flag.FlagSet, args []string) (int64, error) {
	pos, err := parse(fs, args, 1, 1)
	if err != nil {
		return 0, err
	}
	return nodeID(pos[0])
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

func (e *env) table(header string, rows [][]string) error {
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, header)
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r, "\t"))
	}
	return tw.Flush()
}
