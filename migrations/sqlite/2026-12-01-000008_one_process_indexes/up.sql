-- SQLite serves one process, whose writer catches an agent's book up from `ledger_seq` only when the
-- book starts, reading all of the agent's rows (which `authorizations_agent` finds). The
-- (agent_id, seq) index is for catching up with another process's writes, as on PostgreSQL; here it
-- only made every authorization write one more index page (and every capture move its entry).
DROP INDEX authorizations_agent_seq;
