-- Cards spendgate created at the processor (rather than registered there by someone else): their
-- status and mirrored spending controls follow every change made here.
ALTER TABLE cards ADD COLUMN processor_managed BOOLEAN NOT NULL DEFAULT FALSE;
