package cli

import (
	"flag"
	"fmt"
	"time"
)

// backup writes a consistent copy of the database to a new file with
// SQLite's online backup, while serve may be running on it (store.Backup);
// configsrv/README.md says how to restore one.
func (e *env) backup(fs *flag.FlagSet, args []string) error {
	pos, st, err := e.start(fs, args, 1, 1, toRead)
	if err != nil {
		return err
	}
	res, err := st.Backup(e.ctx, pos[0])
	if err != nil {
		return err
	}
	return e.done(nil, "backup", res.Path, fmt.Sprintf("%d nodes, %d bytes", res.Nodes, res.Bytes),
		fmt.Sprintf("backup %s: %d nodes, %d bytes (%d pages), integrity ok, in %v", res.Path, res.Nodes, res.Bytes, res.Pages, res.Duration.Round(time.Millisecond)))
}
