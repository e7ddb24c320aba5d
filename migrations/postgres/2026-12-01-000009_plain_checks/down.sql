-- Back to the IN lists.
ALTER TABLE authorizations DROP CONSTRAINT authorizations_status_check,
    ADD CONSTRAINT authorizations_status_check CHECK (status IN ('pending', 'posted', 'voided', 'expired', 'declined'));
ALTER TABLE transfers DROP CONSTRAINT transfers_kind_check,
    ADD CONSTRAINT transfers_kind_check CHECK (kind IN ('fund', 'post', 'excess', 'increase', 'void', 'expire', 'refund'));
