//! Each currency's treasury on its row (its totals and its audit chain's end) and its journal.

use std::borrow::Cow;

use diesel::prelude::*;
use serde::Serialize;

use super::chain::{self, Chained};
use super::schema::{agents, transfers, treasuries, treasury_transfers};
use super::{DbConnection, corrupt};
use crate::audit::chain::Head;
use crate::domain::audit::RecordKind;
use crate::domain::ledger::{TransferKind, Treasury, TreasuryKind, treasury_chain};
use crate::domain::money::Currency;
use crate::error::Result;

/// A treasury as a transaction holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockedTreasury {
    pub currency: Currency,
    pub treasury: Treasury,
    pub chain: Head,
}

/// One movement of a treasury. Its content in the treasury's audit chain is this row as compact
/// JSON in this order, NULLs left out.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Insertable, Serialize)]
#[diesel(table_name = treasury_transfers)]
#[diesel(treat_none_as_default_value = false)]
pub struct TreasuryTransferRow {
    pub id: String,
    pub currency: String,
    /// The caller's idempotency key; for a movement with an agent, the agent's transfer id.
    pub external_id: String,
    pub kind: TreasuryKind,
    pub amount: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// The agent's side of the movement, in its transfers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transfer_id: Option<String>,
    /// A key id, or `spendgate` for a rule.
    pub actor: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What backs a deposit or where a withdrawal went (a wire, a transaction hash).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    pub created_at: i64,
    pub chain_n: i64,
}

impl Chained for TreasuryTransferRow {
    const KIND: RecordKind = RecordKind::TreasuryTransfer;
    fn record_id(&self) -> &str {
        &self.id
    }
    fn agent(&self) -> Cow<'_, str> {
        Cow::Owned(treasury_chain(&self.currency))
    }
    fn chain_n(&self) -> i64 {
        self.chain_n
    }
    fn set_chain_n(&mut self, n: i64) {
        self.chain_n = n;
    }
}

type Stored = (String, (i64, i64, i64, i64), i64, Option<String>);

macro_rules! columns {
    () => {
        (
            treasuries::currency,
            (treasuries::deposited, treasuries::withdrawn, treasuries::granted, treasuries::returned),
            treasuries::chain_length,
            treasuries::chain_head,
        )
    };
}

fn locked((code, (deposited, withdrawn, granted, returned), length, head): Stored) -> Result<LockedTreasury> {
    let currency = code.parse().map_err(|_| corrupt("treasury currency", &code))?;
    let chain = chain::head_of(&treasury_chain(&code), length, head.as_deref())?;
    Ok(LockedTreasury { currency, treasury: Treasury { deposited, withdrawn, granted, returned }, chain })
}

/// Locks these currencies' treasuries for the transaction (making any that does not exist yet),
/// in currency order: the ledger writer takes them after its agents, so no two transactions wait
/// on each other in a circle.
pub fn lock(conn: &mut DbConnection, currencies: &[Currency]) -> Result<Vec<LockedTreasury>> {
    let mut codes: Vec<&str> = currencies.iter().map(|c| c.code()).collect();
    codes.sort_unstable();
    codes.dedup();
    for code in &codes {
        let row = treasuries::currency.eq(*code);
        match conn {
            DbConnection::Postgresql(pg) => {
                diesel::insert_into(treasuries::table).values(row).on_conflict_do_nothing().execute(pg)?
            }
            DbConnection::Sqlite(lite) => diesel::insert_or_ignore_into(treasuries::table).values(row).execute(lite)?,
        };
    }
    let query = treasuries::table.filter(treasuries::currency.eq_any(codes)).order(treasuries::currency);
    let found: Vec<Stored> = match conn {
        DbConnection::Postgresql(pg) => query.select(columns!()).for_update().load(pg)?,
        // The one writer connection holds the database for the transaction.
        DbConnection::Sqlite(lite) => query.select(columns!()).load(lite)?,
    };
    found.into_iter().map(locked).collect()
}

pub fn save(conn: &mut DbConnection, t: &LockedTreasury) -> Result<()> {
    let Treasury { deposited, withdrawn, granted, returned } = t.treasury;
    diesel::update(treasuries::table.find(t.currency.code()))
        .set((
            treasuries::deposited.eq(deposited),
            treasuries::withdrawn.eq(withdrawn),
            treasuries::granted.eq(granted),
            treasuries::returned.eq(returned),
            treasuries::chain_length.eq(t.chain.length),
            // NULL while the chain is empty, as on an agent's row.
            treasuries::chain_head.eq((t.chain.length > 0).then(|| hex::encode(t.chain.hash))),
        ))
        .execute(conn)?;
    Ok(())
}

/// Every treasury, by currency.
pub fn all(conn: &mut DbConnection) -> Result<Vec<LockedTreasury>> {
    let found: Vec<Stored> = treasuries::table.select(columns!()).order(treasuries::currency).load(conn)?;
    found.into_iter().map(locked).collect()
}

