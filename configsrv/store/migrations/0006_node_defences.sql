-- What a node reports of its own defences (issue 11): the options of a
-- relay's served torrc it refused to pass to tor (comma-separated, tor's
-- spelling), and whether the relay's current keys are not yet saved in
-- the node's vault (a reboot now would lose its identity).
ALTER TABLE relays ADD COLUMN refused_options TEXT NOT NULL DEFAULT '';
ALTER TABLE relays ADD COLUMN keys_unsaved INTEGER NOT NULL DEFAULT 0;
