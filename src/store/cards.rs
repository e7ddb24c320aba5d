use diesel::prelude::*;

use super::agents::policy_json;
use super::schema::cards;
use super::{DbConnection, corrupt, from_millis, to_millis};
use crate::domain::card::{Card, CardStatus};
use crate::domain::ids::{AgentId, CardId};
use crate::domain::policy::Policy;
use crate::error::Result;

#[derive(Queryable, Selectable, Insertable)]
#[diesel(table_name = cards)]
struct CardRow {
    id: String,
    agent_id: String,
    label: String,
    currency: String,
    last4: String,
    exp_month: i32,
    exp_year: i32,
    expires_at: Option<i64>,
    single_use: bool,
    status: String,
    processor: String,
    processor_card_id: String,
    policy: String,
    created_at: i64,
    updated_at: i64,
    trace_id: Option<String>,
    processor_managed: bool,
}

impl CardRow {
    fn into_domain(self) -> Result<Card> {
        Ok(Card {
            currency: self.currency.parse().map_err(|_| corrupt("card currency", &self.currency))?,
            status: CardStatus::parse(&self.status).ok_or_else(|| corrupt("card status", &self.status))?,
            processor: self.processor.parse().map_err(|_| corrupt("card processor", &self.processor))?,
            policy: serde_json::from_str::<Policy>(&self.policy).map_err(|_| corrupt("card policy", &self.id))?,
            exp_month: u8::try_from(self.exp_month).map_err(|_| corrupt("exp_month", &self.id))?,
            exp_year: u16::try_from(self.exp_year).map_err(|_| corrupt("exp_year", &self.id))?,
            expires_at: self.expires_at.map(from_millis).transpose()?,
            id: CardId::from_stored(self.id),
            agent_id: AgentId::from_stored(self.agent_id),
            label: self.label,
            last4: self.last4,
            single_use: self.single_use,
            processor_card_id: self.processor_card_id,
            trace_id: self.trace_id,
            processor_managed: self.processor_managed,
            created_at: from_millis(self.created_at)?,
            updated_at: from_millis(self.updated_at)?,
        })
    }
}

pub fn insert(conn: &mut DbConnection, card: &Card) -> Result<()> {
    let row = CardRow {
        id: card.id.to_string(),
        agent_id: card.agent_id.to_string(),
        label: card.label.clone(),
        currency: card.currency.code().to_owned(),
        last4: card.last4.clone(),
        exp_month: i32::from(card.exp_month),
        exp_year: i32::from(card.exp_year),
        expires_at: card.expires_at.map(to_millis),
        single_use: card.single_use,
        status: card.status.as_str().to_owned(),
        processor: card.processor.as_str().to_owned(),
        processor_card_id: card.processor_card_id.clone(),
        policy: policy_json(&card.policy),
        created_at: to_millis(card.created_at),
        updated_at: to_millis(card.updated_at),
        trace_id: card.trace_id.clone(),
        processor_managed: card.processor_managed,
    };
    diesel::insert_into(cards::table).values(&row).execute(conn)?;
    // A new card's rules count as a change of the agent's: the ledger keeps history for them.
    super::agents::bump_config(conn, &card.agent_id)
}

/// The policies of all the agent's cards.
pub fn policies_of_agent(conn: &mut DbConnection, agent: &AgentId) -> Result<Vec<Policy>> {
    let rows: Vec<(String, String)> =
        cards::table.filter(cards::agent_id.eq(agent.as_str())).select((cards::id, cards::policy)).load(conn)?;
    rows.into_iter()
        .map(|(id, policy)| serde_json::from_str(&policy).map_err(|_| corrupt("card policy", &id)))
        .collect()
}

pub fn find(conn: &mut DbConnection, id: &CardId) -> Result<Option<Card>> {
    cards::table
        .find(id.as_str())
        .select(CardRow::as_select())
        .get_result(conn)
        .optional()?
        .map(CardRow::into_domain)
        .transpose()
}

pub fn agent_of(conn: &mut DbConnection, id: &CardId) -> Result<Option<AgentId>> {
    let agent: Option<String> = cards::table.find(id.as_str()).select(cards::agent_id).get_result(conn).optional()?;
    Ok(agent.map(AgentId::from_stored))
}

/// The card a processor knows by `processor_card_id`.
pub fn id_for_processor(conn: &mut DbConnection, processor: &str, processor_card_id: &str) -> Result<Option<CardId>> {
    let id: Option<String> = cards::table
        .filter(cards::processor.eq(processor))
        .filter(cards::processor_card_id.eq(processor_card_id))
        .select(cards::id)
        .get_result(conn)
        .optional()?;
    Ok(id.map(CardId::from_stored))
}

pub fn exists_for_processor(conn: &mut DbConnection, processor: &str, processor_card_id: &str) -> Result<bool> {
    let found: i64 = cards::table
        .filter(cards::processor.eq(processor))
        .filter(cards::processor_card_id.eq(processor_card_id))
        .count()
        .get_result(conn)?;
    Ok(found > 0)
}

/// An agent's cards in creation order, after `cursor` (a card id), at most `limit`.
pub fn list_for_agent(conn: &mut DbConnection, agent: &AgentId, cursor: Option<&str>, limit: i64) -> Result<Vec<Card>> {
    let mut query = cards::table
        .filter(cards::agent_id.eq(agent.as_str().to_owned()))
        .select(CardRow::as_select())
        .order(cards::id)
        .limit(limit)
        .into_boxed();
    if let Some(cursor) = cursor {
        query = query.filter(cards::id.gt(cursor.to_owned()));
    }
    query.load(conn)?.into_iter().map(CardRow::into_domain).collect()
}

/// Moves the card from `from` to `to`; false if its status was no longer `from` (a concurrent change).
pub fn update_status(
    conn: &mut DbConnection,
    id: &CardId,
    from: CardStatus,
    to: CardStatus,
    now: jiff::Timestamp,
) -> Result<bool> {
    let changed = diesel::update(cards::table.find(id.as_str()).filter(cards::status.eq(from.as_str())))
        .set((cards::status.eq(to.as_str()), cards::updated_at.eq(to_millis(now))))
        .execute(conn)?;
    if changed == 1 {
        bump_agent_config(conn, id)?;
    }
    Ok(changed == 1)
}

pub fn update_policy(conn: &mut DbConnection, id: &CardId, policy: &Policy, now: jiff::Timestamp) -> Result<()> {
    diesel::update(cards::table.find(id.as_str()))
        .set((cards::policy.eq(policy_json(policy)), cards::updated_at.eq(to_millis(now))))
        .execute(conn)?;
    bump_agent_config(conn, id)
}

pub fn set_trace(conn: &mut DbConnection, id: &CardId, trace_id: Option<&str>, now: jiff::Timestamp) -> Result<()> {
    diesel::update(cards::table.find(id.as_str()))
        .set((cards::trace_id.eq(trace_id), cards::updated_at.eq(to_millis(now))))
        .execute(conn)?;
    bump_agent_config(conn, id)
}

/// A card's rules changed: its agent's config_version tells every node's decision path that
/// its cached snapshot is stale.
fn bump_agent_config(conn: &mut DbConnection, id: &CardId) -> Result<()> {
    match agent_of(conn, id)? {
        Some(agent) => super::agents::bump_config(conn, &agent),
        None => Ok(()),
    }
}
