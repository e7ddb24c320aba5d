CREATE INDEX IF NOT EXISTS authorizations_agent_seq ON authorizations (agent_id, seq);
