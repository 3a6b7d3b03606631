package cli

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"patela/configsrv/resolve"
	"patela/configsrv/store"
	"patela/configsrv/tortool"
	"patela/internal/cmdline"
	"patela/internal/torrc"
)

// level is the target of a torrc command: --default, --node ID or --relay NAME.
type level struct {
	def   *bool
	node  *string
	relay *string
}

func levelFlags(fs *flag.FlagSet) *level {
	return &level{
		def:   fs.Bool("default", false, "the global level"),
		node:  fs.String("node", "", "the level of node `ID`"),
		relay: fs.String("relay", "", "the level of relay `NAME`"),
	}
}

func (l *level) check() error {
	n := 0
	for _, set := range []bool{*l.def, *l.node != "", *l.relay != ""} {
		if set {
			n++
		}
	}
	if n != 1 {
		return cmdline.Usagef("give exactly one of --default, --node ID, --relay NAME")
	}
	if *l.node != "" {
		if _, err := nodeID(*l.node); err != nil {
			return err
		}
	}
	return nil
}

func (l *level) String() string {
	switch {
	case *l.def:
		return "global"
	case *l.node != "":
		return "node:" + *l.node
	}
	return "relay:" + *l.relay
}

// read reads a torrc file, or stdin for "-".
func (e *env) read(path string) ([]byte, error) {
	if path == "-" {
		return io.ReadAll(io.LimitReader(e.stdin, 1<<20))
	}
	return os.ReadFile(path)
}

func (e *env) torrcImport(fs *flag.FlagSet, args []string) error {
	lv := levelFlags(fs)
	tor := torFlag(fs)
	noVerify := fs.Bool("no-verify", false, "store without running tor --verify-config on the result (where no tor is installed)")
	pos, err := parse(fs, args, 1, 1)
	if err != nil {
		return err
	}
	if err := lv.check(); err != nil {
		return err
	}
	src, err := e.read(pos[0])
	if err != nil {
		return err
	}
	c, err := torrc.ParseUser(src)
	if err != nil {
		return fmt.Errorf("%s: %w", pos[0], err)
	}
	bin := ""
	if !*noVerify {
		if bin, err = tortool.Find(*tor); err != nil {
			return fmt.Errorf("%w; the import checks the result with tor --verify-config (--no-verify skips it)", err)
		}
	}
	st, err := e.open(toWrite)
	if err != nil {
		return err
	}
	// What the edit makes of every relay it touches, checked by the
	// server's rules and by tor, before anything is stored.
	tried, err := resolve.Try(e.ctx, st, lv.edit(string(src)))
	if err != nil {
		return fmt.Errorf("%s: %w; nothing imported", pos[0], err)
	}
	verified := "not verified by tor (--no-verify)"
	if bin != "" {
		for _, t := range tried {
			if err := tortool.Verify(e.ctx, bin, t.Served, t.UID); err != nil {
				return fmt.Errorf("%s: relay %s's torrc with it: %w; nothing imported", pos[0], t.Relay, err)
			}
		}
		verified = fmt.Sprintf("verified by tor for %d relays", len(tried))
	}
	return e.done(lv.store(e, st, string(src)), "torrc.import", lv.String(), fmt.Sprintf("%d lines, %s", len(c.Lines), verified),
		fmt.Sprintf("imported %d option lines at %s level (%s)", len(c.Lines), lv, verified))
}

// edit is the import of text at the level, for resolve.Try.
func (l *level) edit(text string) resolve.Edit {
	switch {
	case *l.def:
		return resolve.Edit{Level: resolve.LevelGlobal, Text: text}
	case *l.node != "":
		id, _ := nodeID(*l.node)
		return resolve.Edit{Level: resolve.LevelNode, Node: id, Text: text}
	}
	return resolve.Edit{Level: resolve.LevelRelay, Relay: *l.relay, Text: text}
}

// store stores text at the level.
func (l *level) store(e *env, st *store.Store, text string) error {
	switch {
	case *l.def:
		return st.SetGlobalTorrc(e.ctx, text)
	case *l.node != "":
		id, _ := nodeID(*l.node)
		return st.SetNodeTorrc(e.ctx, id, text)
	}
	return st.SetRelayTorrc(e.ctx, *l.relay, text)
}

// torrcView is `torrc show --json`: the text as stored and its option
// lines.
type torrcView struct {
	Level string     `json:"level"` // global, node:ID or relay:NAME
	Text  string     `json:"text"`
	Lines []lineView `json:"lines"`
}

type lineView struct {
	Line   int    `json:"line"`
	Op     string `json:"op"` // set, append (+Option) or remove (/Option)
	Option string `json:"option"`
	Value  string `json:"value,omitempty"`
}

func (e *env) torrcShow(fs *flag.FlagSet, args []string) error {
	lv := levelFlags(fs)
	asJSON := jsonFlag(fs)
	if _, err := parse(fs, args, 0, 0); err != nil {
		return err
	}
	if err := lv.check(); err != nil {
		return err
	}
	st, err := e.open(toRead)
	if err != nil {
		return err
	}
	text, err := lv.stored(e, st)
	if err != nil {
		return err
	}
	if !*asJSON {
		_, err := io.WriteString(e.stdout, text)
		return err
	}
	// Stored texts passed ParseUser on import; failing here means the
	// database was edited by hand.
	c, err := torrc.ParseUser([]byte(text))
	if err != nil {
		return fmt.Errorf("stored %s torrc: %w", lv, err)
	}
	v := torrcView{Level: lv.String(), Text: text, Lines: []lineView{}}
	for _, l := range c.Lines {
		v.Lines = append(v.Lines, lineView{Line: l.Line, Op: l.Op.String(), Option: l.Key, Value: l.Value})
	}
	return e.json(v)
}

