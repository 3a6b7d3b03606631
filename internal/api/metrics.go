package api

// NodeMetrics is the metrics summary a heartbeat carries (Status.Metrics):
// the node's own figures and, per relay whose tor runs, what the agent
// scraped from that tor's MetricsPort. Counters count since that tor
// started (a restart resets them, as Prometheus expects of a counter).
// An agent that sends no summary (older agents, and heartbeats sent
// between polls for a relay change) leaves the server's figures as they
// were; see docs/protocol.md.
type NodeMetrics struct {
	AgentRSSBytes     uint64         `json:"agent_rss_bytes"`     // the agent's VmRSS
	MemAvailableBytes uint64         `json:"mem_available_bytes"` // /proc/meminfo MemAvailable
	MemTotalBytes     uint64         `json:"mem_total_bytes"`     // /proc/meminfo MemTotal
	Relays            []RelayMetrics `json:"relays"`
}

// RelayMetrics is one relay's summary. Error set means the scrape failed
// and the figures are zero.
type RelayMetrics struct {
	Name  string `json:"name"`
	Error string `json:"error,omitempty"`

	BytesRead    uint64 `json:"bytes_read"`    // tor_relay_traffic_bytes{direction="read"}
	BytesWritten uint64 `json:"bytes_written"` // tor_relay_traffic_bytes{direction="written"}
	ORConns      uint64 `json:"or_conns"`      // tor_relay_connections{type="OR",state="opened"}, both directions and families
	ExitConns    uint64 `json:"exit_conns"`    // tor_relay_connections{type="Exit",state="opened"}
	Circuits     uint64 `json:"circuits"`      // tor_relay_circuits_total{state="opened"}

	OnionskinsProcessed uint64 `json:"onionskins_processed"` // tor_relay_load_onionskins_total{action="processed"}, all types
	OnionskinsDropped   uint64 `json:"onionskins_dropped"`   // ...{action="dropped"}

	DNSQueries  uint64 `json:"dns_queries"`  // tor_relay_exit_dns_query_total
	DNSErrors   uint64 `json:"dns_errors"`   // tor_relay_exit_dns_error_total of the failure reasons (DNSFailureReasons)
	DNSTimeouts uint64 `json:"dns_timeouts"` // tor_relay_exit_dns_error_total{reason="tor_timeout"}

	// Flags are the consensus flags tor reports itself holding
	// (tor_relay_flag == 1), in tor's spelling.
	Flags []string `json:"flags"`
	// Overloaded: onionskins dropped, the OOM handler freed memory or TCP
	// ports ran out since the agent's previous scrape of the same tor.
	Overloaded bool `json:"overloaded"`
	// SigningCertExpires is when the relay's ed25519 signing certificate
	// expires (unix seconds; 0: unknown).
	SigningCertExpires int64 `json:"signing_cert_expires"`

	UptimeS     int64  `json:"uptime_s"`      // since this tor process started
	TorRSSBytes uint64 `json:"tor_rss_bytes"` // the tor process's VmRSS
}

// DNSFailureReasons are the reasons of tor_relay_exit_dns_error_total
// that RelayMetrics.DNSErrors counts: the resolver failed. The others
// are answers (success, notexist, nodata) or the timeout, counted alone.
var DNSFailureReasons = []string{"format", "serverfailed", "notimpl", "refused", "truncated", "unknown", "shutdown", "cancel"}

// RelayFlags are the flags tor_relay_flag reports (tor 0.4.9), the only
// ones the server keeps.
var RelayFlags = []string{"Authority", "Exit", "Fast", "Guard", "HSDir", "Running", "Stable", "Sybil", "V2Dir"}
