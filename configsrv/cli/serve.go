package cli

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"patela/configsrv/attest"
	"patela/configsrv/cmalloc"
	"patela/configsrv/gctune"
	"patela/configsrv/httpapi"
	"patela/configsrv/pki"
	"patela/configsrv/store"
	"patela/configsrv/token"
	"patela/internal/cmdline"
)

func (e *env) initKeys(fs *flag.FlagSet, args []string) error {
	dir := fs.String("dir", "", "write the CA, server certificate and biscuit key into `DIR`")
	var names []string
	fs.Func("name", "server DNS `NAME` or IP for the certificate (repeatable or comma-separated; default localhost,127.0.0.1)", func(s string) error {
		for _, n := range strings.Split(s, ",") {
			if n = strings.TrimSpace(n); n != "" {
				names = append(names, n)
			}
		}
		return nil
	})
	if _, err := parse(fs, args, 0, 0); err != nil {
		return err
	}
	if *dir == "" {
		return cmdline.Usagef("init needs --dir DIR")
	}
	if len(names) == 0 {
		names = []string{"localhost", "127.0.0.1"}
	}
	newDB, err := e.checkNewDB(*dir)
	if err != nil {
		return err
	}
	created, err := pki.Init(*dir, names)
	for _, f := range created {
		fmt.Fprintln(e.stdout, "created", f)
	}
	if err != nil {
		return err
	}
	if _, err := e.open(toWrite); err != nil {
		return err
	}
	switch {
	case newDB:
		fmt.Fprintf(e.stdout, "new database %s, schema applied\n", e.db)
	case len(created) == 0:
		fmt.Fprintf(e.stdout, "nothing to do: every file exists in %s, database %s is up to date\n", *dir, e.db)
	}
	return nil
}

// checkNewDB reports whether the database is still to be created, and
// refuses before init writes anything when it could not be: its directory
// must exist, or be keyDir, which init creates.
func (e *env) checkNewDB(keyDir string) (bool, error) {
	if _, err := os.Stat(e.db); err == nil {
		return false, nil
	}
	dbDir, err1 := filepath.Abs(filepath.Dir(e.db))
	kd, err2 := filepath.Abs(keyDir)
	if err1 == nil && err2 == nil && dbDir == kd {
		return true, nil
	}
	if fi, err := os.Stat(filepath.Dir(e.db)); err != nil || !fi.IsDir() {
		return false, fmt.Errorf("database %s: its directory does not exist (set --db or PATELA_DB)", e.db)
	}
	return true, nil
}

// ServeOptions configures the API server. A zero limit is no limit
// (serve's flags give the defaults).
type ServeOptions struct {
	Listen      string
	CertFile    string
	KeyFile     string
	BiscuitKey  string
	TokenTTL    time.Duration
	EKCADir     string
	EKAllowlist string
	AttestRate  float64 // per second per client
	AttestBurst int
	MaxWait     time.Duration    // longest hold of a long-polled config request
	AccessLog   io.Writer        // one line per answered request; nil: none
	Observer    httpapi.Observer // told of every answered request (metrics); nil: none
	// RequireRelease refuses tokens to nodes whose TPM quote matches no
	// active release.
	RequireRelease bool

	MaxPending     int           // pending nodes at most
	MaxChallenges  int           // pending attestation challenges at most
	PendingExpiry  time.Duration // pending nodes not enabled within it are forgotten
	EnrollInterval time.Duration // one new pending node per client address per interval
	EnrollBurst    int
	NodeRate       float64 // node endpoint requests per second per node
	NodeBurst      int
}

// Defaults of serve's limits.
const (
	DefaultMaxPending     = 1000
	DefaultPendingExpiry  = 7 * 24 * time.Hour
	DefaultEnrollInterval = 10 * time.Minute
	DefaultEnrollBurst    = 20
	DefaultNodeRate       = 1
	DefaultNodeBurst      = 30
)

