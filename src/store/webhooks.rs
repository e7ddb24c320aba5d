//! Events out: the endpoints, how far the outbox has read each agent's audit chain, and the
//! deliveries it queued.

use std::collections::HashMap;

use diesel::prelude::*;

use super::DbConnection;
use super::chain;
use super::events::EventRow;
use super::ledger::AuthorizationRow;
use super::schema::{agents, authorizations, events, webhook_cursors, webhook_deliveries, webhook_endpoints};
use crate::domain::audit::RecordKind;
use crate::domain::event::Event;
use crate::domain::webhook::{DeliveryStatus, EndpointFormat, EventType};
use crate::error::Result;

#[derive(Debug, Clone, PartialEq, Eq, Insertable, Queryable, Selectable)]
#[diesel(table_name = webhook_endpoints)]
pub struct EndpointRow {
    pub id: String,
    pub url: String,
    /// Event types, comma-separated.
    pub events: String,
    pub secret: String,
    pub description: Option<String>,
    pub created_by: Option<String>,
    pub created_at: i64,
    pub deleted_at: Option<i64>,
    pub format: EndpointFormat,
}

pub fn insert_endpoint(conn: &mut DbConnection, row: &EndpointRow) -> Result<()> {
    diesel::insert_into(webhook_endpoints::table).values(row).execute(conn)?;
    Ok(())
}

/// The endpoints not deleted, oldest first.
pub fn endpoints(conn: &mut DbConnection) -> Result<Vec<EndpointRow>> {
    Ok(webhook_endpoints::table
        .filter(webhook_endpoints::deleted_at.is_null())
        .order(webhook_endpoints::id)
        .select(EndpointRow::as_select())
        .load(conn)?)
}

/// Deletes an endpoint (it stays, marked, for its deliveries' sake): false if there was none.
pub fn delete_endpoint(conn: &mut DbConnection, id: &str, now_ms: i64) -> Result<bool> {
    let n = diesel::update(webhook_endpoints::table.find(id).filter(webhook_endpoints::deleted_at.is_null()))
        .set(webhook_endpoints::deleted_at.eq(now_ms))
        .execute(conn)?;
    Ok(n == 1)
}

/// Agents whose audit chain has grown past the outbox's cursor: (agent, cursor).
pub fn behind(conn: &mut DbConnection, limit: i64) -> Result<Vec<(String, i64)>> {
    let rows: Vec<(String, i64, Option<i64>)> = agents::table
        .left_join(webhook_cursors::table.on(webhook_cursors::agent_id.eq(agents::id)))
        .filter(
            webhook_cursors::n
                .nullable()
                .is_null()
                .or(agents::chain_length.nullable().gt(webhook_cursors::n.nullable())),
        )
        .filter(agents::chain_length.gt(0))
        .select((agents::id, agents::chain_length, webhook_cursors::n.nullable()))
        .order(agents::id)
        .limit(limit)
        .load(conn)?;
    Ok(rows.into_iter().map(|(agent, _, n)| (agent, n.unwrap_or(0))).collect())
}

/// Puts every agent's cursor at the head of its chain: for the first endpoint, which gets only what
/// happens after it is made, so the outbox need not read every chain from its start to learn that.
pub fn skip_to_heads(conn: &mut DbConnection) -> Result<()> {
    let greater = match conn {
        DbConnection::Postgresql(_) => "GREATEST",
        DbConnection::Sqlite(_) => "MAX",
    };
    diesel::sql_query(format!(
        "INSERT INTO webhook_cursors (agent_id, n) SELECT id, chain_length FROM agents WHERE chain_length > 0 \
         ON CONFLICT (agent_id) DO UPDATE SET n = {greater}(webhook_cursors.n, excluded.n)"
    ))
    .execute(conn)?;
    Ok(())
}

