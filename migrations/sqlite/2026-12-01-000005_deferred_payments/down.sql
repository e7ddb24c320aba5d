ALTER TABLE approvals DROP COLUMN deferred_result;
