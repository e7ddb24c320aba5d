//! The ledger's tables: authorizations (holds and declined attempts), transfers (every movement
//! after a hold, and funding), and the balance columns of each agent's row.

use diesel::prelude::*;
use diesel::sql_types::BigInt;
use serde::Serialize;

use super::prepared::{ByExternalKeys, InsertAuthorizations, SaveLedger, SaveLedgers};
use super::schema::{agents, authorizations, transfers};
use super::{DbConnection, chain};
use crate::audit::chain::Head;
use crate::domain::authorization::{NamedBy, Rail};
use crate::domain::ids::{AgentId, AuthorizationId};
pub use crate::domain::ledger::Balance;
use crate::domain::ledger::{HoldStatus, Source, TransferKind};
use crate::error::Result;

#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Insertable, Serialize)]
#[diesel(table_name = authorizations)]
// NULL for None (not DEFAULT): the INSERT is then one cacheable prepared statement.
#[diesel(treat_none_as_default_value = false)]
pub struct AuthorizationRow {
    pub id: String,
    pub source: Source,
    pub external_id: String,
    pub agent_id: String,
    pub card_id: Option<String>,
    pub rail: Rail,
    pub status: HoldStatus,
    pub reason: Option<String>,
    pub rule: Option<String>,
    pub amount: i64,
    pub currency: String,
    pub cap_amount: i64,
    pub cap_currency: String,
    pub card_amount: i64,
    pub card_currency: String,
    pub fx_rate: Option<String>,
    pub fx_date: Option<String>,
    pub held: i64,
    pub posted: i64,
    pub counted: i64,
    pub counted_card: i64,
    pub refunded: i64,
    pub merchant_id: Option<String>,
    pub merchant_name: String,
    pub mcc: Option<String>,
    pub country: Option<String>,
    pub trace_id: Option<String>,
    pub seq: i64,
    pub authorized_at: i64,
    pub updated_at: i64,
    /// The approval whose allowance let this authorization through.
    pub approval_id: Option<String>,
    /// `ecb`, `bundled` or `extra`: where `fx_rate` came from.
    pub fx_source: Option<String>,
    /// The audit chain's link that this write of the row made (`store::chain`).
    pub chain_n: i64,
    // What a USDC payment's request named besides its price. Left out of the chain's content when
    // NULL, so that rows written before these columns hash as they did.
    /// The CAIP-10 account paid, and who named it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recipient: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recipient_named_by: Option<NamedBy>,
    /// The ceiling the caller set on this one request, in the agent's currency.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_amount: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Insertable, Serialize)]
#[diesel(table_name = transfers)]
// NULL for None (not DEFAULT): the INSERT is then one cacheable prepared statement.
#[diesel(treat_none_as_default_value = false)]
pub struct TransferRow {
    pub id: String,
    pub external_id: String,
    pub agent_id: String,
    pub authorization_id: Option<String>,
    pub card_id: Option<String>,
    pub trace_id: Option<String>,
    pub kind: TransferKind,
    pub amount: i64,
    pub currency: String,
    pub created_at: i64,
    /// The audit chain's link that wrote it.
    pub chain_n: i64,
    /// Who moved money between the treasury and the agent (a key id, or `spendgate` for a rule),
    /// and why. Left out of the chain's content when NULL, as on every transfer of a hold.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// An agent's ledger state as its row holds it, read while the row is locked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentLedger {
    pub seq: i64,
    /// How many agents have it as their parent: its spend windows then span its subtree.
    pub children: i64,
    /// Deactivated: what its holds release is drained.
    pub deactivated: bool,
    pub config_version: i64,
    pub currency: String,
    pub balance: Balance,
    /// The end of the agent's audit chain, which each record the transaction writes extends.
    pub chain: Head,
}

/// Reads the ledger state of the agents a transaction is about to change, numbering the change:
/// each returned `seq` is the stored one plus one, and `save_ledgers` must write it back. On
/// PostgreSQL the rows stay locked until the transaction ends, taken in id order in one round trip
/// (so two processes never deadlock); on SQLite the one writer holds the database, and one cached
/// SELECT per agent costs less than parsing a new IN list.
pub fn lock_agents(conn: &mut DbConnection, ids: &[AgentId]) -> Result<Vec<(AgentId, AgentLedger)>> {
    let columns = (
        agents::id,
        (
            agents::ledger_seq,
            agents::config_version,
            agents::currency,
            (agents::funded, agents::refunded, agents::held, agents::spent),
            agents::chain_length,
            agents::chain_head,
            agents::children,
            agents::deactivated_at,
        ),
    );
    type Stored = (i64, i64, String, Balance, i64, Option<String>, i64, Option<i64>);
    let found: Vec<(String, Stored)> = match conn {
        DbConnection::Postgresql(pg) => {
            let ids: Vec<&str> = ids.iter().map(AgentId::as_str).collect();
            agents::table.filter(agents::id.eq_any(ids)).order(agents::id).select(columns).for_update().load(pg)?
        }
        DbConnection::Sqlite(lite) => {
            let mut found = Vec::with_capacity(ids.len());
            for id in ids {
                found.extend(agents::table.find(id.as_str()).select(columns).get_result(lite).optional()?);
            }
            found
        }
    };
    found
        .into_iter()
        .map(|(id, (seq, config_version, currency, balance, length, head, children, deactivated_at))| {
            let chain = chain::head_of(&id, length, head.as_deref())?;
            let deactivated = deactivated_at.is_some();
            let ledger = AgentLedger { seq: seq + 1, children, deactivated, config_version, currency, balance, chain };
            Ok((AgentId::from_stored(id), ledger))
        })
        .collect()
}

/// Writes what a transaction made of each agent's ledger: its change number, its balance and its
/// chain's end.
pub fn save_ledgers<'a>(
    conn: &mut DbConnection,
    ledgers: impl Iterator<Item = (&'a AgentId, &'a AgentLedger)>,
) -> Result<()> {
    match conn {
        // One round trip for all of them.
        DbConnection::Postgresql(pg) => {
            SaveLedgers::new(ledgers).execute(pg)?;
        }
        DbConnection::Sqlite(lite) => {
            for (id, l) in ledgers {
                SaveLedger { id: id.as_str(), ledger: l, head: hex::encode(l.chain.hash) }.execute(lite)?;
            }
        }
    }
    Ok(())
}

