// Package store is the config server's state: one SQLite database (WAL,
// foreign keys on) whose schema is built by embedded, append-only
// migrations applied at open.
package store

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	_ "github.com/mattn/go-sqlite3" // the SQLite driver
)

//go:embed migrations/*.sql
var migrations embed.FS

// Errors callers map to user-facing answers.
var (
	ErrNotFound  = errors.New("not found")
	ErrExists    = errors.New("already exists")
	ErrInUse     = errors.New("in use")
	ErrStale     = errors.New("version is not newer than the stored one")
	ErrExhausted = errors.New("address pools exhausted")
)

// Store is the database. It is safe for concurrent use.
type Store struct {
	db      *sql.DB
	stmts   sync.Map     // query text → *sql.Stmt
	expired atomic.Int64 // unix second of the last expired-pending sweep

	// SQLite has one writer at a time. Queuing this process's writers
	// here hands the lock over at once; contending inside SQLite means
	// its busy handler, which sleeps in steps of milliseconds. Other
	// processes (the CLI) still meet the busy timeout.
	wmu   sync.Mutex
	alloc *allocState // guarded by wmu
	// w is the connection this process writes through (guarded by wmu).
	// One connection keeps its page cache from one write to the next:
	// SQLite empties a connection's cache when another connection has
	// written since its last transaction, so a write on any connection of
	// the pool began by reading again the pages it was about to change.
	w *sql.Conn
}

// softHeapLimit bounds the memory SQLite keeps for all of a process's
// connections (PRAGMA soft_heap_limit).
const softHeapLimit = 8 << 20

// maxOpenConns bounds the pool. A burst of ten thousand nodes opened
// 45-48 of 64, each ~0.6 MiB of C memory (schema, statements, malloc
// arenas) the soft heap limit does not reclaim; on two cores more than
// a few queries at once only queue inside SQLite. A smaller pool cannot
// deadlock: writers queue on wmu before they take a connection, and the
// one holding it needs at most a second one, briefly, to prepare a
// statement not yet cached (stmt); readers take one connection at a
// time and wait for nothing while they hold it (WAL). Nothing outside
// the package holds a connection (no rows or transactions escape).
const maxOpenConns = 16

// Open opens (creating if needed) the database at path and applies any
// migration not yet applied. A database it creates is mode 0600, and so
// are its WAL and shared-memory files (SQLite gives them the database's
// mode): it holds the fleet's identities and key mirror.
func Open(path string) (*Store, error) {
	if f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600); err == nil {
		f.Close()
	} else if !errors.Is(err, fs.ErrExist) {
		return nil, fmt.Errorf("database %s: %w", path, err)
	}
	q := url.Values{}
	q.Set("_journal_mode", "WAL")
	q.Set("_foreign_keys", "on")
	q.Set("_busy_timeout", "10000")
	q.Set("_synchronous", "NORMAL")
	// Write transactions take the lock at BEGIN, so two writers never
	// deadlock upgrading read locks.
	q.Set("_txlock", "immediate")
	db, err := sql.Open("sqlite3", "file:"+path+"?"+q.Encode())
	if err != nil {
		return nil, err
	}
	// Keep connections: a new SQLite connection re-reads the schema,
	// re-prepares statements and starts with a cold page cache, which
	// costs far more than the queries an API request makes.
	db.SetMaxOpenConns(maxOpenConns)
	db.SetMaxIdleConns(maxOpenConns)
	db.SetConnMaxIdleTime(5 * time.Minute)
	// Each connection has its own page cache (2 MB by default): after a
	// burst that opened most of the pool, 48 connections held 64 MiB of C
	// memory that glibc keeps after they close. The soft limit (for the
	// process, in bytes) makes SQLite recycle cached pages instead of
	// growing past it; a page not cached is read from the OS page cache.
	if _, err := db.Exec(fmt.Sprintf(`PRAGMA soft_heap_limit = %d`, softHeapLimit)); err != nil {
		db.Close()
		return nil, fmt.Errorf("database %s: %w", path, err)
	}
	s := &Store{db: db}
	if err := s.migrate(); err != nil {
		db.Close()
		return nil, fmt.Errorf("database %s: %w", path, err)
	}
	return s, nil
}

// CheckMode refuses a database (or its -wal, -shm file) that every user
// of the machine may read, naming the command that fixes it. A missing
// file is fine: Open creates it 0600.
func CheckMode(path string) error {
	var open []string
	for _, p := range []string{path, path + "-wal", path + "-shm"} {
		fi, err := os.Stat(p)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return err
		}
		if fi.Mode().Perm()&0o004 != 0 {
			open = append(open, p)
		}
	}
	if len(open) == 0 {
		return nil
	}
	return fmt.Errorf("database %s is readable by every user of this machine (it holds node identities and key bundles); "+
		"run `chmod 600 %s` and try again", path, strings.Join(open, " "))
}

