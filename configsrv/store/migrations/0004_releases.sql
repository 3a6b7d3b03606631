-- Issue 13, measured boot. Never edit this file once applied.

-- Releases whose approvals nodes fetch: the release file as an
-- administrator added it (internal/release JSON; its approval is the only
-- signed part, checked by the node's TPM, never trusted from here).
CREATE TABLE releases (
	id      INTEGER PRIMARY KEY,
	name    TEXT    NOT NULL UNIQUE,
	kind    TEXT    NOT NULL CHECK (kind IN ('uki', 'ospkg')),
	record  BLOB    NOT NULL,
	added   INTEGER NOT NULL,          -- unix seconds
	retired INTEGER                    -- unix seconds; NULL while its approval is served
);

-- How each node says it seals its vault ('release', 'unmeasured'; '' for
-- an agent that predates the report), and the release whose approval it
-- was last given. Self-reported: a TPM quote (issue 14) is the evidence.
ALTER TABLE nodes ADD COLUMN sealing TEXT NOT NULL DEFAULT '';
ALTER TABLE nodes ADD COLUMN booted_release TEXT NOT NULL DEFAULT '';
