DROP TABLE x402_payments;
DROP TABLE wallets;
