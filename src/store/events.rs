use diesel::prelude::*;
use serde::Serialize;

use super::chain::{self, LinkRow};
use super::schema::events;
use super::{DbConnection, from_millis, to_millis};
use crate::audit::chain::Head;
use crate::domain::event::Event;
use crate::domain::ids::{AgentId, CardId, EventId, KeyId};
use crate::error::{Error, Result};

#[derive(Queryable, Selectable, Insertable, Serialize)]
#[diesel(table_name = events)]
// NULL for None (not DEFAULT): the INSERT is then one cacheable prepared statement.
#[diesel(treat_none_as_default_value = false)]
pub(super) struct EventRow {
    pub id: String,
    pub agent_id: String,
    card_id: Option<String>,
    kind: String,
    actor: Option<String>,
    reason: Option<String>,
    data: Option<String>,
    created_at: i64,
    /// The audit chain's link that wrote it.
    pub chain_n: i64,
}

impl EventRow {
    pub(super) fn into_domain(self) -> Result<Event> {
        Ok(Event {
            id: EventId::from_stored(self.id),
            agent_id: AgentId::from_stored(self.agent_id),
            card_id: self.card_id.map(CardId::from_stored),
            kind: self.kind,
            actor: self.actor.map(KeyId::from_stored),
            reason: self.reason,
            data: self.data.and_then(|d| serde_json::from_str(&d).ok()),
            created_at: from_millis(self.created_at)?,
        })
    }

    pub(super) fn of(event: &Event) -> EventRow {
        EventRow {
            id: event.id.to_string(),
            agent_id: event.agent_id.to_string(),
            card_id: event.card_id.as_ref().map(ToString::to_string),
            kind: event.kind.clone(),
            actor: event.actor.as_ref().map(ToString::to_string),
            reason: event.reason.clone(),
            data: event.data.as_ref().map(ToString::to_string),
            created_at: to_millis(event.created_at),
            chain_n: 0,
        }
    }
}

/// Records an event in its agent's trail and audit chain, in the caller's transaction: the agent's
/// row stays locked until it ends. For writes outside the ledger writer, which links its own.
pub fn record(conn: &mut DbConnection, event: &Event) -> Result<()> {
    let mut head = chain::lock_head(conn, event.agent_id.as_str())?
        .ok_or_else(|| Error::not_found("agent", event.agent_id.as_str()))?;
    append(conn, event, &mut head)
}

/// Writes the event, its link and the new head, under the agent's lock the caller took.
fn append(conn: &mut DbConnection, event: &Event, head: &mut Head) -> Result<()> {
    let link = insert_linked(conn, event, head)?;
    chain::insert_links(conn, &[link])?;
    chain::save_head(conn, event.agent_id.as_str(), head)
}

/// Records the event unless its agent's trail has one of the same kind made at or after
/// `since_ms`; decided under the agent's lock, so two nodes record it once. True if recorded.
pub fn record_unless_since(conn: &mut DbConnection, event: &Event, since_ms: i64) -> Result<bool> {
    let agent = event.agent_id.as_str();
    let mut head = chain::lock_head(conn, agent)?.ok_or_else(|| Error::not_found("agent", agent))?;
    let recent: i64 = events::table
        .filter(events::agent_id.eq(agent))
        // The id's time is within moments of created_at: the range reads the (agent, id) index.
        .filter(events::id.ge(super::reports::id_at(EventId::PREFIX, since_ms - super::reports::ID_MARGIN_MS)))
        .filter(events::kind.eq(&event.kind))
        .filter(events::created_at.ge(since_ms))
        .count()
        .get_result(conn)?;
    if recent > 0 {
        return Ok(false);
    }
    append(conn, event, &mut head)?;
    Ok(true)
}

/// Inserts an event as the next link of `head`, whose agent's row the caller has locked; the
/// caller writes the link it returns and the head.
pub fn insert_linked(conn: &mut DbConnection, event: &Event, head: &mut Head) -> Result<LinkRow> {
    let mut row = EventRow::of(event);
    let link = chain::link(head, &mut row);
    diesel::insert_into(events::table).values(&row).execute(conn)?;
    Ok(link)
}

/// A card's trail: its own events and its agent's agent-wide ones since it was issued, oldest first.
pub fn list_for_card(
    conn: &mut DbConnection,
    agent: &AgentId,
    card: &CardId,
    cursor: Option<&str>,
    limit: i64,
) -> Result<Vec<Event>> {
    // Event ids sort in the order they were made, so "since issued" is "after the issued event".
    let issued: String = events::table
        .filter(events::card_id.eq(card.as_str().to_owned()))
        .filter(events::kind.eq("issued"))
        .select(events::id)
        .get_result(conn)?;
    let agent_wide =
        events::card_id.is_null().and(events::agent_id.eq(agent.as_str().to_owned())).and(events::id.gt(issued));
    let mut query = events::table
        .filter(events::card_id.eq(card.as_str().to_owned()).or(agent_wide))
        .select(EventRow::as_select())
        .order(events::id)
        .limit(limit)
        .into_boxed();
    if let Some(cursor) = cursor {
        query = query.filter(events::id.gt(cursor.to_owned()));
    }
    query.load(conn)?.into_iter().map(EventRow::into_domain).collect()
}

/// Every event of an agent and its cards, oldest first.
pub fn list_for_agent(
    conn: &mut DbConnection,
    agent: &AgentId,
    cursor: Option<&str>,
    limit: i64,
) -> Result<Vec<Event>> {
    let mut query = events::table
        .filter(events::agent_id.eq(agent.as_str().to_owned()))
        .select(EventRow::as_select())
        .order(events::id)
        .limit(limit)
        .into_boxed();
    if let Some(cursor) = cursor {
        query = query.filter(events::id.gt(cursor.to_owned()));
    }
    query.load(conn)?.into_iter().map(EventRow::into_domain).collect()
}
