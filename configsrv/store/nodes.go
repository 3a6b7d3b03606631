package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"patela/internal/api"
	"patela/internal/ekid"
)

// Node is one machine, identified by its TPM's endorsement key.
type Node struct {
	ID           int64         `json:"id"`
	EKHash       []byte        `json:"ek_hash"` // the EK identity (internal/ekid)
	EKPublic     []byte        `json:"-"`
	AKName       []byte        `json:"ak_name,omitempty"`
	State        api.NodeState `json:"state"`
	TokenEpoch   int64         `json:"token_epoch"`
	FirstSeen    time.Time     `json:"first_seen"`
	LastSeen     time.Time     `json:"last_seen"`
	AttestedAt   time.Time     `json:"attested_at"`
	BootID       string        `json:"boot_id"`
	UptimeS      int64         `json:"uptime_s"`
	CPUs         int           `json:"cpus"`
	MemoryBytes  uint64        `json:"memory_bytes"`
	CPUModel     string        `json:"cpu_model"`
	Torrc        string        `json:"-"`
	Relays       int           `json:"relays"`
	RelaysWanted int           `json:"relays_wanted"` // what its last specs asked for; more than Relays: pools full
	// Sealing and Release are what the agent last reported: its sealing
	// mode ("release", "unmeasured"; "" from an older agent) and the
	// release whose approval it was given.
	Sealing string `json:"sealing"`
	Release string `json:"release"`
	// Alarms are what the listings warn of (Store.Alarms fills them).
	Alarms []string `json:"alarms,omitempty"`

	attested string // AttestedRelease
}

const nodeCols = `n.id, n.ek_hash, n.ek_public, n.ak_name, n.state, n.token_epoch, n.first_seen, n.last_seen, n.attested_at,
	n.boot_id, n.uptime_s, n.cpus, n.memory_bytes, n.cpu_model, n.torrc,
	(SELECT count(*) FROM relays r WHERE r.node_id = n.id), n.relays_wanted, n.sealing, n.booted_release,
	coalesce((SELECT CASE a.status WHEN 'release' THEN a.release WHEN 'unknown' THEN 'unknown' END
		FROM attestations a WHERE a.node_id = n.id), '')`

type scanner interface{ Scan(...any) error }

func scanNode(r scanner) (*Node, error) {
	var n Node
	var first, last, att sql.NullInt64
	var mem int64
	err := r.Scan(&n.ID, &n.EKHash, &n.EKPublic, &n.AKName, &n.State, &n.TokenEpoch, &first, &last, &att,
		&n.BootID, &n.UptimeS, &n.CPUs, &mem, &n.CPUModel, &n.Torrc, &n.Relays, &n.RelaysWanted, &n.Sealing, &n.Release, &n.attested)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	n.MemoryBytes = uint64(mem)
	n.FirstSeen, n.LastSeen, n.AttestedAt = fromUnix(first), fromUnix(last), fromUnix(att)
	return &n, nil
}

// Node returns node id.
func (s *Store) Node(ctx context.Context, id int64) (*Node, error) {
	n, err := scanNode(s.queryRow(ctx, `SELECT `+nodeCols+` FROM nodes n WHERE n.id = ?`, id))
	if errors.Is(err, ErrNotFound) {
		return nil, fmt.Errorf("node %d: %w", id, ErrNotFound)
	}
	return n, err
}

// Auth is what every node request is checked against: the node's state
// and what its tokens must name.
type Auth struct {
	State api.NodeState
	EK    ekid.ID
	Epoch int64
}

// NodeAuth returns node id's Auth; the one query a node endpoint makes
// before any work.
func (s *Store) NodeAuth(ctx context.Context, id int64) (Auth, error) {
	var a Auth
	var ek []byte
	err := s.queryRow(ctx, `SELECT state, ek_hash, token_epoch FROM nodes WHERE id = ?`, id).Scan(&a.State, &ek, &a.Epoch)
	if errors.Is(err, sql.ErrNoRows) {
		return Auth{}, fmt.Errorf("node %d: %w", id, ErrNotFound)
	}
	copy(a.EK[:], ek)
	return a, err
}

