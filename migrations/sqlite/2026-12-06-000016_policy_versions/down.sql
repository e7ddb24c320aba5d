DROP TABLE backtests;
DROP TABLE shadow_disagreements;
DROP TABLE policy_versions;
ALTER TABLE authorizations DROP COLUMN max_amount;
ALTER TABLE authorizations DROP COLUMN recipient_named_by;
ALTER TABLE authorizations DROP COLUMN recipient;