// Close closes the database.
func (s *Store) Close() error {
	s.wmu.Lock()
	if s.w != nil {
		s.w.Close()
		s.w = nil
	}
	s.wmu.Unlock()
	s.stmts.Range(func(_, v any) bool { v.(*sql.Stmt).Close(); return true })
	return s.db.Close()
}

// stmt returns query prepared once: the hot paths (every API request)
// would otherwise spend most of their time in sqlite3_prepare.
func (s *Store) stmt(ctx context.Context, query string) (*sql.Stmt, error) {
	if v, ok := s.stmts.Load(query); ok {
		return v.(*sql.Stmt), nil
	}
	st, err := s.db.PrepareContext(ctx, query)
	if err != nil {
		return nil, err
	}
	if v, loaded := s.stmts.LoadOrStore(query, st); loaded {
		st.Close()
		return v.(*sql.Stmt), nil
	}
	return st, nil
}

// row is a *sql.Row that may carry a prepare error.
type row struct {
	r   *sql.Row
	err error
}

func (r row) Scan(dest ...any) error {
	if r.err != nil {
		return r.err
	}
	return r.r.Scan(dest...)
}

func (s *Store) queryRow(ctx context.Context, query string, args ...any) row {
	st, err := s.stmt(ctx, query)
	if err != nil {
		return row{err: err}
	}
	return row{r: st.QueryRowContext(ctx, args...)}
}

// QueryContext runs a prepared query (it makes Store a querier).
func (s *Store) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	st, err := s.stmt(ctx, query)
	if err != nil {
		return nil, err
	}
	return st.QueryContext(ctx, args...)
}

// exec runs a prepared write statement, in a transaction of its own.
func (s *Store) exec(ctx context.Context, query string, args ...any) (res sql.Result, err error) {
	st, err := s.stmt(ctx, query)
	if err != nil {
		return nil, err
	}
	err = s.tx(ctx, func(tx *sql.Tx) error {
		res, err = tx.StmtContext(ctx, st).ExecContext(ctx, args...)
		return err
	})
	return res, err
}

// DB exposes the handle for bulk seeding in benchmarks and for tests that
// check rows directly.
func (s *Store) DB() *sql.DB { return s.db }

func (s *Store) migrate() error {
	if _, err := s.db.Exec(`CREATE TABLE IF NOT EXISTS schema_migrations (
		name TEXT PRIMARY KEY, applied INTEGER NOT NULL)`); err != nil {
		return err
	}
	names, err := fs.Glob(migrations, "migrations/*.sql")
	if err != nil {
		return err
	}
	sort.Strings(names)
	for _, name := range names {
		body, err := migrations.ReadFile(name)
		if err != nil {
			return err
		}
		if err := s.apply(name, string(body)); err != nil {
			return err
		}
	}
	var fk int
	if err := s.db.QueryRow(`PRAGMA foreign_keys`).Scan(&fk); err != nil || fk != 1 {
		return fmt.Errorf("foreign keys are not enabled (%d, %v)", fk, err)
	}
	return nil
}

// fkOff, as a migration's first line, runs it with foreign keys off (a
// table rebuild must not cascade); the foreign keys are checked before
// it commits.
const fkOff = "-- patela: foreign_keys=off\n"

// goSteps run inside a migration's transaction, after its SQL, for what
// SQL cannot compute. Like the SQL, a step is never changed once applied.
var goSteps = map[string]func(context.Context, *sql.Tx) error{
	"migrations/0016_enrollment.sql": rekeyNodes,
	"migrations/0017_node_ids.sql":   nodeIDsStep,
}

// apply runs migration name once, in one transaction on one connection.
func (s *Store) apply(name, body string) error {
	ctx := context.Background()
	conn, err := s.db.Conn(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	noFK := strings.HasPrefix(body, fkOff)
	if noFK {
		// A no-op inside a transaction: set it on the connection first,
		// and back before the connection returns to the pool.
		if _, err := conn.ExecContext(ctx, `PRAGMA foreign_keys = OFF`); err != nil {
			return err
		}
	}
	err = s.applyOn(ctx, conn, name, body, noFK)
	if noFK {
		if _, ferr := conn.ExecContext(ctx, `PRAGMA foreign_keys = ON`); ferr != nil {
			return errors.Join(err, ferr)
		}
	}
	return err
}

func (s *Store) applyOn(ctx context.Context, conn *sql.Conn, name, body string, noFK bool) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	tx, err := conn.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	var n int
	if err := tx.QueryRow(`SELECT count(*) FROM schema_migrations WHERE name = ?`, name).Scan(&n); err != nil || n > 0 {
		return err
	}
	if _, err := tx.Exec(body); err != nil {
		return fmt.Errorf("migration %s: %w", name, err)
	}
	if step := goSteps[name]; step != nil {
		if err := step(ctx, tx); err != nil {
			return fmt.Errorf("migration %s: %w", name, err)
		}
	}
	if noFK {
		rows, err := tx.Query(`PRAGMA foreign_key_check`)
		if err != nil {
			return err
		}
		bad := rows.Next()
		rows.Close()
		if bad {
			return fmt.Errorf("migration %s: it would break foreign keys", name)
		}
	}
	if _, err := tx.Exec(`INSERT INTO schema_migrations(name, applied) VALUES (?, ?)`, name, time.Now().Unix()); err != nil {
		return err
	}
	return tx.Commit()
}

