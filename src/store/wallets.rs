//! Agents' wallets: the address and the sealed key. Opening the key is `rails::usdc::wallet`'s job.

use diesel::prelude::*;

use super::DbConnection;
use super::schema::wallets;
use crate::domain::ids::AgentId;
use crate::error::Result;

#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Insertable)]
#[diesel(table_name = wallets)]
pub struct WalletRow {
    pub agent_id: String,
    pub address: String,
    pub sealed_key: String,
    pub created_at: i64,
}

pub fn find(conn: &mut DbConnection, agent: &AgentId) -> Result<Option<WalletRow>> {
    Ok(wallets::table.find(agent.as_str()).select(WalletRow::as_select()).get_result(conn).optional()?)
}

/// Inserts the wallet unless the agent has one; returns the agent's wallet either way, and
/// whether it is this one. A concurrent insert by another process fails as a unique violation.
pub fn insert_or_get(conn: &mut DbConnection, row: &WalletRow) -> Result<(WalletRow, bool)> {
    if let Some(existing) = find(conn, &AgentId::from_stored(row.agent_id.clone()))? {
        return Ok((existing, false));
    }
    diesel::insert_into(wallets::table).values(row).execute(conn)?;
    Ok((row.clone(), true))
}

/// Every wallet: who it belongs to and its address (the sealed keys stay where they are).
pub fn addresses(conn: &mut DbConnection) -> Result<Vec<(String, String)>> {
    Ok(wallets::table.select((wallets::agent_id, wallets::address)).order(wallets::agent_id).load(conn)?)
}
