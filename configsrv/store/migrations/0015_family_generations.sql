-- What the family lines of a relay's torrc read (issue 15, resolve.Fleet)
-- stamps the nodes it reaches, as 0010 asks of everything a node's
-- configuration reads. Numbered after 0010, whose node_config_gen it
-- writes (0007 holds the tables). A relay's MyFamily lists the other
-- relays of its family: a change to one relay stamps the nodes of its
-- family, and only those. Never edit this file once applied.

-- Each node's family: its family setting, else the global one, else
-- 'fleet' (settings.DefaultFamily; a store test holds them together).
-- Stored values were normalized by the CLI.
CREATE VIEW node_family AS
	SELECT n.id AS node_id, coalesce(
		(SELECT s.value FROM node_settings s WHERE s.node_id = n.id AND s.key = 'family'),
		(SELECT g.value FROM global_settings g WHERE g.key = 'family'),
		'fleet') AS family
	FROM nodes n;

-- A fingerprint that appears or changes: the other relays of its family.
-- Only a change: heartbeats repeat the same value.
CREATE TRIGGER nodegen_relays_fingerprint AFTER UPDATE OF fingerprint ON relays
	WHEN OLD.fingerprint IS NOT NEW.fingerprint
	BEGIN
		UPDATE config_generation SET n = n + 1;
		INSERT INTO node_config_gen(node_id, gen)
			SELECT node_id, (SELECT n FROM config_generation) FROM node_family
			WHERE family = (SELECT family FROM node_family WHERE node_id = NEW.node_id)
			ON CONFLICT(node_id) DO UPDATE SET gen = excluded.gen;
	END;
-- A relay with a fingerprint leaves: the other relays of its family.
-- When its node is being removed (a cascaded delete) the node's family
-- is gone with it: every node is stamped.
CREATE TRIGGER nodegen_relays_delete_family AFTER DELETE ON relays
	WHEN OLD.fingerprint != ''
	BEGIN
		UPDATE config_generation SET n = n + 1;
		INSERT INTO node_config_gen(node_id, gen)
			SELECT node_id, (SELECT n FROM config_generation) FROM node_family
			WHERE family = coalesce((SELECT family FROM node_family WHERE node_id = OLD.node_id), family)
			ON CONFLICT(node_id) DO UPDATE SET gen = excluded.gen;
	END;
-- A node changes family (rare: an administrator's edit): its relays leave
-- one family's MyFamily and join another's. Every node is stamped (0010
-- stamps the node itself only; the global setting stamps every node).
CREATE TRIGGER nodegen_node_settings_family_insert AFTER INSERT ON node_settings
	WHEN NEW.key = 'family'
	BEGIN
		UPDATE config_generation SET n = n + 1;
		INSERT INTO node_config_gen(node_id, gen) SELECT id, (SELECT n FROM config_generation) FROM nodes WHERE true
			ON CONFLICT(node_id) DO UPDATE SET gen = excluded.gen;
	END;
CREATE TRIGGER nodegen_node_settings_family_update AFTER UPDATE ON node_settings
	WHEN (OLD.key = 'family' OR NEW.key = 'family') AND (OLD.value IS NOT NEW.value OR OLD.key IS NOT NEW.key)
	BEGIN
		UPDATE config_generation SET n = n + 1;
		INSERT INTO node_config_gen(node_id, gen) SELECT id, (SELECT n FROM config_generation) FROM nodes WHERE true
			ON CONFLICT(node_id) DO UPDATE SET gen = excluded.gen;
	END;
CREATE TRIGGER nodegen_node_settings_family_delete AFTER DELETE ON node_settings
	WHEN OLD.key = 'family'
	BEGIN
		UPDATE config_generation SET n = n + 1;
		INSERT INTO node_config_gen(node_id, gen) SELECT id, (SELECT n FROM config_generation) FROM nodes WHERE true
			ON CONFLICT(node_id) DO UPDATE SET gen = excluded.gen;
	END;

-- A family key made, rotated or removed: the FamilyId lines and the keys
-- of that family's nodes.
CREATE TRIGGER nodegen_family_keys_insert AFTER INSERT ON family_keys
	BEGIN
		UPDATE config_generation SET n = n + 1;
		INSERT INTO node_config_gen(node_id, gen)
			SELECT node_id, (SELECT n FROM config_generation) FROM node_family WHERE family = NEW.family
			ON CONFLICT(node_id) DO UPDATE SET gen = excluded.gen;
	END;
CREATE TRIGGER nodegen_family_keys_update AFTER UPDATE ON family_keys
	WHEN OLD.family_id IS NOT NEW.family_id OR OLD.secret IS NOT NEW.secret OR OLD.family IS NOT NEW.family
	BEGIN
		UPDATE config_generation SET n = n + 1;
		INSERT INTO node_config_gen(node_id, gen)
			SELECT node_id, (SELECT n FROM config_generation) FROM node_family WHERE family IN (OLD.family, NEW.family)
			ON CONFLICT(node_id) DO UPDATE SET gen = excluded.gen;
	END;
CREATE TRIGGER nodegen_family_keys_delete AFTER DELETE ON family_keys
	BEGIN
		UPDATE config_generation SET n = n + 1;
		INSERT INTO node_config_gen(node_id, gen)
			SELECT node_id, (SELECT n FROM config_generation) FROM node_family WHERE family = OLD.family
			ON CONFLICT(node_id) DO UPDATE SET gen = excluded.gen;
	END;

-- The node's agent says it installs family keys (or no longer does):
-- whether its relays get FamilyId. Only a change.
CREATE TRIGGER nodegen_node_agent_insert AFTER INSERT ON node_agent
	WHEN NEW.features != ''
	BEGIN
		UPDATE config_generation SET n = n + 1;
		INSERT INTO node_config_gen(node_id, gen) VALUES (NEW.node_id, (SELECT n FROM config_generation))
			ON CONFLICT(node_id) DO UPDATE SET gen = excluded.gen;
	END;
CREATE TRIGGER nodegen_node_agent_update AFTER UPDATE ON node_agent
	WHEN OLD.features IS NOT NEW.features
	BEGIN
		UPDATE config_generation SET n = n + 1;
		INSERT INTO node_config_gen(node_id, gen) VALUES (NEW.node_id, (SELECT n FROM config_generation))
			ON CONFLICT(node_id) DO UPDATE SET gen = excluded.gen;
	END;
