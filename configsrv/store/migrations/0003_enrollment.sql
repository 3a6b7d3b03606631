-- patela: foreign_keys=off
-- Enrollment that holds (issue 12): node ids are never reused
-- (AUTOINCREMENT), tokens carry a per-node epoch that every state change
-- bumps, pending nodes are found by age, and allocation remembers how
-- many relays the node wanted. Never edit this file once applied.
--
-- SQLite cannot add AUTOINCREMENT to a table, so the Go step of this
-- migration (store.enrollmentStep) rebuilds nodes from its schema as it
-- stands (later migrations may have run first on a database that lacks
-- this one: their columns, indexes and triggers are kept), recomputes
-- ek_hash as the EK identity (internal/ekid) and keeps every id the audit
-- log names unused. The first line makes the migration runner turn
-- foreign keys off for this file (dropping the old table must not cascade
-- into relays, settings, key bundles and challenges) and check every
-- foreign key before it commits.

ALTER TABLE nodes ADD COLUMN token_epoch INTEGER NOT NULL DEFAULT 0;   -- bumped by every state change
ALTER TABLE nodes ADD COLUMN relays_wanted INTEGER NOT NULL DEFAULT 0; -- what the last specs asked for
UPDATE nodes SET relays_wanted = (SELECT count(*) FROM relays r WHERE r.node_id = nodes.id);

-- The pending cap counts these, and expiry finds them by age.
CREATE INDEX nodes_pending ON nodes(first_seen) WHERE state = 'pending';
