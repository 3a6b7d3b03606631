package cli

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"patela/configsrv/resolve"
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
		node:  fs.String("node", "", "a node's level"),
		relay: fs.String("relay", "", "a relay's level"),
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
		return usagef("give exactly one of --default, --node ID, --relay NAME")
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

func (e *env) cmdTorrc(sub string, args []string) error {
	fs := flag.NewFlagSet("torrc "+sub, flag.ContinueOnError)
	switch sub {
	case "import":
		lv := levelFlags(fs)
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
		st, err := e.open()
		if err != nil {
			return err
		}
		text := string(src)
		switch {
		case *lv.def:
			err = st.SetGlobalTorrc(e.ctx, text)
		case *lv.node != "":
			id, _ := nodeID(*lv.node)
			err = st.SetNodeTorrc(e.ctx, id, text)
		default:
			err = st.SetRelayTorrc(e.ctx, *lv.relay, text)
		}
		if err != nil {
			return err
		}
		if err := e.audit("torrc.import", lv.String(), fmt.Sprintf("%d lines", len(c.Lines))); err != nil {
			return err
		}
		fmt.Fprintf(e.stdout, "imported %d option lines at %s level\n", len(c.Lines), lv)
		return nil

	case "show":
		lv := levelFlags(fs)
		if _, err := parse(fs, args, 0, 0); err != nil {
			return err
		}
		if err := lv.check(); err != nil {
			return err
		}
		st, err := e.openExisting()
		if err != nil {
			return err
		}
		var text string
		switch {
		case *lv.def:
			text, err = st.GlobalTorrc(e.ctx)
		case *lv.node != "":
			id, _ := nodeID(*lv.node)
			n, err2 := st.Node(e.ctx, id)
			if err2 != nil {
				return err2
			}
			text = n.Torrc
		default:
			r, err2 := st.RelayByName(e.ctx, *lv.relay)
			if err2 != nil {
				return err2
			}
			text = r.Torrc
		}
		if err != nil {
			return err
		}
		io.WriteString(e.stdout, text)
		return nil

	case "resolve":
		relay := fs.String("relay", "", "relay name")
		explain := fs.Bool("explain", false, "annotate each line with the level it came from")
		if _, err := parse(fs, args, 0, 0); err != nil {
			return err
		}
		if *relay == "" {
			return usagef("torrc resolve needs --relay NAME")
		}
		st, err := e.openExisting()
		if err != nil {
			return err
		}
		served, _, err := resolve.Relay(e.ctx, st, *relay)
		if err != nil {
			return err
		}
		c := resolve.OnNode(served, *relay)
		if *explain {
			e.stdout.Write(c.Explain())
		} else {
			e.stdout.Write(c.Render())
		}
		return nil

	case "diff":
		relay := fs.String("relay", "", "relay name")
		pos, err := parse(fs, args, 1, 1)
		if err != nil {
			return err
		}
		if *relay == "" {
			return usagef("torrc diff needs --relay NAME")
		}
		src, err := e.read(pos[0])
		if err != nil {
			return err
		}
		if _, err := torrc.ParseUser(src); err != nil {
			return fmt.Errorf("%s: %w", pos[0], err)
		}
		st, err := e.openExisting()
		if err != nil {
			return err
		}
		cur, r, err := resolve.Relay(e.ctx, st, *relay)
		if err != nil {
			return err
		}
		g, err := st.GlobalTorrc(e.ctx)
		if err != nil {
			return err
		}
		n, err := st.Node(e.ctx, r.NodeID)
		if err != nil {
			return err
		}
		next, err := resolve.Torrc(g, n.Torrc, string(src), r)
		if err != nil {
			return err
		}
		d := diffLines(cur.Render(), next.Render())
		if d == "" {
			fmt.Fprintf(e.stdout, "importing %s at relay %s would not change its torrc\n", pos[0], *relay)
			return nil
		}
		fmt.Fprintf(e.stdout, "--- %s (current)\n+++ %s (with %s)\n%s", *relay, *relay, pos[0], d)
		return nil
	}
	return usagef("unknown command torrc %s", sub)
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
