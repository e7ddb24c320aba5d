-- The status of an authorization and the kind of a transfer are checked with ORs: SQLite checks a
-- constant IN list of more than two values by building a temporary index of it, on every row
-- written (EXPLAIN: OpenEphemeral), which took a tenth of the ledger writer's time. The rule is
-- the same. SQLite cannot alter a CHECK, so both tables are rebuilt, indexes included.
-- (Version 000008 was taken by a migration since withdrawn; databases that ran it keep it.)
-- SQLite's procedure for a change of table definition (sqlite.org/lang_altertable.html, 7): foreign
-- keys off, outside a transaction (inside one the pragma does nothing), so that dropping the old
-- table orphans nothing on the way and the foreign keys of transfers and x402_payments, which name
-- `authorizations`, name the new table once it has that name. Hence metadata.toml: the transaction
-- is this file's own. Run twice (stopped before its version was recorded), it does the same again.
PRAGMA foreign_keys = OFF;
BEGIN;

CREATE TABLE authorizations_next (
    id             TEXT PRIMARY KEY NOT NULL,
    source         TEXT NOT NULL,
    external_id    TEXT NOT NULL,
    agent_id       TEXT NOT NULL REFERENCES agents (id),
    card_id        TEXT REFERENCES cards (id),
    rail           TEXT NOT NULL CHECK (rail IN ('card', 'usdc')),
    status         TEXT NOT NULL CHECK (status = 'pending' OR
                                        status = 'posted' OR
                                        status = 'voided' OR
                                        status = 'expired' OR
                                        status = 'declined'),
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
    -- The approval whose allowance let this authorization through.
    approval_id    TEXT,
    -- external_id first: the idempotency lookup is by external ids, then source.
    UNIQUE (external_id, source)
);
INSERT INTO authorizations_next (
    id, source, external_id, agent_id, card_id, rail, status, reason, rule, amount, currency,
    cap_amount, cap_currency, card_amount, card_currency, fx_rate, fx_date, held, posted, counted,
    counted_card, refunded, merchant_id, merchant_name, mcc, country, trace_id, seq, authorized_at,
    updated_at, approval_id
) SELECT
    id, source, external_id, agent_id, card_id, rail, status, reason, rule, amount, currency,
    cap_amount, cap_currency, card_amount, card_currency, fx_rate, fx_date, held, posted, counted,
    counted_card, refunded, merchant_id, merchant_name, mcc, country, trace_id, seq, authorized_at,
    updated_at, approval_id
FROM authorizations;
DROP TABLE authorizations;
ALTER TABLE authorizations_next RENAME TO authorizations;
CREATE INDEX authorizations_agent_seq ON authorizations (agent_id, seq);
CREATE INDEX authorizations_agent ON authorizations (agent_id, id);
CREATE INDEX authorizations_pending ON authorizations (status, authorized_at);

CREATE TABLE transfers_next (
    id                TEXT PRIMARY KEY NOT NULL,
    external_id       TEXT NOT NULL,
    agent_id          TEXT NOT NULL REFERENCES agents (id),
    authorization_id  TEXT REFERENCES authorizations (id),
    card_id           TEXT,
    trace_id          TEXT,
    kind              TEXT NOT NULL CHECK (kind = 'fund' OR
                                           kind = 'post' OR
                                           kind = 'excess' OR
                                           kind = 'increase' OR
                                           kind = 'void' OR
                                           kind = 'expire' OR
                                           kind = 'refund'),
    amount            BIGINT NOT NULL CHECK (amount >= 0),
    currency          TEXT NOT NULL,
    created_at        BIGINT NOT NULL,
    UNIQUE (agent_id, external_id)
);
INSERT INTO transfers_next (id, external_id, agent_id, authorization_id, card_id, trace_id, kind, amount, currency,
    created_at)
    SELECT id, external_id, agent_id, authorization_id, card_id, trace_id, kind, amount, currency, created_at
    FROM transfers;
DROP TABLE transfers;
ALTER TABLE transfers_next RENAME TO transfers;
CREATE INDEX transfers_agent ON transfers (agent_id, id);

COMMIT;
PRAGMA foreign_keys = ON;
