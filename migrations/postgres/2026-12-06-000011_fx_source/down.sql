ALTER TABLE authorizations DROP COLUMN fx_source;
