DROP TABLE audit_checkpoints;
ALTER TABLE events DROP COLUMN chain_n;
ALTER TABLE transfers DROP COLUMN chain_n;
ALTER TABLE authorizations DROP COLUMN chain_n;
ALTER TABLE agents DROP COLUMN chain_head;
ALTER TABLE agents DROP COLUMN chain_length;
DROP TABLE chain_links;
