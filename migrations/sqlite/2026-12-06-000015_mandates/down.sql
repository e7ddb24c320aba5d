ALTER TABLE x402_payments DROP COLUMN protocol;
ALTER TABLE approvals DROP COLUMN merchants;
ALTER TABLE approvals DROP COLUMN hosts;
ALTER TABLE approvals DROP COLUMN purpose;
