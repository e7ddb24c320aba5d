DELETE FROM transfers WHERE kind = 'increase';
CREATE TABLE transfers_prev (
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
INSERT INTO transfers_prev (id, external_id, agent_id, authorization_id, card_id, trace_id, kind, amount, currency, created_at)
    SELECT id, external_id, agent_id, authorization_id, card_id, trace_id, kind, amount, currency, created_at FROM transfers;
DROP TABLE transfers;
ALTER TABLE transfers_prev RENAME TO transfers;
CREATE INDEX transfers_agent ON transfers (agent_id, id);
