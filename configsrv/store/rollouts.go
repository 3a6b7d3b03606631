package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"patela/configsrv/rollout"
	"patela/internal/api"
)

// Rollout states.
const (
	RolloutRunning = "running"
	RolloutDone    = "done"
	RolloutStopped = "stopped"
	RolloutFailed  = "failed"
)

// Rollout moves the enabled nodes to a release, a few at a time.
type Rollout struct {
	ID             int64         `json:"id"`
	Release        string        `json:"release"`
	MaxUnavailable int           `json:"max_unavailable"`
	State          string        `json:"state"`
	Reason         string        `json:"reason,omitempty"`
	Started        time.Time     `json:"started"`
	Ended          time.Time     `json:"ended"`
	Nodes          []RolloutNode `json:"nodes"`
}

// RolloutNode is one node's progress in a rollout.
type RolloutNode struct {
	NodeID      int64     `json:"node_id"`
	State       string    `json:"state"`        // rollout.Waiting, Rebooting, Done, Failed
	FromRelease string    `json:"from_release"` // its attestation when the rollout started
	Now         string    `json:"now"`          // its attestation now
	Asked       time.Time `json:"asked"`
	Done        time.Time `json:"done"`
}

// ErrNoRollout is returned when no rollout runs (or none ever ran).
var ErrNoRollout = errors.New("no rollout is running")