impl<DB: diesel::backend::Backend> Queryable<(BigInt, BigInt, BigInt, BigInt), DB> for Balance
where
    (i64, i64, i64, i64): Queryable<(BigInt, BigInt, BigInt, BigInt), DB>,
{
    type Row = <(i64, i64, i64, i64) as Queryable<(BigInt, BigInt, BigInt, BigInt), DB>>::Row;

    fn build(row: Self::Row) -> diesel::deserialize::Result<Self> {
        let (funded, refunded, held, spent) = <(i64, i64, i64, i64)>::build(row)?;
        Ok(Balance { funded, refunded, held, spent })
    }
}

pub fn balance(conn: &mut DbConnection, agent: &AgentId) -> Result<Option<(String, Balance)>> {
    Ok(agents::table
        .find(agent.as_str())
        .select((agents::currency, (agents::funded, agents::refunded, agents::held, agents::spent)))
        .get_result(conn)
        .optional()?)
}

/// The approved authorizations written after ledger change `seq` of each given agent (all of
/// them for -1): on PostgreSQL, what other processes changed since a book last looked, through
/// `authorizations_agent_seq`.
pub fn approved_since(conn: &mut DbConnection, since: &[(AgentId, i64)]) -> Result<Vec<AuthorizationRow>> {
    let mut found = Vec::new();
    match conn {
        // One round trip: (agent = a1 AND seq > s1) OR (agent = a2 AND seq > s2) …
        DbConnection::Postgresql(pg) => {
            let mut query = authorizations::table.select(AuthorizationRow::as_select()).into_boxed();
            for (agent, seq) in since {
                query = query.or_filter(authorizations::agent_id.eq(agent.as_str()).and(authorizations::seq.gt(*seq)));
            }
            if !since.is_empty() {
                found = query.load(pg)?;
                found.retain(|row| row.status != HoldStatus::Declined);
            }
        }
        DbConnection::Sqlite(lite) => {
            for (agent, seq) in since {
                found.extend(approved_since_on_sqlite(agent, *seq).load(lite)?);
            }
        }
    }
    Ok(found)
}

/// One agent's approved rows changed after `seq`, on SQLite: read through `authorizations_agent`
/// (SQLite has no index by seq, since only a book's first load, `seq` = -1, asks).
pub(super) fn approved_since_on_sqlite(
    agent: &AgentId,
    seq: i64,
) -> authorizations::BoxedQuery<
    '_,
    diesel::sqlite::Sqlite,
    diesel::dsl::SqlTypeOf<diesel::dsl::AsSelect<AuthorizationRow, diesel::sqlite::Sqlite>>,
> {
    authorizations::table
        .filter(authorizations::agent_id.eq(agent.as_str()))
        .filter(authorizations::seq.gt(seq))
        .filter(authorizations::status.ne(HoldStatus::Declined))
        .select(AuthorizationRow::as_select())
        .into_boxed()
}

