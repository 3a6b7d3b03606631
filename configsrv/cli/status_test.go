package cli

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"patela/configsrv/store"
	"patela/internal/api"
	"patela/internal/ekid"
)

// status shows every node, relays under it, with the rates of the last
// two summaries, and the node-reported text made safe for a terminal;
// --json carries the same.
func TestStatus(t *testing.T) {
	db := filepath.Join(t.TempDir(), "p.db")
	fails(t, db, "no such file", "status")
	usageErr(t, db, "takes 0 argument", "status", "extra")
	st, err := store.Open(db)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	st.AddPool(ctx, netip.MustParsePrefix("192.0.2.0/24"), netip.MustParseAddr("192.0.2.1"), time.Now())
	a, _, _ := st.AddPending(ctx, ekid.ID(sha256.Sum256([]byte("ek-a"))), []byte("ek-a"), time.Now(), store.PendingLimits{}, nil)
	b, _, _ := st.AddPending(ctx, ekid.ID(sha256.Sum256([]byte("ek-b"))), []byte("ek-b"), time.Now(), store.PendingLimits{}, nil)
	st.SetNodeState(ctx, a.ID, api.NodeEnabled)
	if a, err := st.Allocate(ctx, a.ID, &api.Specs{CPUs: 2, MemoryBytes: 8 << 30}, time.Now()); err != nil || a.After != 2 {
		t.Fatalf("allocate: %+v %v", a, err)
	}
	rs, _ := st.Relays(ctx, a.ID)
	hb := func(at time.Time, read, written uint64, uptime int64) {
		t.Helper()
		_, err := st.RecordStatus(ctx, a.ID, &api.Status{BootID: "b", UptimeS: 600, Relays: []api.RelayStatus{
			{Name: rs[0].Name, State: api.RelayRunning, Fingerprint: strings.Repeat("AB", 20)},
			{Name: rs[1].Name, State: api.RelayBackoff},
		}, Metrics: &api.NodeMetrics{AgentRSSBytes: 1, MemAvailableBytes: 2, MemTotalBytes: 3, Relays: []api.RelayMetrics{
			{Name: rs[0].Name, BytesRead: read, BytesWritten: written, Circuits: 42, UptimeS: uptime,
				Flags: []string{"Fast", "Running"}, SigningCertExpires: at.Add(29*24*time.Hour + time.Hour).Unix()},
			{Name: rs[1].Name, Error: "dial: refused\x1b[31m red"},
		}}}, nil, at)
		if err != nil {
			t.Fatal(err)
		}
	}
	t0 := time.Now().Add(-130 * time.Second)
	hb(t0, 1e9, 2e9, 100)
	hb(t0.Add(100*time.Second), 1e9+120e6, 2e9+4.5e6, 200) // 1.2 MB/s and 45 kB/s
	// b's quote matched release rel-B (issue 14); a sent none.
	if _, err := st.RecordAttestation(ctx, &store.Attestation{NodeID: b.ID, Status: store.AttestRelease, Release: "rel-B", At: time.Now()}); err != nil {
		t.Fatal(err)
	}
	st.Close()

	out := ok(t, db, "status")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 4 {
		t.Fatalf("status: want a header and 3 rows:\n%s", out)
	}
	fields := func(i int) []string { return strings.Fields(lines[i]) }
	h := fields(0)
	if strings.Join(h, " ") != "NODE STATE SEEN RUNNING RELEASE RELAY RUN READ/s WRITTEN/s CIRCUITS FLAGS CERT NOTES" {
		t.Errorf("header %q", lines[0])
	}
	r0 := fields(1)
	want0 := []string{itoa(a.ID), "enabled", "30s", "1/2", "-", rs[0].Name, "running", "1.2", "MB/s", "45.0", "kB/s", "42", "Fast,Running", "29d", "-"}
	if strings.Join(r0, " ") != strings.Join(want0, " ") {
		t.Errorf("first relay row\n got %q\nwant %q", r0, want0)
	}
	if !strings.Contains(lines[2], rs[1].Name) || !strings.Contains(lines[2], "backoff") ||
		!strings.Contains(lines[2], "no figures: dial: refused?[31m red") || strings.Contains(out, "\x1b") {
		t.Errorf("second relay row %q", lines[2])
	}
	if r := fields(3); strings.Join(r, " ") != itoa(b.ID)+" pending "+r[2]+" 0/0 rel-B - - - - - - - -" {
		t.Errorf("node without relays %q", lines[3])
	}

	var nodes []statusNode
	if err := json.Unmarshal([]byte(ok(t, db, "status", "--json")), &nodes); err != nil {
		t.Fatal(err)
	}
	if len(nodes) != 2 || len(nodes[0].Relays) != 2 || len(nodes[1].Relays) != 0 || nodes[1].Metrics != nil {
		t.Fatalf("--json: %+v", nodes)
	}
	m := nodes[0].Relays[0].Metrics
	if m == nil || !m.HasRate || m.ReadRate != 1.2e6 || m.WriteRate != 45e3 || m.Circuits != 42 ||
		nodes[0].RelaysRunning != 1 || nodes[0].RelaysWanted != 2 || nodes[0].Metrics.MemTotalBytes != 3 ||
		nodes[0].LastSeenAgeS < 29 || nodes[0].LastSeenAgeS > 40 || nodes[0].AttestedRelease != "" || nodes[1].AttestedRelease != "rel-B" {
		t.Errorf("--json node %+v relay metrics %+v", nodes[0], m)
	}
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }
