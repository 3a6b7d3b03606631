package reconcile

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"errors"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"patela/configsrv/attest/softek"
	"patela/configsrv/testsrv"
	"patela/init/netcfg"
	"patela/init/netnstest"
	"patela/init/tor"
	"patela/internal/api"
	"patela/internal/pcr"
	"patela/internal/release"
	"patela/internal/testutil"
)

// softTokens attests with a software EK through the real protocol
// (the TPM is C's; the server side is exactly what a TPM node meets).
type softTokens struct {
	c     *api.Client
	ek    *softek.EK
	ak    []byte
	mu    sync.Mutex
	tok   string
	count int // attestations done
}

func (s *softTokens) Token(ctx context.Context) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.tok != "" {
		return s.tok, nil
	}
	r, err := testsrv.Activate(ctx, s.c, s.ek, s.ak)
	if err != nil {
		return "", err
	}
	s.tok = r.Token
	s.count++
	return s.tok, nil
}

func (s *softTokens) Invalidate(tok string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.tok == tok {
		s.tok = ""
	}
}

func (s *softTokens) attestations() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.count
}

// enroll makes a pending node from a fresh software EK and enables it.
func enroll(t testing.TB, s *testsrv.Server) (int64, *softTokens) {
	id, ek, ak, c := s.EnableSoftwareNode(t)
	// Start with a token the server refuses: the first round must get
	// 401 and attest again.
	return id, &softTokens{c: c, ek: ek, ak: ak, tok: "not-a-token"}
}

type relayView struct {
	Name        string         `json:"name"`
	State       api.RelayState `json:"state"`
	Fingerprint string         `json:"fingerprint"`
	Restarts    int            `json:"restarts"`
	ReportedAt  time.Time      `json:"reported_at"`
}

func serverRelays(t *testing.T, s *testsrv.Server, node int64) map[string]relayView {
	t.Helper()
	var rs []relayView
	if err := json.Unmarshal([]byte(s.Admin(t, "relay", "list", "--node", strconv.FormatInt(node, 10), "--json")), &rs); err != nil {
		t.Fatal(err)
	}
	m := map[string]relayView{}
	for _, r := range rs {
		m[r.Name] = r
	}
	return m
}

func waitFor(t testing.TB, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	deadline := start.Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return time.Since(start)
}

func statusOf(sup *tor.Supervisor, name string) (tor.Status, bool) {
	for _, st := range sup.Status() {
		if st.Name == name {
			return st, true
		}
	}
	return tor.Status{}, false
}

// addrsIn lists the global addresses on ifname in ns.
func addrsIn(t *testing.T, ns *netnstest.NS, ifname string) map[netip.Addr]bool {
	t.Helper()
	l, err := ns.NL.LinkByName(ifname)
	if err != nil {
		t.Fatal(err)
	}
	as, err := ns.NL.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		t.Fatal(err)
	}
	m := map[netip.Addr]bool{}
	for _, a := range as {
		ip, _ := netip.AddrFromSlice(a.IP)
		m[ip.Unmap()] = true
	}
	return m
}

// world is an agent's surroundings: a real configsrv with one enrolled
// node allowed maxRelays relays, the agent's network namespace with its
// relay NIC (to the namespace up), and a loop wired to real netcfg and
// tor, tor running inside the agent's namespace.
type world struct {
	s      *testsrv.Server
	id     int64
	ids    string
	tokens *softTokens
	agent  *netnstest.NS
	up     *netnstest.NS
	root   string
	logs   *testutil.SyncBuffer
	sup    *tor.Supervisor
	l      *Loop
}

func newWorld(tb testing.TB, maxRelays int, poll time.Duration, edit ...func(*world, *tor.Options)) *world {
	return newWorldOn(tb, startServer(tb), maxRelays, poll, edit...)
}

