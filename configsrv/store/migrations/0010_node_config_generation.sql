-- Per-node config generations (issue 18), so a long-polling node is woken
-- by a change of its own configuration and by nothing else. A node's
-- generation is the value of the global counter (config_generation.n, 0002)
-- at its configuration's last change: every trigger below bumps the counter
-- and stamps the nodes the change reaches with it, in one statement list,
-- so generations only grow in commit order and "which nodes changed since
-- generation G" is a range scan of the index. Anything a node's resolved
-- configuration reads must stamp that node here.
--
-- No foreign key: a removed node keeps its row, stamped by the removal,
-- so its waiting requests wake and are refused. Never edit this file once
-- applied.

CREATE TABLE node_config_gen (
	node_id INTEGER PRIMARY KEY,
	gen     INTEGER NOT NULL
);
CREATE INDEX node_config_gen_gen ON node_config_gen(gen);

INSERT INTO node_config_gen(node_id, gen) SELECT id, (SELECT n FROM config_generation) FROM nodes WHERE true;

-- The node's own rows. state: a disabled or banned node's waits wake and
-- are refused at once. memory_bytes: the managed MaxMemInQueues follows it.
CREATE TRIGGER nodegen_nodes_update AFTER UPDATE OF torrc, state, memory_bytes ON nodes
	WHEN OLD.torrc IS NOT NEW.torrc OR OLD.state IS NOT NEW.state OR OLD.memory_bytes IS NOT NEW.memory_bytes
	BEGIN
		UPDATE config_generation SET n = n + 1;
		INSERT INTO node_config_gen(node_id, gen) VALUES (NEW.id, (SELECT n FROM config_generation))
			ON CONFLICT(node_id) DO UPDATE SET gen = excluded.gen;
	END;
CREATE TRIGGER nodegen_nodes_delete AFTER DELETE ON nodes
	BEGIN
		UPDATE config_generation SET n = n + 1;
		INSERT INTO node_config_gen(node_id, gen) VALUES (OLD.id, (SELECT n FROM config_generation))
			ON CONFLICT(node_id) DO UPDATE SET gen = excluded.gen;
	END;

CREATE TRIGGER nodegen_node_settings_insert AFTER INSERT ON node_settings
	BEGIN
		UPDATE config_generation SET n = n + 1;
		INSERT INTO node_config_gen(node_id, gen) VALUES (NEW.node_id, (SELECT n FROM config_generation))
			ON CONFLICT(node_id) DO UPDATE SET gen = excluded.gen;
	END;
CREATE TRIGGER nodegen_node_settings_update AFTER UPDATE ON node_settings
	WHEN OLD.value IS NOT NEW.value OR OLD.key IS NOT NEW.key OR OLD.node_id IS NOT NEW.node_id
	BEGIN
		UPDATE config_generation SET n = n + 1;
		INSERT INTO node_config_gen(node_id, gen) VALUES (OLD.node_id, (SELECT n FROM config_generation)),
			(NEW.node_id, (SELECT n FROM config_generation))
			ON CONFLICT(node_id) DO UPDATE SET gen = excluded.gen;
	END;
CREATE TRIGGER nodegen_node_settings_delete AFTER DELETE ON node_settings
	BEGIN
		UPDATE config_generation SET n = n + 1;
		INSERT INTO node_config_gen(node_id, gen) VALUES (OLD.node_id, (SELECT n FROM config_generation))
			ON CONFLICT(node_id) DO UPDATE SET gen = excluded.gen;
	END;

-- Relays: allocation, removal, a relay-level torrc. Not the heartbeat
-- columns (fingerprint, run_state, ...).
CREATE TRIGGER nodegen_relays_insert AFTER INSERT ON relays
	BEGIN
		UPDATE config_generation SET n = n + 1;
		INSERT INTO node_config_gen(node_id, gen) VALUES (NEW.node_id, (SELECT n FROM config_generation))
			ON CONFLICT(node_id) DO UPDATE SET gen = excluded.gen;
	END;
CREATE TRIGGER nodegen_relays_delete AFTER DELETE ON relays
	BEGIN
		UPDATE config_generation SET n = n + 1;
		INSERT INTO node_config_gen(node_id, gen) VALUES (OLD.node_id, (SELECT n FROM config_generation))
			ON CONFLICT(node_id) DO UPDATE SET gen = excluded.gen;
	END;
CREATE TRIGGER nodegen_relays_update AFTER UPDATE OF node_id, idx, name, ipv4, ipv4_pool, ipv6, ipv6_pool, or_port, torrc ON relays
	WHEN OLD.node_id IS NOT NEW.node_id OR OLD.idx IS NOT NEW.idx OR OLD.name IS NOT NEW.name
		OR OLD.ipv4 IS NOT NEW.ipv4 OR OLD.ipv4_pool IS NOT NEW.ipv4_pool OR OLD.ipv6 IS NOT NEW.ipv6
		OR OLD.ipv6_pool IS NOT NEW.ipv6_pool OR OLD.or_port IS NOT NEW.or_port OR OLD.torrc IS NOT NEW.torrc
	BEGIN
		UPDATE config_generation SET n = n + 1;
		INSERT INTO node_config_gen(node_id, gen) VALUES (OLD.node_id, (SELECT n FROM config_generation)),
			(NEW.node_id, (SELECT n FROM config_generation))
			ON CONFLICT(node_id) DO UPDATE SET gen = excluded.gen;
	END;

-- The global level reaches every node.
CREATE TRIGGER nodegen_global_settings_insert AFTER INSERT ON global_settings
	BEGIN
		UPDATE config_generation SET n = n + 1;
		INSERT INTO node_config_gen(node_id, gen) SELECT id, (SELECT n FROM config_generation) FROM nodes WHERE true
			ON CONFLICT(node_id) DO UPDATE SET gen = excluded.gen;
	END;
CREATE TRIGGER nodegen_global_settings_update AFTER UPDATE ON global_settings
	WHEN OLD.value IS NOT NEW.value OR OLD.key IS NOT NEW.key
	BEGIN
		UPDATE config_generation SET n = n + 1;
		INSERT INTO node_config_gen(node_id, gen) SELECT id, (SELECT n FROM config_generation) FROM nodes WHERE true
			ON CONFLICT(node_id) DO UPDATE SET gen = excluded.gen;
	END;
CREATE TRIGGER nodegen_global_settings_delete AFTER DELETE ON global_settings
	BEGIN
		UPDATE config_generation SET n = n + 1;
		INSERT INTO node_config_gen(node_id, gen) SELECT id, (SELECT n FROM config_generation) FROM nodes WHERE true
			ON CONFLICT(node_id) DO UPDATE SET gen = excluded.gen;
	END;
CREATE TRIGGER nodegen_global_torrc_insert AFTER INSERT ON global_torrc
	BEGIN
		UPDATE config_generation SET n = n + 1;
		INSERT INTO node_config_gen(node_id, gen) SELECT id, (SELECT n FROM config_generation) FROM nodes WHERE true
			ON CONFLICT(node_id) DO UPDATE SET gen = excluded.gen;
	END;
CREATE TRIGGER nodegen_global_torrc_update AFTER UPDATE ON global_torrc
	WHEN OLD.torrc IS NOT NEW.torrc
	BEGIN
		UPDATE config_generation SET n = n + 1;
		INSERT INTO node_config_gen(node_id, gen) SELECT id, (SELECT n FROM config_generation) FROM nodes WHERE true
			ON CONFLICT(node_id) DO UPDATE SET gen = excluded.gen;
	END;
