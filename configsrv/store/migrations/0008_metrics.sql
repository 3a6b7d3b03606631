-- The metrics summary of each node's last poll heartbeat (issue 16):
-- one row per node, one per relay the node reported figures for. A
-- summary replaces the node's previous one whole. Neither table touches
-- config_generation.

CREATE TABLE node_metrics (
	node_id             INTEGER PRIMARY KEY REFERENCES nodes(id) ON DELETE CASCADE,
	reported_at         INTEGER NOT NULL,   -- unix seconds
	agent_rss_bytes     INTEGER NOT NULL,
	mem_available_bytes INTEGER NOT NULL,
	mem_total_bytes     INTEGER NOT NULL
);

CREATE TABLE relay_metrics (
	relay_id             INTEGER PRIMARY KEY REFERENCES relays(id) ON DELETE CASCADE,
	reported_at          INTEGER NOT NULL,  -- unix seconds
	error                TEXT    NOT NULL DEFAULT '',  -- the scrape failed: figures are zero
	bytes_read           INTEGER NOT NULL,
	bytes_written        INTEGER NOT NULL,
	or_conns             INTEGER NOT NULL,
	exit_conns           INTEGER NOT NULL,
	circuits             INTEGER NOT NULL,
	onionskins_processed INTEGER NOT NULL,
	onionskins_dropped   INTEGER NOT NULL,
	dns_queries          INTEGER NOT NULL,
	dns_errors           INTEGER NOT NULL,
	dns_timeouts         INTEGER NOT NULL,
	flags                TEXT    NOT NULL DEFAULT '',  -- space-separated, tor's spelling
	overloaded           INTEGER NOT NULL,
	signing_cert_expires INTEGER NOT NULL,  -- unix seconds; 0 unknown
	uptime_s             INTEGER NOT NULL,
	tor_rss_bytes        INTEGER NOT NULL,
	-- bytes/s since the previous summary of the same tor; NULL: no such summary
	read_rate            REAL,
	write_rate           REAL
);
