-- A processor may raise a hold it approved (an incremental authorization, an advice for more):
-- transfers gain the kind `increase`.
ALTER TABLE transfers DROP CONSTRAINT transfers_kind_check;
ALTER TABLE transfers ADD CONSTRAINT transfers_kind_check
    CHECK (kind IN ('fund', 'post', 'excess', 'increase', 'void', 'expire', 'refund'));
