package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"
)

// FamilyKey is a family's Happy Families key.
type FamilyKey struct {
	Family  string    `json:"family"`
	ID      string    `json:"family_id"` // what FamilyId names
	Secret  []byte    `json:"-"`
	Created time.Time `json:"created"`
	Origin  string    `json:"origin"` // created (here, by tor --keygen-family) or imported
}

// Origins of a family key.
const (
	OriginCreated  = "created"
	OriginImported = "imported"
)

// FamilyKeys lists every family's key, by family.
func (s *Store) FamilyKeys(ctx context.Context) ([]FamilyKey, error) {
	return queryAll(ctx, s, scanFamilyKey, `SELECT family, family_id, secret, created, origin FROM family_keys ORDER BY family`)
}

// FamilyKeyOf returns family's key; ErrNotFound when it has none.
func (s *Store) FamilyKeyOf(ctx context.Context, family string) (*FamilyKey, error) {
	k, err := scanFamilyKey(s.queryRow(ctx, `SELECT family, family_id, secret, created, origin FROM family_keys WHERE family = ?`, family))
	if errors.Is(err, ErrNotFound) {
		return nil, fmt.Errorf("family %q has no key: %w", family, ErrNotFound)
	}
	return k, err
}

func scanFamilyKey(sc scanner) (*FamilyKey, error) {
	var k FamilyKey
	var created int64
	err := sc.Scan(&k.Family, &k.ID, &k.Secret, &created, &k.Origin)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	k.Created = time.Unix(created, 0).UTC()
	return &k, nil
}

// PutFamilyKey stores k as its family's key. Without replace, a family
// that has a key already is ErrExists; with replace, a family without
// one is ErrNotFound, and the key it had is returned. A key another
// family uses is ErrExists either way. Nothing changes on error.
func (s *Store) PutFamilyKey(ctx context.Context, k *FamilyKey, replace bool) (old *FamilyKey, err error) {
	err = s.tx(ctx, func(tx *sql.Tx) error {
		old, err = scanFamilyKey(tx.QueryRowContext(ctx, `SELECT family, family_id, secret, created, origin FROM family_keys WHERE family = ?`, k.Family))
		switch {
		case errors.Is(err, ErrNotFound) && replace:
			return fmt.Errorf("family %q has no key to replace: %w", k.Family, ErrNotFound)
		case errors.Is(err, ErrNotFound):
			old = nil
		case err != nil:
			return err
		case !replace:
			return fmt.Errorf("family %q has a key already (%s): %w", k.Family, old.ID, ErrExists)
		}
		var other string
		err := tx.QueryRowContext(ctx, `SELECT family FROM family_keys WHERE family_id = ? AND family != ?`, k.ID, k.Family).Scan(&other)
		if err == nil {
			return fmt.Errorf("family key %s is family %q's: %w", k.ID, other, ErrExists)
		}
		if !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		_, err = tx.ExecContext(ctx, `INSERT INTO family_keys(family, family_id, secret, created, origin) VALUES (?, ?, ?, ?, ?)
			ON CONFLICT(family) DO UPDATE SET family_id = excluded.family_id, secret = excluded.secret,
			created = excluded.created, origin = excluded.origin`,
			k.Family, k.ID, k.Secret, unix(k.Created), k.Origin)
		return err
	})
	if err != nil {
		return nil, err
	}
	return old, nil
}

// RemoveFamilyKey deletes family's key and returns it.
func (s *Store) RemoveFamilyKey(ctx context.Context, family string) (*FamilyKey, error) {
	var k *FamilyKey
	err := s.tx(ctx, func(tx *sql.Tx) error {
		var err error
		k, err = scanFamilyKey(tx.QueryRowContext(ctx, `DELETE FROM family_keys WHERE family = ? RETURNING family, family_id, secret, created, origin`, family))
		if errors.Is(err, ErrNotFound) {
			return fmt.Errorf("family %q has no key: %w", family, ErrNotFound)
		}
		return err
	})
	return k, err
}

// RelayKey is a relay's reported identity, as MyFamily and the
// duplicate check read it.
type RelayKey struct {
	RelayID     int64
	NodeID      int64
	Name        string
	Fingerprint string
	Ed25519ID   string
}

// RelayKeys lists every relay that has reported a fingerprint, by id.
func (s *Store) RelayKeys(ctx context.Context) ([]RelayKey, error) {
	return queryAll(ctx, s, func(sc scanner) (*RelayKey, error) {
		var k RelayKey
		return &k, sc.Scan(&k.RelayID, &k.NodeID, &k.Name, &k.Fingerprint, &k.Ed25519ID)
	}, `SELECT id, node_id, name, fingerprint, ed25519_id FROM relays WHERE fingerprint != '' ORDER BY id`)
}

// SettingEverywhere returns key's global value ("" when unset) and every
// node's own value of it.
func (s *Store) SettingEverywhere(ctx context.Context, key string) (global string, nodes map[int64]string, err error) {
	if err := s.queryRow(ctx, `SELECT value FROM global_settings WHERE key = ?`, key).Scan(&global); err != nil && !errors.Is(err, sql.ErrNoRows) {
		return "", nil, err
	}
	type nv struct {
		id int64
		v  string
	}
	rows, err := queryAll(ctx, s, func(sc scanner) (*nv, error) {
		var r nv
		return &r, sc.Scan(&r.id, &r.v)
	}, `SELECT node_id, value FROM node_settings WHERE key = ?`, key)
	if err != nil {
		return "", nil, err
	}
	nodes = make(map[int64]string, len(rows))
	for _, r := range rows {
		nodes[r.id] = r.v
	}
	return global, nodes, nil
}

