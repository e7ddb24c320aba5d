CREATE TABLE chain_links_prev (
    agent_id      TEXT NOT NULL,
    n             BIGINT NOT NULL,
    kind          TEXT NOT NULL CHECK (kind IN ('authorization', 'transfer', 'event')),
    record_id     TEXT NOT NULL,
    content_hash  TEXT NOT NULL,
    hash          TEXT NOT NULL,
    PRIMARY KEY (agent_id, n)
) WITHOUT ROWID;
INSERT INTO chain_links_prev SELECT * FROM chain_links WHERE kind <> 'treasury_transfer';
DROP TABLE chain_links;
ALTER TABLE chain_links_prev RENAME TO chain_links;

CREATE TABLE transfers_prev (
    id                TEXT PRIMARY KEY NOT NULL,
    external_id       TEXT NOT NULL,
    agent_id          TEXT NOT NULL REFERENCES agents (id),
    authorization_id  TEXT REFERENCES authorizations (id),
    card_id           TEXT,
    trace_id          TEXT,
    kind              TEXT NOT NULL CHECK (kind IN ('fund', 'post', 'excess', 'increase', 'void', 'expire', 'refund')),
    amount            BIGINT NOT NULL CHECK (amount >= 0),
    currency          TEXT NOT NULL,
    created_at        BIGINT NOT NULL,
    chain_n           BIGINT NOT NULL DEFAULT 0,
    UNIQUE (agent_id, external_id)
);
INSERT INTO transfers_prev (id, external_id, agent_id, authorization_id, card_id, trace_id, kind, amount, currency, created_at, chain_n)
    SELECT id, external_id, agent_id, authorization_id, card_id, trace_id, kind, amount, currency, created_at, chain_n
    FROM transfers WHERE kind IN ('fund', 'post', 'excess', 'increase', 'void', 'expire', 'refund');
DROP TABLE transfers;
ALTER TABLE transfers_prev RENAME TO transfers;
CREATE INDEX transfers_agent ON transfers (agent_id, id);

DROP TABLE treasury_transfers;
DROP TABLE treasuries;
