-- The treasury (docs/treasury.md): each currency's account that every agent's balance is funded
-- from and drained back to, and its journal. People record what backs it (deposits, withdrawals).
CREATE TABLE treasuries (
    currency      TEXT PRIMARY KEY NOT NULL,
    deposited     BIGINT NOT NULL DEFAULT 0 CHECK (deposited >= 0),
    withdrawn     BIGINT NOT NULL DEFAULT 0 CHECK (withdrawn >= 0),
    -- Funded and topped up to agents; drained back from them.
    granted       BIGINT NOT NULL DEFAULT 0 CHECK (granted >= 0),
    returned      BIGINT NOT NULL DEFAULT 0 CHECK (returned >= 0),
    -- The treasury's own audit chain, as an agent's (chain_head NULL while it is empty).
    chain_length  BIGINT NOT NULL DEFAULT 0,
    chain_head    TEXT,
    CHECK (deposited - withdrawn - granted + returned >= 0)
);

-- Every movement of a treasury: with an agent, transfer_id is the agent's side (in transfers).
CREATE TABLE treasury_transfers (
    id           TEXT PRIMARY KEY NOT NULL,
    currency     TEXT NOT NULL REFERENCES treasuries (currency),
    external_id  TEXT NOT NULL,
    kind         TEXT NOT NULL CHECK (kind IN ('deposit', 'withdrawal', 'fund', 'top_up', 'drain')),
    amount       BIGINT NOT NULL CHECK (amount > 0),
    agent_id     TEXT REFERENCES agents (id),
    transfer_id  TEXT,
    actor        TEXT NOT NULL,
    reason       TEXT,
    reference    TEXT,
    created_at   BIGINT NOT NULL,
    chain_n      BIGINT NOT NULL DEFAULT 0,
    UNIQUE (currency, external_id)
);

-- An agent's transfers gain top_up, drain and allocations between a parent and its child, and say who
-- moved them and why.
ALTER TABLE transfers DROP CONSTRAINT transfers_kind_check;
ALTER TABLE transfers ADD CONSTRAINT transfers_kind_check
    CHECK (kind IN ('fund', 'top_up', 'drain', 'allocation_in', 'allocation_out', 'post', 'excess', 'increase', 'void',
                    'expire', 'refund'));
ALTER TABLE transfers ADD COLUMN actor TEXT;
ALTER TABLE transfers ADD COLUMN reason TEXT;

-- A treasury's journal is linked like an agent's records.
ALTER TABLE chain_links DROP CONSTRAINT chain_links_kind_check;
ALTER TABLE chain_links ADD CONSTRAINT chain_links_kind_check
    CHECK (kind IN ('authorization', 'transfer', 'event', 'treasury_transfer'));

-- Balances funded before the treasury existed came from it after all: an opening deposit of what
-- they add up to (its id sorts first), and each earlier funding as the treasury's (under the id of
-- the agent's side). The chain links them at start-up.
INSERT INTO treasuries (currency, deposited, granted)
    SELECT currency, SUM(amount), SUM(amount) FROM transfers WHERE kind = 'fund' GROUP BY currency;
INSERT INTO treasury_transfers (id, currency, external_id, kind, amount, actor, reason, created_at)
    SELECT 'trt_00' || substr(MIN(id), 7), currency, 'opening', 'deposit', SUM(amount), 'spendgate',
           'what agents were funded with before the treasury', MIN(created_at)
    FROM transfers WHERE kind = 'fund' GROUP BY currency;
INSERT INTO treasury_transfers (id, currency, external_id, kind, amount, agent_id, transfer_id, actor, created_at)
    SELECT 'trt_' || substr(id, 5), currency, id, 'fund', amount, agent_id, id, 'spendgate', created_at
    FROM transfers WHERE kind = 'fund';
