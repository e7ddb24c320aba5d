//! Each agent's wallet, on each network read, against what the ledger says it holds: deposits
//! credited less payments settled. What the chain holds beyond that is explained by deposits not
//! yet credited; what it lacks, by payments signed whose settlement spendgate has not seen. Any
//! other difference is a mismatch, raised as `wallet.mismatch` (at most once an hour a wallet's
//! agent).
//!
//! Everything is read as of one block: the cursor first, then the credits and the payments, then
//! the head, the deposits above the cursor that are not credited, and the balance at the head.

use std::collections::HashSet;
use std::time::Duration;

use alloy_primitives::{Address, U256};

use super::Usdc;
use super::chain::{Chain, TokenTransfer};
use super::store::{DepositRow, SignedAmount, now_ms};
use super::views::{MovementKind, ReconciliationStatus, WalletMovement, WalletReconciliation};
use crate::domain::event::Event;
use crate::domain::ids::AgentId;
use crate::domain::ledger::PaymentStatus;
use crate::error::Result;

const HOUR_MS: i64 = 3_600_000;

impl Usdc {
    /// Reconciles every wallet (or the agent's) on every network read; an unreadable chain makes
    /// `unread` entries, not an error.
    pub async fn reconcile(&self, agent: Option<&AgentId>) -> Result<Vec<WalletReconciliation>> {
        let records = &self.inner.records;
        let mut wallets = records.wallet_addresses().await?;
        wallets.retain(|(id, _)| agent.is_none_or(|a| a.as_str() == id));
        let mut chains: Vec<&Chain> = self.inner.chains.all().collect();
        chains.sort_by_key(|c| c.network);
        let mut report = Vec::new();
        for chain in chains {
            let network = chain.network;
            let tokens = match self.watched_tokens(chain).await {
                Ok(tokens) => tokens,
                Err(e) => {
                    let assets = self.inner.settings.assets.iter().filter(|a| a.network == network);
                    let tokens: Vec<Address> = assets.map(|a| a.address).collect();
                    for (agent, address) in &wallets {
                        for token in &tokens {
                            let mut entry = unread(agent, address, network, *token);
                            entry.error = Some(e.to_string());
                            report.push(entry);
                        }
                    }
                    continue;
                }
            };
            // Read before any wallet's credits, so that a deposit credited meanwhile is both
            // credited and above the cursor (and counted once, by its key).
            let cursor = records.cursor(network).await?;
            let from = cursor.and_then(|c| u64::try_from(c.block_number).ok()).map(|b| b + 1);
            for (agent, address) in &wallets {
                let deposits = records.deposits_into(address, network).await?;
                let payments = records.signed_by(address, network).await?;
                for token in &tokens {
                    let of_token = |stored: &str| stored.parse::<Address>().is_ok_and(|t| t == *token);
                    let deposits: Vec<&DepositRow> = deposits.iter().filter(|d| of_token(&d.token)).collect();
                    let payments: Vec<&SignedAmount> = payments.iter().filter(|p| of_token(&p.asset)).collect();
                    let entry = unread(agent, address, network, *token);
                    report.push(self.reconcile_one(chain, entry, *token, from, &deposits, &payments).await);
                }
            }
        }
        Ok(report)
    }

