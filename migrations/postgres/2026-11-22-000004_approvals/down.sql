ALTER TABLE authorizations DROP COLUMN approval_id;
DROP TABLE approvals;
