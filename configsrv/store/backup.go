package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/mattn/go-sqlite3"
)

// BackupResult describes a finished backup.
type BackupResult struct {
	Path     string
	Bytes    int64
	Pages    int
	Nodes    int // rows of the nodes table in the copy
	Duration time.Duration
}

// Backup writes a consistent snapshot of the database to dst with
// SQLite's online backup API while the store keeps serving: one backup
// step over all pages inside one read transaction (in WAL mode writers
// go on meanwhile, and what they commit after it began is not in the
// copy). The copy is written beside dst, synced, checked with
// PRAGMA integrity_check and only then renamed to dst; dst must not
// exist. A copy of a database is a database: restore it by putting it in
// place of the old one (configsrv/README.md).
func (s *Store) Backup(ctx context.Context, dst string) (*BackupResult, error) {
	start := time.Now()
	if _, err := os.Lstat(dst); err == nil {
		return nil, fmt.Errorf("backup: %s exists; not overwriting it", dst)
	} else if !os.IsNotExist(err) {
		return nil, fmt.Errorf("backup: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(dst), "."+filepath.Base(dst)+".*")
	if err != nil {
		return nil, fmt.Errorf("backup: %w", err)
	}
	tmpPath := tmp.Name()
	tmp.Close()
	ok := false
	defer func() {
		if !ok {
			for _, sfx := range []string{"", "-journal", "-wal", "-shm"} {
				os.Remove(tmpPath + sfx)
			}
		}
	}()
	res := &BackupResult{Path: dst}
	if err := s.copyTo(ctx, tmpPath, res); err != nil {
		return nil, fmt.Errorf("backup: %w", err)
	}
	if err := checkCopy(ctx, tmpPath, res); err != nil {
		return nil, fmt.Errorf("backup: the copy %s: %w", tmpPath, err)
	}
	f, err := os.Open(tmpPath)
	if err == nil {
		err = f.Sync()
		f.Close()
	}
	if err != nil {
		return nil, fmt.Errorf("backup: %w", err)
	}
	fi, err := os.Stat(tmpPath)
	if err != nil {
		return nil, err
	}
	// Link, not rename: a dst that appeared meanwhile is not replaced.
	if err := os.Link(tmpPath, dst); err != nil {
		return nil, fmt.Errorf("backup: %w", err)
	}
	os.Remove(tmpPath)
	ok = true
	if d, err := os.Open(filepath.Dir(dst)); err == nil {
		d.Sync()
		d.Close()
	}
	res.Bytes = fi.Size()
	res.Duration = time.Since(start)
	return res, nil
}

// copyTo runs the backup from one of the store's connections into a
// fresh database at path.
func (s *Store) copyTo(ctx context.Context, path string, res *BackupResult) error {
	dstDB, err := sql.Open("sqlite3", "file:"+path+"?_journal_mode=DELETE")
	if err != nil {
		return err
	}
	defer dstDB.Close()
	dstConn, err := dstDB.Conn(ctx)
	if err != nil {
		return err
	}
	defer dstConn.Close()
	srcConn, err := s.db.Conn(ctx)
	if err != nil {
		return err
	}
	defer srcConn.Close()
	err = dstConn.Raw(func(dc any) error {
		return srcConn.Raw(func(sc any) error {
			d, okD := dc.(*sqlite3.SQLiteConn)
			src, okS := sc.(*sqlite3.SQLiteConn)
			if !okD || !okS {
				return errors.New("not a go-sqlite3 connection")
			}
			b, err := d.Backup("main", src, "main")
			if err != nil {
				return err
			}
			// -1: every page in one step, one read transaction, so the
			// copy is one snapshot (incremental steps would restart
			// whenever a writer commits).
			done, err := b.Step(-1)
			res.Pages = b.PageCount()
			if ferr := b.Finish(); err == nil {
				err = ferr
			}
			if err == nil && !done {
				err = errors.New("backup step did not finish")
			}
			return err
		})
	})
	if err != nil {
		return err
	}
	// The pages carry the source's WAL flag; a backup is one file, in
	// rollback mode (the store turns WAL on again when it opens it).
	var mode string
	if err := dstConn.QueryRowContext(ctx, `PRAGMA journal_mode=DELETE`).Scan(&mode); err != nil {
		return err
	}
	if mode != "delete" {
		return fmt.Errorf("the copy stays in journal mode %s", mode)
	}
	return nil
}

// checkCopy opens the copy on its own and checks it is a whole database.
func checkCopy(ctx context.Context, path string, res *BackupResult) error {
	db, err := sql.Open("sqlite3", "file:"+path+"?mode=ro")
	if err != nil {
		return err
	}
	defer db.Close()
	var ic string
	if err := db.QueryRowContext(ctx, `PRAGMA integrity_check`).Scan(&ic); err != nil {
		return err
	}
	if ic != "ok" {
		return fmt.Errorf("integrity_check: %s", ic)
	}
	return db.QueryRowContext(ctx, `SELECT count(*) FROM nodes`).Scan(&res.Nodes)
}

// IntegrityCheck runs PRAGMA integrity_check on the store's database and
// returns its verdict ("ok" when sound).
func (s *Store) IntegrityCheck(ctx context.Context) (string, error) {
	var ic string
	err := s.db.QueryRowContext(ctx, `PRAGMA integrity_check`).Scan(&ic)
	return ic, err
}
