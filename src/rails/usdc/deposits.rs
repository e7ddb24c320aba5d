//! Deposits: token transfers into agents' wallets, read on each network once confirmed and
//! credited once (docs/treasury.md#deposits-on-the-chain).
//!
//! A network is read from its cursor (the last confirmed block read) up to the head less
//! `confirmations`, a range of `blocks_per_query` at a time. Each transfer into a wallet is
//! credited by the ledger under its (network, transaction, log), then the cursor moves past the
//! range: a crash between the two reads the range again and credits nothing twice. A re-org
//! shallower than the confirmations never reaches what is read; a deeper one shows as the cursor's
//! block changing its hash: it is logged for a person, and the blocks below are read again for
//! deposits the new ones hold (what was credited stands; the reconciliation shows a deposit that
//! vanished).

use std::collections::HashMap;

use alloy_primitives::{Address, U256};

use super::Usdc;
use super::chain::{Chain, ChainSettings, TokenTransfer};
use super::store::{CursorRow, DepositRow, now_ms};
use crate::domain::money::MAX_AMOUNT;
use crate::error::{Error, ErrorCode, Result};

/// A token of 6 decimals in cents: 10^4 atomic units each.
const ATOMIC_PER_CENT: u64 = 10_000;

impl Usdc {
    /// Reads every network with an endpoint for deposits, and reconciles the wallets, for ever.
    pub fn watch_chain(&self) {
        let Some(settings) = self.inner.settings.chain.clone() else { return };
        for chain in self.inner.chains.all().cloned() {
            let (usdc, settings) = (self.clone(), settings.clone());
            actix_web::rt::spawn(async move { usdc.watch(chain, settings).await });
        }
        let usdc = self.clone();
        actix_web::rt::spawn(async move { usdc.reconcile_forever(settings.reconcile_every).await });
    }

    async fn watch(self, chain: Chain, settings: ChainSettings) {
        let mut tick = tokio::time::interval(settings.poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match self.scan(&chain, &settings).await {
                Ok(0) => {}
                Ok(credited) => tracing::info!(network = chain.network, credited, "deposits credited"),
                Err(e) => tracing::warn!(network = chain.network, error = %e, "could not read deposits; trying again"),
            }
        }
    }

    /// Reads the network from its cursor to the confirmed head; returns how many deposits it
    /// credited (none that were credited before).
    pub async fn scan(&self, chain: &Chain, settings: &ChainSettings) -> Result<usize> {
        chain.check_chain_id().await?;
        // The head before the wallets: a deposit confirmed by then went to a wallet made before.
        let head = chain.head().await?;
        let Some(confirmed) = head.checked_sub(settings.confirmations) else { return Ok(0) };
        let network = chain.network;
        let from = match self.inner.records.cursor(network).await? {
            Some(cursor) => {
                let block = u64::try_from(cursor.block_number).unwrap_or_default();
                let now = chain.block_hash(block).await?.map(|h| h.to_string());
                if now.as_deref() == Some(cursor.block_hash.as_str()) {
                    block + 1
                } else {
                    // The new blocks may hold deposits the old ones did not: read them again (what
                    // was credited is not credited twice).
                    tracing::error!(
                        network,
                        block,
                        "the block last read changed: a re-org deeper than chain_confirmations; the last \
                         chain_first_scan_blocks are read again, and deposits credited from the blocks it replaced \
                         stand (the wallet reconciliation shows any that vanished)"
                    );
                    block.saturating_sub(settings.first_scan_blocks)
                }
            }
            None => confirmed.saturating_sub(settings.first_scan_blocks),
        };
        if from > confirmed {
            return Ok(0);
        }
        let wallets = self.wallets_by_address().await?;
        let addresses: Vec<Address> = wallets.keys().copied().collect();
        let tokens = self.watched_tokens(chain).await?;
        let mut credited = 0;
        let mut start = from;
        while start <= confirmed {
            let end = start.saturating_add(settings.blocks_per_query - 1).min(confirmed);
            if !addresses.is_empty() && !tokens.is_empty() {
                for transfer in chain.transfers_into(&tokens, &addresses, start, end).await? {
                    let Some(agent_id) = wallets.get(&transfer.to) else { continue };
                    if self.credit(network, agent_id, &transfer).await? {
                        credited += 1;
                    }
                }
            }
            let hash = chain.block_hash(end).await?.ok_or_else(|| {
                Error::coded(ErrorCode::ChainUnavailable, format!("{network} has no block {end} it said it has"))
            })?;
            let cursor = CursorRow {
                network: network.to_owned(),
                block_number: i64::try_from(end).unwrap_or(i64::MAX),
                block_hash: hash.to_string(),
                updated_at: now_ms(),
            };
            self.inner.records.save_cursor(cursor).await?;
            start = end + 1;
        }
        Ok(credited)
    }

