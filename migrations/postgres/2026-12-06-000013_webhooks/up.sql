-- Events out (docs/webhooks.md): endpoints people subscribe, and the outbox that delivers to them.
CREATE TABLE webhook_endpoints (
    id          TEXT PRIMARY KEY NOT NULL,
    url         TEXT NOT NULL,
    -- The event types it receives, comma-separated.
    events      TEXT NOT NULL,
    -- whsec_ + base64: signs every delivery (Standard Webhooks).
    secret      TEXT NOT NULL,
    description TEXT,
    created_by  TEXT,
    created_at  BIGINT NOT NULL,
    deleted_at  BIGINT
);

-- How far the outbox has read each agent's audit chain: the events come from the records it links,
-- so nothing on the decision path writes anything for them.
CREATE TABLE webhook_cursors (
    agent_id  TEXT PRIMARY KEY NOT NULL,
    n         BIGINT NOT NULL
);

-- One event for one endpoint, until it is delivered (a 2xx) or its attempts run out.
CREATE TABLE webhook_deliveries (
    id               TEXT PRIMARY KEY NOT NULL,
    endpoint_id      TEXT NOT NULL REFERENCES webhook_endpoints (id),
    -- The event's stable id (webhook-id): the same on every attempt.
    event_id         TEXT NOT NULL,
    event_type       TEXT NOT NULL,
    payload          TEXT NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts         INTEGER NOT NULL,
    next_attempt_at  BIGINT NOT NULL,
    last_error       TEXT,
    created_at       BIGINT NOT NULL,
    delivered_at     BIGINT,
    UNIQUE (endpoint_id, event_id)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (status, next_attempt_at);