// startServer starts the real configsrv the agents of a test talk to.
func startServer(tb testing.TB) *testsrv.Server {
	netnstest.RequireRoot(tb)
	testutil.RequireTool(tb, "tor", "apt-get install tor")
	s := testsrv.Start(tb)
	global := filepath.Join(tb.TempDir(), "global.torrc")
	os.WriteFile(global, []byte(testsrv.GlobalTorrc+"ShutdownWaitLength 1\nExitRelay 0\n"), 0o644)
	s.Admin(tb, "torrc", "import", global, "--default")
	return s
}

// newWorldOn is newWorld for one of several agents on server s.
func newWorldOn(tb testing.TB, s *testsrv.Server, maxRelays int, poll time.Duration, edit ...func(*world, *tor.Options)) *world {
	w := &world{s: s, logs: &testutil.SyncBuffer{}}
	w.id, w.tokens = enroll(tb, s)
	w.ids = strconv.FormatInt(w.id, 10)
	s.Admin(tb, "node", "set", w.ids, "relay_interface", "relay0")
	s.Admin(tb, "node", "set", w.ids, "poll_interval_s", "10")
	s.Admin(tb, "node", "set", w.ids, "max_relays", strconv.Itoa(maxRelays))

	tb.Cleanup(func() {
		if tb.Failed() {
			tb.Log("agent log:\n" + w.logs.String())
		}
	})
	log := slog.New(slog.NewTextHandler(w.logs, nil))
	w.agent, w.up = netnstest.New(tb), netnstest.New(tb)
	netnstest.Veth(tb, w.agent, "relay0", w.up, "up0")
	net, err := netcfg.New(netcfg.Options{NetNS: w.agent.Fd(), Log: log})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(net.Close)

	w.root = tb.TempDir()
	for p := w.root; p != os.TempDir() && p != "/"; p = filepath.Dir(p) {
		os.Chmod(p, 0o755) // the relay uids must reach their directories
	}
	o := tor.Options{
		StateDir: filepath.Join(w.root, "state"), RunDir: filepath.Join(w.root, "run"),
		Accounts: tor.Files{Root: w.root}, StopTimeout: 10 * time.Second, KeyPoll: 200 * time.Millisecond,
		Log: log, NetNS: w.agent.Fd(), // tor listens where netcfg put the relay addresses
	}
	for _, e := range edit {
		e(w, &o)
	}
	if o.Keys == nil {
		o.Keys = testVault(tb, nil)
	}
	w.sup, err = tor.New(o)
	if err != nil {
		tb.Fatal(err)
	}
	w.l, err = New(Config{
		Client:       s.Client(tb),
		Tokens:       w.tokens,
		Network:      net,
		Relays:       w.sup,
		Log:          log,
		Specs:        &api.Specs{CPUs: 8, MemoryBytes: 16 << 30, CPUModel: "test", Features: tor.Features},
		PollInterval: poll,
		RetryMin:     200 * time.Millisecond,
		RetryMax:     time.Second,
	})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		w.sup.Shutdown(ctx)
	})
	return w
}