// StartRollout starts a rollout to the active release name: every enabled
// node whose last attestation is not of that release reboots at its turn,
// in node id order, at most maxUnavailable at a time.
func (s *Store) StartRollout(ctx context.Context, name string, maxUnavailable int, now time.Time) (*Rollout, error) {
	if maxUnavailable < 1 {
		return nil, fmt.Errorf("max unavailable %d: want at least 1", maxUnavailable)
	}
	var id int64
	err := s.tx(ctx, func(tx *sql.Tx) error {
		var retired sql.NullInt64
		err := tx.QueryRowContext(ctx, `SELECT retired FROM releases WHERE name = ?`, name).Scan(&retired)
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("release %s: %w (configsrv release list)", name, ErrNotFound)
		}
		if err != nil {
			return err
		}
		if retired.Valid {
			return fmt.Errorf("release %s is retired: its nodes could not open their vaults", name)
		}
		var running string
		err = tx.QueryRowContext(ctx, `SELECT release FROM rollouts WHERE state = 'running'`).Scan(&running)
		if err == nil {
			return fmt.Errorf("a rollout to %s is running (configsrv rollout stop): %w", running, ErrExists)
		}
		if !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		rows, err := tx.QueryContext(ctx, `SELECT n.id, coalesce(a.status, 'unattested'), coalesce(a.release, '')
			FROM nodes n LEFT JOIN attestations a ON a.node_id = n.id
			WHERE n.state = 'enabled' ORDER BY n.id`)
		if err != nil {
			return err
		}
		type member struct {
			id   int64
			from string
		}
		var members []member
		for rows.Next() {
			var m member
			var st, rel string
			if err := rows.Scan(&m.id, &st, &rel); err != nil {
				rows.Close()
				return err
			}
			m.from = (&Attestation{Status: st, Release: rel}).Summary()
			if m.from != name {
				members = append(members, m)
			}
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		if len(members) == 0 {
			return fmt.Errorf("every enabled node already attested release %s: nothing to roll out", name)
		}
		res, err := tx.ExecContext(ctx, `INSERT INTO rollouts(release, max_unavailable, state, started) VALUES (?, ?, 'running', ?)`,
			name, maxUnavailable, unix(now))
		if err != nil {
			return err
		}
		if id, err = res.LastInsertId(); err != nil {
			return err
		}
		for i, m := range members {
			if _, err := tx.ExecContext(ctx, `INSERT INTO rollout_nodes(rollout_id, node_id, seq, from_release) VALUES (?, ?, ?, ?)`,
				id, m.id, i, m.from); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return s.rollout(ctx, s, `WHERE id = ?`, id)
}

// LatestRollout returns the running rollout, else the last one.
func (s *Store) LatestRollout(ctx context.Context) (*Rollout, error) {
	return s.rollout(ctx, s, `ORDER BY state = 'running' DESC, id DESC LIMIT 1`)
}

func (s *Store) rollout(ctx context.Context, q querier, where string, args ...any) (*Rollout, error) {
	list, err := queryAll(ctx, q, func(r scanner) (*Rollout, error) {
		var ro Rollout
		var started int64
		var ended sql.NullInt64
		if err := r.Scan(&ro.ID, &ro.Release, &ro.MaxUnavailable, &ro.State, &ro.Reason, &started, &ended); err != nil {
			return nil, err
		}
		ro.Started, ro.Ended = time.Unix(started, 0).UTC(), fromUnix(ended)
		return &ro, nil
	}, `SELECT id, release, max_unavailable, state, reason, started, ended FROM rollouts `+where, args...)
	if err != nil {
		return nil, err
	}
	if len(list) == 0 {
		return nil, ErrNoRollout
	}
	ro := &list[0]
	ro.Nodes, err = queryAll(ctx, q, func(r scanner) (*RolloutNode, error) {
		var n RolloutNode
		var asked, done sql.NullInt64
		var st, rel string
		if err := r.Scan(&n.NodeID, &n.State, &n.FromRelease, &asked, &done, &st, &rel); err != nil {
			return nil, err
		}
		n.Asked, n.Done = fromUnix(asked), fromUnix(done)
		n.Now = (&Attestation{Status: st, Release: rel}).Summary()
		return &n, nil
	}, `SELECT rn.node_id, rn.state, rn.from_release, rn.asked, rn.done, coalesce(a.status, 'unattested'), coalesce(a.release, '')
		FROM rollout_nodes rn LEFT JOIN attestations a ON a.node_id = rn.node_id
		WHERE rn.rollout_id = ? ORDER BY rn.seq`, ro.ID)
	return ro, err
}

// StopRollout stops the running rollout: nodes not yet asked stay as they
// are; a node asked and not back is no longer asked (its config drops
// the request).
func (s *Store) StopRollout(ctx context.Context, now time.Time) (*Rollout, error) {
	res, err := s.exec(ctx, `UPDATE rollouts SET state = 'stopped', reason = 'stopped by an administrator', ended = ?
		WHERE state = 'running'`, unix(now))
	if err != nil {
		return nil, err
	}
	if k, _ := res.RowsAffected(); k == 0 {
		return nil, ErrNoRollout
	}
	return s.LatestRollout(ctx)
}

// RolloutStep is what StepRollout changed.
type RolloutStep struct {
	Rollout int64
	Release string
	rollout.Step
}

// StepRollout advances the running rollout by one rollout.Decide step in
// one transaction: nodes asked to reboot, nodes done, the rollout failed
// or finished. Without a running rollout it returns (nil, nil).
func (s *Store) StepRollout(ctx context.Context, now time.Time) (*RolloutStep, error) {
	var out *RolloutStep
	err := s.tx(ctx, func(tx *sql.Tx) error {
		var id int64
		var target string
		var maxU int
		err := tx.QueryRowContext(ctx, `SELECT id, release, max_unavailable FROM rollouts WHERE state = 'running'`).Scan(&id, &target, &maxU)
		if errors.Is(err, sql.ErrNoRows) {
			return nil
		}
		if err != nil {
			return err
		}
		nodes, err := queryAll(ctx, tx, func(r scanner) (*rollout.Node, error) {
			var n rollout.Node
			var askedReset, reset sql.NullInt64
			var state api.NodeState
			if err := r.Scan(&n.ID, &n.State, &n.AskedBoot, &askedReset, &state, &n.BootID,
				&n.Attest, &n.Release, &reset, &n.RelaysRunning); err != nil {
				return nil, err
			}
			n.AskedReset, n.HasAskedReset = askedReset.Int64, askedReset.Valid
			n.Reset, n.HasReset = reset.Int64, reset.Valid
			n.Enabled = state == api.NodeEnabled
			return &n, nil
		}, `SELECT rn.node_id, rn.state, rn.boot_id, rn.asked_reset, n.state, n.boot_id,
			coalesce(a.status, 'unattested'), coalesce(a.release, ''), a.reset_count,
			NOT EXISTS (SELECT 1 FROM relays r WHERE r.node_id = n.id AND r.run_state != 'running')
			FROM rollout_nodes rn JOIN nodes n ON n.id = rn.node_id LEFT JOIN attestations a ON a.node_id = n.id
			WHERE rn.rollout_id = ? ORDER BY rn.seq`, id)
		if err != nil {
			return err
		}
		st := rollout.Decide(target, maxU, nodes)
		out = &RolloutStep{Rollout: id, Release: target, Step: st}
		for _, n := range st.Done {
			if _, err := tx.ExecContext(ctx, `UPDATE rollout_nodes SET state = 'done', done = ? WHERE rollout_id = ? AND node_id = ?`,
				unix(now), id, n); err != nil {
				return err
			}
		}
		for _, n := range st.Ask {
			if _, err := tx.ExecContext(ctx, `UPDATE rollout_nodes SET state = 'rebooting', asked = ?,
				boot_id = (SELECT boot_id FROM nodes WHERE id = ?),
				asked_reset = (SELECT reset_count FROM attestations WHERE node_id = ?)
				WHERE rollout_id = ? AND node_id = ?`, unix(now), n, n, id, n); err != nil {
				return err
			}
		}
		switch {
		case st.Failed != nil:
			if _, err := tx.ExecContext(ctx, `UPDATE rollout_nodes SET state = 'failed' WHERE rollout_id = ? AND node_id = ?`,
				id, st.Failed.Node); err != nil {
				return err
			}
			_, err = tx.ExecContext(ctx, `UPDATE rollouts SET state = 'failed', reason = ?, ended = ? WHERE id = ?`,
				st.Failed.Reason, unix(now), id)
		case st.Finished:
			_, err = tx.ExecContext(ctx, `UPDATE rollouts SET state = 'done', ended = ? WHERE id = ?`, unix(now), id)
		}
		return err
	})
	return out, err
}

// RebootRequest is the reboot the running rollout asks of node id, or
// nil: part of the node's config.
func (s *Store) RebootRequest(ctx context.Context, id int64) (*api.Reboot, error) {
	var r api.Reboot
	err := s.queryRow(ctx, `SELECT rn.boot_id, ro.release FROM rollout_nodes rn JOIN rollouts ro ON ro.id = rn.rollout_id
		WHERE rn.node_id = ? AND rn.state = 'rebooting' AND ro.state = 'running'`, id).Scan(&r.BootID, &r.Release)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return &r, nil
}
