package harness

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"
)

// GlobalTorrc keeps every relay off the Tor network.
const GlobalTorrc = "DisableNetwork 1\nContactInfo patela e2e relays <ops@example.org>\n"

// Server is a configsrv process serving HTTPS on a loopback port, with its
// own key material and SQLite database in Dir.
type Server struct {
	Dir  string
	DB   string
	Addr string // 127.0.0.1:PORT
	CA   string // PEM path of the CA the server certificate chains to

	bin  string
	cmd  *exec.Cmd
	done chan error
	log  io.Writer
}

// NodeInfo and RelayInfo are the fields of `node list --json` and
// `relay list --json` the harness reads.
type NodeInfo struct {
	ID     int64  `json:"id"`
	State  string `json:"state"`
	BootID string `json:"boot_id"`
	Relays int    `json:"relays"`
}

type RelayInfo struct {
	NodeID      int64     `json:"node_id"`
	Name        string    `json:"name"`
	IPv4        string    `json:"ipv4"`
	Fingerprint string    `json:"fingerprint"`
	Ed25519ID   string    `json:"ed25519_id"`
	State       string    `json:"state"`
	Restarts    int       `json:"restarts"`
	ReportedAt  time.Time `json:"reported_at"`
}

// StartServer creates key material for the guest's view of the server
// (10.0.2.100) and loopback, a fresh database with the documentation
// address pools, a global torrc with DisableNetwork 1 and defaults that let
// two relays fit a 1 GiB machine and report every 10 s (heartbeats; configs
// are long-polled), then serves.
func StartServer(ctx context.Context, t *Tools, dir string, log io.Writer) (*Server, error) {
	s := &Server{Dir: dir, DB: filepath.Join(dir, "patela.db"), CA: filepath.Join(dir, "ca.pem"), bin: t.Configsrv, log: log}
	if _, err := s.Admin(ctx, "init", "--dir", dir, "--name", ServerIP+",127.0.0.1,localhost"); err != nil {
		return nil, err
	}
	torrc := filepath.Join(dir, "global.torrc")
	if err := os.WriteFile(torrc, []byte(GlobalTorrc), 0o644); err != nil {
		return nil, err
	}
	for _, args := range [][]string{
		{"pool", "add", "192.0.2.0/24", "--gateway", "192.0.2.1"},
		{"pool", "add", "2001:db8::/64", "--gateway", "2001:db8::1"},
		{"torrc", "import", torrc, "--default"},
		{"node", "set", "--default", "relay_memory_mb", "256"},
		{"node", "set", "--default", "max_relays", "2"},
		{"node", "set", "--default", "relay_interface", "eth1"},
		{"node", "set", "--default", "poll_interval_s", "10"},
		{"node", "set", "--default", "heartbeat_interval_s", "10"},
	} {
		if _, err := s.Admin(ctx, args...); err != nil {
			return nil, err
		}
	}
	if err := s.start(); err != nil {
		return nil, err
	}
	return s, nil
}

// CAFile is the name `configsrv init` gives the CA certificate.
const caFile = "ca.pem"

var servingRE = regexp.MustCompile(`serving https://(127\.0\.0\.1:\d+)`)

// Restart stops the server and serves again on the same database with
// extra serve flags (a new port: boot machines after it).
func (s *Server) Restart(extra ...string) error {
	s.Stop()
	return s.start(extra...)
}

func (s *Server) start(extra ...string) error {
	cmd := exec.Command(s.bin, append([]string{"--db", s.DB, "serve", "--dir", s.Dir, "--listen", "127.0.0.1:0"}, extra...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return err
	}
	cmd.Stdout = s.log
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("harness: starting configsrv: %w", err)
	}
	s.cmd = cmd
	s.done = make(chan error, 1)
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			line := sc.Text()
			fmt.Fprintf(s.log, "configsrv: %s\n", strings.TrimPrefix(line, "configsrv: "))
			if m := servingRE.FindStringSubmatch(line); m != nil {
				select {
				case addr <- m[1]:
				default:
				}
			}
		}
		io.Copy(io.Discard, stderr)
	}()
	go func() { s.done <- cmd.Wait() }()
	select {
	case s.Addr = <-addr:
	case err := <-s.done:
		return fmt.Errorf("harness: configsrv exited before serving: %v", err)
	case <-time.After(30 * time.Second):
		s.Stop()
		return errors.New("harness: configsrv did not start serving within 30s")
	}
	if _, err := os.Stat(s.CA); err != nil {
		s.Stop()
		return fmt.Errorf("harness: configsrv init left no %s: %w", caFile, err)
	}
	return nil
}

// Admin runs the admin CLI on the server's database and returns stdout.
func (s *Server) Admin(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, s.bin, append([]string{"--db", s.DB}, args...)...)
	var out, errb strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("configsrv %s: %v: %s", quote(args), err, strings.TrimSpace(errb.String()))
	}
	return out.String(), nil
}

// Nodes and Relays read the server's view through the admin CLI.
func (s *Server) Nodes(ctx context.Context) ([]NodeInfo, error) {
	var n []NodeInfo
	return n, s.adminJSON(ctx, &n, "node", "list", "--json")
}

func (s *Server) Relays(ctx context.Context, node int64) ([]RelayInfo, error) {
	var r []RelayInfo
	return r, s.adminJSON(ctx, &r, "relay", "list", "--node", fmt.Sprint(node), "--json")
}

func (s *Server) adminJSON(ctx context.Context, v any, args ...string) error {
	out, err := s.Admin(ctx, args...)
	if err != nil {
		return err
	}
	if err := json.Unmarshal([]byte(out), v); err != nil {
		return fmt.Errorf("configsrv %s: %v in %q", quote(args), err, out)
	}
	return nil
}

// WaitNode polls until a node satisfying ok exists.
func (s *Server) WaitNode(ctx context.Context, ok func(NodeInfo) bool) (NodeInfo, error) {
	for {
		nodes, err := s.Nodes(ctx)
		if err != nil {
			return NodeInfo{}, err
		}
		for _, n := range nodes {
			if ok(n) {
				return n, nil
			}
		}
		if err := sleep(ctx, 250*time.Millisecond); err != nil {
			return NodeInfo{}, fmt.Errorf("harness: waiting for a node: %w (nodes: %+v)", err, nodes)
		}
	}
}

// WaitRelaysRunning polls until the node has at least min relays, all
// reported running with a fingerprint after since, and returns them.
func (s *Server) WaitRelaysRunning(ctx context.Context, node int64, min int, since time.Time) ([]RelayInfo, error) {
	for {
		rs, err := s.Relays(ctx, node)
		if err != nil {
			return nil, err
		}
		ok := len(rs) >= min
		for _, r := range rs {
			ok = ok && r.State == "running" && r.Fingerprint != "" && r.ReportedAt.After(since)
		}
		if ok {
			return rs, nil
		}
		if err := sleep(ctx, 250*time.Millisecond); err != nil {
			return nil, fmt.Errorf("harness: waiting for %d running relays on node %d: %w (relays: %+v)", min, node, err, rs)
		}
	}
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// Stop ends the server (SIGTERM, then SIGKILL after 10 s) and waits.
func (s *Server) Stop() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	terminate(s.cmd.Process.Pid, s.done, 10*time.Second)
	s.cmd = nil
}