/// The authorizations recorded under any of these (source, external id) keys.
pub fn find_by_external(conn: &mut DbConnection, keys: &[(Source, &str)]) -> Result<Vec<AuthorizationRow>> {
    match conn {
        // In process, one cached lookup per key costs less than parsing a new IN list per batch.
        DbConnection::Sqlite(_) => {
            let mut found = Vec::new();
            for (source, external_id) in keys {
                found.extend(find_external(conn, *source, external_id)?);
            }
            Ok(found)
        }
        // Over the network, one round trip. Matching both columns of the unique key lets the
        // planner count on one row per key even before the table has statistics; by external id
        // alone it guessed a fraction of the table per id and scanned a young table whole.
        DbConnection::Postgresql(pg) => Ok(authorizations::table
            .filter(ByExternalKeys::new(keys))
            .select(AuthorizationRow::as_select())
            .load(pg)?),
    }
}

/// The authorization a processor knows by its own id. On each backend's own connection: through
/// `DbConnection`, diesel writes out a statement's whole SQL text on every execution, cached or
/// not, to collect its binds (and this is one lookup per authorization).
pub fn find_external(conn: &mut DbConnection, source: Source, external_id: &str) -> Result<Option<AuthorizationRow>> {
    let by_key = authorizations::table
        .filter(authorizations::external_id.eq(external_id))
        .filter(authorizations::source.eq(source));
    let found = match conn {
        DbConnection::Sqlite(lite) => by_key.select(AuthorizationRow::as_select()).get_result(lite),
        DbConnection::Postgresql(pg) => by_key.select(AuthorizationRow::as_select()).get_result(pg),
    };
    Ok(found.optional()?)
}

pub fn find(conn: &mut DbConnection, id: &str) -> Result<Option<AuthorizationRow>> {
    Ok(authorizations::table.find(id).select(AuthorizationRow::as_select()).get_result(conn).optional()?)
}

pub fn insert_authorizations(conn: &mut DbConnection, rows: &[AuthorizationRow]) -> Result<()> {
    match conn {
        // One round trip for the lot.
        DbConnection::Postgresql(pg) if !rows.is_empty() => {
            InsertAuthorizations::new(rows).execute(pg)?;
        }
        DbConnection::Postgresql(_) => {}
        // In process, one cached statement per row costs less than parsing a new one per batch.
        DbConnection::Sqlite(lite) => {
            for row in rows {
                diesel::insert_into(authorizations::table).values(row).execute(lite)?;
            }
        }
    }
    Ok(())
}

/// Writes an authorization's new amounts and status (after a post, void or expiry, or a processor's
/// own verdict overriding spendgate's), and the chain link of this write.
pub fn update_amounts(conn: &mut DbConnection, row: &AuthorizationRow) -> Result<()> {
    diesel::update(authorizations::table.find(&row.id))
        .set((
            authorizations::status.eq(&row.status),
            authorizations::reason.eq(&row.reason),
            authorizations::rule.eq(&row.rule),
            authorizations::cap_amount.eq(row.cap_amount),
            authorizations::card_amount.eq(row.card_amount),
            authorizations::held.eq(row.held),
            authorizations::posted.eq(row.posted),
            authorizations::counted.eq(row.counted),
            authorizations::counted_card.eq(row.counted_card),
            authorizations::refunded.eq(row.refunded),
            authorizations::seq.eq(row.seq),
            authorizations::updated_at.eq(row.updated_at),
            authorizations::approval_id.eq(&row.approval_id),
            authorizations::chain_n.eq(row.chain_n),
        ))
        .execute(conn)?;
    Ok(())
}

pub fn find_transfers(conn: &mut DbConnection, agent: &AgentId, external_id: &str) -> Result<Vec<TransferRow>> {
    // A capture can make up to three transfers: `<id>` (post), `<id>:excess` and `<id>:release`.
    let ids = [external_id.to_owned(), format!("{external_id}:excess"), format!("{external_id}:release")];
    Ok(transfers::table
        .filter(transfers::agent_id.eq(agent.as_str()))
        .filter(transfers::external_id.eq_any(ids))
        .select(TransferRow::as_select())
        .order(transfers::id)
        .load(conn)?)
}

pub fn insert_transfer(conn: &mut DbConnection, row: &TransferRow) -> Result<()> {
    diesel::insert_into(transfers::table).values(row).execute(conn)?;
    Ok(())
}

/// Holds still pending that were authorized before `before_ms`, oldest first.
pub fn pending_before(conn: &mut DbConnection, before_ms: i64, limit: i64) -> Result<Vec<AuthorizationRow>> {
    Ok(authorizations::table
        .filter(authorizations::status.eq(HoldStatus::Pending))
        .filter(authorizations::authorized_at.lt(before_ms))
        .order(authorizations::authorized_at)
        .limit(limit)
        .select(AuthorizationRow::as_select())
        .load(conn)?)
}

