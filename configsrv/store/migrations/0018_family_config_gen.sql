-- Family-level config generations: what reaches every member of a
-- relay family (a fingerprint appearing, changing or leaving, the
-- family's key) stamps the family once instead of each member (0015 did:
-- a fleet's first heartbeats stamped the whole family for each new
-- fingerprint, O(family) writes each). A node's generation is the greater
-- of its own (0010) and its family's: store.NodeConfigGen and
-- store.ConfigChangesSince read both, in one statement. A node changing
-- family stamps every node (0015), so a generation never goes back when
-- the family it is read with changes. Never edit this file once applied.

CREATE TABLE family_config_gen (
	family TEXT    PRIMARY KEY,
	gen    INTEGER NOT NULL
);
CREATE INDEX family_config_gen_gen ON family_config_gen(gen);

-- A family's members by setting, for ConfigChangesSince (the others are
-- in the default family).
CREATE INDEX node_settings_family ON node_settings(value) WHERE key = 'family';

-- The family of a node is its family setting, else the global one, else
-- 'fleet' (settings.DefaultFamily; a store test holds them together), as
-- in 0015's node_family, which nothing reads any more.
DROP TRIGGER nodegen_relays_fingerprint;
DROP TRIGGER nodegen_relays_delete_family;
DROP TRIGGER nodegen_family_keys_insert;
DROP TRIGGER nodegen_family_keys_update;
DROP TRIGGER nodegen_family_keys_delete;
DROP VIEW node_family;

-- A fingerprint that appears or changes: its family's MyFamily lines.
CREATE TRIGGER nodegen_relays_fingerprint AFTER UPDATE OF fingerprint ON relays
	WHEN OLD.fingerprint IS NOT NEW.fingerprint
	BEGIN
		UPDATE config_generation SET n = n + 1;
		INSERT INTO family_config_gen(family, gen) VALUES (coalesce(
			(SELECT value FROM node_settings WHERE node_id = NEW.node_id AND key = 'family'),
			(SELECT value FROM global_settings WHERE key = 'family'), 'fleet'),
			(SELECT n FROM config_generation))
			ON CONFLICT(family) DO UPDATE SET gen = excluded.gen;
	END;
-- A relay with a fingerprint leaves: its family. When its node is being
-- removed (a cascaded delete) the node's family is gone with it: every
-- node is stamped, as 0015 did.
CREATE TRIGGER nodegen_relays_delete_family AFTER DELETE ON relays
	WHEN OLD.fingerprint != ''
	BEGIN
		UPDATE config_generation SET n = n + 1;
		INSERT INTO family_config_gen(family, gen) SELECT coalesce(
			(SELECT value FROM node_settings WHERE node_id = OLD.node_id AND key = 'family'),
			(SELECT value FROM global_settings WHERE key = 'family'), 'fleet'),
			(SELECT n FROM config_generation)
			FROM nodes WHERE id = OLD.node_id
			ON CONFLICT(family) DO UPDATE SET gen = excluded.gen;
		INSERT INTO node_config_gen(node_id, gen) SELECT id, (SELECT n FROM config_generation) FROM nodes
			WHERE NOT EXISTS (SELECT 1 FROM nodes WHERE id = OLD.node_id)
			ON CONFLICT(node_id) DO UPDATE SET gen = excluded.gen;
	END;

-- A family key made, rotated or removed: that family's FamilyId lines
-- and keys (both families when a key changes family).
CREATE TRIGGER nodegen_family_keys_insert AFTER INSERT ON family_keys
	BEGIN
		UPDATE config_generation SET n = n + 1;
		INSERT INTO family_config_gen(family, gen) VALUES (NEW.family, (SELECT n FROM config_generation))
			ON CONFLICT(family) DO UPDATE SET gen = excluded.gen;
	END;
CREATE TRIGGER nodegen_family_keys_update AFTER UPDATE ON family_keys
	WHEN OLD.family_id IS NOT NEW.family_id OR OLD.secret IS NOT NEW.secret OR OLD.family IS NOT NEW.family
	BEGIN
		UPDATE config_generation SET n = n + 1;
		INSERT INTO family_config_gen(family, gen) VALUES (OLD.family, (SELECT n FROM config_generation)),
			(NEW.family, (SELECT n FROM config_generation))
			ON CONFLICT(family) DO UPDATE SET gen = excluded.gen;
	END;
CREATE TRIGGER nodegen_family_keys_delete AFTER DELETE ON family_keys
	BEGIN
		UPDATE config_generation SET n = n + 1;
		INSERT INTO family_config_gen(family, gen) VALUES (OLD.family, (SELECT n FROM config_generation))
			ON CONFLICT(family) DO UPDATE SET gen = excluded.gen;
	END;
