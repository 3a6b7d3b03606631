// Package srvproc runs the real configsrv binary as a child process, for
// the fault, load and security tests and the bench report: the things they
// check (kill -9, resident memory, what the server logs) belong to a
// process, not to a server object inside the test binary.
package srvproc

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"patela/configsrv/pki"
	"patela/configsrv/store"
	"patela/configsrv/token"
	"patela/internal/api"
)

// Tags are the build tags of the server binary (the Justfile's srv_tags).
const Tags = "sqlite_omit_load_extension,osusergo,netgo"

// Build compiles ./configsrv of module root into dir and returns the
// binary's path.
func Build(root, dir string) (string, error) {
	bin := filepath.Join(dir, "configsrv")
	cmd := exec.Command("go", "build", "-trimpath", "-tags", Tags, "-o", bin, "./configsrv")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=1")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build configsrv: %v\n%s", err, out)
	}
	return bin, nil
}

// ModuleRoot returns the directory of go.mod above the working directory.
func ModuleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", errors.New("not inside the patela module")
	}
	return filepath.Dir(mod), nil
}

// Pool is an address pool to add at setup.
type Pool struct{ CIDR, Gateway string }

// Server is one configsrv installation (key material and database in Dir)
// and, while started, its serving process.
type Server struct {
	Bin  string
	Dir  string
	DB   string
	CA   []byte // PEM
	Addr string // host:port, fixed at the first Start and reused on restarts
	URL  string

	logPath string
	mu      sync.Mutex
	cmd     *exec.Cmd
	done    chan error
}

// Setup creates the CA, server certificate and biscuit key with
// `configsrv init`, the address pools and the global torrc (which keeps
// tor off the network) with the admin CLI.
func Setup(bin, dir string, pools []Pool) (*Server, error) {
	s := &Server{Bin: bin, Dir: dir, DB: filepath.Join(dir, "patela.db"), logPath: filepath.Join(dir, "server.log")}
	if _, err := s.Admin("init", "--dir", dir, "--name", "127.0.0.1"); err != nil {
		return nil, err
	}
	ca, err := os.ReadFile(filepath.Join(dir, pki.CACert))
	if err != nil {
		return nil, err
	}
	s.CA = ca
	for _, p := range pools {
		if _, err := s.Admin("pool", "add", p.CIDR, "--gateway", p.Gateway); err != nil {
			return nil, err
		}
	}
	torrc := filepath.Join(dir, "global.torrc")
	if err := os.WriteFile(torrc, []byte("DisableNetwork 1\nContactInfo patela bench <ops@example.org>\n"), 0o644); err != nil {
		return nil, err
	}
	if _, err := s.Admin("torrc", "import", torrc, "--default"); err != nil {
		return nil, err
	}
	return s, nil
}

