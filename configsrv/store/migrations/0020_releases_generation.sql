-- A counter bumped by every change to the releases, so the API server
-- can keep the parsed releases and check, in the first statement of an
-- attestation's transaction, that none was added or retired since: the
-- count and maximum it read before had to read every release record, whose
-- approvals take overflow pages. Never edit this file once applied.
CREATE TABLE releases_generation (
	id INTEGER PRIMARY KEY CHECK (id = 1),
	n  INTEGER NOT NULL
);
INSERT INTO releases_generation(id, n) VALUES (1, 0);

CREATE TRIGGER relgen_insert AFTER INSERT ON releases
	BEGIN UPDATE releases_generation SET n = n + 1; END;
CREATE TRIGGER relgen_update AFTER UPDATE ON releases
	BEGIN UPDATE releases_generation SET n = n + 1; END;
CREATE TRIGGER relgen_delete AFTER DELETE ON releases
	BEGIN UPDATE releases_generation SET n = n + 1; END;
