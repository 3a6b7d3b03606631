package store

import (
	"context"
	"database/sql"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/google/go-tpm/tpm2"

	"patela/internal/api"
	"patela/internal/ekid"
)

// nodeIDsStep is the Go step of migration 0017: nodes rebuilt with
// AUTOINCREMENT ids, removed ids kept unused.
func nodeIDsStep(ctx context.Context, tx *sql.Tx) error {
	if err := autoincrementNodes(ctx, tx); err != nil {
		return fmt.Errorf("rebuilding nodes: %w", err)
	}
	// Ids removed before this migration are named in the audit log
	// (node:N): they are never handed out again either.
	for _, q := range []string{
		`UPDATE sqlite_sequence SET name = 'nodes' WHERE name = 'nodes_new'`,
		`INSERT INTO sqlite_sequence(name, seq) SELECT 'nodes', coalesce((SELECT max(id) FROM nodes), 0)
			WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'nodes')`,
		`UPDATE sqlite_sequence SET seq = max(seq,
			(SELECT coalesce(max(CAST(substr(target, 6) AS INTEGER)), 0) FROM audit WHERE target GLOB 'node:[0-9]*'),
			(SELECT coalesce(max(CAST(substr(actor, 6) AS INTEGER)), 0) FROM audit WHERE actor GLOB 'node:[0-9]*'))
			WHERE name = 'nodes'`,
	} {
		if _, err := tx.ExecContext(ctx, q); err != nil {
			return err
		}
	}
	return nil
}

var (
	idColumn   = regexp.MustCompile(`(?i)\bid\s+INTEGER\s+PRIMARY\s+KEY\b(\s+AUTOINCREMENT\b)?`)
	createName = regexp.MustCompile(`(?i)^CREATE\s+TABLE\s+"?nodes"?`)
)

// autoincrementNodes rebuilds nodes with its id AUTOINCREMENT, the way
// SQLite documents for schema changes ALTER TABLE cannot make: the table
// as it stands now (whatever migrations added to it) is created anew
// under another name, filled, swapped in, and its indexes and triggers
// created again. The rename runs with legacy_alter_table on, so triggers
// of other tables that name nodes are neither checked against the
// half-built schema nor rewritten.
func autoincrementNodes(ctx context.Context, tx *sql.Tx) error {
	var create string
	if err := tx.QueryRowContext(ctx, `SELECT sql FROM sqlite_schema WHERE type = 'table' AND name = 'nodes'`).Scan(&create); err != nil {
		return err
	}
	loc := idColumn.FindStringIndex(create)
	if loc == nil || !createName.MatchString(create) {
		return fmt.Errorf("unexpected nodes schema: %s", create)
	}
	create = createName.ReplaceAllString(create[:loc[0]]+"id INTEGER PRIMARY KEY AUTOINCREMENT"+create[loc[1]:], "CREATE TABLE nodes_new")
	type obj struct{ typ, sql string }
	var keep []obj
	rows, err := tx.QueryContext(ctx, `SELECT type, sql FROM sqlite_schema
		WHERE tbl_name = 'nodes' AND type IN ('index', 'trigger') AND sql IS NOT NULL ORDER BY type, name`)
	if err != nil {
		return err
	}
	for rows.Next() {
		var o obj
		if err := rows.Scan(&o.typ, &o.sql); err != nil {
			rows.Close()
			return err
		}
		keep = append(keep, o)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	var cols []string
	rows, err = tx.QueryContext(ctx, `SELECT name FROM pragma_table_info('nodes') ORDER BY cid`)
	if err != nil {
		return err
	}
	for rows.Next() {
		var c string
		if err := rows.Scan(&c); err != nil {
			rows.Close()
			return err
		}
		cols = append(cols, `"`+strings.ReplaceAll(c, `"`, `""`)+`"`)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	list := strings.Join(cols, ", ")
	steps := []string{
		create,
		`INSERT INTO nodes_new(` + list + `) SELECT ` + list + ` FROM nodes`,
		`DROP TABLE nodes`,
		`PRAGMA legacy_alter_table = ON`,
		`ALTER TABLE nodes_new RENAME TO nodes`,
		`PRAGMA legacy_alter_table = OFF`,
	}
	for _, o := range keep {
		steps = append(steps, o.sql)
	}
	for _, q := range steps {
		if _, err := tx.ExecContext(ctx, q); err != nil {
			return fmt.Errorf("%.60s: %w", q, err)
		}
	}
	return nil
}

// rekeyNodes is the Go step of migration 0016: ek_hash was the SHA-256 of
// the EK public area the client sent; it becomes the EK identity. Rows
// that were one EK sent in several encodings (the attack the identity
// stops) collapse into one: the row of the strictest state wins (banned,
// then enabled, disabled, pending; the oldest on a tie), so a ban is never
// escaped, and the others are removed with what hangs off them, each
// removal audited. A row whose public area does not parse keeps its hash:
// that EK cannot attest anyway.
//
// It runs with foreign keys on, so a removal cascades into every table
// that references nodes (whichever migrations made them) and fires the
// triggers a removal by the CLI would.
func rekeyNodes(ctx context.Context, tx *sql.Tx) error {
	type row struct {
		id    int64
		state api.NodeState
		ek    ekid.ID
	}
	rows, err := tx.QueryContext(ctx, `SELECT id, state, ek_public FROM nodes ORDER BY id`)
	if err != nil {
		return err
	}
	var all []row
	for rows.Next() {
		var r row
		var pub []byte
		if err := rows.Scan(&r.id, &r.state, &pub); err != nil {
			rows.Close()
			return err
		}
		p, err := tpm2.Unmarshal[tpm2.TPMTPublic](pub)
		if err != nil {
			continue
		}
		if r.ek, err = ekid.Of(p); err != nil {
			continue
		}
		all = append(all, r)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	rank := map[api.NodeState]int{api.NodeBanned: 4, api.NodeEnabled: 3, api.NodeDisabled: 2, api.NodePending: 1}
	winner := map[ekid.ID]row{}
	for _, r := range all { // by id, so the oldest wins a tie
		if w, ok := winner[r.ek]; !ok || rank[r.state] > rank[w.state] {
			winner[r.ek] = r
		}
	}
	now := time.Now().UnixNano()
	for _, r := range all {
		w := winner[r.ek]
		if w.id == r.id {
			continue
		}
		var relays int
		if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM relays WHERE node_id = ?`, r.id).Scan(&relays); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM nodes WHERE id = ?`, r.id); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO audit(time, actor, action, target, details) VALUES (?, ?, ?, ?, ?)`,
			now, "migration:0016", "node.merge", fmt.Sprintf("node:%d", r.id),
			fmt.Sprintf("same EK as node %d (%s); this %s node and its %d relays removed", w.id, w.state, r.state, relays)); err != nil {
			return err
		}
	}
	for _, r := range all {
		if winner[r.ek].id != r.id {
			continue
		}
		if _, err := tx.ExecContext(ctx, `UPDATE nodes SET ek_hash = ? WHERE id = ?`, r.ek[:], r.id); err != nil {
			return err
		}
	}
	return nil
}