    /// One wallet's token, from its credits and payments as read (`from`: the first block above the
    /// cursor): the chain is read now, as of its head.
    async fn reconcile_one(
        &self,
        chain: &Chain,
        mut entry: WalletReconciliation,
        token: Address,
        from: Option<u64>,
        deposits: &[&DepositRow],
        payments: &[&SignedAmount],
    ) -> WalletReconciliation {
        let credited: i128 = deposits.iter().map(|d| atomic(&d.value)).sum();
        let settled = payments.iter().filter(|p| p.status == PaymentStatus::Settled);
        let paid: i128 = settled.clone().map(|p| atomic(&p.amount)).sum();
        let in_flight: Vec<&&SignedAmount> =
            payments.iter().filter(|p| matches!(p.status, PaymentStatus::Signed | PaymentStatus::Unknown)).collect();
        let ledger = credited - paid;
        let mut explained_by: Vec<WalletMovement> = in_flight
            .iter()
            .map(|p| WalletMovement {
                kind: MovementKind::PaymentInFlight,
                amount: (-atomic(&p.amount)).to_string(),
                tx_hash: p.transaction_hash.clone(),
                block: None,
                payment_id: Some(p.id.clone()),
            })
            .collect();
        let in_flight: i128 = in_flight.iter().map(|p| atomic(&p.amount)).sum();
        entry.ledger = ledger.to_string();
        entry.in_flight = in_flight.to_string();
        entry.deposits = deposits.len();
        entry.payments = settled.count();
        let Ok(owner) = entry.address.parse::<Address>() else { return entry };
        let read = async {
            let head = chain.head().await?;
            let settings = self.inner.settings.chain.as_ref();
            let lookback = settings.map_or(0, |s| s.confirmations.saturating_add(s.first_scan_blocks));
            let per_query = settings.map_or(2_000, |s| s.blocks_per_query);
            let from = from.unwrap_or_else(|| head.saturating_sub(lookback));
            let seen = transfers_between(chain, &[token], &[owner], from, head, per_query).await?;
            let balance = chain.balance(token, owner, Some(head)).await?;
            Ok::<_, crate::error::Error>((seen, balance))
        };
        let (seen, balance) = match read.await {
            Ok(read) => read,
            Err(e) => {
                entry.error = Some(e.to_string());
                return entry;
            }
        };
        let credited_keys: HashSet<(String, i64)> = deposits.iter().map(|d| (d.tx_hash.clone(), d.log_index)).collect();
        let uncredited: Vec<TokenTransfer> = seen
            .into_iter()
            .filter(|t| !credited_keys.contains(&(t.tx_hash.to_string(), i64::try_from(t.log_index).unwrap_or(-1))))
            .collect();
        let uncredited_sum: i128 = uncredited.iter().map(|t| to_i128(t.value)).sum();
        explained_by.extend(uncredited.iter().map(|t| WalletMovement {
            kind: MovementKind::UncreditedDeposit,
            amount: t.value.to_string(),
            tx_hash: Some(t.tx_hash.to_string()),
            block: Some(t.block),
            payment_id: None,
        }));
        let onchain = to_i128(balance);
        let difference = onchain - (ledger + uncredited_sum);
        entry.onchain = Some(onchain.to_string());
        entry.uncredited = uncredited_sum.to_string();
        entry.difference = Some(difference.to_string());
        entry.status = match difference {
            0 => ReconciliationStatus::Balanced,
            d if d < 0 && -d <= in_flight => ReconciliationStatus::InFlight,
            _ => ReconciliationStatus::Mismatch,
        };
        entry.explained_by = explained_by;
        entry
    }

    /// Reconciles every wallet every `every`, raising an alert for each that disagrees.
    pub(super) async fn reconcile_forever(self, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = self.alert_mismatches().await {
                tracing::warn!(error = %e, "could not reconcile the wallets; trying again");
            }
        }
    }

    /// Raises `wallet_mismatch` in the trail of each agent whose wallet disagrees with the
    /// ledger, unless one was raised in the last hour; returns how many were raised.
    pub async fn alert_mismatches(&self) -> Result<usize> {
        let mut raised = 0;
        for wallet in self.reconcile(None).await? {
            if wallet.status != ReconciliationStatus::Mismatch {
                continue;
            }
            tracing::warn!(
                agent = %wallet.agent_id,
                wallet = %wallet.address,
                network = %wallet.network,
                difference = ?wallet.difference,
                "a wallet disagrees with the ledger"
            );
            let agent = AgentId::from_stored(wallet.agent_id.clone());
            let data = serde_json::to_value(&wallet).unwrap_or_default();
            let event = Event::by_spendgate(&agent, None, "wallet_mismatch", crate::clock::now()).data(data);
            if self.inner.records.record_unless_since(event, now_ms() - HOUR_MS).await? {
                raised += 1;
            }
        }
        Ok(raised)
    }
}

/// Token transfers into `to` in blocks `from..=until`, a range of `per_query` at a time.
pub(super) async fn transfers_between(
    chain: &Chain,
    tokens: &[Address],
    to: &[Address],
    from: u64,
    until: u64,
    per_query: u64,
) -> Result<Vec<TokenTransfer>> {
    let mut found = Vec::new();
    let mut start = from;
    while start <= until {
        let end = start.saturating_add(per_query.max(1) - 1).min(until);
        found.extend(chain.transfers_into(tokens, to, start, end).await?);
        start = end + 1;
    }
    Ok(found)
}

/// A wallet's token with nothing read yet.
fn unread(agent: &str, address: &str, network: &str, token: Address) -> WalletReconciliation {
    WalletReconciliation {
        agent_id: agent.to_owned(),
        address: address.to_owned(),
        network: network.to_owned(),
        token: token.to_checksum(None),
        onchain: None,
        ledger: "0".into(),
        uncredited: "0".into(),
        in_flight: "0".into(),
        difference: None,
        status: ReconciliationStatus::Unread,
        deposits: 0,
        payments: 0,
        explained_by: Vec::new(),
        error: None,
    }
}

/// A stored atomic amount (a decimal string spendgate wrote).
fn atomic(stored: &str) -> i128 {
    stored.parse::<U256>().map(to_i128).unwrap_or(0)
}

/// Token amounts fit i128 by far (10^38 atomic units is 10^32 dollars).
fn to_i128(value: U256) -> i128 {
    i128::try_from(value).unwrap_or(i128::MAX)
}
