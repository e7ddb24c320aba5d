DROP INDEX agents_parent;
ALTER TABLE agents DROP COLUMN children;
ALTER TABLE agents DROP COLUMN parent_id;
