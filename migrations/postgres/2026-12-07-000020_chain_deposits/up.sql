-- Wallets read on the chain (docs/treasury.md#deposits-on-the-chain). A deposit is a token transfer into an
-- agent's wallet, credited once: its (network, transaction, log) is the key, so a scan that reads the same
-- blocks again (after a restart) credits nothing twice. amount is what was credited, in cents (the token's
-- atomic value floored); transfer_id is the agent's side, NULL when only the treasury was credited.
CREATE TABLE chain_deposits (
    network TEXT NOT NULL,
    tx_hash TEXT NOT NULL,
    log_index BIGINT NOT NULL,
    block_number BIGINT NOT NULL,
    block_hash TEXT NOT NULL,
    token TEXT NOT NULL,
    from_address TEXT NOT NULL,
    address TEXT NOT NULL,
    agent_id TEXT NOT NULL REFERENCES agents (id),
    value TEXT NOT NULL,
    amount BIGINT NOT NULL,
    currency TEXT NOT NULL,
    transfer_id TEXT,
    treasury_transfer_id TEXT,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (network, tx_hash, log_index)
);
CREATE INDEX chain_deposits_address ON chain_deposits (address, network);
-- How far each network has been read: the last confirmed block scanned, and its hash (a different hash
-- there later means a re-org deeper than the confirmations).
CREATE TABLE chain_cursors (
    network TEXT PRIMARY KEY,
    block_number BIGINT NOT NULL,
    block_hash TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
-- What a wallet has signed and not seen settle, summed before each payment it signs from this index alone.
CREATE INDEX x402_payments_payer ON x402_payments (payer, status, valid_before, network, asset, amount);
