package store

import (
	"context"
	"database/sql/driver"

	"github.com/mattn/go-sqlite3"
)

// The store's statements run on the calling goroutine. Given a context
// that can be cancelled (every request's, every transaction's: database/sql
// derives one per transaction), go-sqlite3 runs each statement on a
// goroutine of its own so it can interrupt it, and the calling goroutine
// waits on a channel: a goroutine and two switches per statement, more
// than most of the store's statements cost (microseconds;
// BenchmarkCompleteAttestation). A context already cancelled still stops a
// statement before it starts; one running to its end is not interrupted.

// connector opens the store's connections.
type connector struct {
	dsn string
	drv *syncDriver
}

func (c connector) Connect(context.Context) (driver.Conn, error) { return c.drv.Open(c.dsn) }
func (c connector) Driver() driver.Driver                        { return c.drv }

type syncDriver struct{ sqlite3.SQLiteDriver }

func (d *syncDriver) Open(dsn string) (driver.Conn, error) {
	c, err := d.SQLiteDriver.Open(dsn)
	if err != nil {
		return nil, err
	}
	return &syncConn{c.(*sqlite3.SQLiteConn)}, nil
}

// syncConn is a connection whose statements ignore their context once
// started.
type syncConn struct{ *sqlite3.SQLiteConn }

func (c *syncConn) ExecContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Result, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return c.SQLiteConn.ExecContext(context.Background(), query, args)
}

func (c *syncConn) QueryContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Rows, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return c.SQLiteConn.QueryContext(context.Background(), query, args)
}

func (c *syncConn) PrepareContext(ctx context.Context, query string) (driver.Stmt, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return c.Prepare(query)
}

func (c *syncConn) Prepare(query string) (driver.Stmt, error) {
	st, err := c.SQLiteConn.Prepare(query)
	if err != nil {
		return nil, err
	}
	return &syncStmt{st.(*sqlite3.SQLiteStmt)}, nil
}

// BeginTx: go-sqlite3 runs BEGIN as a statement with the context.
func (c *syncConn) BeginTx(ctx context.Context, opts driver.TxOptions) (driver.Tx, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return c.SQLiteConn.BeginTx(context.Background(), opts)
}

type syncStmt struct{ *sqlite3.SQLiteStmt }

func (s *syncStmt) ExecContext(ctx context.Context, args []driver.NamedValue) (driver.Result, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return s.SQLiteStmt.ExecContext(context.Background(), args)
}

func (s *syncStmt) QueryContext(ctx context.Context, args []driver.NamedValue) (driver.Rows, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return s.SQLiteStmt.QueryContext(context.Background(), args)
}

// sqliteConn is the go-sqlite3 connection under a store connection
// (conn.Raw), for its backup API.
func sqliteConn(dc any) (*sqlite3.SQLiteConn, bool) {
	switch c := dc.(type) {
	case *syncConn:
		return c.SQLiteConn, true
	case *sqlite3.SQLiteConn:
		return c, true
	}
	return nil, false
}
