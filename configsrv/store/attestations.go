package store

import (
	"context"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
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
	sel, err := s.stmt(ctx, `SELECT status, release FROM attestations WHERE node_id = ?`)
	if err != nil {
		return "", err
	}
	err = s.tx(ctx, func(tx *sql.Tx) error {
		var st, rel sql.NullString
		if err := tx.StmtContext(ctx, sel).QueryRowContext(ctx, a.NodeID).Scan(&st, &rel); err != nil && !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		before = storedSummary(st, rel)
		return s.writeAttestation(ctx, tx, a, st.Valid)
	})
	return before, err
}

// storedSummary is the Summary of a node's stored evidence read as its
// status and release, both NULL for none (AttestUnattested).
func storedSummary(status, release sql.NullString) string {
	if !status.Valid {
		return AttestUnattested
	}
	return (&Attestation{Status: status.String, Release: release.String}).Summary()
}

// writeAttestation stores a as its node's evidence, replacing the
// evidence it has if exists (an UPDATE costs a third less than an
// upsert's failed INSERT).
func (s *Store) writeAttestation(ctx context.Context, tx *sql.Tx, a *Attestation, exists bool) error {
	q := `INSERT INTO attestations(status, release, pcrs, pcr_digest, event_log, log_detail, reset_count, at, node_id)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`
	if exists {
		q = `UPDATE attestations SET status = ?, release = ?, pcrs = ?, pcr_digest = ?, event_log = ?, log_detail = ?,
			reset_count = ?, at = ? WHERE node_id = ?`
	}
	st, err := s.stmt(ctx, q)
	if err != nil {
		return err
	}
	reset := sql.NullInt64{Int64: a.ResetCount, Valid: a.HasReset}
	_, err = tx.StmtContext(ctx, st).ExecContext(ctx, a.Status, a.Release, pcrsJSON(a.PCRs), a.PCRDigest, a.EventLog, a.LogDetail, reset, unix(a.At), a.NodeID)
	return err
}

// pcrsJSON is the pcrs column: a JSON object of p's values by index, in
// index order, or "" for none. Written by hand, in one allocation: every
// boot stores it, and the reflective encoder cost as much as the
// statement.
func pcrsJSON(p map[int]pcr.Value) string {
	if len(p) == 0 {
		return ""
	}
	var arr [32]int // a TPM has 24 PCRs
	keys := arr[:0]
	for n := range p {
		keys = append(keys, n)
	}
	slices.Sort(keys)
	var b strings.Builder
	b.Grow(len(p)*(2*len(pcr.Value{})+9) + 2)
	b.WriteByte('{')
	var hexv [2 * len(pcr.Value{})]byte
	for i, n := range keys {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteByte('"')
		b.WriteString(strconv.Itoa(n))
		b.WriteString(`":"`)
		v := p[n]
		hex.Encode(hexv[:], v[:])
		b.Write(hexv[:])
		b.WriteByte('"')
	}
	b.WriteByte('}')
	return b.String()
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

// ReleasesVersion changes whenever a release is added, retired or
// removed, so a caller may cache the parsed releases.
func (s *Store) ReleasesVersion(ctx context.Context) (string, error) {
	var v string
	err := s.queryRow(ctx, `SELECT `+releasesVersion).Scan(&v)
	return v, err
}

// releasesVersion is ReleasesVersion as an SQL expression, so
// CompleteAttestation reads it in its first statement.
const releasesVersion = `(SELECT n FROM releases_generation)`