// serveFlags defines serve's flags: one line per option of ServeOptions.
func serveFlags(fs *flag.FlagSet, o *ServeOptions) (dir *string) {
	dir = fs.String("dir", "", "`DIR` made by `configsrv init` (default for the three key files)")
	fs.StringVar(&o.Listen, "listen", ":8443", "`ADDR` to listen on")
	fs.StringVar(&o.CertFile, "tls-cert", "", "server certificate `FILE` (PEM)")
	fs.StringVar(&o.KeyFile, "tls-key", "", "server key `FILE` (PEM)")
	fs.StringVar(&o.BiscuitKey, "biscuit-key", "", "biscuit root key `FILE`")
	fs.DurationVar(&o.TokenTTL, "token-ttl", token.DefaultTTL, "lifetime of node tokens (a Go `DURATION`: 30m, 2h)")
	fs.StringVar(&o.EKCADir, "ek-ca", "", "`DIR` of EK CA certificates; EKs must chain to one (or be allowlisted)")
	fs.StringVar(&o.EKAllowlist, "ek-allowlist", "", "`FILE` of allowed EK identities (as `init tpm ek` prints them), one per line")
	fs.Float64Var(&o.AttestRate, "attest-rate", 5, "attestation requests per second (`N`) per client address; 0: no limit")
	fs.IntVar(&o.AttestBurst, "attest-burst", 20, "attestation burst (`N`) per client address")
	fs.DurationVar(&o.MaxWait, "max-wait", httpapi.DefaultMaxWait, "hold a node's config request at most `DURATION` waiting for a change")
	fs.BoolVar(&o.RequireRelease, "require-release", false,
		"refuse tokens (403 unknown_release) to nodes whose TPM quote matches no active release, or that send none")
	fs.IntVar(&o.MaxPending, "max-pending", DefaultMaxPending, "at most `N` nodes wait for an administrator; new EKs beyond get 429 pending_full; 0: no cap")
	fs.IntVar(&o.MaxChallenges, "max-challenges", httpapi.DefaultMaxChallenges,
		"at most `N` attestation challenges pending (held in memory, about 750 bytes each); attests beyond get 429 rate_limited")
	fs.DurationVar(&o.PendingExpiry, "pending-expiry", DefaultPendingExpiry, "forget pending nodes not enabled within `DURATION`; 0: never")
	fs.DurationVar(&o.EnrollInterval, "enroll-interval", DefaultEnrollInterval, "one new pending node per client address per `DURATION`, after a burst; 0: no limit")
	fs.IntVar(&o.EnrollBurst, "enroll-burst", DefaultEnrollBurst, "new pending nodes (`N`) a client address may create at once")
	fs.Float64Var(&o.NodeRate, "node-rate", DefaultNodeRate, "node endpoint requests per second (`N`) per node; 0: no limit")
	fs.IntVar(&o.NodeBurst, "node-burst", DefaultNodeBurst, "node endpoint burst (`N`) per node")
	return dir
}

// logFlags defines serve's logging flags: the server log's level and the
// access log's destination.
func logFlags(fs *flag.FlagSet) (level *slog.Level, accessLog *string) {
	level = new(slog.Level)
	fs.TextVar(level, "log-level", slog.LevelInfo, "server log `LEVEL`: debug, info, warn or error")
	accessLog = fs.String("access-log", "", "append one line per request to `FILE` (- for standard error); default none")
	return level, accessLog
}

// openAccessLog opens the access log named by --access-log; "" is none.
func (e *env) openAccessLog(name string) (io.Writer, func(), error) {
	switch name {
	case "":
		return nil, func() {}, nil
	case "-":
		return e.stderr, func() {}, nil
	}
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return nil, nil, fmt.Errorf("--access-log: %w", err)
	}
	return f, func() { f.Close() }, nil
}

func (e *env) serve(fs *flag.FlagSet, args []string) error {
	var o ServeOptions
	dir := serveFlags(fs, &o)
	level, accessLog := logFlags(fs)
	metricsListen := metricsFlag(fs)
	if _, err := parse(fs, args, 0, 0); err != nil {
		return err
	}
	if err := o.keyFiles(*dir); err != nil {
		return err
	}
	if o.TokenTTL < time.Minute {
		return fmt.Errorf("--token-ttl %s: must be at least 1m", o.TokenTTL)
	}
	if o.MaxChallenges < 1 {
		return cmdline.Usagef("--max-challenges %d: must be at least 1", o.MaxChallenges)
	}
	if o.MaxWait < time.Second || o.MaxWait > 24*time.Hour {
		return fmt.Errorf("--max-wait %s: must be between 1s and 24h", o.MaxWait)
	}
	for _, c := range []struct {
		bad  bool
		flag string
	}{
		{o.MaxPending < 0, "--max-pending"}, {o.PendingExpiry < 0, "--pending-expiry"},
		{o.EnrollInterval < 0, "--enroll-interval"}, {o.EnrollBurst < 1, "--enroll-burst"},
		{o.NodeRate < 0, "--node-rate"}, {o.NodeBurst < 1, "--node-burst"},
		{o.AttestRate < 0, "--attest-rate"}, {o.AttestBurst < 1, "--attest-burst"},
	} {
		if c.bad {
			return cmdline.Usagef("%s: must not be negative (bursts: at least 1)", c.flag)
		}
	}
	cmalloc.LimitArenas(2) // before SQLite's first allocations
	st, err := e.open(toWrite)
	if err != nil {
		return err
	}
	al, closeAL, err := e.openAccessLog(*accessLog)
	if err != nil {
		return err
	}
	defer closeAL()
	o.AccessLog = al
	obs, stopMetrics, err := e.startMetrics(st, *metricsListen)
	if err != nil {
		return err
	}
	defer stopMetrics()
	o.Observer = obs
	srvLog := slog.New(slog.NewTextHandler(e.stderr, &slog.HandlerOptions{Level: *level}))
	srv, err := NewServer(st, o, srvLog)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", o.Listen)
	if err != nil {
		return err
	}
	ctx, stop := context.WithCancel(e.ctx)
	defer stop()
	go RunRollouts(ctx, st, time.Second, srvLog)
	if os.Getenv("GOGC") == "" { // else the operator's setting stands
		go gctune.Run(ctx, time.Second, cmalloc.Trim)
	}
	return e.serveUntilSignal(srv, ln)
}

