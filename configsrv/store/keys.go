package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// ErrNoKeyBundle means the node exists but the mirror holds no key-bundle
// ciphertext for it. errors.Is(ErrNoKeyBundle, ErrNotFound) holds.
var ErrNoKeyBundle error = noKeyBundle{}

type noKeyBundle struct{}

func (noKeyBundle) Error() string        { return "no key bundle in the mirror" }
func (noKeyBundle) Is(target error) bool { return target == ErrNotFound }

// KeyBundleInfo describes a node's mirrored key-bundle ciphertext without
// its contents.
type KeyBundleInfo struct {
	NodeID  int64     `json:"node_id"`
	Version uint64    `json:"version"`
	Size    int       `json:"size"` // bytes of ciphertext
	Updated time.Time `json:"updated"`
}

// keyBundleInfo reads the info of nodeID's bundle inside tx: ErrNotFound
// (with the node named) for an unknown node, ErrNoKeyBundle for a node
// without a bundle.
func keyBundleInfo(tx *sql.Tx, nodeID int64) (*KeyBundleInfo, error) {
	var one int
	if err := tx.QueryRow(`SELECT 1 FROM nodes WHERE id = ?`, nodeID).Scan(&one); err != nil {
		if errors.Is(err, sql.ErrNoRows) {
			return nil, fmt.Errorf("node %d: %w", nodeID, ErrNotFound)
		}
		return nil, err
	}
	info := &KeyBundleInfo{NodeID: nodeID}
	var v, updated int64
	err := tx.QueryRow(`SELECT version, length(bundle), updated FROM key_bundles WHERE node_id = ?`, nodeID).
		Scan(&v, &info.Size, &updated)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("node %d: %w", nodeID, ErrNoKeyBundle)
	}
	if err != nil {
		return nil, err
	}
	info.Version = uint64(v)
	info.Updated = time.Unix(updated, 0).UTC()
	return info, nil
}

// KeyBundleInfo returns the version, size and update time of nodeID's
// mirrored ciphertext. An unknown node is ErrNotFound; a known node
// without a bundle is ErrNoKeyBundle (which also matches ErrNotFound).
func (s *Store) KeyBundleInfo(ctx context.Context, nodeID int64) (*KeyBundleInfo, error) {
	// One read transaction, so "node exists" and "its bundle" agree.
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return nil, err
	}
	defer tx.Rollback()
	return keyBundleInfo(tx, nodeID)
}

// DropKeyBundle deletes nodeID's mirrored ciphertext and returns what it
// was. The node, its relays, names and addresses stay. With the row gone,
// the node's next PUT /v1/node/keys is accepted whatever its version: the
// "version must grow" rule applies to a stored bundle, and there is none.
// Errors as KeyBundleInfo; nothing is changed on error.
func (s *Store) DropKeyBundle(ctx context.Context, nodeID int64) (*KeyBundleInfo, error) {
	var info *KeyBundleInfo
	err := s.tx(ctx, func(tx *sql.Tx) error {
		var err error
		if info, err = keyBundleInfo(tx, nodeID); err != nil {
			return err
		}
		_, err = tx.Exec(`DELETE FROM key_bundles WHERE node_id = ?`, nodeID)
		return err
	})
	if err != nil {
		return nil, err
	}
	return info, nil
}