// The whole agent steady state against a real configsrv, real tor and
// the real netcfg in a network namespace of the test's own.
func TestReconcileAgainstConfigsrv(t *testing.T) {
	const poll = time.Second
	w := newWorld(t, 1, poll)
	s, id, ids, tokens, agent, root, l := w.s, w.id, w.ids, w.tokens, w.agent, w.root, w.l
	ctx, cancel := context.WithCancel(context.Background())
	runDone := make(chan error, 1)
	go func() { runDone <- l.Run(ctx) }()
	sup := w.sup
	stopped := false
	var runErr error
	shutdown := func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		runErr = <-runDone
		sctx, c := context.WithTimeout(context.Background(), 30*time.Second)
		defer c()
		sup.Shutdown(sctx)
	}
	t.Cleanup(shutdown)

	// First relay: allocated by the specs the loop posts.
	var first tor.Status
	waitFor(t, "first relay running", func() bool {
		st := sup.Status()
		if len(st) == 1 && st[0].State == api.RelayRunning {
			first = st[0]
			return true
		}
		return false
	})
	if tokens.attestations() != 1 {
		t.Errorf("attestations = %d: the refused token did not lead to exactly one new attestation", tokens.attestations())
	}
	waitFor(t, "heartbeat with fingerprint", func() bool {
		r := serverRelays(t, s, id)[first.Name]
		return r.State == api.RelayRunning && len(r.Fingerprint) == 40
	})
	cfg0, _ := s.Client(t).Config(context.Background(), mustToken(t, tokens))
	relayAddr := func(name string) netip.Addr {
		for _, r := range cfg0.Relays {
			if r.Name == name {
				return netip.MustParsePrefix(r.IPv4).Addr()
			}
		}
		return netip.Addr{}
	}
	if a := relayAddr(first.Name); !addrsIn(t, agent, "relay0")[a] {
		t.Errorf("relay address %v not on relay0", a)
	}

	// Admin raises max_relays: the loop's next specs post allocates a
	// second relay, which starts; the first is not touched.
	t0 := time.Now()
	s.Admin(t, "node", "set", ids, "max_relays", "2")
	var second tor.Status
	waitFor(t, "second relay running", func() bool {
		for _, st := range sup.Status() {
			if st.Name != first.Name && st.State == api.RelayRunning {
				second = st
				return true
			}
		}
		return false
	})
	added := time.Since(t0)
	t.Logf("max_relays 1→2 to second relay running: %v (poll interval %v)", added, poll)
	// Touched only by reloads: its share of memory halved (a new
	// MaxMemInQueues, the cgroup limit changed in place) and its MyFamily
	// listing the second relay once that reports its fingerprint: one
	// reload each, or one for both when they come in the same config.
	waitFor(t, "first relay's MyFamily names the second", func() bool {
		live, _ := os.ReadFile(filepath.Join(root, "run", first.Name+".torrc"))
		st, _ := statusOf(sup, second.Name)
		// tor reports RELOADING a moment after the torrc is written.
		one, _ := statusOf(sup, first.Name)
		return st.Fingerprint != "" && bytes.Contains(live, []byte("MyFamily $"+st.Fingerprint+"\n")) &&
			one.Reloads >= 1 && one.State == api.RelayRunning
	})
	time.Sleep(2 * poll) // nothing more comes of it
	if st, _ := statusOf(sup, first.Name); st.PID != first.PID || st.Restarts != 0 || st.Reloads < 1 || st.Reloads > 2 {
		t.Errorf("first relay disturbed by adding the second beyond reloads: %+v, was %+v", st, first)
	}
	// 16 GiB: 1 GiB reserved, 7.5 GiB each, 3/4 for tor's queues.
	if live, _ := os.ReadFile(filepath.Join(root, "run", first.Name+".torrc")); !bytes.Contains(live, []byte("MaxMemInQueues 5760 MB\n")) {
		t.Errorf("first relay's torrc after the second came:\n%s", live)
	}

	// Admin changes the second relay's torrc (reloadable): applied by
	// SIGHUP, same process.
	relayTorrc := filepath.Join(t.TempDir(), "relay.torrc")
	os.WriteFile(relayTorrc, []byte("ContactInfo relay-level contact <ops@example.org>\nMaxMemInQueues 512 MB\n"), 0o644)
	t0 = time.Now()
	s.Admin(t, "torrc", "import", relayTorrc, "--relay", second.Name)
	waitFor(t, "relay torrc reloaded", func() bool {
		st, _ := statusOf(sup, second.Name)
		return st.Reloads == 1 && st.State == api.RelayRunning
	})
	t.Logf("torrc import --relay to reloaded: %v", time.Since(t0))
	live, _ := os.ReadFile(filepath.Join(root, "run", second.Name+".torrc"))
	if !bytes.Contains(live, []byte("relay-level contact")) {
		t.Errorf("live torrc lacks the relay level:\n%s", live)
	}
	if st, _ := statusOf(sup, second.Name); st.PID != second.PID {
		t.Errorf("reloadable change restarted tor: pid %d→%d", second.PID, st.PID)
	}

	// Admin lowers max_relays: the second relay is freed, stopped and
	// cleaned; the first runs on.
	t0 = time.Now()
	s.Admin(t, "node", "set", ids, "max_relays", "1")
	waitFor(t, "second relay removed", func() bool {
		_, ok := statusOf(sup, second.Name)
		return !ok
	})
	t.Logf("max_relays 2→1 to second relay removed: %v", time.Since(t0))
	if unix.Kill(second.PID, 0) == nil {
		t.Errorf("second relay's tor %d still alive", second.PID)
	}
	for _, p := range []string{"state/" + second.Name, "run/" + second.Name, "run/" + second.Name + ".torrc"} {
		if _, err := os.Stat(filepath.Join(root, p)); !os.IsNotExist(err) {
			t.Errorf("%s left behind", p)
		}
	}
	if a := relayAddr(second.Name); a.IsValid() && addrsIn(t, agent, "relay0")[a] {
		t.Errorf("removed relay's address %v still on relay0", a)
	}
	// The first relay's MyFamily loses the second: one more reload, in
	// the same round, same tor.
	waitFor(t, "first relay reloaded without the second in its MyFamily", func() bool {
		st, _ := statusOf(sup, first.Name)
		return st.Reloads == 2 && st.State == api.RelayRunning
	})
	if st, _ := statusOf(sup, first.Name); st.PID != first.PID || st.Restarts != 0 {
		t.Errorf("first relay disturbed by the removal: %+v", st)
	}

	// (A disabled, banned or removed node stops its relays: TestRevocation.)

	// The server goes away: relays keep running through several rounds.
	s.Stop()
	time.Sleep(3 * poll)
	if st, _ := statusOf(sup, first.Name); st.PID != first.PID || st.State != api.RelayRunning {
		t.Errorf("relay disturbed while the server was down: %+v", st)
	}
	restarted := time.Now()
	s.Restart(t)
	waitFor(t, "heartbeat after the server returned", func() bool {
		return serverRelays(t, s, id)[first.Name].ReportedAt.After(restarted.Add(-time.Second))
	})
	t.Logf("server back to heartbeat: %v", time.Since(restarted))

	shutdown()
	if unix.Kill(first.PID, 0) == nil {
		t.Errorf("tor %d alive after Shutdown", first.PID)
	}
	if !errors.Is(runErr, context.Canceled) {
		t.Errorf("Run returned %v, want context.Canceled", runErr)
	}
}

