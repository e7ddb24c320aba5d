-- A SQLite file is served by one process (several share PostgreSQL, which keeps this index), so a
-- book catches up only on its first load, which reads all of an agent's rows and is served as well
-- by authorizations_agent. A second process on the same file would still be right, only slower to
-- catch up. Every index costs each authorization one more page, written twice (WAL, then file).
DROP INDEX authorizations_agent_seq;
