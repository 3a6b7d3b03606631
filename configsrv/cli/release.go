package cli

import (
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"patela/configsrv/store"
	"patela/internal/release"
)

// The release commands register the releases whose approvals nodes fetch
// (stimage release create writes the files). An approval is public signed
// data: the server only decides which ones it serves.

func (e *env) releaseAdd(fs *flag.FlagSet, args []string) error {
	pos, err := parse(fs, args, 1, 1)
	if err != nil {
		return err
	}
	f, err := os.Open(pos[0])
	if err != nil {
		return err
	}
	b, err := io.ReadAll(io.LimitReader(f, 1<<20+1))
	f.Close()
	if err != nil {
		return err
	}
	if len(b) > 1<<20 {
		return fmt.Errorf("%s is larger than a release file can be (1 MiB)", pos[0])
	}
	r, err := release.Parse(b)
	if err != nil {
		return fmt.Errorf("%s: %w", pos[0], err)
	}
	st, err := e.open(toWrite)
	if err != nil {
		return err
	}
	return e.done(st.AddRelease(e.ctx, r, time.Now()), "release.add", r.Name,
		fmt.Sprintf("kind %s, policy PCRs %v, digest %s", r.Kind, r.Policy.PCRs, r.Policy.Digest),
		fmt.Sprintf("release %s (%s) added: nodes whose PCRs %v match get its approval", r.Name, r.Kind, r.Policy.PCRs))
}

func (e *env) releaseList(fs *flag.FlagSet, args []string) error {
	get := func(st *store.Store) ([]store.Release, error) { return st.Releases(e.ctx) }
	return list(e, fs, args, get, "NAME\tKIND\tSTATE\tPOLICY PCRS\tPOLICY DIGEST\tADDED", func(r store.Release) []string {
		state := "active"
		if !r.Active() {
			state = "retired " + fmtTime(r.Retired)
		}
		return []string{r.Name, r.Kind, state, pcrList(r.Record.Policy.PCRs), r.Record.Policy.Digest.String()[:16], fmtTime(r.Added)}
	})
}

func (e *env) releaseRetire(fs *flag.FlagSet, args []string) error {
	pos, err := parse(fs, args, 1, 1)
	if err != nil {
		return err
	}
	st, err := e.open(toWrite)
	if err != nil {
		return err
	}
	return e.done(st.RetireRelease(e.ctx, pos[0], time.Now()), "release.retire", pos[0], "",
		fmt.Sprintf("release %s retired: its approval is no longer served; nodes booting it are told which release to boot", pos[0]))
}

func pcrList(p []int) string {
	s := make([]string, len(p))
	sort.Ints(p)
	for i, n := range p {
		s[i] = strconv.Itoa(n)
	}
	return strings.Join(s, ",")
}
