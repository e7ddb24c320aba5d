DELETE FROM chain_links WHERE kind = 'treasury_transfer';
ALTER TABLE chain_links DROP CONSTRAINT chain_links_kind_check;
ALTER TABLE chain_links ADD CONSTRAINT chain_links_kind_check CHECK (kind IN ('authorization', 'transfer', 'event'));
DELETE FROM transfers WHERE kind IN ('top_up', 'drain', 'allocation_in', 'allocation_out');
ALTER TABLE transfers DROP COLUMN reason;
ALTER TABLE transfers DROP COLUMN actor;
ALTER TABLE transfers DROP CONSTRAINT transfers_kind_check;
ALTER TABLE transfers ADD CONSTRAINT transfers_kind_check
    CHECK (kind IN ('fund', 'post', 'excess', 'increase', 'void', 'expire', 'refund'));
DROP TABLE treasury_transfers;
DROP TABLE treasuries;