// tx runs f in a write transaction, committing if f returns nil.
func (s *Store) tx(ctx context.Context, f func(*sql.Tx) error) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	return s.txLocked(ctx, f)
}

// txLocked is tx for a caller already holding s.wmu.
func (s *Store) txLocked(ctx context.Context, f func(*sql.Tx) error) error {
	tx, err := s.beginLocked(ctx)
	if err != nil {
		return err
	}
	if err := f(tx); err != nil {
		tx.Rollback()
		return err
	}
	return tx.Commit()
}

// beginLocked begins a write transaction on s.w, taking a connection
// from the pool for it first if it has none or the one it had broke.
func (s *Store) beginLocked(ctx context.Context) (*sql.Tx, error) {
	for try := 0; ; try++ {
		if s.w == nil {
			w, err := s.db.Conn(ctx)
			if err != nil {
				return nil, err
			}
			s.w = w
		}
		tx, err := s.w.BeginTx(ctx, nil)
		if try == 0 && (errors.Is(err, sql.ErrConnDone) || errors.Is(err, driver.ErrBadConn)) {
			s.w.Close()
			s.w = nil
			continue
		}
		return tx, err
	}
}

func unix(t time.Time) int64 { return t.Unix() }

func fromUnix(n sql.NullInt64) time.Time {
	if !n.Valid {
		return time.Time{}
	}
	return time.Unix(n.Int64, 0).UTC()
}

// AuditEntry is one row of the audit log.
type AuditEntry struct {
	ID      int64     `json:"id"`
	Time    time.Time `json:"time"`
	Actor   string    `json:"actor"`
	Action  string    `json:"action"`
	Target  string    `json:"target"`
	Details string    `json:"details,omitempty"`
}

const auditInsert = `INSERT INTO audit(time, actor, action, target, details) VALUES (?, ?, ?, ?, ?)`

// Audit appends a row to the audit log.
func (s *Store) Audit(ctx context.Context, actor, action, target, details string) error {
	_, err := s.exec(ctx, auditInsert, time.Now().UnixNano(), actor, action, target, details)
	return err
}

// AuditRow is an audit row a change writes in its own transaction (one
// commit rather than two on the attestation path).
type AuditRow struct{ Actor, Action, Target, Details string }

// AuditRows appends rows to the audit log in one transaction.
func (s *Store) AuditRows(ctx context.Context, rows ...AuditRow) error {
	if len(rows) == 0 {
		return nil
	}
	return s.tx(ctx, func(tx *sql.Tx) error { return s.writeAudit(ctx, tx, rows...) })
}

// auditChunk is the most rows one INSERT writes: a statement is prepared
// once per row count, so there are at most this many.
const auditChunk = 64

// writeAudit appends rows in tx, as few INSERTs as it can (the
// attestation's two rows are one statement).
func (s *Store) writeAudit(ctx context.Context, tx *sql.Tx, rows ...AuditRow) error {
	for len(rows) > 0 {
		n := min(len(rows), auditChunk)
		st, err := s.stmt(ctx, auditInsert+strings.Repeat(", (?, ?, ?, ?, ?)", n-1))
		if err != nil {
			return err
		}
		args := make([]any, 0, 5*n)
		for _, r := range rows[:n] {
			args = append(args, time.Now().UnixNano(), r.Actor, r.Action, r.Target, r.Details)
		}
		if _, err := tx.StmtContext(ctx, st).ExecContext(ctx, args...); err != nil {
			return err
		}
		rows = rows[n:]
	}
	return nil
}

// AuditLog returns the newest limit rows, newest first.
func (s *Store) AuditLog(ctx context.Context, limit int) ([]AuditEntry, error) {
	return queryAll(ctx, s, func(r scanner) (*AuditEntry, error) {
		var e AuditEntry
		var ns int64
		if err := r.Scan(&e.ID, &ns, &e.Actor, &e.Action, &e.Target, &e.Details); err != nil {
			return nil, err
		}
		e.Time = time.Unix(0, ns).UTC()
		return &e, nil
	}, `SELECT id, time, actor, action, target, details FROM audit ORDER BY id DESC LIMIT ?`, limit)
}

// queryAll runs query and returns its rows, each read by scan.
func queryAll[T any](ctx context.Context, q querier, scan func(scanner) (*T, error), query string, args ...any) ([]T, error) {
	rows, err := q.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []T
	for rows.Next() {
		v, err := scan(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, *v)
	}
	return out, rows.Err()
}
