-- SQLite drops authorizations_agent_seq; PostgreSQL keeps it. It finds the rows another process
-- changed since a book last looked. A SQLite file has one writing process, whose ledger writer
-- makes every change, so there a book is behind only when first loaded, and then reads all of an
-- agent's rows, which authorizations_agent serves as well. (A second process on the file would
-- still decide right, catching up by reading the agent's rows.) Each index costs an authorization
-- a page written to the WAL and again into the file: measured at 5,000/s, a fifth of the pages
-- each commit wrote. IF EXISTS: a database made by a build of a withdrawn 000008 lacks it already.
DROP INDEX IF EXISTS authorizations_agent_seq;