/// Moves the agent's cursor from `from` to `to`, unless another node moved it first (false): the
/// events were read outside this transaction, and only the node that moves the cursor queues them.
pub fn advance_cursor(conn: &mut DbConnection, agent_id: &str, from: i64, to: i64) -> Result<bool> {
    if from == 0 {
        let start = (webhook_cursors::agent_id.eq(agent_id), webhook_cursors::n.eq(to));
        let inserted = match conn {
            DbConnection::Postgresql(pg) => {
                diesel::insert_into(webhook_cursors::table).values(start).on_conflict_do_nothing().execute(pg)?
            }
            DbConnection::Sqlite(lite) => {
                diesel::insert_into(webhook_cursors::table).values(start).on_conflict_do_nothing().execute(lite)?
            }
        };
        if inserted == 1 {
            return Ok(true);
        }
    }
    let moved = diesel::update(webhook_cursors::table.find(agent_id).filter(webhook_cursors::n.eq(from)))
        .set(webhook_cursors::n.eq(to))
        .execute(conn)?;
    Ok(moved == 1)
}

/// A record of an agent's chain, as far as events out are concerned.
pub enum Linked {
    Authorization(Box<AuthorizationRow>),
    Event(Event),
    /// A transfer, or a record no longer there (the audit verification reports that).
    Other,
}

/// The agent's links after `after`, in order, each with its record as stored now.
pub fn linked_after(conn: &mut DbConnection, agent_id: &str, after: i64, limit: i64) -> Result<Vec<(i64, Linked)>> {
    let links = chain::links(conn, agent_id, after, limit)?;
    let ids = |kind: RecordKind| -> Vec<String> {
        links.iter().filter(|l| l.kind == kind).map(|l| l.record_id.clone()).collect()
    };
    let auths: HashMap<String, AuthorizationRow> = authorizations::table
        .filter(authorizations::id.eq_any(ids(RecordKind::Authorization)))
        .select(AuthorizationRow::as_select())
        .load::<AuthorizationRow>(conn)?
        .into_iter()
        .map(|a| (a.id.clone(), a))
        .collect();
    let rows: Vec<EventRow> =
        events::table.filter(events::id.eq_any(ids(RecordKind::Event))).select(EventRow::as_select()).load(conn)?;
    let evts: HashMap<String, Event> =
        rows.into_iter().map(|e| e.into_domain().map(|e| (e.id.to_string(), e))).collect::<Result<_>>()?;
    Ok(links
        .iter()
        .map(|l| {
            // A record linked twice in the page (an authorization written again) is a copy each time.
            let linked = match l.kind {
                RecordKind::Authorization => {
                    auths.get(&l.record_id).map_or(Linked::Other, |a| Linked::Authorization(Box::new(a.clone())))
                }
                RecordKind::Event => evts.get(&l.record_id).map_or(Linked::Other, |e| Linked::Event(e.clone())),
                RecordKind::Transfer | RecordKind::TreasuryTransfer => Linked::Other,
            };
            (l.n, linked)
        })
        .collect())
}

#[derive(Debug, Clone, PartialEq, Eq, Insertable, Queryable, Selectable)]
#[diesel(table_name = webhook_deliveries)]
// NULL for None (not DEFAULT): SQLite then takes many rows in one INSERT.
#[diesel(treat_none_as_default_value = false)]
pub struct DeliveryRow {
    pub id: String,
    pub endpoint_id: String,
    pub event_id: String,
    pub event_type: EventType,
    pub payload: String,
    pub status: DeliveryStatus,
    pub attempts: i32,
    pub next_attempt_at: i64,
    pub last_error: Option<String>,
    pub created_at: i64,
    pub delivered_at: Option<i64>,
}

/// Queues deliveries; one already queued for the same endpoint and event stays as it is.
pub fn enqueue(conn: &mut DbConnection, rows: &[DeliveryRow]) -> Result<()> {
    // Some hundred rows a statement: within SQLite's limit of bound values.
    for rows in rows.chunks(200) {
        let insert = diesel::insert_into(webhook_deliveries::table).values(rows);
        match conn {
            DbConnection::Postgresql(pg) => insert.on_conflict_do_nothing().execute(pg)?,
            DbConnection::Sqlite(lite) => insert.on_conflict_do_nothing().execute(lite)?,
        };
    }
    Ok(())
}

/// A delivery due now, with where it goes, how, and the secret that signs it.
pub struct Due {
    pub delivery: DeliveryRow,
    pub url: String,
    pub secret: String,
    pub format: EndpointFormat,
}

