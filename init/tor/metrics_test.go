package tor

import (
	"bytes"
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"patela/init/netnstest"
	"patela/init/procfs"
	"patela/internal/api"
	"patela/internal/layout"
)

// networkTorrc is serverTorrc with the network on: tor opens its
// MetricsPort only then. The test runs it in a namespace of its own with
// nothing but loopback, so it reaches nothing.
func networkTorrc(name string, port int) []byte {
	return bytes.Replace(serverTorrc(name, port), []byte("DisableNetwork 1"), []byte("DisableNetwork 0"), 1)
}

// The summary of a real tor's MetricsPort, checked against what the test
// does to that tor (two OR connections held open), against tor's own
// reading of its signing certificate (tor --key-expiration sign) and
// against /proc.
func TestMetrics(t *testing.T) {
	ns := netnstest.New(t)
	h := newHarness(t, func(o *Options) { o.NetNS = ns.Fd() })
	ctx := context.Background()
	const uid, orPort = 20012, 39112
	if err := h.sup.Apply(ctx, Spec{Name: "lima", UID: uid, Torrc: networkTorrc("lima", orPort)}); err != nil {
		t.Fatal(err)
	}
	st := h.waitRunning(t, "lima")

	// Two TCP connections to the ORPort, held open, are two OR
	// connections opened for tor.
	for range 2 {
		ns.Do(t, func() error {
			c, err := net.Dial("tcp", "127.0.0.1:"+strconv.Itoa(orPort))
			if err == nil {
				t.Cleanup(func() { c.Close() })
			}
			return err
		})
	}
	var m api.RelayMetrics
	waitFor(t, "a scrape with both OR connections", func() bool {
		ms := h.sup.Metrics(ctx)
		if len(ms) != 1 {
			t.Fatalf("Metrics = %+v, want one relay", ms)
		}
		m = ms[0]
		return m.Error == "" && m.ORConns == 2
	})
	t.Logf("summary: %+v", m)
	if m.Name != "lima" || m.ExitConns != 0 || m.Circuits != 0 || m.OnionskinsDropped != 0 || m.Overloaded {
		t.Errorf("summary of an idle relay: %+v", m)
	}
	if len(m.Flags) != 0 {
		t.Errorf("flags %v without a consensus", m.Flags)
	}
	if m.UptimeS < 0 || time.Duration(m.UptimeS)*time.Second > time.Since(st.Since)+2*time.Second {
		t.Errorf("uptime %ds, tor started %v ago", m.UptimeS, time.Since(st.Since))
	}
	rss, err := procfs.RSS("/proc", strconv.Itoa(st.PID))
	if err != nil || m.TorRSSBytes < rss/2 || m.TorRSSBytes > 2*rss {
		t.Errorf("tor RSS %d, /proc says %d (%v)", m.TorRSSBytes, rss, err)
	}
	if want := keyExpiration(t, filepath.Join(h.root, "state", "lima"), uid); m.SigningCertExpires != want {
		t.Errorf("signing cert expires %d, tor --key-expiration says %d", m.SigningCertExpires, want)
	}

	// A relay whose tor is not running is left out; a tor that does not
	// answer is a summary with the error.
	if err := h.sup.Apply(ctx, Spec{Name: "mike", UID: 20013, Torrc: serverTorrc("mike", 39113)}); err != nil {
		t.Fatal(err)
	}
	h.waitRunning(t, "mike")
	ms := h.sup.Metrics(ctx)
	if len(ms) != 2 || ms[0].Name != "lima" || ms[1].Name != "mike" || ms[1].Error == "" || ms[1].BytesRead != 0 {
		t.Errorf("with mike's MetricsPort closed (DisableNetwork 1): %+v", ms)
	}
	t.Logf("mike: %s", ms[1].Error)
}

// keyExpiration is tor's own reading of the signing certificate in
// dataDir, as the relay's uid (tor checks who owns the directory).
func keyExpiration(t *testing.T, dataDir string, uid int) int64 {
	t.Helper()
	cmd := exec.Command("tor", "--defaults-torrc", "/dev/null", "--DataDirectory", dataDir,
		"--key-expiration", "sign", "--format", "timestamp")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(uid), Groups: []uint32{}}}
	out, err := cmd.CombinedOutput()
	for _, l := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(l, "signing-cert-expiry: "); ok {
			n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			if err == nil {
				return n
			}
		}
	}
	t.Fatalf("tor --key-expiration: %v\n%s", err, out)
	return 0
}

// Two relays whose uids are 65536 apart would share a metrics address:
// the second is refused before anything of it exists.
func TestMetricsAddrClash(t *testing.T) {
	h := newHarness(t, nil)
	ctx := context.Background()
	if err := h.sup.Apply(ctx, Spec{Name: "november", UID: 20014, Torrc: serverTorrc("november", 39114)}); err != nil {
		t.Fatal(err)
	}
	if layout.MetricsAddr(20014) != layout.MetricsAddr(20014+65536) {
		t.Fatal("the clash this test makes does not clash")
	}
	err := h.sup.Apply(ctx, Spec{Name: "oscar", UID: 20014 + 65536, Torrc: serverTorrc("oscar", 39115)})
	if err == nil || !strings.Contains(err.Error(), "metrics address") {
		t.Fatalf("Apply of a clashing uid: %v", err)
	}
	t.Logf("refused: %v", err)
	if st := h.sup.Status(); len(st) != 1 || st[0].Name != "november" {
		t.Errorf("status after the refusal: %+v", st)
	}
	for _, p := range []string{"state/oscar", "run/oscar", "run/oscar.torrc"} {
		if _, err := os.Stat(filepath.Join(h.root, p)); !os.IsNotExist(err) {
			t.Errorf("%s exists after the refusal (%v)", p, err)
		}
	}
}
