DROP INDEX x402_payments_payer;
DROP TABLE chain_cursors;
DROP TABLE chain_deposits;
