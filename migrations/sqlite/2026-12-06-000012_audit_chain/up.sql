-- The audit chain (docs/audit.md): each agent's records in the order they were written, each link the
-- hash of its record's content and of the link before it. An authorization gets a link at each write
-- (its decision, then each step of its hold); a transfer and an event at their one write.
CREATE TABLE chain_links (
    agent_id      TEXT NOT NULL,
    -- 1 for the agent's first record, then one more for each.
    n             BIGINT NOT NULL,
    kind          TEXT NOT NULL CHECK (kind IN ('authorization', 'transfer', 'event')),
    record_id     TEXT NOT NULL,
    -- Lowercase hex of SHA-256: of the record's content, and of the previous hash with it.
    content_hash  TEXT NOT NULL,
    hash          TEXT NOT NULL,
    PRIMARY KEY (agent_id, n)
) WITHOUT ROWID;

-- The end of each agent's chain, kept on the row the ledger already locks for every write.
-- chain_head is NULL while the chain is empty.
ALTER TABLE agents ADD COLUMN chain_length BIGINT NOT NULL DEFAULT 0;
ALTER TABLE agents ADD COLUMN chain_head TEXT;

-- The link each record's last write made; 0 until a record written before the chain existed is
-- adopted into it (at start-up, once).
ALTER TABLE authorizations ADD COLUMN chain_n BIGINT NOT NULL DEFAULT 0;
ALTER TABLE transfers ADD COLUMN chain_n BIGINT NOT NULL DEFAULT 0;
ALTER TABLE events ADD COLUMN chain_n BIGINT NOT NULL DEFAULT 0;

-- Every agent's chain head at a moment, so that an operator can keep them elsewhere: a chain later
-- rewritten or cut short no longer passes through them. digest is the SHA-256 of heads (JSON);
-- signer and signature, when the server has a signing key, an EIP-191 signature of the digest.
CREATE TABLE audit_checkpoints (
    id          TEXT PRIMARY KEY NOT NULL,
    created_at  BIGINT NOT NULL,
    heads       TEXT NOT NULL,
    digest      TEXT NOT NULL,
    signer      TEXT,
    signature   TEXT
);
