DELETE FROM transfers WHERE kind = 'increase';
ALTER TABLE transfers DROP CONSTRAINT transfers_kind_check;
ALTER TABLE transfers ADD CONSTRAINT transfers_kind_check
    CHECK (kind IN ('fund', 'post', 'excess', 'void', 'expire', 'refund'));
