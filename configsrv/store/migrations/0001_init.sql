-- Initial schema. Never edit this file once applied: add a new migration.

CREATE TABLE nodes (
	id            INTEGER PRIMARY KEY,
	ek_hash       BLOB    NOT NULL UNIQUE,            -- SHA-256 of the EK TPMT_PUBLIC
	ek_public     BLOB    NOT NULL,
	ak_name       BLOB,                               -- of the last attestation
	state         TEXT    NOT NULL DEFAULT 'pending'
	              CHECK (state IN ('pending', 'enabled', 'disabled', 'banned')),
	first_seen    INTEGER NOT NULL,                   -- unix seconds
	last_seen     INTEGER NOT NULL,
	attested_at   INTEGER,                            -- last completed attestation
	boot_id       TEXT    NOT NULL DEFAULT '',
	uptime_s      INTEGER NOT NULL DEFAULT 0,
	cpus          INTEGER NOT NULL DEFAULT 0,
	memory_bytes  INTEGER NOT NULL DEFAULT 0,
	cpu_model     TEXT    NOT NULL DEFAULT '',
	torrc         TEXT    NOT NULL DEFAULT ''          -- node-level torrc
);

CREATE TABLE global_settings (
	key   TEXT PRIMARY KEY,
	value TEXT NOT NULL
);

CREATE TABLE node_settings (
	node_id INTEGER NOT NULL REFERENCES nodes(id) ON DELETE CASCADE,
	key     TEXT    NOT NULL,
	value   TEXT    NOT NULL,
	PRIMARY KEY (node_id, key)
);

-- The global torrc is a single row.
CREATE TABLE global_torrc (
	id    INTEGER PRIMARY KEY CHECK (id = 1),
	torrc TEXT NOT NULL
);

CREATE TABLE pools (
	id      INTEGER PRIMARY KEY,
	cidr    TEXT    NOT NULL UNIQUE,   -- canonical prefix, e.g. 192.0.2.0/24
	family  INTEGER NOT NULL CHECK (family IN (4, 6)),
	gateway TEXT    NOT NULL,
	created INTEGER NOT NULL
);

CREATE TABLE relays (
	id          INTEGER PRIMARY KEY,
	node_id     INTEGER NOT NULL REFERENCES nodes(id) ON DELETE CASCADE,
	idx         INTEGER NOT NULL,                     -- uid = 10001 + idx
	name        TEXT    NOT NULL UNIQUE,
	ipv4        TEXT    NOT NULL UNIQUE,
	ipv4_pool   INTEGER NOT NULL REFERENCES pools(id) ON DELETE RESTRICT,
	ipv6        TEXT    UNIQUE,
	ipv6_pool   INTEGER REFERENCES pools(id) ON DELETE RESTRICT,
	or_port     INTEGER NOT NULL,
	torrc       TEXT    NOT NULL DEFAULT '',          -- relay-level torrc
	created     INTEGER NOT NULL,
	fingerprint TEXT    NOT NULL DEFAULT '',
	ed25519_id  TEXT    NOT NULL DEFAULT '',
	run_state   TEXT    NOT NULL DEFAULT '',
	restarts    INTEGER NOT NULL DEFAULT 0,
	reported_at INTEGER,
	UNIQUE (node_id, idx)
);
CREATE INDEX relays_node ON relays(node_id);
CREATE INDEX relays_ipv4_pool ON relays(ipv4_pool);
CREATE INDEX relays_ipv6_pool ON relays(ipv6_pool);

CREATE TABLE key_bundles (
	node_id INTEGER PRIMARY KEY REFERENCES nodes(id) ON DELETE CASCADE,
	version INTEGER NOT NULL,
	bundle  BLOB    NOT NULL,          -- ciphertext; the server cannot read it
	updated INTEGER NOT NULL
);

CREATE TABLE challenges (
	id          TEXT    PRIMARY KEY,
	node_id     INTEGER NOT NULL REFERENCES nodes(id) ON DELETE CASCADE,
	secret_hash BLOB    NOT NULL,      -- SHA-256 of the secret
	ak_name     BLOB    NOT NULL,
	expires     INTEGER NOT NULL       -- unix nanoseconds
);
CREATE INDEX challenges_expires ON challenges(expires);

CREATE TABLE audit (
	id      INTEGER PRIMARY KEY,
	time    INTEGER NOT NULL,          -- unix nanoseconds
	actor   TEXT    NOT NULL,
	action  TEXT    NOT NULL,
	target  TEXT    NOT NULL,
	details TEXT    NOT NULL DEFAULT ''
);
