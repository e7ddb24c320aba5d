//! Policy versions: each card's and agent's history of live policies, and the draft beside it.
//! A card's versions name the card; an agent's own name none.

use diesel::prelude::*;

use super::agents::policy_json;
use super::schema::{policy_versions, shadow_disagreements};
use super::{DbConnection, MultiBackend};
use crate::domain::agent::Shadow;
use crate::domain::backtest::PolicyState;
use crate::domain::ids::{AgentId, CardId, PolicyVersionId};
use crate::domain::policy::Policy;
use crate::error::Result;

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = policy_versions)]
#[diesel(treat_none_as_default_value = false)]
pub struct VersionRow {
    pub id: String,
    pub agent_id: String,
    pub card_id: Option<String>,
    pub number: Option<i64>,
    pub state: PolicyState,
    pub shadow: bool,
    pub policy: String,
    pub reason: Option<String>,
    pub created_by: Option<String>,
    pub created_at: i64,
    pub decided_by: Option<String>,
    pub decided_at: Option<i64>,
}

/// The versions of one card's policy (`card` Some) or of the agent's own.
fn of_target(agent: &AgentId, card: Option<&str>) -> policy_versions::BoxedQuery<'static, MultiBackend> {
    let query = policy_versions::table.filter(policy_versions::agent_id.eq(agent.as_str().to_owned())).into_boxed();
    match card {
        Some(card) => query.filter(policy_versions::card_id.eq(card.to_owned())),
        None => query.filter(policy_versions::card_id.is_null()),
    }
}

/// A new live version: the one live now is superseded, and this one takes the next number.
/// The caller holds the agent's lock (it writes the change's event in the same transaction).
pub fn record_live(
    conn: &mut DbConnection,
    agent: &AgentId,
    card: Option<&str>,
    policy: &Policy,
    by: Option<&str>,
    reason: Option<&str>,
    now_ms: i64,
) -> Result<(PolicyVersionId, i64)> {
    let number = supersede_live(conn, agent, card)? + 1;
    let id = PolicyVersionId::generate();
    let row = VersionRow {
        id: id.to_string(),
        agent_id: agent.to_string(),
        card_id: card.map(str::to_owned),
        number: Some(number),
        state: PolicyState::Live,
        shadow: false,
        policy: policy_json(policy),
        reason: reason.map(str::to_owned),
        created_by: by.map(str::to_owned),
        created_at: now_ms,
        decided_by: by.map(str::to_owned),
        decided_at: Some(now_ms),
    };
    diesel::insert_into(policy_versions::table).values(&row).execute(conn)?;
    Ok((id, number))
}

/// Marks the live version superseded; returns the highest number the target has used (0: none).
fn supersede_live(conn: &mut DbConnection, agent: &AgentId, card: Option<&str>) -> Result<i64> {
    let numbered: Vec<(String, PolicyState, Option<i64>)> = of_target(agent, card)
        .filter(policy_versions::number.is_not_null())
        .select((policy_versions::id, policy_versions::state, policy_versions::number))
        .load(conn)?;
    let live: Vec<&str> = numbered.iter().filter(|v| v.1 == PolicyState::Live).map(|v| v.0.as_str()).collect();
    diesel::update(policy_versions::table.filter(policy_versions::id.eq_any(live)))
        .set(policy_versions::state.eq(PolicyState::Superseded))
        .execute(conn)?;
    Ok(numbered.iter().filter_map(|v| v.2).max().unwrap_or(0))
}

/// A draft made live: it takes the next number; the live one is superseded. False if it is no
/// longer a draft (promoted or discarded meanwhile).
pub fn promote(
    conn: &mut DbConnection,
    draft: &VersionRow,
    by: &str,
    reason: Option<&str>,
    now_ms: i64,
) -> Result<Option<i64>> {
    let agent = AgentId::from_stored(draft.agent_id.clone());
    let number = supersede_live(conn, &agent, draft.card_id.as_deref())? + 1;
    let changed =
        diesel::update(policy_versions::table.find(&draft.id).filter(policy_versions::state.eq(PolicyState::Draft)))
            .set((
                policy_versions::state.eq(PolicyState::Live),
                policy_versions::number.eq(Some(number)),
                policy_versions::shadow.eq(false),
                policy_versions::decided_by.eq(Some(by)),
                policy_versions::decided_at.eq(Some(now_ms)),
                policy_versions::reason.eq(reason.or(draft.reason.as_deref())),
            ))
            .execute(conn)?;
    Ok((changed == 1).then_some(number))
}

/// The target's versions, newest first, after `cursor` (an id) when given.
pub fn list(
    conn: &mut DbConnection,
    agent: &AgentId,
    card: Option<&str>,
    cursor: Option<&str>,
    limit: i64,
) -> Result<Vec<VersionRow>> {
    let mut query =
        of_target(agent, card).select(VersionRow::as_select()).order(policy_versions::id.desc()).limit(limit);
    if let Some(cursor) = cursor {
        query = query.filter(policy_versions::id.lt(cursor.to_owned()));
    }
    Ok(query.load(conn)?)
}

