-- The status of an authorization and the kind of a transfer are checked with ORs, as on SQLite
-- (where a constant IN list of more than two values costs a temporary index per row written). The
-- rule is the same.
-- (Version 000008 was taken by a migration since withdrawn; databases that ran it keep it.)
ALTER TABLE authorizations DROP CONSTRAINT authorizations_status_check,
    ADD CONSTRAINT authorizations_status_check CHECK (status = 'pending' OR
                                                      status = 'posted' OR
                                                      status = 'voided' OR
                                                      status = 'expired' OR
                                                      status = 'declined');
ALTER TABLE transfers DROP CONSTRAINT transfers_kind_check,
    ADD CONSTRAINT transfers_kind_check CHECK (kind = 'fund' OR
                                               kind = 'post' OR
                                               kind = 'excess' OR
                                               kind = 'increase' OR
                                               kind = 'void' OR
                                               kind = 'expire' OR
                                               kind = 'refund');
