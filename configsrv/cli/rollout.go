package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"patela/configsrv/store"
	"patela/internal/cmdline"
)

// The rollout commands move the fleet to a release one node (or a few)
// at a time; `serve` runs the steps (RunRollouts): a node is asked to
// reboot in its config, and the next one only once it has come back
// attesting the release with its relays running. A node that comes back
// on anything else stops the rollout.

func (e *env) rolloutStart(fs *flag.FlagSet, args []string) error {
	maxU := fs.Int("max-unavailable", 1, "at most `N` nodes rebooting at once")
	pos, err := parse(fs, args, 1, 1)
	if err != nil {
		return err
	}
	if *maxU < 1 {
		return cmdline.Usagef("--max-unavailable %d: want at least 1", *maxU)
	}
	st, err := e.open(toWrite)
	if err != nil {
		return err
	}
	ro, err := st.StartRollout(e.ctx, pos[0], *maxU, time.Now())
	if err != nil {
		return err
	}
	return e.done(nil, "rollout.start", "release:"+ro.Release,
		fmt.Sprintf("rollout %d, %d nodes, max unavailable %d", ro.ID, len(ro.Nodes), ro.MaxUnavailable),
		fmt.Sprintf("rollout %d to release %s started: %d nodes, %d at a time (configsrv rollout status)",
			ro.ID, ro.Release, len(ro.Nodes), ro.MaxUnavailable))
}

func (e *env) rolloutStatus(fs *flag.FlagSet, args []string) error {
	asJSON := jsonFlag(fs)
	_, st, err := e.start(fs, args, 0, 0, toRead)
	if err != nil {
		return err
	}
	ro, err := st.LatestRollout(e.ctx)
	if errors.Is(err, store.ErrNoRollout) {
		return errors.New("no rollout was ever started (configsrv rollout start RELEASE)")
	}
	if err != nil {
		return err
	}
	if *asJSON {
		return e.json(ro)
	}
	fmt.Fprintf(e.stdout, "rollout %d to release %s: %s", ro.ID, ro.Release, ro.State)
	if ro.Reason != "" {
		fmt.Fprintf(e.stdout, ": %s", ro.Reason)
	}
	fmt.Fprintf(e.stdout, "\n  started %s, ended %s, max unavailable %d\n", fmtTime(ro.Started), fmtTime(ro.Ended), ro.MaxUnavailable)
	rows := make([][]string, 0, len(ro.Nodes))
	for _, n := range ro.Nodes {
		rows = append(rows, []string{strconv.FormatInt(n.NodeID, 10), n.State, n.FromRelease, n.Now, fmtTime(n.Asked), fmtTime(n.Done)})
	}
	return e.table("NODE\tSTATE\tFROM\tNOW\tASKED\tDONE", rows)
}

func (e *env) rolloutStop(fs *flag.FlagSet, args []string) error {
	_, st, err := e.start(fs, args, 0, 0, toWrite)
	if err != nil {
		return err
	}
	ro, err := st.StopRollout(e.ctx, time.Now())
	if err != nil {
		return err
	}
	return e.done(nil, "rollout.stop", "release:"+ro.Release, fmt.Sprintf("rollout %d", ro.ID),
		fmt.Sprintf("rollout %d to release %s stopped: no further node is asked to reboot", ro.ID, ro.Release))
}

// RunRollouts steps the running rollout every interval until ctx ends,
// auditing what each step changed (serve runs it; so does testsrv).
func RunRollouts(ctx context.Context, st *store.Store, every time.Duration, log *slog.Logger) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		step, err := st.StepRollout(ctx, time.Now())
		if err != nil {
			if ctx.Err() == nil {
				log.Error("rollout step", "err", err)
			}
			continue
		}
		if step == nil {
			continue
		}
		audit := func(action, target, details string) {
			log.Info(action, "rollout", step.Rollout, "release", step.Release, "target", target, "details", details)
			if err := st.Audit(ctx, "server", action, target, details); err != nil {
				log.Error("audit", "action", action, "err", err)
			}
		}
		for _, n := range step.Done {
			audit("rollout.node_done", nodeTarget(n), fmt.Sprintf("rollout %d: attested release %s, relays running", step.Rollout, step.Release))
		}
		for _, n := range step.Ask {
			audit("rollout.reboot", nodeTarget(n), fmt.Sprintf("rollout %d: asked to reboot to release %s", step.Rollout, step.Release))
		}
		switch {
		case step.Failed != nil:
			log.Warn("rollout stopped: a node came back on the wrong release", "rollout", step.Rollout, "reason", step.Failed.Reason)
			audit("rollout.failed", nodeTarget(step.Failed.Node), fmt.Sprintf("rollout %d: %s", step.Rollout, step.Failed.Reason))
		case step.Finished:
			audit("rollout.done", "release:"+step.Release, fmt.Sprintf("rollout %d: every node attested release %s", step.Rollout, step.Release))
		}
	}
}