pub fn find(conn: &mut DbConnection, id: &str) -> Result<Option<VersionRow>> {
    Ok(policy_versions::table.find(id).select(VersionRow::as_select()).first(conn).optional()?)
}

/// The target's live version.
pub fn live(conn: &mut DbConnection, agent: &AgentId, card: Option<&str>) -> Result<Option<VersionRow>> {
    Ok(of_target(agent, card)
        .filter(policy_versions::state.eq(PolicyState::Live))
        .select(VersionRow::as_select())
        .first(conn)
        .optional()?)
}

/// The target's draft, if it has one.
pub fn draft(conn: &mut DbConnection, agent: &AgentId, card: Option<&str>) -> Result<Option<VersionRow>> {
    Ok(of_target(agent, card)
        .filter(policy_versions::state.eq(PolicyState::Draft))
        .select(VersionRow::as_select())
        .first(conn)
        .optional()?)
}

/// Saves the target's draft: a new one, or the policy and reason of the one it has (which keeps
/// its id and its shadow setting).
pub fn save_draft(conn: &mut DbConnection, row: &VersionRow) -> Result<VersionRow> {
    let agent = AgentId::from_stored(row.agent_id.clone());
    match draft(conn, &agent, row.card_id.as_deref())? {
        Some(existing) => {
            diesel::update(policy_versions::table.find(&existing.id))
                .set((
                    policy_versions::policy.eq(&row.policy),
                    policy_versions::reason.eq(&row.reason),
                    policy_versions::created_by.eq(&row.created_by),
                    policy_versions::created_at.eq(row.created_at),
                ))
                .execute(conn)?;
            Ok(VersionRow { id: existing.id, shadow: existing.shadow, ..row.clone() })
        }
        None => {
            diesel::insert_into(policy_versions::table).values(row).execute(conn)?;
            Ok(row.clone())
        }
    }
}

/// Puts a draft in shadow or takes it out; false if it is no longer a draft.
pub fn set_shadow(conn: &mut DbConnection, id: &str, shadow: bool) -> Result<bool> {
    let changed = diesel::update(policy_versions::table.find(id).filter(policy_versions::state.eq(PolicyState::Draft)))
        .set(policy_versions::shadow.eq(shadow))
        .execute(conn)?;
    Ok(changed == 1)
}

/// Puts a draft away; false if it is no longer a draft.
pub fn discard(conn: &mut DbConnection, id: &str, by: &str, now_ms: i64) -> Result<bool> {
    let changed = diesel::update(policy_versions::table.find(id).filter(policy_versions::state.eq(PolicyState::Draft)))
        .set((
            policy_versions::state.eq(PolicyState::Discarded),
            policy_versions::shadow.eq(false),
            policy_versions::decided_by.eq(Some(by)),
            policy_versions::decided_at.eq(Some(now_ms)),
        ))
        .execute(conn)?;
    Ok(changed == 1)
}

/// The agent's drafts in shadow (its own and its cards').
pub fn shadows(conn: &mut DbConnection, agent: &AgentId) -> Result<Vec<Shadow>> {
    let rows: Vec<VersionRow> = policy_versions::table
        .filter(policy_versions::agent_id.eq(agent.as_str()))
        .filter(policy_versions::state.eq(PolicyState::Draft))
        .filter(policy_versions::shadow.eq(true))
        .select(VersionRow::as_select())
        .load(conn)?;
    rows.into_iter()
        .map(|row| {
            Ok(Shadow {
                policy: serde_json::from_str(&row.policy).map_err(|_| super::corrupt("policy", &row.id))?,
                card_id: row.card_id.map(CardId::from_stored),
                version_id: row.id,
            })
        })
        .collect()
}

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = shadow_disagreements)]
#[diesel(treat_none_as_default_value = false)]
pub struct DisagreementRow {
    pub id: String,
    pub version_id: String,
    pub authorization_id: String,
    pub agent_id: String,
    pub live_reason: Option<String>,
    pub live_rule: Option<String>,
    pub shadow_reason: Option<String>,
    pub shadow_rule: Option<String>,
    pub created_at: i64,
}

pub fn insert_disagreements(conn: &mut DbConnection, rows: &[DisagreementRow]) -> Result<()> {
    // One row at a time: a multi-row insert is not one statement diesel can build for both backends.
    for row in rows {
        diesel::insert_into(shadow_disagreements::table).values(row).execute(conn)?;
    }
    Ok(())
}

/// A draft's disagreements, oldest first, after `cursor` (an id) when given.
pub fn disagreements(
    conn: &mut DbConnection,
    version: &str,
    cursor: Option<&str>,
    limit: i64,
) -> Result<Vec<DisagreementRow>> {
    let mut query = shadow_disagreements::table
        .filter(shadow_disagreements::version_id.eq(version.to_owned()))
        .select(DisagreementRow::as_select())
        .order(shadow_disagreements::id)
        .limit(limit)
        .into_boxed();
    if let Some(cursor) = cursor {
        query = query.filter(shadow_disagreements::id.gt(cursor.to_owned()));
    }
    Ok(query.load(conn)?)
}
