package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"patela/internal/release"
)

// Release is a registered release: its record and whether its approval
// is still served.
type Release struct {
	Name    string           `json:"name"`
	Kind    string           `json:"kind"`
	Added   time.Time        `json:"added"`
	Retired time.Time        `json:"retired"` // zero while active
	Record  *release.Release `json:"record"`
}

// Active reports whether the release's approval is served.
func (r *Release) Active() bool { return r.Retired.IsZero() }

// AddRelease registers a checked release record. A name or an approved
// policy already registered is ErrExists: one release per PCR state, so a
// node's PCRs name one release.
func (s *Store) AddRelease(ctx context.Context, r *release.Release, now time.Time) error {
	if err := r.Check(); err != nil {
		return err
	}
	if r.Approval == nil {
		return fmt.Errorf("release %s is not approved (stimage release approve): nodes could not use it", r.Name)
	}
	rec, err := r.Marshal()
	if err != nil {
		return err
	}
	return s.tx(ctx, func(tx *sql.Tx) error {
		have, err := releasesQ(ctx, tx)
		if err != nil {
			return err
		}
		for _, h := range have {
			if h.Name == r.Name {
				return fmt.Errorf("release %s: %w", r.Name, ErrExists)
			}
			if h.Record.Policy.Digest == r.Policy.Digest {
				return fmt.Errorf("release %s has the same PCR policy as release %s: %w", r.Name, h.Name, ErrExists)
			}
		}
		_, err = tx.ExecContext(ctx, `INSERT INTO releases(name, kind, record, added) VALUES (?, ?, ?, ?)`,
			r.Name, r.Kind, rec, now.Unix())
		return err
	})
}

// Releases lists every release, newest first.
func (s *Store) Releases(ctx context.Context) ([]Release, error) {
	return releasesQ(ctx, s)
}

func releasesQ(ctx context.Context, q querier) ([]Release, error) {
	rows, err := q.QueryContext(ctx, `SELECT name, kind, record, added, retired FROM releases ORDER BY added DESC, id DESC`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Release
	for rows.Next() {
		var r Release
		var rec []byte
		var added int64
		var retired sql.NullInt64
		if err := rows.Scan(&r.Name, &r.Kind, &rec, &added, &retired); err != nil {
			return nil, err
		}
		if r.Record, err = release.Parse(rec); err != nil {
			return nil, fmt.Errorf("stored release %s: %w", r.Name, err)
		}
		r.Added, r.Retired = time.Unix(added, 0).UTC(), fromUnix(retired)
		out = append(out, r)
	}
	return out, rows.Err()
}

// RetireRelease stops serving a release's approval.
func (s *Store) RetireRelease(ctx context.Context, name string, now time.Time) error {
	var retired sql.NullInt64
	err := s.queryRow(ctx, `SELECT retired FROM releases WHERE name = ?`, name).Scan(&retired)
	if errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("release %s: %w", name, ErrNotFound)
	}
	if err != nil {
		return err
	}
	if retired.Valid {
		return fmt.Errorf("release %s was retired on %s already", name, fromUnix(retired).Format(time.RFC3339))
	}
	return s.exec1(ctx, "release "+name, `UPDATE releases SET retired = ? WHERE name = ? AND retired IS NULL`, now.Unix(), name)
}

// RecordSealing stores how a node said it seals its vault, and the
// release it was given the approval of ("" for none).
func (s *Store) RecordSealing(ctx context.Context, nodeID int64, sealing, releaseName string) error {
	return s.exec1(ctx, fmt.Sprintf("node %d", nodeID), `UPDATE nodes SET sealing = ?, booted_release = ? WHERE id = ?`,
		sealing, releaseName, nodeID)
}
