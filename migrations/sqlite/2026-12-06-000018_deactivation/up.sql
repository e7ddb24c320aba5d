-- A deactivated agent (docs/treasury.md#deactivating-an-agent): frozen, its cards frozen, its keys revoked,
-- its available money drained back to the treasury as its holds settle. NULL while it is not.
ALTER TABLE agents ADD COLUMN deactivated_at BIGINT;
