-- The USDC rail.

-- One wallet per agent: its secp256k1 key sealed with AES-256-GCM under the master key
-- (base64 of nonce || ciphertext, the agent id as associated data, so a key copied to another
-- agent's row does not open).
CREATE TABLE wallets (
    agent_id    TEXT PRIMARY KEY NOT NULL REFERENCES agents (id),
    address     TEXT NOT NULL UNIQUE,
    sealed_key  TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);

-- One x402 payment per (agent, idempotency key). The signed payload is stored before it is sent,
-- so that a retry re-sends it instead of signing a second time. status: signed (handed out or in
-- flight), settled, failed (nothing moved; the hold is voided), unknown (no readable answer; the
-- hold stays).
CREATE TABLE x402_payments (
    id                TEXT PRIMARY KEY NOT NULL,
    agent_id          TEXT NOT NULL REFERENCES agents (id),
    idempotency_key   TEXT NOT NULL,
    -- SHA-256 of what was asked (method, URL, requirement): the same key for another request is refused.
    request_hash      TEXT NOT NULL,
    authorization_id  TEXT NOT NULL REFERENCES authorizations (id),
    url               TEXT NOT NULL,
    x402_version      INTEGER NOT NULL,
    network           TEXT NOT NULL,
    asset             TEXT NOT NULL,
    pay_to            TEXT NOT NULL,
    -- In the asset's atomic units (USDC: 6 decimals), as a decimal string.
    amount            TEXT NOT NULL,
    payer             TEXT NOT NULL,
    valid_before      BIGINT NOT NULL,
    header_name       TEXT NOT NULL,
    header_value      TEXT NOT NULL,
    status            TEXT NOT NULL CHECK (status IN ('signed', 'settled', 'failed', 'unknown')),
    transaction_hash  TEXT,
    error             TEXT,
    -- The upstream answer to the paid request, replayed to a retry after the payment is final.
    response_status   INTEGER,
    response_headers  TEXT,
    response_body     BYTEA,
    created_at        BIGINT NOT NULL,
    updated_at        BIGINT NOT NULL,
    UNIQUE (agent_id, idempotency_key)
);
CREATE INDEX x402_payments_authorization ON x402_payments (authorization_id);
