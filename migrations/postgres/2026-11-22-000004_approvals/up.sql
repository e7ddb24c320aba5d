-- Human approvals. A decision that needs a person (an approval threshold, or a limit with
-- on_exceed = ask) makes a request in the same transaction as the declined attempt that asked;
-- a person's approval becomes an allowance the policy core reads with the agent's rules.
CREATE TABLE approvals (
    id                TEXT PRIMARY KEY NOT NULL,
    agent_id          TEXT NOT NULL REFERENCES agents (id),
    card_id           TEXT REFERENCES cards (id),
    -- The declined attempt that asked first.
    authorization_id  TEXT NOT NULL,
    rail              TEXT NOT NULL,
    -- The rule that asked: card.limit.daily, agent.approval, …
    rule              TEXT NOT NULL,
    -- An approval threshold lets one authorization through; a limit is raised for a while.
    single_use        BOOLEAN NOT NULL,
    -- What was asked, in the merchant's currency and in the rule's cap currency.
    amount            BIGINT NOT NULL,
    currency          TEXT NOT NULL,
    cap_amount        BIGINT NOT NULL,
    cap_currency      TEXT NOT NULL,
    -- The limit (or threshold), and what its window had counted before the request.
    cap               BIGINT,
    spent             BIGINT,
    window_end_at     BIGINT,
    merchant_id       TEXT,
    merchant_name     TEXT NOT NULL,
    mcc               TEXT,
    country           TEXT,
    trace_id          TEXT,
    -- What to pay when approved (an x402 fetch, as JSON); NULL when the agent retries itself.
    deferred          TEXT,
    status            TEXT NOT NULL CHECK (status IN ('pending', 'approved', 'denied')),
    expires_at        BIGINT NOT NULL,
    decided_by        TEXT,
    decided_at        BIGINT,
    -- Until when an approval's allowance applies.
    allowance_until   BIGINT,
    -- Delivery of the Slack message: pending, sent, failed (after every retry), off (no webhook set).
    notify_status     TEXT NOT NULL CHECK (notify_status IN ('pending', 'sent', 'failed', 'off')),
    notify_attempts   INTEGER NOT NULL,
    notify_error      TEXT,
    created_at        BIGINT NOT NULL,
    updated_at        BIGINT NOT NULL
);
CREATE INDEX approvals_status ON approvals (status, created_at);
CREATE INDEX approvals_agent ON approvals (agent_id, status);
CREATE INDEX approvals_notify ON approvals (notify_status);

-- The approval whose allowance let an authorization through.
ALTER TABLE authorizations ADD COLUMN approval_id TEXT;
