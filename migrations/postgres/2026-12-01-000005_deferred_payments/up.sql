-- What an approved, deferred x402 fetch came to: the answer the agent's status URL replays (JSON).
-- NULL while it is waiting for a person, or being paid.
ALTER TABLE approvals ADD COLUMN deferred_result TEXT;