    /// Every agent's wallet, by address.
    pub(super) async fn wallets_by_address(&self) -> Result<HashMap<Address, String>> {
        let rows = self.inner.records.wallet_addresses().await?;
        Ok(rows.into_iter().filter_map(|(agent, address)| Some((address.parse().ok()?, agent))).collect())
    }

    /// The tokens spendgate pays with on this network that exist there (a built-in USDC address
    /// holds no contract on a test chain).
    pub(super) async fn watched_tokens(&self, chain: &Chain) -> Result<Vec<Address>> {
        let mut tokens = Vec::new();
        for asset in self.inner.settings.assets.iter().filter(|a| a.network == chain.network) {
            if chain.has_code(asset.address).await? {
                tokens.push(asset.address);
            }
        }
        Ok(tokens)
    }

    /// Has the ledger credit one transfer; true if this call credited it.
    async fn credit(&self, network: &str, agent_id: &str, t: &TokenTransfer) -> Result<bool> {
        let amount = match cents(t.value) {
            Some(amount) => amount,
            None => {
                tracing::error!(network, tx = %t.tx_hash, value = %t.value, "a deposit too large to credit: record it by hand");
                0
            }
        };
        let deposit = DepositRow {
            network: network.to_owned(),
            tx_hash: t.tx_hash.to_string(),
            log_index: i64::try_from(t.log_index).unwrap_or(i64::MAX),
            block_number: i64::try_from(t.block).unwrap_or(i64::MAX),
            block_hash: t.block_hash.to_string(),
            token: t.token.to_checksum(None),
            from_address: t.from.to_checksum(None),
            address: t.to.to_checksum(None),
            agent_id: agent_id.to_owned(),
            value: t.value.to_string(),
            amount,
            currency: String::new(),
            transfer_id: None,
            treasury_transfer_id: None,
            created_at: 0,
        };
        let (row, replayed) = self.inner.ledger.credit_deposit(deposit).await?;
        if !replayed {
            tracing::info!(network, agent = agent_id, tx = %row.tx_hash, amount = row.amount, "deposit credited");
        }
        Ok(!replayed)
    }
}

/// What a deposit credits, in cents: its atomic value floored (the dust stays on the chain,
/// uncredited). None beyond the largest amount spendgate keeps.
fn cents(value: U256) -> Option<i64> {
    let cents = i64::try_from(value / U256::from(ATOMIC_PER_CENT)).ok()?;
    (cents <= MAX_AMOUNT).then_some(cents)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deposits_credit_whole_cents_and_nothing_beyond_the_largest_amount() {
        assert_eq!(cents(U256::from(1_234_567u64)), Some(123));
        assert_eq!(cents(U256::from(9_999u64)), Some(0));
        assert_eq!(cents(U256::from(10_000u64)), Some(1));
        assert_eq!(cents(U256::from(MAX_AMOUNT as u64) * U256::from(ATOMIC_PER_CENT)), Some(MAX_AMOUNT));
        assert_eq!(cents(U256::from(MAX_AMOUNT as u64 + 1) * U256::from(ATOMIC_PER_CENT)), None);
        assert_eq!(cents(U256::MAX), None);
    }
}
