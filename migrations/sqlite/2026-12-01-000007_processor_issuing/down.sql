ALTER TABLE cards DROP COLUMN processor_managed;