pub fn insert_transfer(conn: &mut DbConnection, row: &TreasuryTransferRow) -> Result<()> {
    diesel::insert_into(treasury_transfers::table).values(row).execute(conn)?;
    Ok(())
}

pub fn find_transfer(
    conn: &mut DbConnection,
    currency: &str,
    external_id: &str,
) -> Result<Option<TreasuryTransferRow>> {
    Ok(treasury_transfers::table
        .filter(treasury_transfers::currency.eq(currency))
        .filter(treasury_transfers::external_id.eq(external_id))
        .select(TreasuryTransferRow::as_select())
        .first(conn)
        .optional()?)
}

/// A treasury's journal after the cursor (an id), oldest first; all currencies when None.
pub fn transfers(
    conn: &mut DbConnection,
    currency: Option<&str>,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<TreasuryTransferRow>> {
    let mut query = treasury_transfers::table.select(TreasuryTransferRow::as_select()).into_boxed();
    if let Some(c) = currency {
        query = query.filter(treasury_transfers::currency.eq(c.to_owned()));
    }
    if let Some(a) = after {
        query = query.filter(treasury_transfers::id.gt(a.to_owned()));
    }
    Ok(query.order(treasury_transfers::id).limit(limit).load(conn)?)
}

/// What a treasury's journal adds up to, for the audit's check of its row.
pub fn sums(conn: &mut DbConnection, currency: &str) -> Result<Treasury> {
    let rows: Vec<(TreasuryKind, i64)> = treasury_transfers::table
        .filter(treasury_transfers::currency.eq(currency))
        .select((treasury_transfers::kind, treasury_transfers::amount))
        .load(conn)?;
    let mut t = Treasury::default();
    for (kind, amount) in rows {
        match kind {
            TreasuryKind::Deposit => t.deposited += amount,
            TreasuryKind::Withdrawal => t.withdrawn += amount,
            TreasuryKind::Fund | TreasuryKind::TopUp => t.granted += amount,
            TreasuryKind::Drain => t.returned += amount,
        }
    }
    Ok(t)
}

/// How many records a treasury's journal has.
pub fn count(conn: &mut DbConnection, currency: &str) -> Result<i64> {
    Ok(treasury_transfers::table.filter(treasury_transfers::currency.eq(currency)).count().get_result(conn)?)
}

/// What the agents of a currency were funded with, net of drains, as their rows hold it.
pub fn agents_funded(conn: &mut DbConnection, currency: &str) -> Result<i64> {
    let funded: Vec<i64> = agents::table.filter(agents::currency.eq(currency)).select(agents::funded).load(conn)?;
    Ok(funded.iter().sum())
}

/// What the agent's top-up rule moved since `since_ms`: (when, amount).
pub fn top_ups_since(conn: &mut DbConnection, agent_id: &str, since_ms: i64) -> Result<Vec<(i64, i64)>> {
    Ok(transfers::table
        .filter(transfers::agent_id.eq(agent_id))
        .filter(transfers::kind.eq(TransferKind::TopUp))
        .filter(transfers::created_at.ge(since_ms))
        .select((transfers::created_at, transfers::amount))
        .load(conn)?)
}

/// One currency's treasury, if it has one.
pub fn find(conn: &mut DbConnection, currency: &str) -> Result<Option<Treasury>> {
    let found: Option<Stored> = treasuries::table.find(currency).select(columns!()).get_result(conn).optional()?;
    found.map(locked).transpose().map(|t| t.map(|t| t.treasury))
}

/// Links a treasury's journal rows written before its chain began (the migration's opening
/// balances), in one transaction with its row locked.
pub fn adopt(conn: &mut DbConnection, currency: &Currency) -> Result<i64> {
    let Some(mut t) = lock(conn, std::slice::from_ref(currency))?.into_iter().next() else { return Ok(0) };
    if t.chain.length > 0 {
        return Ok(0);
    }
    let rows: Vec<TreasuryTransferRow> = treasury_transfers::table
        .filter(treasury_transfers::currency.eq(currency.code()))
        .filter(treasury_transfers::chain_n.eq(0))
        .order(treasury_transfers::id)
        .select(TreasuryTransferRow::as_select())
        .load(conn)?;
    for mut row in rows {
        let link = chain::link(&mut t.chain, &mut row);
        diesel::update(treasury_transfers::table.find(&row.id))
            .set(treasury_transfers::chain_n.eq(row.chain_n))
            .execute(conn)?;
        chain::insert_links(conn, &[link])?;
    }
    save(conn, &t)?;
    Ok(t.chain.length)
}

/// The treasuries whose chain has not begun.
pub fn unchained(conn: &mut DbConnection) -> Result<Vec<Currency>> {
    let codes: Vec<String> =
        treasuries::table.filter(treasuries::chain_length.eq(0)).select(treasuries::currency).load(conn)?;
    codes.into_iter().map(|c| c.parse().map_err(|_| corrupt("treasury currency", &c))).collect()
}