// stored is the torrc text stored at the level.
func (l *level) stored(e *env, st *store.Store) (string, error) {
	switch {
	case *l.def:
		return st.GlobalTorrc(e.ctx)
	case *l.node != "":
		id, _ := nodeID(*l.node)
		n, err := st.Node(e.ctx, id)
		if err != nil {
			return "", err
		}
		return n.Torrc, nil
	}
	r, err := st.RelayByName(e.ctx, *l.relay)
	if err != nil {
		return "", err
	}
	return r.Torrc, nil
}

// parseRelay parses a command that requires --relay NAME and takes n
// positional arguments.
func parseRelay(fs *flag.FlagSet, args []string, n int) (relay string, pos []string, err error) {
	r := fs.String("relay", "", "relay `NAME`")
	if pos, err = parse(fs, args, n, n); err != nil {
		return "", nil, err
	}
	if *r == "" {
		return "", nil, cmdline.Usagef("%s needs --relay NAME", fs.Name())
	}
	return *r, pos, nil
}

func (e *env) torrcResolve(fs *flag.FlagSet, args []string) error {
	explain := fs.Bool("explain", false, "annotate each line with the level it came from (agent: written by the node)")
	relay, _, err := parseRelay(fs, args, 0)
	if err != nil {
		return err
	}
	_, served, r, err := e.relayTorrc(relay)
	if err != nil {
		return err
	}
	c := resolve.OnNode(served, r)
	if *explain {
		e.stdout.Write(c.Explain())
	} else {
		e.stdout.Write(c.Render())
	}
	return nil
}

func (e *env) torrcDiff(fs *flag.FlagSet, args []string) error {
	relay, pos, err := parseRelay(fs, args, 1)
	if err != nil {
		return err
	}
	src, err := e.read(pos[0])
	if err != nil {
		return err
	}
	if _, err := torrc.ParseUser(src); err != nil {
		return fmt.Errorf("%s: %w", pos[0], err)
	}
	st, cur, r, err := e.relayTorrc(relay)
	if err != nil {
		return err
	}
	next, err := e.resolveWith(st, r, string(src))
	if err != nil {
		return err
	}
	d := diffLines(cur.Render(), next.Render())
	if d == "" {
		fmt.Fprintf(e.stdout, "importing %s at relay %s would not change its torrc\n", pos[0], relay)
		return nil
	}
	fmt.Fprintf(e.stdout, "--- %s (current)\n+++ %s (with %s)\n%s", relay, relay, pos[0], d)
	return nil
}

// relayTorrc opens the database and resolves the relay's torrc.
func (e *env) relayTorrc(relay string) (*store.Store, *torrc.Config, *store.Relay, error) {
	st, err := e.open(toRead)
	if err != nil {
		return nil, nil, nil, err
	}
	c, r, err := resolve.Relay(e.ctx, st, relay)
	return st, c, r, err
}

// resolveWith is relay r's torrc with relayText at its relay level.
func (e *env) resolveWith(st *store.Store, r *store.Relay, relayText string) (*torrc.Config, error) {
	g, err := st.GlobalTorrc(e.ctx)
	if err != nil {
		return nil, err
	}
	n, err := st.Node(e.ctx, r.NodeID)
	if err != nil {
		return nil, err
	}
	fleet, err := resolve.LoadFleet(e.ctx, st)
	if err != nil {
		return nil, err
	}
	return resolve.Torrc(g, n.Torrc, relayText, r, fleet, resolve.Budget(n))
}

// diffLines is a line diff (longest common subsequence): kept lines get
// "  ", removed "- ", added "+ ". It returns "" when a and b are equal.
func diffLines(a, b []byte) string {
	if bytes.Equal(a, b) {
		return ""
	}
	x := strings.Split(strings.TrimSuffix(string(a), "\n"), "\n")
	y := strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
	lcs := make([][]int, len(x)+1)
	for i := range lcs {
		lcs[i] = make([]int, len(y)+1)
	}
	for i := len(x) - 1; i >= 0; i-- {
		for j := len(y) - 1; j >= 0; j-- {
			if x[i] == y[j] {
				lcs[i][j] = lcs[i+1][j+1] + 1
			} else {
				lcs[i][j] = max(lcs[i+1][j], lcs[i][j+1])
			}
		}
	}
	var out strings.Builder
	i, j := 0, 0
	for i < len(x) || j < len(y) {
		switch {
		case i < len(x) && j < len(y) && x[i] == y[j]:
			out.WriteString("  " + x[i] + "\n")
			i++
			j++
		case j < len(y) && (i == len(x) || lcs[i][j+1] >= lcs[i+1][j]):
			out.WriteString("+ " + y[j] + "\n")
			j++
		default:
			out.WriteString("- " + x[i] + "\n")
			i++
		}
	}
	return out.String()
}
