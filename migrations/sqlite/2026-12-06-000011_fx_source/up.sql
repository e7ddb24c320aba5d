-- Where the rate a conversion used came from: ecb, bundled (the table built into the release) or extra.
ALTER TABLE authorizations ADD COLUMN fx_source TEXT;
