-- Enrollment that holds (issue 12), part 1: tokens carry a per-node epoch
-- that every state change bumps, pending nodes are found by age,
-- allocation remembers how many relays the node wanted, and ek_hash
-- becomes the EK identity (internal/ekid). Part 2 is 0017. Numbered after
-- every migration of the tree it landed on, so it runs last on old and new
-- databases alike. Never edit this file once applied.
--
-- Its Go step (store.rekeyNodes) recomputes ek_hash from ek_public and
-- removes the rows one EK made by being sent in several encodings. It runs
-- with foreign keys on: what hangs off a removed row goes with it, in every
-- table that references nodes, as SQLite cascades it.

ALTER TABLE nodes ADD COLUMN token_epoch INTEGER NOT NULL DEFAULT 0;   -- bumped by every state change
ALTER TABLE nodes ADD COLUMN relays_wanted INTEGER NOT NULL DEFAULT 0; -- what the last specs asked for
UPDATE nodes SET relays_wanted = (SELECT count(*) FROM relays r WHERE r.node_id = nodes.id);

-- The pending cap counts these, and expiry finds them by age.
CREATE INDEX nodes_pending ON nodes(first_seen) WHERE state = 'pending';
