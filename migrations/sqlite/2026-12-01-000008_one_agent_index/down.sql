CREATE INDEX authorizations_agent_seq ON authorizations (agent_id, seq);
