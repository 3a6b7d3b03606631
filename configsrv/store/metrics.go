package store

import (
	"context"
	"database/sql"
	"slices"
	"strings"
	"time"

	"patela/internal/api"
)

// NodeMetrics is a node's own figures from its last summary.
type NodeMetrics struct {
	ReportedAt        time.Time `json:"reported_at"`
	AgentRSSBytes     uint64    `json:"agent_rss_bytes"`
	MemAvailableBytes uint64    `json:"mem_available_bytes"`
	MemTotalBytes     uint64    `json:"mem_total_bytes"`
}

// RelayMetrics is a relay's figures from its node's last summary, with
// the traffic rates since the summary before (HasRate false: none of the
// same tor).
type RelayMetrics struct {
	ReportedAt time.Time `json:"reported_at"`
	api.RelayMetrics
	HasRate   bool    `json:"has_rate"`
	ReadRate  float64 `json:"read_rate"`  // bytes/s
	WriteRate float64 `json:"write_rate"` // bytes/s
}

// recordMetrics replaces node nodeID's summary with m (part of
// RecordStatus). Relays the node does not own are ignored, and so are
// flags tor does not report (api.RelayFlags): the server keeps nothing a
// node makes up that could grow its metrics.
func recordMetrics(tx *sql.Tx, nodeID int64, m *api.NodeMetrics, now time.Time) error {
	ids := map[string]int64{}
	type prev struct {
		read, written, uptime, at int64
	}
	prevs := map[int64]prev{}
	rows, err := tx.Query(`SELECT r.id, r.name, m.bytes_read, m.bytes_written, m.uptime_s, m.reported_at
		FROM relays r LEFT JOIN relay_metrics m ON m.relay_id = r.id WHERE r.node_id = ?`, nodeID)
	if err != nil {
		return err
	}
	for rows.Next() {
		var id int64
		var name string
		var rd, wr, up, at sql.NullInt64
		if err := rows.Scan(&id, &name, &rd, &wr, &up, &at); err != nil {
			rows.Close()
			return err
		}
		ids[name] = id
		if at.Valid {
			prevs[id] = prev{rd.Int64, wr.Int64, up.Int64, at.Int64}
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	if err := dropMetrics(tx, nodeID); err != nil {
		return err
	}
	if _, err := tx.Exec(`INSERT INTO node_metrics(node_id, reported_at, agent_rss_bytes, mem_available_bytes, mem_total_bytes)
		VALUES (?, ?, ?, ?, ?)`, nodeID, unix(now), int64(m.AgentRSSBytes), int64(m.MemAvailableBytes), int64(m.MemTotalBytes)); err != nil {
		return err
	}
	for _, r := range m.Relays {
		id, ok := ids[r.Name]
		if !ok {
			continue
		}
		var flags []string
		for _, f := range r.Flags {
			if slices.Contains(api.RelayFlags, f) && !slices.Contains(flags, f) {
				flags = append(flags, f)
			}
		}
		slices.Sort(flags)
		var readRate, writeRate sql.NullFloat64
		p, ok := prevs[id]
		if dt := unix(now) - p.at; ok && r.Error == "" && dt > 0 && r.UptimeS > p.uptime &&
			int64(r.BytesRead) >= p.read && int64(r.BytesWritten) >= p.written {
			readRate = sql.NullFloat64{Float64: float64(int64(r.BytesRead)-p.read) / float64(dt), Valid: true}
			writeRate = sql.NullFloat64{Float64: float64(int64(r.BytesWritten)-p.written) / float64(dt), Valid: true}
		}
		if _, err := tx.Exec(`INSERT OR REPLACE INTO relay_metrics(relay_id, reported_at, error, bytes_read, bytes_written,
			or_conns, exit_conns, circuits, onionskins_processed, onionskins_dropped, dns_queries, dns_errors, dns_timeouts,
			flags, overloaded, signing_cert_expires, uptime_s, tor_rss_bytes, read_rate, write_rate)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
			id, unix(now), r.Error, int64(r.BytesRead), int64(r.BytesWritten), int64(r.ORConns), int64(r.ExitConns),
			int64(r.Circuits), int64(r.OnionskinsProcessed), int64(r.OnionskinsDropped), int64(r.DNSQueries),
			int64(r.DNSErrors), int64(r.DNSTimeouts), strings.Join(flags, " "), r.Overloaded, r.SigningCertExpires,
			r.UptimeS, int64(r.TorRSSBytes), readRate, writeRate); err != nil {
			return err
		}
	}
	return nil
}

// dropMetrics deletes node nodeID's summary.
func dropMetrics(tx *sql.Tx, nodeID int64) error {
	if _, err := tx.Exec(`DELETE FROM relay_metrics WHERE relay_id IN (SELECT id FROM relays WHERE node_id = ?)`, nodeID); err != nil {
		return err
	}
	_, err := tx.Exec(`DELETE FROM node_metrics WHERE node_id = ?`, nodeID)
	return err
}

// Metrics returns every node's summary (by node id) and every relay's (by
// relay id).
func (s *Store) Metrics(ctx context.Context) (map[int64]NodeMetrics, map[int64]RelayMetrics, error) {
	nodes := map[int64]NodeMetrics{}
	rows, err := s.QueryContext(ctx, `SELECT node_id, reported_at, agent_rss_bytes, mem_available_bytes, mem_total_bytes FROM node_metrics`)
	if err != nil {
		return nil, nil, err
	}
	defer rows.Close()
	for rows.Next() {
		var id, at, rss, avail, total int64
		if err := rows.Scan(&id, &at, &rss, &avail, &total); err != nil {
			return nil, nil, err
		}
		nodes[id] = NodeMetrics{ReportedAt: time.Unix(at, 0).UTC(), AgentRSSBytes: uint64(rss),
			MemAvailableBytes: uint64(avail), MemTotalBytes: uint64(total)}
	}
	if err := rows.Err(); err != nil {
		return nil, nil, err
	}
	relays := map[int64]RelayMetrics{}
	rrows, err := s.QueryContext(ctx, `SELECT m.relay_id, r.name, m.reported_at, m.error, m.bytes_read, m.bytes_written,
		m.or_conns, m.exit_conns, m.circuits, m.onionskins_processed, m.onionskins_dropped, m.dns_queries, m.dns_errors,
		m.dns_timeouts, m.flags, m.overloaded, m.signing_cert_expires, m.uptime_s, m.tor_rss_bytes, m.read_rate, m.write_rate
		FROM relay_metrics m JOIN relays r ON r.id = m.relay_id`)
	if err != nil {
		return nil, nil, err
	}
	defer rrows.Close()
	for rrows.Next() {
		var id, at int64
		var m RelayMetrics
		var rd, wr, orc, exc, circ, op, od, dq, de, dt, rss int64
		var flags string
		var readRate, writeRate sql.NullFloat64
		if err := rrows.Scan(&id, &m.Name, &at, &m.Error, &rd, &wr, &orc, &exc, &circ, &op, &od, &dq, &de, &dt,
			&flags, &m.Overloaded, &m.SigningCertExpires, &m.UptimeS, &rss, &readRate, &writeRate); err != nil {
			return nil, nil, err
		}
		m.ReportedAt = time.Unix(at, 0).UTC()
		m.BytesRead, m.BytesWritten, m.ORConns, m.ExitConns, m.Circuits = uint64(rd), uint64(wr), uint64(orc), uint64(exc), uint64(circ)
		m.OnionskinsProcessed, m.OnionskinsDropped, m.DNSQueries, m.DNSErrors, m.DNSTimeouts = uint64(op), uint64(od), uint64(dq), uint64(de), uint64(dt)
		m.TorRSSBytes = uint64(rss)
		m.Flags = strings.Fields(flags)
		if m.Flags == nil {
			m.Flags = []string{}
		}
		m.HasRate, m.ReadRate, m.WriteRate = readRate.Valid, readRate.Float64, writeRate.Float64
		relays[id] = m
	}
	return nodes, relays, rrows.Err()
}

// Size is the database's size in bytes: its pages times the page size
// (the WAL not counted).
func (s *Store) Size(ctx context.Context) (int64, error) {
	var n int64
	err := s.queryRow(ctx, `SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()`).Scan(&n)
	return n, err
}

// AttestedRelease is the release n's last TPM quote matched: its name,
// "unknown" when the quote matched no registered release, "" when the
// server has no quote of n (its last attestation carried none: an agent
// older than remote attestation). Release, the release n reports
// booting, is its own word and never taken for this.
func (n *Node) AttestedRelease() string { return n.attested }