/// Pending deliveries due by `now_ms`, oldest first, of endpoints not deleted.
pub fn due(conn: &mut DbConnection, now_ms: i64, limit: i64) -> Result<Vec<Due>> {
    let rows: Vec<(DeliveryRow, String, String, EndpointFormat)> = webhook_deliveries::table
        .inner_join(webhook_endpoints::table.on(webhook_endpoints::id.eq(webhook_deliveries::endpoint_id)))
        .filter(webhook_deliveries::status.eq(DeliveryStatus::Pending))
        .filter(webhook_deliveries::next_attempt_at.le(now_ms))
        .filter(webhook_endpoints::deleted_at.is_null())
        .order(webhook_deliveries::next_attempt_at)
        .limit(limit)
        .select((
            DeliveryRow::as_select(),
            webhook_endpoints::url,
            webhook_endpoints::secret,
            webhook_endpoints::format,
        ))
        .load(conn)?;
    Ok(rows.into_iter().map(|(delivery, url, secret, format)| Due { delivery, url, secret, format }).collect())
}

/// How many deliveries wait for an attempt (or their next one).
pub fn pending_count(conn: &mut DbConnection) -> Result<i64> {
    Ok(webhook_deliveries::table
        .filter(webhook_deliveries::status.eq(DeliveryStatus::Pending))
        .count()
        .get_result(conn)?)
}

/// Takes a due delivery for one attempt, until `lease_until`: false when another sender (another
/// node) took it first.
pub fn claim(conn: &mut DbConnection, row: &DeliveryRow, lease_until: i64) -> Result<bool> {
    let n = diesel::update(
        webhook_deliveries::table
            .find(&row.id)
            .filter(webhook_deliveries::status.eq(DeliveryStatus::Pending))
            .filter(webhook_deliveries::next_attempt_at.eq(row.next_attempt_at)),
    )
    .set(webhook_deliveries::next_attempt_at.eq(lease_until))
    .execute(conn)?;
    Ok(n == 1)
}

/// Deliveries whose attempt succeeded, in one statement.
pub fn delivered(conn: &mut DbConnection, ids: &[String], now_ms: i64) -> Result<()> {
    for ids in ids.chunks(500) {
        diesel::update(webhook_deliveries::table.filter(webhook_deliveries::id.eq_any(ids)))
            .set((
                webhook_deliveries::attempts.eq(webhook_deliveries::attempts + 1),
                webhook_deliveries::status.eq(DeliveryStatus::Delivered),
                webhook_deliveries::next_attempt_at.eq(now_ms),
                webhook_deliveries::last_error.eq(None::<String>),
                webhook_deliveries::delivered_at.eq(Some(now_ms)),
            ))
            .execute(conn)?;
    }
    Ok(())
}

/// A failed attempt's outcome: the next attempt's time, or failed for good.
pub fn attempted(
    conn: &mut DbConnection,
    id: &str,
    attempts: i32,
    status: DeliveryStatus,
    next_attempt_at: i64,
    error: &str,
) -> Result<()> {
    diesel::update(webhook_deliveries::table.find(id))
        .set((
            webhook_deliveries::attempts.eq(attempts),
            webhook_deliveries::status.eq(status),
            webhook_deliveries::next_attempt_at.eq(next_attempt_at),
            webhook_deliveries::last_error.eq(error),
        ))
        .execute(conn)?;
    Ok(())
}

/// An endpoint's deliveries, newest first; None for an endpoint never made.
pub fn deliveries(conn: &mut DbConnection, endpoint_id: &str, limit: i64) -> Result<Option<Vec<DeliveryRow>>> {
    let known: i64 = webhook_endpoints::table.filter(webhook_endpoints::id.eq(endpoint_id)).count().get_result(conn)?;
    if known == 0 {
        return Ok(None);
    }
    Ok(Some(
        webhook_deliveries::table
            .filter(webhook_deliveries::endpoint_id.eq(endpoint_id))
            .order(webhook_deliveries::id.desc())
            .limit(limit)
            .select(DeliveryRow::as_select())
            .load(conn)?,
    ))
}