// keyFiles fills the key file options left empty from dir.
func (o *ServeOptions) keyFiles(dir string) error {
	for _, f := range []struct {
		v    *string
		name string
	}{{&o.CertFile, pki.ServerCert}, {&o.KeyFile, pki.ServerKey}, {&o.BiscuitKey, pki.BiscuitKey}} {
		if *f.v == "" && dir != "" {
			*f.v = filepath.Join(dir, f.name)
		}
		if *f.v == "" {
			return cmdline.Usagef("serve needs --dir DIR or --tls-cert, --tls-key and --biscuit-key")
		}
	}
	return nil
}

// serveUntilSignal serves srv on ln until it fails or SIGTERM or SIGINT
// arrives, then shuts it down. "serving" is printed once the signals are
// caught, so whoever waits for it may signal at once.
func (e *env) serveUntilSignal(srv *Server, ln net.Listener) error {
	ctx, stop := signal.NotifyContext(e.ctx, syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	fmt.Fprintf(e.stderr, "configsrv: serving https://%s (database %s)\n", ln.Addr(), e.db)
	errc := make(chan error, 1)
	go func() { errc <- srv.ServeTLS(ln, "", "") }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	if err := <-errc; !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	fmt.Fprintln(e.stderr, "configsrv: stopped")
	return nil
}

// NewServer builds the HTTPS server from o over st; the caller serves it
// with ServeTLS(ln, "", "") and stops it with Shutdown.
func NewServer(st *store.Store, o ServeOptions, log *slog.Logger) (*Server, error) {
	cert, err := tls.LoadX509KeyPair(o.CertFile, o.KeyFile)
	if err != nil {
		return nil, err
	}
	key, err := token.LoadKey(o.BiscuitKey)
	if err != nil {
		return nil, err
	}
	trust := &attest.Trust{}
	if o.EKCADir != "" {
		if err := trust.LoadCADir(o.EKCADir); err != nil {
			return nil, fmt.Errorf("--ek-ca: %w", err)
		}
	}
	if o.EKAllowlist != "" {
		if err := trust.LoadAllowlist(o.EKAllowlist); err != nil {
			return nil, fmt.Errorf("--ek-allowlist: %w", err)
		}
	}
	api := &httpapi.Server{Store: st, Tokens: token.New(key, o.TokenTTL), Trust: trust, Log: log, MaxWait: o.MaxWait,
		RequireRelease: o.RequireRelease, Pending: store.PendingLimits{Max: o.MaxPending, Expiry: o.PendingExpiry},
		MaxChallenges: o.MaxChallenges}
	if o.AttestRate > 0 {
		api.Limiter = httpapi.NewLimiter(o.AttestRate, o.AttestBurst)
	}
	if o.EnrollInterval > 0 {
		api.Enroll = httpapi.NewLimiter(1/o.EnrollInterval.Seconds(), o.EnrollBurst)
	}
	if o.NodeRate > 0 {
		api.NodeLimiter = httpapi.NewLimiter(o.NodeRate, o.NodeBurst)
	}
	h := api.Handler()
	if o.Observer != nil {
		h = httpapi.Instrument(h, o.Observer)
	}
	if o.AccessLog != nil {
		h = httpapi.AccessLog(h, o.AccessLog)
	}
	return &Server{Server: httpapi.NewHTTPServer(h, cert), api: api}, nil
}

// Server is the HTTPS server of NewServer.
type Server struct {
	*http.Server
	api *httpapi.Server
}

// Shutdown answers the held config requests (304: the nodes ask again),
// which http.Server.Shutdown would not see (hijacked) or would wait for,
// then shuts the HTTP server down, then writes the refusals not audited
// yet (they are audited a minute at a time).
func (s *Server) Shutdown(ctx context.Context) error {
	s.api.Close()
	err := s.Server.Shutdown(ctx)
	s.api.CloseAudit()
	return err
}

// Waiting is the number of config requests held.
func (s *Server) Waiting() int { return s.api.Waiting() }
