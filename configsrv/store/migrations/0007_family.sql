-- The fleet as a good citizen of the Tor network (issue 15): one relay
-- family, its Happy Families key, and what the heartbeat says of each
-- relay's torrc. The triggers that stamp the nodes these reach are in
-- 0015, after the per-node generations of 0010. Never edit this file
-- once applied.

-- The sha256 of the served torrc the agent last reported it applied
-- ('' from agents that do not say), and whether at that heartbeat it
-- differed from the torrc the server serves.
ALTER TABLE relays ADD COLUMN torrc_applied TEXT NOT NULL DEFAULT '';
ALTER TABLE relays ADD COLUMN torrc_differs INTEGER NOT NULL DEFAULT 0;

-- Two relays with one key (a cloned vault, a replayed key) are found by
-- these.
CREATE INDEX relays_fingerprint ON relays(fingerprint) WHERE fingerprint != '';
CREATE INDEX relays_ed25519 ON relays(ed25519_id) WHERE ed25519_id != '';

-- One Happy Families key per family (the family setting names it). The
-- secret is tor's 64-byte expanded ed25519 key; it reaches nodes only in
-- GET /v1/node/config, never in a torrc.
CREATE TABLE family_keys (
	family    TEXT    PRIMARY KEY,
	family_id TEXT    NOT NULL UNIQUE,             -- what FamilyId names
	secret    BLOB    NOT NULL CHECK (length(secret) = 64),
	created   INTEGER NOT NULL,                    -- unix seconds
	origin    TEXT    NOT NULL CHECK (origin IN ('created', 'imported'))
);

-- What the node's agent said it can do in its last specs (a comma list,
-- api.Specs.Features): a FamilyId is served only to agents that write the
-- family key, else tor would exit on it. Its own table: migration 0003
-- rebuilds nodes.
CREATE TABLE node_agent (
	node_id  INTEGER PRIMARY KEY REFERENCES nodes(id) ON DELETE CASCADE,
	features TEXT    NOT NULL DEFAULT ''
);
