-- A counter bumped by every change that can alter a node's resolved
-- configuration, so the API server can cache rendered configs and still
-- see edits made by the admin CLI from another process.

CREATE TABLE config_generation (
	id INTEGER PRIMARY KEY CHECK (id = 1),
	n  INTEGER NOT NULL
);
INSERT INTO config_generation(id, n) VALUES (1, 0);

CREATE TRIGGER gen_relays_insert AFTER INSERT ON relays
	BEGIN UPDATE config_generation SET n = n + 1; END;
CREATE TRIGGER gen_relays_delete AFTER DELETE ON relays
	BEGIN UPDATE config_generation SET n = n + 1; END;
-- Not on the heartbeat columns (fingerprint, run_state, ...).
CREATE TRIGGER gen_relays_update AFTER UPDATE OF node_id, idx, name, ipv4, ipv4_pool, ipv6, ipv6_pool, or_port, torrc ON relays
	BEGIN UPDATE config_generation SET n = n + 1; END;
CREATE TRIGGER gen_nodes_torrc AFTER UPDATE OF torrc ON nodes
	BEGIN UPDATE config_generation SET n = n + 1; END;
CREATE TRIGGER gen_nodes_delete AFTER DELETE ON nodes
	BEGIN UPDATE config_generation SET n = n + 1; END;
CREATE TRIGGER gen_global_settings_insert AFTER INSERT ON global_settings
	BEGIN UPDATE config_generation SET n = n + 1; END;
CREATE TRIGGER gen_global_settings_update AFTER UPDATE ON global_settings
	BEGIN UPDATE config_generation SET n = n + 1; END;
CREATE TRIGGER gen_global_settings_delete AFTER DELETE ON global_settings
	BEGIN UPDATE config_generation SET n = n + 1; END;
CREATE TRIGGER gen_node_settings_insert AFTER INSERT ON node_settings
	BEGIN UPDATE config_generation SET n = n + 1; END;
CREATE TRIGGER gen_node_settings_update AFTER UPDATE ON node_settings
	BEGIN UPDATE config_generation SET n = n + 1; END;
CREATE TRIGGER gen_node_settings_delete AFTER DELETE ON node_settings
	BEGIN UPDATE config_generation SET n = n + 1; END;
CREATE TRIGGER gen_global_torrc_insert AFTER INSERT ON global_torrc
	BEGIN UPDATE config_generation SET n = n + 1; END;
CREATE TRIGGER gen_global_torrc_update AFTER UPDATE ON global_torrc
	BEGIN UPDATE config_generation SET n = n + 1; END;
CREATE TRIGGER gen_pools_insert AFTER INSERT ON pools
	BEGIN UPDATE config_generation SET n = n + 1; END;
CREATE TRIGGER gen_pools_delete AFTER DELETE ON pools
	BEGIN UPDATE config_generation SET n = n + 1; END;
