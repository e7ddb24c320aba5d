-- Times are Unix milliseconds (BIGINT); amounts, when they come, are BIGINT minor units.
CREATE TABLE agents (
    id          TEXT PRIMARY KEY NOT NULL,
    name        TEXT NOT NULL,
    department  TEXT,
    status      TEXT NOT NULL CHECK (status IN ('active', 'frozen')),
    policy      TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);

CREATE TABLE api_keys (
    id          TEXT PRIMARY KEY NOT NULL,
    name        TEXT,
    role        TEXT NOT NULL CHECK (role IN ('owner', 'manager', 'operator', 'agent')),
    agent_id    TEXT REFERENCES agents (id),
    key_hash    TEXT NOT NULL UNIQUE,
    prefix      TEXT NOT NULL,
    created_by  TEXT,
    created_at  BIGINT NOT NULL,
    revoked_at  BIGINT
);

CREATE TABLE cards (
    id                 TEXT PRIMARY KEY NOT NULL,
    agent_id           TEXT NOT NULL REFERENCES agents (id),
    label              TEXT NOT NULL,
    currency           TEXT NOT NULL,
    last4              TEXT NOT NULL,
    exp_month          INTEGER NOT NULL,
    exp_year           INTEGER NOT NULL,
    expires_at         BIGINT,
    single_use         BOOLEAN NOT NULL,
    status             TEXT NOT NULL CHECK (status IN ('active', 'frozen', 'closed')),
    processor          TEXT NOT NULL,
    processor_card_id  TEXT NOT NULL,
    policy             TEXT NOT NULL,
    created_at         BIGINT NOT NULL,
    updated_at         BIGINT NOT NULL,
    UNIQUE (processor, processor_card_id)
);
CREATE INDEX cards_agent ON cards (agent_id, id);

-- The audit trail. card_id is NULL for agent-wide events, which every card of the agent shows.
CREATE TABLE events (
    id          TEXT PRIMARY KEY NOT NULL,
    agent_id    TEXT NOT NULL REFERENCES agents (id),
    card_id     TEXT REFERENCES cards (id),
    kind        TEXT NOT NULL,
    actor       TEXT,
    reason      TEXT,
    data        TEXT,
    created_at  BIGINT NOT NULL
);
CREATE INDEX events_card ON events (card_id, id);
CREATE INDEX events_agent ON events (agent_id, id);