func mustToken(t *testing.T, tk Tokens) string {
	tok, err := tk.Token(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// A desired state the agent cannot use is refused with a clear error and
// changes nothing that runs: a relay named twice, a relay interface that
// does not exist, a torrc that does not match its checksum.
func TestApplyRefusesBadConfig(t *testing.T) {
	w := newWorld(t, 1, time.Hour)
	ctx := context.Background()
	if _, err := w.l.Once(ctx); err != nil {
		t.Fatal(err)
	}
	sup := w.sup
	var first tor.Status
	waitFor(t, "relay running", func() bool {
		st := sup.Status()
		if len(st) == 1 && st[0].State == api.RelayRunning {
			first = st[0]
			return true
		}
		return false
	})
	good, err := w.s.Client(t).Config(ctx, mustToken(t, w.tokens))
	if err != nil {
		t.Fatal(err)
	}
	untouched := func(what string) {
		t.Helper()
		st := sup.Status()
		if len(st) != 1 || st[0].PID != first.PID || st[0].State != api.RelayRunning || st[0].Reloads != 0 {
			t.Errorf("%s disturbed the running relay: %+v, was %+v", what, st, first)
		}
	}
	clone := func() *api.NodeConfig {
		c := *good
		c.Relays = append([]api.Relay(nil), good.Relays...)
		return &c
	}

	dup := clone()
	dup.Relays = append(dup.Relays, dup.Relays[0])
	if err := w.l.apply(ctx, dup); err == nil || !strings.Contains(err.Error(), "twice") {
		t.Errorf("duplicate relay: %v", err)
	}
	untouched("a duplicate relay")

	noNIC := clone()
	noNIC.Network.RelayInterface = "nosuch0"
	noNIC.Relays[0].Torrc += "ContactInfo other\n"
	if err := w.l.apply(ctx, noNIC); err == nil || !strings.Contains(err.Error(), "network") {
		t.Errorf("missing relay interface: %v", err)
	}
	untouched("a network failure")

	badSum := clone()
	extra := badSum.Relays[0]
	extra.Name, extra.UID, extra.IPv4, extra.IPv6 = "forged", extra.UID+1, "192.0.2.250/24", ""
	extra.Torrc += "ContactInfo tampered\n"
	badSum.Relays = append(badSum.Relays, extra)
	if err := w.l.apply(ctx, badSum); err == nil || !strings.Contains(err.Error(), "torrc_sha256") {
		t.Errorf("checksum mismatch: %v", err)
	}
	untouched("a relay with a bad checksum")
	hb := w.l.status()
	if len(hb.Relays) != 2 || hb.Relays[0].Name != "forged" || hb.Relays[0].State != api.RelayRefused {
		t.Errorf("heartbeat does not report the refused relay: %+v", hb.Relays)
	}
	if hb.BootID == "" || hb.UptimeS <= 0 {
		t.Errorf("heartbeat boot id %q uptime %d", hb.BootID, hb.UptimeS)
	}
}

// TestRolloutReboot: a rollout's reboot request reaches the loop through
// the real server's config and the loop hands it to Config.Reboot once,
// applying nothing more; a loop in another boot ignores it.
func TestRolloutReboot(t *testing.T) {
	w := newWorld(t, 1, time.Second)
	ctx := context.Background()
	proc := t.TempDir()
	os.MkdirAll(filepath.Join(proc, "sys/kernel/random"), 0o755)
	setBoot := func(id string) {
		os.WriteFile(filepath.Join(proc, "sys/kernel/random/boot_id"), []byte(id+"\n"), 0o644)
	}
	setBoot("boot-1")
	var asked []*api.Reboot
	w.l.cfg.ProcRoot = proc
	w.l.cfg.Reboot = func(r *api.Reboot) { asked = append(asked, r) }
	if _, err := w.l.Once(ctx); err != nil {
		t.Fatal(err)
	}
	rel, err := release.New("rel-B", release.KindUKI, map[int]pcr.Value{4: {4}, 11: {11}, 12: {}},
		release.UKIPolicyPCRs, map[string]string{"uki": strings.Repeat("ab", 32)})
	if err != nil {
		t.Fatal(err)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	rel.Approve(key)
	b, _ := rel.Marshal()
	f := filepath.Join(t.TempDir(), "rel-B.json")
	os.WriteFile(f, b, 0o644)
	w.s.Admin(t, "release", "add", f)
	w.s.Admin(t, "rollout", "start", "rel-B")
	waitFor(t, "the rollout to ask the node", func() bool {
		return strings.Contains(w.s.Admin(t, "rollout", "status"), "rebooting")
	})

	setBoot("boot-0") // a loop in another boot
	if _, err := w.l.Once(ctx); err != nil || len(asked) != 0 {
		t.Fatalf("another boot: err %v, asked %v", err, asked)
	}
	setBoot("boot-1")
	for range 2 {
		if _, err := w.l.Once(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if len(asked) != 1 || asked[0].Release != "rel-B" || asked[0].BootID != "boot-1" {
		t.Fatalf("reboot requests handed over: %+v", asked)
	}
	// The machine is going down: a config change is not applied.
	before := len(w.sup.Status())
	w.s.Admin(t, "node", "set", w.ids, "max_relays", "0")
	if _, err := w.l.Once(ctx); err != nil {
		t.Fatal(err)
	}
	if n := len(w.sup.Status()); n != before || before != 1 {
		t.Errorf("relays after the request: %d, before %d (want 1, untouched)", n, before)
	}
}
