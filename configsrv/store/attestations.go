package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"patela/internal/pcr"
)

// Attestation statuses: what a node's last completed attestation proved.
const (
	AttestUnattested = "unattested" // no quote (an agent older than remote attestation)
	AttestRelease    = "release"    // the quote matched Release
	AttestUnknown    = "unknown"    // the quote matched no registered release
)

// Attestation is a node's boot evidence from its last completed
// attestation (configsrv/quote verified it).
type Attestation struct {
	NodeID    int64             `json:"node_id"`
	Status    string            `json:"status"`
	Release   string            `json:"release,omitempty"`
	PCRs      map[int]pcr.Value `json:"pcrs,omitempty"`
	PCRDigest string            `json:"pcr_digest,omitempty"`
	// EventLog is whether the firmware log replayed to the quoted PCRs
	// ("replayed", "failed", "absent"; "" when unattested).
	EventLog  string `json:"event_log,omitempty"`
	LogDetail string `json:"event_log_detail,omitempty"`
	// ResetCount is the TPM's boot counter as the quote carried it
	// (obfuscated per AK: only compared); HasReset false without a quote.
	ResetCount int64 `json:"-"`
	HasReset   bool  `json:"-"`
	// At is when this evidence was first shown; re-attestations of the
	// same boot leave it (the node's AttestedAt is the last one).
	At time.Time `json:"at"`
}

// Summary is the attestation in one word: the release's name, "unknown"
// or "unattested" (what `node list` and metrics show).
func (a *Attestation) Summary() string {
	if a == nil {
		return AttestUnattested
	}
	if a.Status == AttestRelease {
		return a.Release
	}
	return a.Status
}

// RecordAttestation stores a node's boot evidence and returns the summary
// of the one it replaces (AttestUnattested for none), so a change can be
// audited.
func (s *Store) RecordAttestation(ctx context.Context, a *Attestation) (before string, err error) {
	err = s.tx(ctx, func(tx *sql.Tx) error {
		before, err = s.recordAttestation(ctx, tx, a)
		return err
	})
	return before, err
}

// recordAttestation is RecordAttestation in tx, with the store's prepared
// statements (every boot writes its evidence: a new reset count).
func (s *Store) recordAttestation(ctx context.Context, tx *sql.Tx, a *Attestation) (before string, err error) {
	var pcrs []byte
	if len(a.PCRs) > 0 {
		if pcrs, err = json.Marshal(a.PCRs); err != nil {
			return "", err
		}
	}
	sel, err := s.stmt(ctx, `SELECT status, release FROM attestations WHERE node_id = ?`)
	if err != nil {
		return "", err
	}
	ups, err := s.stmt(ctx, `INSERT INTO attestations(node_id, status, release, pcrs, pcr_digest, event_log, log_detail, reset_count, at)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
			ON CONFLICT(node_id) DO UPDATE SET status = excluded.status, release = excluded.release, pcrs = excluded.pcrs,
				pcr_digest = excluded.pcr_digest, event_log = excluded.event_log, log_detail = excluded.log_detail,
				reset_count = excluded.reset_count, at = excluded.at`)
	if err != nil {
		return "", err
	}
	var st, rel string
	err = tx.StmtContext(ctx, sel).QueryRowContext(ctx, a.NodeID).Scan(&st, &rel)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		before = AttestUnattested
	case err != nil:
		return "", err
	default:
		before = (&Attestation{Status: st, Release: rel}).Summary()
	}
	reset := sql.NullInt64{Int64: a.ResetCount, Valid: a.HasReset}
	_, err = tx.StmtContext(ctx, ups).ExecContext(ctx, a.NodeID, a.Status, a.Release, string(pcrs), a.PCRDigest, a.EventLog, a.LogDetail, reset, unix(a.At))
	return before, err
}

const attestCols = `node_id, status, release, pcrs, pcr_digest, event_log, log_detail, reset_count, at`

func scanAttestation(r scanner) (*Attestation, error) {
	var a Attestation
	var pcrs string
	var reset sql.NullInt64
	var at int64
	if err := r.Scan(&a.NodeID, &a.Status, &a.Release, &pcrs, &a.PCRDigest, &a.EventLog, &a.LogDetail, &reset, &at); err != nil {
		return nil, err
	}
	if pcrs != "" {
		if err := json.Unmarshal([]byte(pcrs), &a.PCRs); err != nil {
			return nil, fmt.Errorf("attestation of node %d: pcrs: %w", a.NodeID, err)
		}
	}
	a.ResetCount, a.HasReset = reset.Int64, reset.Valid
	a.At = time.Unix(at, 0).UTC()
	return &a, nil
}

// Attestation returns node id's boot evidence; ErrNotFound if it never
// completed an attestation since remote attestation came in.
func (s *Store) Attestation(ctx context.Context, id int64) (*Attestation, error) {
	a, err := scanAttestation(s.queryRow(ctx, `SELECT `+attestCols+` FROM attestations WHERE node_id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("attestation of node %d: %w", id, ErrNotFound)
	}
	return a, err
}

// Attestations returns every node's boot evidence by node id (nodes
// missing from it are unattested). `node list` and the metrics read it.
func (s *Store) Attestations(ctx context.Context) (map[int64]*Attestation, error) {
	list, err := queryAll(ctx, s, scanAttestation, `SELECT `+attestCols+` FROM attestations`)
	if err != nil {
		return nil, err
	}
	out := make(map[int64]*Attestation, len(list))
	for i := range list {
		out[list[i].NodeID] = &list[i]
	}
	return out, nil
}

// ReleasesVersion changes whenever a release is added or retired (records
// are never deleted), so a caller may cache the parsed releases.
func (s *Store) ReleasesVersion(ctx context.Context) (string, error) {
	var n, maxID, retired int64
	err := s.queryRow(ctx, `SELECT count(*), coalesce(max(id), 0), count(retired) FROM releases`).Scan(&n, &maxID, &retired)
	return fmt.Sprintf("%d/%d/%d", n, maxID, retired), err
}