// NodeFeatures returns what node id's agent declared in its last specs.
func (s *Store) NodeFeatures(ctx context.Context, id int64) ([]string, error) {
	var f string
	err := s.queryRow(ctx, `SELECT features FROM node_agent WHERE node_id = ?`, id).Scan(&f)
	if errors.Is(err, sql.ErrNoRows) || f == "" {
		return nil, nil
	}
	return strings.Split(f, ","), err
}

// setFeaturesTx records the agent's features with its specs.
func setFeaturesTx(tx *sql.Tx, nodeID int64, features []string) error {
	_, err := tx.Exec(`INSERT INTO node_agent(node_id, features) VALUES (?, ?)
		ON CONFLICT(node_id) DO UPDATE SET features = excluded.features WHERE features IS NOT excluded.features`,
		nodeID, strings.Join(features, ","))
	return err
}

// Duplicate is a relay whose key another relay reported too.
type Duplicate struct {
	Relay, Other     string // relay names
	Node, OtherNode  int64
	Kind, Identifier string // "RSA fingerprint" or "ed25519 identity", and its value
}

func (d Duplicate) String() string {
	return fmt.Sprintf("%s %s of relay %s (node %d) is also relay %s's (node %d)", d.Kind, d.Identifier, d.Relay, d.Node, d.Other, d.OtherNode)
}

// Duplicates lists, per relay id, the other relays that reported one of
// its keys.
func (s *Store) Duplicates(ctx context.Context) (map[int64][]Duplicate, error) {
	ds, err := queryAll(ctx, s, scanDuplicate, dupSelect+` ORDER BY a.id, b.id`)
	if err != nil {
		return nil, err
	}
	out := map[int64][]Duplicate{}
	for _, d := range ds {
		out[d.id] = append(out[d.id], d.Duplicate)
	}
	return out, nil
}

// dupSelect pairs each relay with every other relay that reported its
// RSA fingerprint or its ed25519 identity. The conditions name b's
// columns so each side of the OR is a search of 0007's partial indexes,
// not a scan of every relay (one per new fingerprint in a heartbeat).
const dupSelect = `SELECT a.id, a.name, a.node_id, b.name, b.node_id,
		CASE WHEN a.fingerprint != '' AND a.fingerprint = b.fingerprint THEN 'RSA fingerprint' ELSE 'ed25519 identity' END,
		CASE WHEN a.fingerprint != '' AND a.fingerprint = b.fingerprint THEN a.fingerprint ELSE a.ed25519_id END
		FROM relays a JOIN relays b ON b.id != a.id AND
			(b.fingerprint != '' AND b.fingerprint = a.fingerprint OR b.ed25519_id != '' AND b.ed25519_id = a.ed25519_id)`

type dupRow struct {
	id int64
	Duplicate
}

func scanDuplicate(sc scanner) (*dupRow, error) {
	var d dupRow
	return &d, sc.Scan(&d.id, &d.Relay, &d.Node, &d.Other, &d.OtherNode, &d.Kind, &d.Identifier)
}

// duplicatesOfTx finds the other relays that share a key of relay id.
func duplicatesOfTx(ctx context.Context, tx *sql.Tx, id int64) ([]Duplicate, error) {
	ds, err := queryAll(ctx, tx, scanDuplicate, dupSelect+` WHERE a.id = ? ORDER BY b.id`, id)
	out := make([]Duplicate, len(ds))
	for i, d := range ds {
		out[i] = d.Duplicate
	}
	return out, err
}

// NodesWithFeature lists the nodes whose agent declared feature.
func (s *Store) NodesWithFeature(ctx context.Context, feature string) ([]int64, error) {
	return queryAll(ctx, s, func(sc scanner) (*int64, error) {
		var id int64
		return &id, sc.Scan(&id)
	}, `SELECT node_id FROM node_agent WHERE instr(',' || features || ',', ',' || ? || ',') > 0`, feature)
}

// Alarms fills the Alarms of nodes and relays (either may be nil): a key
// another relay reported too, a relay that runs a torrc other than the
// served one.
func (s *Store) Alarms(ctx context.Context, nodes []Node, relays []Relay) error {
	dups, err := s.Duplicates(ctx)
	if err != nil {
		return err
	}
	byNode := map[int64][]string{}
	for _, ds := range dups {
		for _, d := range ds {
			byNode[d.Node] = append(byNode[d.Node], "duplicate key: "+d.String())
		}
	}
	for i := range relays {
		r := &relays[i]
		for _, d := range dups[r.ID] {
			r.Alarms = append(r.Alarms, "duplicate key: "+d.String())
		}
		if r.TorrcDiffers {
			r.Alarms = append(r.Alarms, "runs a torrc other than the served one")
		}
	}
	if len(nodes) == 0 {
		return nil
	}
	differs, err := queryAll(ctx, s, func(sc scanner) (*[2]int64, error) {
		var v [2]int64
		return &v, sc.Scan(&v[0], &v[1])
	}, `SELECT node_id, count(*) FROM relays WHERE torrc_differs GROUP BY node_id`)
	if err != nil {
		return err
	}
	nd := map[int64]int64{}
	for _, v := range differs {
		nd[v[0]] = v[1]
	}
	for i := range nodes {
		n := &nodes[i]
		n.Alarms = append(n.Alarms, byNode[n.ID]...)
		if k := nd[n.ID]; k > 0 {
			n.Alarms = append(n.Alarms, fmt.Sprintf("%d relays run a torrc other than the served one", k))
		}
	}
	return nil
}