// Admin runs one admin CLI command on the database and returns its
// standard output, or an error carrying its standard error.
func (s *Server) Admin(args ...string) (string, error) {
	cmd := exec.Command(s.Bin, append([]string{"--db", s.DB}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("configsrv %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	return out.String(), nil
}

// Start runs `configsrv serve` with extra flags (e.g. the rate limit) and
// returns once it listens. Its standard error, the server log, is appended
// to Dir/server.log.
func (s *Server) Start(extra ...string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		return errors.New("configsrv already running")
	}
	listen := s.Addr
	if listen == "" {
		listen = "127.0.0.1:0"
	}
	args := append([]string{"--db", s.DB, "serve", "--dir", s.Dir, "--listen", listen}, extra...)
	// After a kill the kernel may hold the port a moment longer.
	for try := 0; ; try++ {
		cmd, done, addr, err := s.startOnce(args)
		if err == nil {
			s.cmd, s.done = cmd, done
			s.Addr, s.URL = addr, "https://"+addr
			return nil
		}
		if try == 20 || !strings.Contains(err.Error(), "address already in use") {
			return fmt.Errorf("configsrv serve: %w", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (s *Server) startOnce(args []string) (*exec.Cmd, chan error, string, error) {
	// The server writes its log to the file itself, as it would to
	// journald's socket: a copy in this process would put the load
	// generator in the server's log path (and the server would die of
	// SIGPIPE were the copy to fail). The file is appended to across
	// restarts; this start's lines begin at off.
	logf, err := os.OpenFile(s.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, nil, "", err
	}
	off, err := logf.Seek(0, io.SeekEnd)
	if err != nil {
		logf.Close()
		return nil, nil, "", err
	}
	cmd := exec.Command(s.Bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	err = cmd.Start()
	logf.Close() // the child has its own descriptor
	if err != nil {
		return nil, nil, "", err
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	addr, err := waitServing(s.logPath, off, done)
	if err != nil {
		cmd.Process.Kill()
		return nil, nil, "", err
	}
	return cmd, done, addr, nil
}

// waitServing reads the server's log from off until it announces its
// address, or the process ends.
func waitServing(path string, off int64, done <-chan error) (string, error) {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(30 * time.Second)
	for {
		if _, addr := logSince(path, off); addr != "" {
			return addr, nil
		}
		select {
		case err := <-done:
			out, _ := logSince(path, off)
			return "", fmt.Errorf("%v: %s", err, strings.TrimSpace(out))
		case <-deadline:
			return "", errors.New("not serving after 30 s")
		case <-tick.C:
		}
	}
}

// logSince returns the complete lines the log at path holds after off,
// and the address its "serving" line announces, if it has one yet.
func logSince(path string, off int64) (lines, addr string) {
	f, err := os.Open(path)
	if err != nil {
		return "", ""
	}
	defer f.Close()
	b, _ := io.ReadAll(io.NewSectionReader(f, off, 1<<62))
	lines = string(b[:bytes.LastIndexByte(b, '\n')+1]) // a line being written is not read yet
	for _, line := range strings.Split(lines, "\n") {
		if a, ok := strings.CutPrefix(line, "configsrv: serving https://"); ok {
			return lines, strings.Fields(a)[0]
		}
	}
	return lines, ""
}

// PID is the serving process's id, 0 when stopped.
func (s *Server) PID() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return 0
	}
	return s.cmd.Process.Pid
}

// Kill ends the server with SIGKILL, as a crash or the OOM killer would.
func (s *Server) Kill() error { return s.end(syscall.SIGKILL) }

// Stop asks the server to shut down (SIGTERM) and waits.
func (s *Server) Stop() error { return s.end(syscall.SIGTERM) }

func (s *Server) end(sig syscall.Signal) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return nil
	}
	s.cmd.Process.Signal(sig)
	err := <-s.done
	s.cmd, s.done = nil, nil
	if sig == syscall.SIGKILL {
		return nil
	}
	return err
}

// Logs returns everything the server has logged so far, across restarts.
func (s *Server) Logs() (string, error) {
	b, err := os.ReadFile(s.logPath)
	return string(b), err
}

// RSS returns the serving process's resident set size (VmRSS) and its
// peak (VmHWM) in bytes.
func (s *Server) RSS() (rss, peak int64, err error) {
	pid := s.PID()
	if pid == 0 {
		return 0, 0, errors.New("configsrv is not running")
	}
	if rss, err = ProcStatus(pid, "VmRSS"); err != nil {
		return 0, 0, err
	}
	peak, err = ProcStatus(pid, "VmHWM")
	return rss, peak, err
}

// CPU returns the CPU time (user + system) the serving process has used.
func (s *Server) CPU() (time.Duration, error) {
	pid := s.PID()
	if pid == 0 {
		return 0, errors.New("configsrv is not running")
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// After "pid (comm) ": state is field 3, utime and stime 14 and 15.
	i := bytes.LastIndexByte(b, ')')
	f := strings.Fields(string(b[i+1:]))
	if i < 0 || len(f) < 13 {
		return 0, fmt.Errorf("odd /proc/%d/stat", pid)
	}
	var ticks int64
	for _, v := range f[11:13] {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/%d/stat: %w", pid, err)
		}
		ticks += n
	}
	return time.Duration(ticks) * time.Second / 100, nil // USER_HZ is 100 on Linux
}

// ProcStatus reads a size field (VmRSS, VmHWM, ...) of a process from
// /proc/PID/status, in bytes.
func ProcStatus(pid int, field string) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			f := strings.Fields(v)
			if len(f) != 2 || f[1] != "kB" {
				return 0, fmt.Errorf("odd %s line %q", field, line)
			}
			kb, err := strconv.ParseInt(f[0], 10, 64)
			return kb << 10, err
		}
	}
	return 0, fmt.Errorf("no %s in /proc/%d/status", field, pid)
}

// Client returns an API client trusting the server's CA whose connections
// come from local (any 127.0.0.0/8 address on Linux; the zero Addr lets
// the kernel choose). The server rate-limits per client address, so the
// source address is what makes two simulated clients distinct.
func (s *Server) Client(local netip.Addr) (*api.Client, error) {
	c, err := api.NewClient(s.URL, s.CA)
	if err != nil {
		return nil, err
	}
	tr := c.HTTP.Transport.(*http.Transport)
	d := &net.Dialer{Timeout: 10 * time.Second}
	if local.IsValid() {
		d.LocalAddr = &net.TCPAddr{IP: local.AsSlice()}
	}
	tr.DialContext = d.DialContext
	return c, nil
}

// Claims are what a token for node id names now: its id, EK identity and
// token epoch, read from the database.
func (s *Server) Claims(id int64) (token.Claims, error) {
	st, err := store.Open(s.DB)
	if err != nil {
		return token.Claims{}, err
	}
	defer st.Close()
	au, err := st.NodeAuth(context.Background(), id)
	return token.Claims{Node: id, EK: au.EK, Epoch: au.Epoch}, err
}

// Token mints a bearer token for node id with the server's biscuit key,
// exactly as a completed attestation would now.
func (s *Server) Token(id int64, now time.Time) (string, error) {
	key, err := token.LoadKey(filepath.Join(s.Dir, pki.BiscuitKey))
	if err != nil {
		return "", err
	}
	c, err := s.Claims(id)
	if err != nil {
		return "", err
	}
	tok, _, err := token.New(key, token.DefaultTTL).Issue(c, now)
	return tok, err
}

// BenchPools are the pools tests and the bench report use: a fleet of
// thousands of relays needs more IPv4 addresses than the /24 documentation
// ranges hold, so IPv4 comes from 198.18.0.0/15, the range RFC 2544
// reserves for benchmarking; these addresses only ever live in the
// database.
var BenchPools = []Pool{{"198.18.0.0/15", "198.18.0.1"}, {"2001:db8:1::/64", "2001:db8:1::1"}}

// StartT sets up a server in a test directory with BenchPools, starts it
// with extra serve flags, and kills it at test end.
func StartT(t testing.TB, bin string, extra ...string) *Server {
	t.Helper()
	s, err := Setup(bin, t.TempDir(), BenchPools)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(extra...); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Kill() })
	return s
}

// BuildForTests builds the binary for a test package's TestMain into a
// temporary directory and returns its path and a cleanup; it exits the
// test binary when the build fails.
func BuildForTests() (string, func()) {
	dir, err := os.MkdirTemp("", "patela-configsrv-")
	if err == nil {
		var root, bin string
		if root, err = ModuleRoot(); err == nil {
			if bin, err = Build(root, dir); err == nil {
				return bin, func() { os.RemoveAll(dir) }
			}
		}
		os.RemoveAll(dir)
	}
	fmt.Fprintln(os.Stderr, "building configsrv:", err)
	os.Exit(2)
	return "", nil
}

// TestMain is a test package's TestMain: it builds the binary into *bin,
// runs the package's tests and exits with their status.
func TestMain(m *testing.M, bin *string) {
	var cleanup func()
	*bin, cleanup = BuildForTests()
	code := m.Run()
	cleanup()
	os.Exit(code)
}
