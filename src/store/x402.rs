//! x402 payments: what was signed for which request, and how it ended.

use diesel::prelude::*;

use super::DbConnection;
use super::schema::x402_payments;
use crate::domain::ids::AgentId;
use crate::domain::ledger::{PaymentProtocol, PaymentStatus};
use crate::error::Result;

#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Insertable)]
#[diesel(table_name = x402_payments)]
#[diesel(treat_none_as_default_value = false)]
pub struct PaymentRow {
    pub id: String,
    pub agent_id: String,
    pub idempotency_key: String,
    pub request_hash: String,
    pub authorization_id: String,
    pub url: String,
    pub x402_version: i32,
    pub network: String,
    pub asset: String,
    pub pay_to: String,
    pub amount: String,
    pub payer: String,
    pub valid_before: i64,
    pub header_name: String,
    pub header_value: String,
    pub status: PaymentStatus,
    pub transaction_hash: Option<String>,
    pub error: Option<String>,
    pub response_status: Option<i32>,
    pub response_headers: Option<String>,
    pub response_body: Option<Vec<u8>>,
    pub created_at: i64,
    pub updated_at: i64,
    pub protocol: PaymentProtocol,
}

pub fn find_by_key(conn: &mut DbConnection, agent: &AgentId, key: &str) -> Result<Option<PaymentRow>> {
    Ok(x402_payments::table
        .filter(x402_payments::agent_id.eq(agent.as_str()))
        .filter(x402_payments::idempotency_key.eq(key))
        .select(PaymentRow::as_select())
        .get_result(conn)
        .optional()?)
}

pub fn find(conn: &mut DbConnection, agent: &AgentId, id: &str) -> Result<Option<PaymentRow>> {
    Ok(x402_payments::table
        .find(id)
        .filter(x402_payments::agent_id.eq(agent.as_str()))
        .select(PaymentRow::as_select())
        .get_result(conn)
        .optional()?)
}

/// The payments behind these authorizations (for the ledger's view of the USDC rail).
pub fn for_authorizations(conn: &mut DbConnection, ids: &[&str]) -> Result<Vec<PaymentRow>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    Ok(x402_payments::table
        .filter(x402_payments::authorization_id.eq_any(ids))
        .select(PaymentRow::as_select())
        .load(conn)?)
}

/// Inserts the payment unless one exists for its key; returns the stored one and whether it is
/// this. A concurrent insert by another process fails as a unique violation.
pub fn insert_or_get(conn: &mut DbConnection, row: &PaymentRow) -> Result<(PaymentRow, bool)> {
    let agent = AgentId::from_stored(row.agent_id.clone());
    if let Some(existing) = find_by_key(conn, &agent, &row.idempotency_key)? {
        return Ok((existing, false));
    }
    diesel::insert_into(x402_payments::table).values(row).execute(conn)?;
    Ok((row.clone(), true))
}

pub fn insert(conn: &mut DbConnection, row: &PaymentRow) -> Result<()> {
    diesel::insert_into(x402_payments::table).values(row).execute(conn)?;
    Ok(())
}

/// Marks a payment that was never sent as failed, so that no retry sends it.
pub fn fail_unsent(conn: &mut DbConnection, authorization_id: &str, why: &str, now_ms: i64) -> Result<()> {
    diesel::update(
        x402_payments::table
            .filter(x402_payments::authorization_id.eq(authorization_id))
            .filter(x402_payments::status.eq(PaymentStatus::Signed)),
    )
    .set((
        x402_payments::status.eq(PaymentStatus::Failed),
        x402_payments::error.eq(why),
        x402_payments::updated_at.eq(now_ms),
    ))
    .execute(conn)?;
    Ok(())
}

/// Records how the payment ended (or that it is still unknown), with the answer to replay.
pub fn update_outcome(conn: &mut DbConnection, row: &PaymentRow) -> Result<()> {
    diesel::update(x402_payments::table.find(&row.id))
        .set((
            x402_payments::status.eq(&row.status),
            x402_payments::transaction_hash.eq(&row.transaction_hash),
            x402_payments::error.eq(&row.error),
            x402_payments::response_status.eq(row.response_status),
            x402_payments::response_headers.eq(&row.response_headers),
            x402_payments::response_body.eq(&row.response_body),
            x402_payments::updated_at.eq(row.updated_at),
        ))
        .execute(conn)?;
    Ok(())
}

/// A payment's amount and where it stands, for what a wallet has signed away.
#[derive(Debug, Clone, PartialEq, Queryable, Selectable)]
#[diesel(table_name = x402_payments)]
pub struct SignedAmount {
    pub id: String,
    pub asset: String,
    /// In the asset's atomic units, as a decimal.
    pub amount: String,
    pub status: PaymentStatus,
    pub valid_before: i64,
    pub transaction_hash: Option<String>,
    pub created_at: i64,
}

/// Every payment the wallet signed on the network, oldest first.
pub fn signed_by(conn: &mut DbConnection, payer: &str, network: &str) -> Result<Vec<SignedAmount>> {
    Ok(x402_payments::table
        .filter(x402_payments::payer.eq(payer))
        .filter(x402_payments::network.eq(network))
        .order(x402_payments::created_at)
        .select(SignedAmount::as_select())
        .load(conn)?)
}

/// What the wallet's payments of `asset` that may still move money add up to (atomic units):
/// signed (or of unknown outcome) and still valid at `now_s`, so that the chain may yet settle
/// them. Summed by the database: a busy wallet has thousands in flight.
pub fn unsettled_sum(conn: &mut DbConnection, payer: &str, network: &str, asset: &str, now_s: i64) -> Result<i64> {
    // Stored amounts are decimal strings of what the ledger approved: far below 2^63 atomic units.
    let sum = diesel::dsl::sql::<diesel::sql_types::BigInt>("CAST(COALESCE(SUM(CAST(amount AS BIGINT)), 0) AS BIGINT)");
    Ok(x402_payments::table
        .filter(x402_payments::payer.eq(payer))
        .filter(x402_payments::status.eq_any([PaymentStatus::Signed, PaymentStatus::Unknown]))
        .filter(x402_payments::valid_before.gt(now_s))
        .filter(x402_payments::network.eq(network))
        .filter(x402_payments::asset.eq(asset))
        .select(sum)
        .get_result(conn)?)
}
