package cli

import (
	"errors"
	"flag"
	"fmt"

	"patela/configsrv/store"
	"patela/internal/cmdline"
)

// The key commands show and drop the node's key-bundle ciphertext mirror.
// The server cannot read the ciphertext and never prints it.

func (e *env) keysShow(fs *flag.FlagSet, args []string) error {
	asJSON := jsonFlag(fs)
	id, st, err := e.startNode(fs, args, toRead)
	if err != nil {
		return err
	}
	info, err := st.KeyBundleInfo(e.ctx, id)
	if errors.Is(err, store.ErrNoKeyBundle) {
		// Not an error: the usual state of a node whose bundle fits in
		// its TPM's NV.
		if *asJSON {
			return e.json(keysView{NodeID: id})
		}
		fmt.Fprintf(e.stdout, "node %d: no key bundle in the mirror\n", id)
		return nil
	}
	if err != nil {
		return err
	}
	if *asJSON {
		return e.json(keysView{NodeID: id, Present: true, KeyBundleInfo: info})
	}
	fmt.Fprintf(e.stdout, "node %d: key bundle in the mirror\n  version  %d\n  size     %d bytes (ciphertext)\n  updated  %s\n",
		id, info.Version, info.Size, fmtTime(info.Updated))
	return nil
}

func (e *env) keysDrop(fs *flag.FlagSet, args []string) error {
	yes := fs.Bool("yes", false, "confirm: the node's relays get new identities")
	pos, err := parse(fs, args, 1, 1)
	if err != nil {
		return err
	}
	id, err := nodeID(pos[0])
	if err != nil {
		return err
	}
	if !*yes {
		return cmdline.Usagef("this deletes the only copy of node %d's relay keys held by the server; "+
			"its relays get NEW identities (new fingerprints) once it starts a fresh vault. Run again with --yes to do it", id)
	}
	st, err := e.open(toRead)
	if err != nil {
		return err
	}
	info, err := st.DropKeyBundle(e.ctx, id)
	if err != nil {
		return err
	}
	return e.done(nil, "keys.drop", nodeTarget(id),
		fmt.Sprintf("version %d, %d bytes, updated %s", info.Version, info.Size, fmtTime(info.Updated)),
		fmt.Sprintf("node %d: key bundle version %d (%d bytes) dropped from the mirror; "+
			"if the node's TPM still holds vault state, run `init tpm clear-vault --yes` on it; "+
			"its relays start with new identities at the next boot", id, info.Version, info.Size))
}

// keysView is `keys show --json`: present false and no other field when
// the mirror holds nothing for the node.
type keysView struct {
	NodeID  int64 `json:"node_id"`
	Present bool  `json:"present"`
	*store.KeyBundleInfo
}
