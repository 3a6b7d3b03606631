-- A rollout's reboot request is part of the node's config
-- (store.RebootRequest: a 'rebooting' row of a running rollout), so the
-- changes that make it appear or go stamp the node, as 0010 asks of
-- everything a node's configuration reads: its long-polled config wakes
-- and its cached config is rendered again. Numbered after 0010, whose
-- node_config_gen it writes (0005 holds the tables); on a database made
-- before issue 14 both run after 0015, in this order. Never edit this file
-- once applied.

-- A node's turn starts (waiting -> rebooting) or ends (rebooting -> done
-- or failed). waiting -> done (already on the release) changes nothing.
CREATE TRIGGER nodegen_rollout_nodes AFTER UPDATE OF state, boot_id ON rollout_nodes
	WHEN (OLD.state = 'rebooting' OR NEW.state = 'rebooting')
		AND (OLD.state IS NOT NEW.state OR OLD.boot_id IS NOT NEW.boot_id)
	BEGIN
		UPDATE config_generation SET n = n + 1;
		INSERT INTO node_config_gen(node_id, gen) VALUES (NEW.node_id, (SELECT n FROM config_generation))
			ON CONFLICT(node_id) DO UPDATE SET gen = excluded.gen;
	END;

-- A rollout stops, fails or ends: the requests still out are withdrawn.
CREATE TRIGGER nodegen_rollouts AFTER UPDATE OF state ON rollouts
	WHEN OLD.state = 'running' AND NEW.state != 'running'
	BEGIN
		UPDATE config_generation SET n = n + 1;
		INSERT INTO node_config_gen(node_id, gen)
			SELECT node_id, (SELECT n FROM config_generation) FROM rollout_nodes
			WHERE rollout_id = NEW.id AND state = 'rebooting'
			ON CONFLICT(node_id) DO UPDATE SET gen = excluded.gen;
	END;
