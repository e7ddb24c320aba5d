-- A USDC payment's request names more than its price: who is paid (and who named them) and the
-- ceiling its caller set. Kept with the decision, so that a backtest replays the request whole.
ALTER TABLE authorizations ADD COLUMN recipient TEXT;
ALTER TABLE authorizations ADD COLUMN recipient_named_by TEXT CHECK (recipient_named_by IN ('server', 'agent'));
ALTER TABLE authorizations ADD COLUMN max_amount BIGINT;

-- Every card's and agent's policy as it was, is and may become. The live version is the one the
-- card or agent row holds; each change supersedes it with the next number. A draft waits beside
-- it (at most one per card or agent) until it is promoted or discarded; a draft in shadow is also
-- evaluated on every live decision, and where it disagrees that is recorded.
CREATE TABLE policy_versions (
    id TEXT PRIMARY KEY NOT NULL,
    agent_id TEXT NOT NULL REFERENCES agents (id),
    card_id TEXT REFERENCES cards (id),
    -- 1, 2, … per card or agent once live; NULL while a draft (or discarded).
    number BIGINT,
    state TEXT NOT NULL CHECK (state IN ('live', 'superseded', 'draft', 'discarded')),
    shadow BOOLEAN NOT NULL DEFAULT 0,
    policy TEXT NOT NULL,
    reason TEXT,
    created_by TEXT,
    created_at BIGINT NOT NULL,
    -- Who made it live, or discarded it, and when.
    decided_by TEXT,
    decided_at BIGINT
);
CREATE INDEX policy_versions_by_target ON policy_versions (agent_id, card_id, created_at);
CREATE UNIQUE INDEX policy_versions_one_draft ON policy_versions (agent_id, COALESCE(card_id, '')) WHERE state = 'draft';
CREATE UNIQUE INDEX policy_versions_one_live ON policy_versions (agent_id, COALESCE(card_id, '')) WHERE state = 'live';

-- Where a draft in shadow would have decided otherwise than the live policy did.
CREATE TABLE shadow_disagreements (
    id TEXT PRIMARY KEY NOT NULL,
    version_id TEXT NOT NULL REFERENCES policy_versions (id),
    authorization_id TEXT NOT NULL,
    agent_id TEXT NOT NULL,
    live_reason TEXT,
    live_rule TEXT,
    shadow_reason TEXT,
    shadow_rule TEXT,
    created_at BIGINT NOT NULL
);
CREATE INDEX shadow_disagreements_by_version ON shadow_disagreements (version_id, id);

-- Backtests: a draft replayed over recorded history, run in the background; the result is kept.
CREATE TABLE backtests (
    id TEXT PRIMARY KEY NOT NULL,
    -- What was asked (target, policy, range) as JSON.
    spec TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('running', 'done', 'failed', 'cancelled')),
    -- Decisions replayed so far, of how many in the range.
    replayed BIGINT NOT NULL DEFAULT 0,
    total BIGINT NOT NULL DEFAULT 0,
    result TEXT,
    error TEXT,
    created_by TEXT,
    created_at BIGINT NOT NULL,
    finished_at BIGINT
);

-- The policies in force now are each one's first version (ids that sort before any made later).
INSERT INTO policy_versions (id, agent_id, card_id, number, state, policy, created_at)
SELECT 'pol_00' || lower(hex(randomblob(12))), id, NULL, 1, 'live', policy, updated_at FROM agents;
INSERT INTO policy_versions (id, agent_id, card_id, number, state, policy, created_at)
SELECT 'pol_00' || lower(hex(randomblob(12))), agent_id, id, 1, 'live', policy, updated_at FROM cards;
