//! An agent's recorded history in the order it happened: the links of its audit chain, each with
//! the record its write left. Every decision, every movement of money and every change of rules
//! took the agent's lock and its next link, so this order is the order the writer saw them in.

use std::collections::HashMap;

use diesel::prelude::*;

use super::events::EventRow;
use super::ledger::{AuthorizationRow, TransferRow};
use super::schema::{authorizations, chain_links, events, transfers};
use super::{DbConnection, corrupt};
use crate::domain::audit::RecordKind;
use crate::domain::event::Event;
use crate::domain::ids::AgentId;
use crate::error::Result;

/// One link's record. An authorization is linked at its decision and again at each later write;
/// each time, the row as it stands now is given (its request and first decision do not change).
pub enum Recorded {
    Authorization(Box<AuthorizationRow>),
    Transfer(TransferRow),
    Event(Event),
}

/// Up to `limit` links of the agent's chain after position `after`, with their records, in order.
pub fn page(conn: &mut DbConnection, agent: &AgentId, after: i64, limit: i64) -> Result<Vec<(i64, Recorded)>> {
    let links: Vec<(i64, RecordKind, String)> = chain_links::table
        .filter(chain_links::agent_id.eq(agent.as_str()))
        .filter(chain_links::n.gt(after))
        .order(chain_links::n)
        .limit(limit)
        .select((chain_links::n, chain_links::kind, chain_links::record_id))
        .load(conn)?;
    let ids = |kind: RecordKind| -> Vec<&str> {
        let mut ids: Vec<&str> = links.iter().filter(|l| l.1 == kind).map(|l| l.2.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    };
    let rows: HashMap<String, AuthorizationRow> = authorizations::table
        .filter(authorizations::id.eq_any(ids(RecordKind::Authorization)))
        .select(AuthorizationRow::as_select())
        .load(conn)?
        .into_iter()
        .map(|r: AuthorizationRow| (r.id.clone(), r))
        .collect();
    let mut moved: HashMap<String, TransferRow> = transfers::table
        .filter(transfers::id.eq_any(ids(RecordKind::Transfer)))
        .select(TransferRow::as_select())
        .load(conn)?
        .into_iter()
        .map(|t: TransferRow| (t.id.clone(), t))
        .collect();
    let mut happened: HashMap<String, EventRow> = events::table
        .filter(events::id.eq_any(ids(RecordKind::Event)))
        .select(EventRow::as_select())
        .load(conn)?
        .into_iter()
        .map(|e: EventRow| (e.id.clone(), e))
        .collect();
    let mut page = Vec::with_capacity(links.len());
    for (n, kind, id) in &links {
        let missing = || corrupt("chain link", id);
        let record = match kind {
            // An authorization linked twice in one page is given twice, as it stands now.
            RecordKind::Authorization => Recorded::Authorization(Box::new(rows.get(id).cloned().ok_or_else(missing)?)),
            RecordKind::Transfer => Recorded::Transfer(moved.remove(id).ok_or_else(missing)?),
            RecordKind::Event => Recorded::Event(happened.remove(id).ok_or_else(missing)?.into_domain()?),
            // Only a treasury's chain links its journal.
            RecordKind::TreasuryTransfer => continue,
        };
        page.push((*n, record));
    }
    Ok(page)
}

/// How many decisions the agent's history holds from `from_ms` until before `to_ms`.
pub fn decisions_between(conn: &mut DbConnection, agent: &AgentId, from_ms: i64, to_ms: i64) -> Result<i64> {
    Ok(authorizations::table
        .filter(authorizations::agent_id.eq(agent.as_str()))
        .filter(authorizations::authorized_at.ge(from_ms))
        .filter(authorizations::authorized_at.lt(to_ms))
        .count()
        .get_result(conn)?)
}

/// The agent's events of these kinds, in the order they happened.
pub fn events_of(conn: &mut DbConnection, agent: &AgentId, kinds: &[&str]) -> Result<Vec<Event>> {
    let rows: Vec<EventRow> = events::table
        .filter(events::agent_id.eq(agent.as_str()))
        .filter(events::kind.eq_any(kinds))
        .order(events::chain_n)
        .select(EventRow::as_select())
        .load(conn)?;
    rows.into_iter().map(EventRow::into_domain).collect()
}
