//! Deposits read on the chain, each credited once, and how far each network has been read.

use diesel::prelude::*;

use super::DbConnection;
use super::schema::{chain_cursors, chain_deposits};
use crate::error::Result;

#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Insertable)]
#[diesel(table_name = chain_deposits)]
#[diesel(treat_none_as_default_value = false)]
pub struct DepositRow {
    pub network: String,
    pub tx_hash: String,
    pub log_index: i64,
    pub block_number: i64,
    pub block_hash: String,
    pub token: String,
    pub from_address: String,
    /// The agent's wallet it went into.
    pub address: String,
    pub agent_id: String,
    /// In the token's atomic units, as a decimal.
    pub value: String,
    /// What was credited, in cents of `currency`: the value floored (0 for dust).
    pub amount: i64,
    pub currency: String,
    /// The agent's side; None when only the treasury was credited.
    pub transfer_id: Option<String>,
    /// The treasury's deposit; None for dust.
    pub treasury_transfer_id: Option<String>,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Insertable)]
#[diesel(table_name = chain_cursors)]
pub struct CursorRow {
    pub network: String,
    /// The last confirmed block read.
    pub block_number: i64,
    pub block_hash: String,
    pub updated_at: i64,
}

pub fn find(conn: &mut DbConnection, network: &str, tx_hash: &str, log_index: i64) -> Result<Option<DepositRow>> {
    Ok(chain_deposits::table
        .find((network, tx_hash, log_index))
        .select(DepositRow::as_select())
        .get_result(conn)
        .optional()?)
}

pub fn insert(conn: &mut DbConnection, row: &DepositRow) -> Result<()> {
    diesel::insert_into(chain_deposits::table).values(row).execute(conn)?;
    Ok(())
}

/// Every deposit into the wallet on the network, oldest first.
pub fn into_wallet(conn: &mut DbConnection, address: &str, network: &str) -> Result<Vec<DepositRow>> {
    Ok(chain_deposits::table
        .filter(chain_deposits::address.eq(address))
        .filter(chain_deposits::network.eq(network))
        .order((chain_deposits::block_number, chain_deposits::log_index))
        .select(DepositRow::as_select())
        .load(conn)?)
}

pub fn cursor(conn: &mut DbConnection, network: &str) -> Result<Option<CursorRow>> {
    Ok(chain_cursors::table.find(network).select(CursorRow::as_select()).get_result(conn).optional()?)
}

pub fn save_cursor(conn: &mut DbConnection, row: &CursorRow) -> Result<()> {
    let changes = (
        chain_cursors::block_number.eq(row.block_number),
        chain_cursors::block_hash.eq(&row.block_hash),
        chain_cursors::updated_at.eq(row.updated_at),
    );
    match conn {
        DbConnection::Postgresql(pg) => diesel::insert_into(chain_cursors::table)
            .values(row)
            .on_conflict(chain_cursors::network)
            .do_update()
            .set(changes)
            .execute(pg)?,
        DbConnection::Sqlite(lite) => diesel::insert_into(chain_cursors::table)
            .values(row)
            .on_conflict(chain_cursors::network)
            .do_update()
            .set(changes)
            .execute(lite)?,
    };
    Ok(())
}
