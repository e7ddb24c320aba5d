//! Agents' wallets: made once, sealed under the master key, exported only by owners.

use super::Usdc;
use super::store::WalletRow;
use super::store::now_ms;
use super::views::{ExportedWallet, WalletView};
use super::wallet::Wallet;
use crate::domain::event::Event;
use crate::domain::ids::{AgentId, KeyId};
use crate::error::{Error, ErrorCode, Result};

impl Usdc {
    /// Gives the agent a wallet unless it has one; returns it and whether it is new.
    pub async fn create_wallet(&self, agent: &AgentId) -> Result<(WalletView, bool)> {
        let master = self.master()?;
        self.agent_exists(agent).await?;
        let wallet = Wallet::generate();
        let row = WalletRow {
            agent_id: agent.to_string(),
            address: wallet.address().to_checksum(None),
            sealed_key: master.seal(agent, &wallet),
            created_at: now_ms(),
        };
        let agent_id = agent.clone();
        let written = self.inner.records.insert_wallet(row).await;
        let (stored, created) = match written {
            // Another process gave the agent a wallet at the same moment: that one stands.
            Err(Error::Coded { code: ErrorCode::AlreadyExists, .. }) => (self.wallet_row(&agent_id).await?, false),
            other => other?,
        };
        if created {
            tracing::info!(agent = %agent, address = %stored.address, "wallet created");
        }
        Ok((wallet_view(&stored), created))
    }

    pub async fn wallet(&self, agent: &AgentId) -> Result<WalletView> {
        self.agent_exists(agent).await?;
        Ok(wallet_view(&self.wallet_row(agent).await?))
    }

    /// The wallet's private key, for its owner to move the funds elsewhere: recorded in the audit trail.
    pub async fn export_wallet(&self, agent: &AgentId, actor: &KeyId) -> Result<ExportedWallet> {
        let master = self.master()?;
        self.agent_exists(agent).await?;
        let row = self.wallet_row(agent).await?;
        let wallet = master.open(agent, &row.sealed_key).map_err(|e| Error::Internal(e.to_string()))?;
        let mut event = Event::new(agent, None, "wallet_exported", actor, crate::clock::now());
        event.data = Some(serde_json::json!({"address": row.address}));
        self.inner.records.record(event).await?;
        tracing::warn!(target: "security", agent = %agent, address = %row.address, key = %actor, "wallet key exported");
        Ok(ExportedWallet { address: row.address, private_key: wallet.export_hex().to_string() })
    }

    pub(super) async fn wallet_row(&self, agent: &AgentId) -> Result<WalletRow> {
        if let Some(row) = self.inner.wallets.get(agent) {
            return Ok(row);
        }
        let row = self.inner.records.wallet(agent).await?;
        let row = row.ok_or_else(|| {
            Error::coded(
                ErrorCode::NoWallet,
                format!("agent {agent} has no wallet: POST /v1/agents/{agent}/wallet creates one"),
            )
        })?;
        self.inner.wallets.insert(agent.clone(), row.clone());
        Ok(row)
    }
}

pub(super) fn wallet_view(row: &WalletRow) -> WalletView {
    WalletView {
        agent_id: row.agent_id.clone(),
        address: row.address.clone(),
        created_at: jiff::Timestamp::from_millisecond(row.created_at).unwrap_or_default(),
    }
}