// Nodes returns every node by id.
func (s *Store) Nodes(ctx context.Context) ([]Node, error) {
	return queryAll(ctx, s, scanNode, `SELECT `+nodeCols+` FROM nodes n ORDER BY n.id`)
}

// NodeByEK finds the node of EK identity id. Only the identity fields
// (ID, EKHash, State, FirstSeen) are filled: it is on the attestation hot
// path.
func (s *Store) NodeByEK(ctx context.Context, id ekid.ID) (*Node, error) {
	n := &Node{EKHash: id[:]}
	var first int64
	err := s.queryRow(ctx, `SELECT id, state, first_seen FROM nodes WHERE ek_hash = ?`, id[:]).Scan(&n.ID, &n.State, &first)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("EK %s: %w", id, ErrNotFound)
	}
	n.FirstSeen = time.Unix(first, 0).UTC()
	return n, err
}

// ErrPendingFull refuses a first contact: the pending nodes are at their cap.
var ErrPendingFull = errors.New("too many nodes are pending")

// PendingLimits bound what first contacts can write.
type PendingLimits struct {
	Max    int           // pending nodes at most; 0: no cap
	Expiry time.Duration // pending nodes first seen longer ago are forgotten; 0: never
}

// AddPending creates the pending node of EK identity id on its first
// contact, or returns the node if it exists by now. It first forgets
// pending nodes past their expiry (at most once a minute, audited in one
// row); a new node beyond lim.Max is refused with ErrPendingFull. Then
// may, if set, has the last word (a per-client limit: it is asked only
// when a node would be created); its error is returned as it is. On any
// refusal nothing is written.
func (s *Store) AddPending(ctx context.Context, id ekid.ID, ekPublic []byte, now time.Time, lim PendingLimits, may func() error) (n *Node, created bool, err error) {
	err = s.tx(ctx, func(tx *sql.Tx) error {
		if err := s.expirePending(ctx, tx, now, lim.Expiry); err != nil {
			return err
		}
		n = &Node{EKHash: id[:]}
		var first int64
		err := tx.QueryRowContext(ctx, `SELECT id, state, first_seen FROM nodes WHERE ek_hash = ?`, id[:]).Scan(&n.ID, &n.State, &first)
		if err == nil {
			n.FirstSeen = time.Unix(first, 0).UTC()
			return nil
		}
		if !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		if lim.Max > 0 {
			var pending int
			if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM nodes WHERE state = 'pending'`).Scan(&pending); err != nil {
				return err
			}
			if pending >= lim.Max {
				return fmt.Errorf("%d nodes: %w", pending, ErrPendingFull)
			}
		}
		if may != nil {
			if err := may(); err != nil {
				return err
			}
		}
		if err := tx.QueryRowContext(ctx, `INSERT INTO nodes(ek_hash, ek_public, state, first_seen, last_seen)
			VALUES (?, ?, 'pending', ?, ?) RETURNING id`, id[:], ekPublic, unix(now), unix(now)).Scan(&n.ID); err != nil {
			return err
		}
		n.State, n.FirstSeen, created = api.NodePending, time.Unix(unix(now), 0).UTC(), true
		return nil
	})
	if err != nil {
		return nil, false, err
	}
	return n, created, nil
}

// expirePending deletes the pending nodes first seen more than expiry
// before now, at most once a minute per Store.
func (s *Store) expirePending(ctx context.Context, tx *sql.Tx, now time.Time, expiry time.Duration) error {
	if expiry <= 0 || now.Unix()-s.expired.Load() < 60 {
		return nil
	}
	s.expired.Store(now.Unix())
	rows, err := tx.QueryContext(ctx, `DELETE FROM nodes WHERE state = 'pending' AND first_seen < ? RETURNING id`, unix(now.Add(-expiry)))
	if err != nil {
		return err
	}
	var ids []int64
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			rows.Close()
			return err
		}
		ids = append(ids, id)
	}
	rows.Close()
	if err := rows.Err(); err != nil || len(ids) == 0 {
		return err
	}
	slices.Sort(ids)
	var shown []string
	for i, id := range ids {
		if i == 20 {
			shown = append(shown, "...")
			break
		}
		shown = append(shown, strconv.FormatInt(id, 10))
	}
	_, err = tx.ExecContext(ctx, `INSERT INTO audit(time, actor, action, target, details) VALUES (?, ?, ?, ?, ?)`,
		now.UnixNano(), "server", "node.pending_expired", "-",
		fmt.Sprintf("%d pending nodes not enabled within %s forgotten: %s", len(ids), expiry, strings.Join(shown, " ")))
	return err
}

// SetNodeState changes a node's state and bumps its token epoch, so no
// token issued before the change is accepted after it.
func (s *Store) SetNodeState(ctx context.Context, id int64, state api.NodeState) error {
	switch state {
	case api.NodePending, api.NodeEnabled, api.NodeDisabled, api.NodeBanned:
	default:
		return fmt.Errorf("invalid node state %q", state)
	}
	return s.exec1(ctx, fmt.Sprintf("node %d", id), `UPDATE nodes SET state = ?, token_epoch = token_epoch + 1 WHERE id = ?`, state, id)
}

// RemoveNode deletes a node with its relays (freeing their names and
// addresses), settings and key bundle. Its id is never used again, so
// its tokens name no node from now on, nor its pending challenges
// (configsrv/challenge) a node that could complete them.
func (s *Store) RemoveNode(ctx context.Context, id int64) error {
	return s.exec1(ctx, fmt.Sprintf("node %d", id), `DELETE FROM nodes WHERE id = ?`, id)
}

// exec1 runs a statement that must touch exactly one row.
func (s *Store) exec1(ctx context.Context, what, query string, args ...any) error {
	res, err := s.exec(ctx, query, args...)
	if err != nil {
		return err
	}
	if k, _ := res.RowsAffected(); k == 0 {
		return fmt.Errorf("%s: %w", what, ErrNotFound)
	}
	return nil
}

// Attested is the outcome of CompleteAttestation.
type Attested struct {
	State     api.NodeState // the node's state; nothing was recorded unless enabled
	Auth      Auth          // what the node's token names
	FirstBoot bool          // its first completed attestation
	Before    string        // the summary of the evidence Evidence replaced
}

// Completion is a node's successful activation, as CompleteAttestation
// records it.
type Completion struct {
	NodeID int64
	EK     ekid.ID // the EK identity the node was challenged as
	AKName []byte
	At     time.Time
	// Evidence is the boot evidence to store (RecordAttestation), or nil.
	Evidence *Attestation
	// Releases is the ReleasesVersion the quote was matched against, or
	// "" if it was not.
	Releases string
	// Audit, if not nil, makes the audit rows written with the activation
	// from its outcome (only when the activation is recorded).
	Audit func(Attested) []AuditRow
}

// ErrReleasesChanged: a release was added or retired since the quote
// was matched; nothing was recorded.
var ErrReleasesChanged = errors.New("the registered releases changed")

// CompleteAttestation records c if its node is enabled, in one
// transaction whose first statement reads all it decides on: the node's
// state and what its token must name (an admin's change lands before or
// after, whole), the evidence it replaces, and the releases' version. A
// node removed, or re-keyed since its challenge, is ErrNotFound; releases
// changed since the match are ErrReleasesChanged.
func (s *Store) CompleteAttestation(ctx context.Context, c Completion) (Attested, error) {
	var a Attested
	// Subqueries, not a LEFT JOIN: the join's plan cost three times the
	// statement (BenchmarkCompleteAttestation).
	sel, err := s.stmt(ctx, `SELECT state, ek_hash, token_epoch, attested_at,
		(SELECT status FROM attestations WHERE node_id = n.id), (SELECT release FROM attestations WHERE node_id = n.id), `+releasesVersion+`
		FROM nodes n WHERE id = ?`)
	if err != nil {
		return a, err
	}
	upd, err := s.stmt(ctx, `UPDATE nodes SET attested_at = ?, last_seen = ?, ak_name = ? WHERE id = ?`)
	if err != nil {
		return a, err
	}
	err = s.tx(ctx, func(tx *sql.Tx) error {
		var att sql.NullInt64
		var ek []byte
		var st, rel sql.NullString
		var version string
		if err := tx.StmtContext(ctx, sel).QueryRowContext(ctx, c.NodeID).Scan(&a.State, &ek, &a.Auth.Epoch, &att, &st, &rel, &version); err != nil {
			if errors.Is(err, sql.ErrNoRows) {
				return fmt.Errorf("node %d: %w", c.NodeID, ErrNotFound)
			}
			return err
		}
		a.Auth.State = a.State
		copy(a.Auth.EK[:], ek)
		switch {
		case a.Auth.EK != c.EK:
			return fmt.Errorf("node %d was re-keyed: %w", c.NodeID, ErrNotFound)
		case c.Releases != "" && version != c.Releases:
			return ErrReleasesChanged
		case a.State != api.NodeEnabled:
			return nil
		}
		a.FirstBoot = !att.Valid
		if _, err := tx.StmtContext(ctx, upd).ExecContext(ctx, unix(c.At), unix(c.At), c.AKName, c.NodeID); err != nil {
			return err
		}
		if c.Evidence != nil {
			a.Before = storedSummary(st, rel)
			if err := s.writeAttestation(ctx, tx, c.Evidence, st.Valid); err != nil {
				return err
			}
		}
		if c.Audit != nil {
			return s.writeAudit(ctx, tx, c.Audit(a)...)
		}
		return nil
	})
	return a, err
}

// KeyBundle returns the node's key-bundle ciphertext mirror.
func (s *Store) KeyBundle(ctx context.Context, nodeID int64) (*api.KeyBundle, error) {
	var b api.KeyBundle
	var v int64
	err := s.queryRow(ctx, `SELECT bundle, version FROM key_bundles WHERE node_id = ?`, nodeID).Scan(&b.Bundle, &v)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("key bundle of node %d: %w", nodeID, ErrNotFound)
	}
	b.Version = uint64(v)
	return &b, err
}

// PutKeyBundle stores a newer ciphertext; an older or equal version is
// refused with ErrStale.
func (s *Store) PutKeyBundle(ctx context.Context, nodeID int64, b *api.KeyBundle, now time.Time) error {
	if b.Version > 1<<63-1 {
		return fmt.Errorf("version %d: %w", b.Version, ErrStale)
	}
	return s.tx(ctx, func(tx *sql.Tx) error {
		var cur int64
		err := tx.QueryRow(`SELECT version FROM key_bundles WHERE node_id = ?`, nodeID).Scan(&cur)
		switch {
		case errors.Is(err, sql.ErrNoRows):
			_, err = tx.Exec(`INSERT INTO key_bundles(node_id, version, bundle, updated) VALUES (?, ?, ?, ?)`,
				nodeID, int64(b.Version), b.Bundle, unix(now))
			return err
		case err != nil:
			return err
		case int64(b.Version) <= cur:
			return fmt.Errorf("version %d, stored %d: %w", b.Version, cur, ErrStale)
		}
		_, err = tx.Exec(`UPDATE key_bundles SET version = ?, bundle = ?, updated = ? WHERE node_id = ?`,
			int64(b.Version), b.Bundle, unix(now), nodeID)
		return err
	})
}

// RecordStatus stores a heartbeat: boot id, uptime, last_seen, and what
// the agent reports of each of its relays. Names the node does not own are
// ignored (a relay removed since the agent last fetched its config). Its
// metrics summary, if any, replaces the node's last one (metrics.go); a
// heartbeat without one keeps it, unless the node rebooted since. served
// maps each relay to the torrc_sha256 the server serves it; a relay that
// reports running another is flagged (torrc_differs). It returns the keys
// a relay reported for the first time that another relay reported too (a
// cloned vault, a replayed key).
func (s *Store) RecordStatus(ctx context.Context, nodeID int64, st *api.Status, served map[string]string, now time.Time) ([]Duplicate, error) {
	var dups []Duplicate
	err := s.tx(ctx, func(tx *sql.Tx) error {
		dups = nil
		var boot string
		err := tx.QueryRow(`SELECT boot_id FROM nodes WHERE id = ?`, nodeID).Scan(&boot)
		if errors.Is(err, sql.ErrNoRows) {
			return nil // removed since its token was checked
		}
		if err != nil {
			return err
		}
		switch {
		case st.Metrics != nil:
			if err := recordMetrics(tx, nodeID, st.Metrics, now); err != nil {
				return err
			}
		case boot != st.BootID:
			if err := dropMetrics(tx, nodeID); err != nil {
				return err
			}
		}
		if _, err := tx.Exec(`UPDATE nodes SET boot_id = ?, uptime_s = ?, last_seen = ? WHERE id = ?`,
			st.BootID, st.UptimeS, unix(now), nodeID); err != nil {
			return err
		}
		type known struct {
			id     int64
			name   string
			fp, ed string
		}
		rows, err := queryAll(ctx, tx, func(sc scanner) (*known, error) {
			var k known
			return &k, sc.Scan(&k.id, &k.name, &k.fp, &k.ed)
		}, `SELECT id, name, fingerprint, ed25519_id FROM relays WHERE node_id = ?`, nodeID)
		if err != nil {
			return err
		}
		have := make(map[string]known, len(rows))
		for _, k := range rows {
			have[k.name] = k
		}
		var fresh []int64
		for _, r := range st.Relays {
			k, ok := have[r.Name]
			if !ok {
				continue
			}
			differs := r.TorrcSHA256 != "" && r.TorrcSHA256 != served[r.Name]
			// No fingerprint is "not known yet" (a tor still starting after a
			// reboot, its DataDirectory new), not "no key": the relay keeps
			// its identity from the vault. Erasing the known one would drop
			// it from its family's MyFamily lines and stamp every node of the
			// family twice per relay per boot (0018), each stamp a new config
			// and a reload of every relay of the family.
			fp, ed := r.Fingerprint, r.Ed25519ID
			if fp == "" {
				fp = k.fp
			}
			if ed == "" {
				ed = k.ed
			}
			if _, err := tx.Exec(`UPDATE relays SET fingerprint = ?, ed25519_id = ?, run_state = ?, restarts = ?, reported_at = ?,
				torrc_applied = ?, torrc_differs = ? WHERE id = ?`,
				fp, ed, r.State, r.Restarts, unix(now), r.TorrcSHA256, differs, k.id); err != nil {
				return err
			}
			if err := recordDefences(tx, nodeID, r); err != nil {
				return err
			}
			if r.Fingerprint != "" && r.Fingerprint != k.fp || r.Ed25519ID != "" && r.Ed25519ID != k.ed {
				fresh = append(fresh, k.id)
			}
		}
		for _, id := range fresh {
			d, err := duplicatesOfTx(ctx, tx, id)
			if err != nil {
				return err
			}
			dups = append(dups, d...)
		}
		return nil
	})
	return dups, err
}

// Settings returns the global settings and, for nodeID != 0, the node's.
func (s *Store) Settings(ctx context.Context, nodeID int64) (global, node map[string]string, err error) {
	return settingsQ(ctx, s, nodeID)
}

type querier interface {
	QueryContext(ctx context.Context, q string, args ...any) (*sql.Rows, error)
}

func settingsQ(ctx context.Context, q querier, nodeID int64) (global, node map[string]string, err error) {
	read := func(query string, args ...any) (map[string]string, error) {
		rows, err := q.QueryContext(ctx, query, args...)
		if err != nil {
			return nil, err
		}
		defer rows.Close()
		m := map[string]string{}
		for rows.Next() {
			var k, v string
			if err := rows.Scan(&k, &v); err != nil {
				return nil, err
			}
			m[k] = v
		}
		return m, rows.Err()
	}
	if global, err = read(`SELECT key, value FROM global_settings`); err != nil {
		return nil, nil, err
	}
	node = map[string]string{}
	if nodeID != 0 {
		if node, err = read(`SELECT key, value FROM node_settings WHERE node_id = ?`, nodeID); err != nil {
			return nil, nil, err
		}
	}
	return global, node, nil
}

// NodeSettings returns every node's own settings, by node id (nodes
// without any are absent): one query for what Settings reads node by
// node.
func (s *Store) NodeSettings(ctx context.Context) (map[int64]map[string]string, error) {
	rows, err := s.QueryContext(ctx, `SELECT node_id, key, value FROM node_settings`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[int64]map[string]string{}
	for rows.Next() {
		var id int64
		var k, v string
		if err := rows.Scan(&id, &k, &v); err != nil {
			return nil, err
		}
		if out[id] == nil {
			out[id] = map[string]string{}
		}
		out[id][k] = v
	}
	return out, rows.Err()
}

// SetSetting sets key for node nodeID, or globally when nodeID is 0. The
// caller validates the value.
func (s *Store) SetSetting(ctx context.Context, nodeID int64, key, value string) error {
	if nodeID == 0 {
		_, err := s.exec(ctx, `INSERT INTO global_settings(key, value) VALUES (?, ?)
			ON CONFLICT(key) DO UPDATE SET value = excluded.value`, key, value)
		return err
	}
	return s.tx(ctx, func(tx *sql.Tx) error {
		if err := nodeExists(tx, nodeID); err != nil {
			return err
		}
		_, err := tx.Exec(`INSERT INTO node_settings(node_id, key, value) VALUES (?, ?, ?)
			ON CONFLICT(node_id, key) DO UPDATE SET value = excluded.value`, nodeID, key, value)
		return err
	})
}

// UnsetSetting removes a node override (or a global value when nodeID is 0).
func (s *Store) UnsetSetting(ctx context.Context, nodeID int64, key string) error {
	if nodeID == 0 {
		return s.exec1(ctx, "global setting "+key, `DELETE FROM global_settings WHERE key = ?`, key)
	}
	return s.exec1(ctx, fmt.Sprintf("setting %s of node %d", key, nodeID),
		`DELETE FROM node_settings WHERE node_id = ? AND key = ?`, nodeID, key)
}

func nodeExists(tx *sql.Tx, id int64) error {
	var one int
	err := tx.QueryRow(`SELECT 1 FROM nodes WHERE id = ?`, id).Scan(&one)
	if errors.Is(err, sql.ErrNoRows) {
		return fmt.Errorf("node %d: %w", id, ErrNotFound)
	}
	return err
}

// GlobalTorrc returns the global torrc text ("" when none was imported).
func (s *Store) GlobalTorrc(ctx context.Context) (string, error) {
	var t string
	err := s.queryRow(ctx, `SELECT torrc FROM global_torrc WHERE id = 1`).Scan(&t)
	if errors.Is(err, sql.ErrNoRows) {
		return "", nil
	}
	return t, err
}

// SetGlobalTorrc replaces the global torrc.
func (s *Store) SetGlobalTorrc(ctx context.Context, text string) error {
	_, err := s.exec(ctx, `INSERT INTO global_torrc(id, torrc) VALUES (1, ?)
		ON CONFLICT(id) DO UPDATE SET torrc = excluded.torrc`, text)
	return err
}

// SetNodeTorrc replaces node id's torrc.
func (s *Store) SetNodeTorrc(ctx context.Context, id int64, text string) error {
	return s.exec1(ctx, fmt.Sprintf("node %d", id), `UPDATE nodes SET torrc = ? WHERE id = ?`, text, id)
}

// SetRelayTorrc replaces the torrc of the relay called name.
func (s *Store) SetRelayTorrc(ctx context.Context, name, text string) error {
	return s.exec1(ctx, fmt.Sprintf("relay %q", name), `UPDATE relays SET torrc = ? WHERE name = ?`, text, name)
}

// ConfigGeneration returns a number that changes whenever anything a
// node's resolved configuration depends on changes (by any process).
func (s *Store) ConfigGeneration(ctx context.Context) (int64, error) {
	var n int64
	err := s.queryRow(ctx, `SELECT n FROM config_generation WHERE id = 1`).Scan(&n)
	return n, err
}

// recordDefences stores what a relay's report says of the node's
// defences (absent from older agents' reports: nothing refused, keys
// saved). The HTTP API checked the names are tor's options.
func recordDefences(tx *sql.Tx, nodeID int64, r api.RelayStatus) error {
	refused := strings.Join(r.RefusedOptions, ",")
	_, err := tx.Exec(`UPDATE relays SET refused_options = ?, keys_unsaved = ? WHERE node_id = ? AND name = ?`,
		refused, r.KeysUnsaved, nodeID, r.Name)
	return err
}

// NodeConfigGen returns node id's config generation (migration 0010): it
// changes whenever anything the node's resolved configuration or its right
// to fetch it depends on changes, and only then. It is the greater of the
// node's own stamp and its family's (0018), whose changes reach every
// member. 0 for a node never stamped.
func (s *Store) NodeConfigGen(ctx context.Context, id int64) (int64, error) {
	var g int64
	err := s.queryRow(ctx, `SELECT max(
		coalesce((SELECT gen FROM node_config_gen WHERE node_id = ?1), 0),
		coalesce((SELECT f.gen FROM nodes n JOIN family_config_gen f ON f.family = coalesce(
			(SELECT value FROM node_settings WHERE node_id = n.id AND key = 'family'),
			(SELECT value FROM global_settings WHERE key = 'family'), 'fleet')
			WHERE n.id = ?1), 0))`, id).Scan(&g)
	return g, err
}

// ConfigChangesSince returns the nodes whose config generation is above
// after, and the highest generation stamped above it (after when none).
// Stamps only grow in commit order, so a caller that passes back the
// returned generation sees every later change exactly once. A family
// stamped (0018) reaches its members as they are now: one statement, one
// snapshot, so no stamp is counted in top without its nodes.
func (s *Store) ConfigChangesSince(ctx context.Context, after int64) ([]int64, int64, error) {
	rows, err := s.QueryContext(ctx, `WITH fam AS (SELECT family, gen FROM family_config_gen WHERE gen > ?1)
		SELECT node_id, gen FROM node_config_gen WHERE gen > ?1
		UNION ALL SELECT NULL, gen FROM fam
		UNION ALL SELECT s.node_id, f.gen FROM fam f JOIN node_settings s ON s.key = 'family' AND s.value = f.family
		UNION ALL SELECT n.id, f.gen FROM fam f CROSS JOIN nodes n -- fam first: nodes only for the default family
			WHERE f.family = coalesce((SELECT value FROM global_settings WHERE key = 'family'), 'fleet')
			AND NOT EXISTS (SELECT 1 FROM node_settings s WHERE s.node_id = n.id AND s.key = 'family')`, after)
	if err != nil {
		return nil, after, err
	}
	defer rows.Close()
	var nodes []int64
	seen := map[int64]bool{}
	top := after
	for rows.Next() {
		var id sql.NullInt64
		var g int64
		if err := rows.Scan(&id, &g); err != nil {
			return nil, after, err
		}
		top = max(top, g)
		if id.Valid && !seen[id.Int64] {
			seen[id.Int64] = true
			nodes = append(nodes, id.Int64)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, after, err
	}
	return nodes, top, nil
}
