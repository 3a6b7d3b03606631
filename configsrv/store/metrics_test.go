package store

import (
	"context"
	"slices"
	"testing"
	"time"

	"patela/internal/api"
)

// A node's summary replaces its last one; rates come from two summaries
// of the same tor; what the node does not own, or tor does not report,
// is not kept; a heartbeat without a summary keeps it unless the node
// rebooted; freed relays take their figures with them.
func TestRecordMetrics(t *testing.T) {
	s := open(t)
	ctx := context.Background()
	pool(t, s, "192.0.2.0/24", "192.0.2.1")
	a, b := node(t, s), node(t, s)
	if a, err := s.Allocate(ctx, a, specs(2), time.Now()); err != nil || a.After != 2 {
		t.Fatalf("allocate a: %+v %v", a, err)
	}
	if _, err := s.Allocate(ctx, b, specs(1), time.Now()); err != nil {
		t.Fatal(err)
	}
	ra, _ := s.Relays(ctx, a)
	rb, _ := s.Relays(ctx, b)
	t0 := time.Unix(1_800_000_000, 0)
	hb := func(boot string, at time.Time, m *api.NodeMetrics) {
		t.Helper()
		if _, err := s.RecordStatus(ctx, a, &api.Status{BootID: boot, UptimeS: 10, Relays: []api.RelayStatus{}, Metrics: m}, nil, at); err != nil {
			t.Fatal(err)
		}
	}
	relay := func(name string, read, written uint64, uptime int64) api.RelayMetrics {
		return api.RelayMetrics{Name: name, BytesRead: read, BytesWritten: written, UptimeS: uptime, Circuits: 7,
			Flags: []string{"Running", "Fast", "Invented", "Fast"}, SigningCertExpires: 1_800_100_000, TorRSSBytes: 1 << 26}
	}
	hb("boot1", t0, &api.NodeMetrics{AgentRSSBytes: 1 << 25, MemAvailableBytes: 1 << 30, MemTotalBytes: 1 << 31,
		Relays: []api.RelayMetrics{relay(ra[0].Name, 1000, 2000, 100), relay(ra[1].Name, 5, 5, 100),
			relay(rb[0].Name, 9, 9, 9)}}) // b's relay: a does not own it
	nodes, relays, err := s.Metrics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if n := nodes[a]; n.AgentRSSBytes != 1<<25 || n.MemAvailableBytes != 1<<30 || n.MemTotalBytes != 1<<31 || !n.ReportedAt.Equal(t0) {
		t.Errorf("node metrics %+v", n)
	}
	if _, ok := relays[rb[0].ID]; ok || len(relays) != 2 {
		t.Errorf("relays %+v: a reported for b's relay", relays)
	}
	m := relays[ra[0].ID]
	if m.Circuits != 7 || m.BytesRead != 1000 || m.HasRate || !slices.Equal(m.Flags, []string{"Fast", "Running"}) ||
		m.SigningCertExpires != 1_800_100_000 || m.TorRSSBytes != 1<<26 {
		t.Errorf("first summary %+v", m)
	}

	// 100 s later, same tors: rates. The second relay's tor restarted
	// (uptime went down): no rate. A relay left out loses its figures.
	hb("boot1", t0.Add(100*time.Second), &api.NodeMetrics{Relays: []api.RelayMetrics{
		relay(ra[0].Name, 51000, 12000, 200)}})
	_, relays, _ = s.Metrics(ctx)
	if m := relays[ra[0].ID]; !m.HasRate || m.ReadRate != 500 || m.WriteRate != 100 {
		t.Errorf("rates %+v, want 500 and 100 bytes/s", m)
	}
	if _, ok := relays[ra[1].ID]; ok {
		t.Errorf("a relay the summary left out kept its figures")
	}
	hb("boot1", t0.Add(200*time.Second), &api.NodeMetrics{Relays: []api.RelayMetrics{relay(ra[0].Name, 10, 10, 5)}})
	if _, relays, _ = s.Metrics(ctx); relays[ra[0].ID].HasRate {
		t.Errorf("a rate across a tor restart: %+v", relays[ra[0].ID])
	}

	// No summary, same boot: kept. No summary after a reboot: dropped.
	hb("boot1", t0.Add(210*time.Second), nil)
	if nodes, relays, _ = s.Metrics(ctx); len(relays) != 1 || len(nodes) != 1 {
		t.Errorf("a change heartbeat dropped the figures: %v %v", nodes, relays)
	}
	hb("boot2", t0.Add(300*time.Second), nil)
	if nodes, relays, _ = s.Metrics(ctx); len(relays) != 0 || len(nodes) != 0 {
		t.Errorf("figures kept across a reboot without a summary: %v %v", nodes, relays)
	}

	// Freed relays and removed nodes take their rows along.
	hb("boot2", t0.Add(400*time.Second), &api.NodeMetrics{Relays: []api.RelayMetrics{relay(ra[0].Name, 1, 1, 1), relay(ra[1].Name, 1, 1, 1)}})
	s.SetSetting(ctx, a, "max_relays", "1")
	if a, err := s.Allocate(ctx, a, specs(2), time.Now()); err != nil || a.After != 1 {
		t.Fatalf("shrink: %+v %v", a, err)
	}
	if _, relays, _ = s.Metrics(ctx); len(relays) != 1 {
		t.Errorf("a freed relay's figures remain: %v", relays)
	}
	if err := s.RemoveNode(ctx, a); err != nil {
		t.Fatal(err)
	}
	var rows int
	s.DB().QueryRow(`SELECT (SELECT count(*) FROM relay_metrics) + (SELECT count(*) FROM node_metrics)`).Scan(&rows)
	if rows != 0 {
		t.Errorf("%d metrics rows after the node's removal", rows)
	}
}
