-- Sub-agents (docs/treasury.md#sub-agents): an agent may have a parent, set when it is made, whose limits
-- its spend counts against too. children counts an agent's own children, so that the ledger knows, from the
-- row it locks, which agents' spend windows span a subtree.
ALTER TABLE agents ADD COLUMN parent_id TEXT REFERENCES agents (id);
ALTER TABLE agents ADD COLUMN children BIGINT NOT NULL DEFAULT 0;
CREATE INDEX agents_parent ON agents (parent_id);
