-- Issue 14, remote attestation and rollouts. Never edit this file once applied.

-- What a challenge's quote must carry (nonce) and be signed by (the AK
-- public area whose Name the credential was made for). NULL in challenges
-- made before this migration: those completions are unattested.
ALTER TABLE challenges ADD COLUMN nonce BLOB;
ALTER TABLE challenges ADD COLUMN ak_public BLOB;

-- Each node's boot evidence, from its last completed (or, under
-- --require-release, refused) attestation:
-- 'unattested' (no quote: an agent older than remote attestation),
-- 'release' (the quote matched release), 'unknown' (it matched none).
-- The quoted PCRs are kept whatever the outcome.
CREATE TABLE attestations (
	node_id     INTEGER PRIMARY KEY REFERENCES nodes(id) ON DELETE CASCADE,
	status      TEXT    NOT NULL CHECK (status IN ('unattested', 'release', 'unknown')),
	release     TEXT    NOT NULL DEFAULT '',
	pcrs        TEXT    NOT NULL DEFAULT '',   -- JSON {"0": "<hex>", ...}
	pcr_digest  TEXT    NOT NULL DEFAULT '',   -- quote.Digest of pcrs
	event_log   TEXT    NOT NULL DEFAULT '',   -- replayed | failed | absent ('' unattested)
	log_detail  TEXT    NOT NULL DEFAULT '',
	reset_count INTEGER,                       -- the TPM's boot counter in the quote (obfuscated, compared only)
	at          INTEGER NOT NULL               -- unix seconds: when this evidence was first shown (the last attestation is nodes.attested_at)
);

-- A rollout moves the enabled nodes to a release, max_unavailable at a
-- time; at most one runs.
CREATE TABLE rollouts (
	id              INTEGER PRIMARY KEY,
	release         TEXT    NOT NULL,
	max_unavailable INTEGER NOT NULL CHECK (max_unavailable >= 1),
	state           TEXT    NOT NULL CHECK (state IN ('running', 'done', 'stopped', 'failed')),
	reason          TEXT    NOT NULL DEFAULT '',
	started         INTEGER NOT NULL,          -- unix seconds
	ended           INTEGER
);
CREATE UNIQUE INDEX rollouts_running ON rollouts(state) WHERE state = 'running';

-- The nodes of a rollout, in turn order. A node asked to reboot is told so
-- in its config (the boot it must end: boot_id), until it is done.
CREATE TABLE rollout_nodes (
	rollout_id  INTEGER NOT NULL REFERENCES rollouts(id) ON DELETE CASCADE,
	node_id     INTEGER NOT NULL REFERENCES nodes(id) ON DELETE CASCADE,
	seq         INTEGER NOT NULL,
	state       TEXT    NOT NULL DEFAULT 'waiting' CHECK (state IN ('waiting', 'rebooting', 'done', 'failed')),
	from_release TEXT   NOT NULL DEFAULT '',   -- what it ran when the rollout started
	boot_id     TEXT    NOT NULL DEFAULT '',   -- the boot asked to end
	asked_reset INTEGER,                       -- the reset count of its attestation then
	asked       INTEGER,                       -- unix seconds
	done        INTEGER,
	PRIMARY KEY (rollout_id, node_id)
);

-- A reboot request is part of the node's config: 0014 stamps the nodes
-- whose request appears or goes (it writes 0010's node_config_gen).
