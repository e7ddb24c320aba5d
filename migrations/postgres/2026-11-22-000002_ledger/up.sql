-- The ledger. Amounts are BIGINT minor units; times are Unix milliseconds.

-- An agent's prepaid balance lives on its row, so the row lock that serializes an agent's decisions
-- (across processes sharing PostgreSQL) also guards its balance. ledger_seq numbers every change to
-- the agent's ledger; config_version every change to the agent's or its cards' rules.
ALTER TABLE agents ADD COLUMN currency TEXT NOT NULL DEFAULT 'USD';
ALTER TABLE agents ADD COLUMN config_version BIGINT NOT NULL DEFAULT 0;
ALTER TABLE agents ADD COLUMN ledger_seq BIGINT NOT NULL DEFAULT 0;
ALTER TABLE agents ADD COLUMN funded BIGINT NOT NULL DEFAULT 0;
ALTER TABLE agents ADD COLUMN refunded BIGINT NOT NULL DEFAULT 0;
ALTER TABLE agents ADD COLUMN held BIGINT NOT NULL DEFAULT 0;
ALTER TABLE agents ADD COLUMN spent BIGINT NOT NULL DEFAULT 0;

-- The trace that authorizations on this card are tagged with when the processor sends none.
ALTER TABLE cards ADD COLUMN trace_id TEXT;

-- Every authorization request: an approved one is the pending hold (two-phase: pending -> posted |
-- voided | expired), a declined one is the recorded attempt. (source, external_id) makes retries idempotent.
CREATE TABLE authorizations (
    id             TEXT PRIMARY KEY NOT NULL,
    source         TEXT NOT NULL,
    external_id    TEXT NOT NULL,
    agent_id       TEXT NOT NULL REFERENCES agents (id),
    card_id        TEXT REFERENCES cards (id),
    rail           TEXT NOT NULL CHECK (rail IN ('card', 'usdc')),
    status         TEXT NOT NULL CHECK (status IN ('pending', 'posted', 'voided', 'expired', 'declined')),
    reason         TEXT,
    rule           TEXT,
    amount         BIGINT NOT NULL,
    currency       TEXT NOT NULL,
    -- The request converted to the agent's currency (cap_amount) and the card's (card_amount).
    cap_amount     BIGINT NOT NULL,
    cap_currency   TEXT NOT NULL,
    card_amount    BIGINT NOT NULL,
    card_currency  TEXT NOT NULL,
    fx_rate        TEXT,
    fx_date        TEXT,
    -- Still held, already posted, and what the spending windows count (held + posted), in the agent's
    -- currency; counted_card is the same in the card's currency.
    held           BIGINT NOT NULL CHECK (held >= 0),
    posted         BIGINT NOT NULL CHECK (posted >= 0),
    counted        BIGINT NOT NULL CHECK (counted >= 0),
    counted_card   BIGINT NOT NULL CHECK (counted_card >= 0),
    refunded       BIGINT NOT NULL CHECK (refunded >= 0),
    merchant_id    TEXT,
    merchant_name  TEXT NOT NULL,
    mcc            TEXT,
    country        TEXT,
    trace_id       TEXT,
    seq            BIGINT NOT NULL,
    authorized_at  BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL,
    -- external_id first: the idempotency lookup is by external ids, then source.
    UNIQUE (external_id, source)
);
CREATE INDEX authorizations_agent_seq ON authorizations (agent_id, seq);
CREATE INDEX authorizations_agent ON authorizations (agent_id, id);
CREATE INDEX authorizations_pending ON authorizations (status, authorized_at);

-- Every movement after the hold: fund, post, excess (captured above the hold), void, expire, refund.
-- Amounts are in the agent's currency; external_id is the caller's idempotency key, unique per agent.
CREATE TABLE transfers (
    id                TEXT PRIMARY KEY NOT NULL,
    external_id       TEXT NOT NULL,
    agent_id          TEXT NOT NULL REFERENCES agents (id),
    authorization_id  TEXT REFERENCES authorizations (id),
    card_id           TEXT,
    trace_id          TEXT,
    kind              TEXT NOT NULL CHECK (kind IN ('fund', 'post', 'excess', 'void', 'expire', 'refund')),
    amount            BIGINT NOT NULL CHECK (amount >= 0),
    currency          TEXT NOT NULL,
    created_at        BIGINT NOT NULL,
    UNIQUE (agent_id, external_id)
);
CREATE INDEX transfers_agent ON transfers (agent_id, id);