/// An agent's approved authorizations that still count in some window (`counted` > 0), authorized
/// at or after `since_ms` (all of them with None), in the order they were written.
pub fn counting_since(
    conn: &mut DbConnection,
    agent: &AgentId,
    since_ms: Option<i64>,
) -> Result<Vec<AuthorizationRow>> {
    let mut q = authorizations::table
        .filter(authorizations::agent_id.eq(agent.as_str().to_owned()))
        .filter(authorizations::status.ne(HoldStatus::Declined))
        .filter(authorizations::counted.gt(0))
        .select(AuthorizationRow::as_select())
        .order(authorizations::seq)
        .into_boxed();
    if let Some(since) = since_ms {
        // The id floor lets the (agent_id, id) index skip what is older.
        let floor = super::reports::id_at(AuthorizationId::PREFIX, since.saturating_sub(super::reports::ID_MARGIN_MS));
        q = q.filter(authorizations::id.ge(floor)).filter(authorizations::authorized_at.ge(since));
    }
    Ok(q.load(conn)?)
}

/// What the agent's authorizations made under an approval (a mandate) count now, held and posted:
/// read from the approval's creation on, by the (agent_id, id) index.
pub fn counted_under(conn: &mut DbConnection, agent: &AgentId, approval_id: &str, since_ms: i64) -> Result<i64> {
    let floor = super::reports::id_at(AuthorizationId::PREFIX, since_ms.saturating_sub(super::reports::ID_MARGIN_MS));
    let counted: Vec<i64> = authorizations::table
        .filter(authorizations::agent_id.eq(agent.as_str()))
        .filter(authorizations::id.ge(floor))
        .filter(authorizations::approval_id.eq(approval_id))
        .filter(authorizations::status.ne(HoldStatus::Declined))
        .select(authorizations::counted)
        .load(conn)?;
    Ok(counted.iter().sum())
}

/// What the ledger listing filters by.
#[derive(Debug, Clone, Default)]
pub struct LedgerFilter {
    pub card_id: Option<String>,
    pub trace_id: Option<String>,
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
}

/// An agent's authorizations, oldest first, after the cursor (an authorization id).
pub fn list_authorizations(
    conn: &mut DbConnection,
    agent: &AgentId,
    f: &LedgerFilter,
    cursor: Option<&str>,
    limit: i64,
) -> Result<Vec<AuthorizationRow>> {
    let mut q = authorizations::table
        .filter(authorizations::agent_id.eq(agent.as_str().to_owned()))
        .select(AuthorizationRow::as_select())
        .order(authorizations::id)
        .limit(limit)
        .into_boxed();
    if let Some(c) = cursor {
        q = q.filter(authorizations::id.gt(c.to_owned()));
    }
    if let Some(card) = &f.card_id {
        q = q.filter(authorizations::card_id.eq(card.clone()));
    }
    if let Some(trace) = &f.trace_id {
        q = q.filter(authorizations::trace_id.eq(trace.clone()));
    }
    if let Some(from) = f.from_ms {
        q = q.filter(authorizations::authorized_at.ge(from));
    }
    if let Some(to) = f.to_ms {
        q = q.filter(authorizations::authorized_at.lt(to));
    }
    Ok(q.load(conn)?)
}

/// An agent's transfers, oldest first, after the cursor (a transfer id).
pub fn list_transfers(
    conn: &mut DbConnection,
    agent: &AgentId,
    f: &LedgerFilter,
    cursor: Option<&str>,
    limit: i64,
) -> Result<Vec<TransferRow>> {
    let mut q = transfers::table
        .filter(transfers::agent_id.eq(agent.as_str().to_owned()))
        .select(TransferRow::as_select())
        .order(transfers::id)
        .limit(limit)
        .into_boxed();
    if let Some(c) = cursor {
        q = q.filter(transfers::id.gt(c.to_owned()));
    }
    if let Some(card) = &f.card_id {
        q = q.filter(transfers::card_id.eq(card.clone()));
    }
    if let Some(trace) = &f.trace_id {
        q = q.filter(transfers::trace_id.eq(trace.clone()));
    }
    if let Some(from) = f.from_ms {
        q = q.filter(transfers::created_at.ge(from));
    }
    if let Some(to) = f.to_ms {
        q = q.filter(transfers::created_at.lt(to));
    }
    Ok(q.load(conn)?)
}

/// The agent's config_version, read before the rows it versions (see the snapshot cache).
pub fn config_version(conn: &mut DbConnection, agent: &AgentId) -> Result<Option<i64>> {
    Ok(agents::table.find(agent.as_str()).select(agents::config_version).get_result(conn).optional()?)
}
