use diesel::prelude::*;

use super::schema::agents;
use super::{DbConnection, corrupt, from_millis, to_millis};
use crate::domain::agent::{Agent, AgentStatus};
use crate::domain::ids::AgentId;
use crate::domain::policy::Policy;
use crate::error::Result;

#[derive(Queryable, Selectable, Insertable)]
#[diesel(table_name = agents)]
struct AgentRow {
    id: String,
    name: String,
    department: Option<String>,
    status: String,
    policy: String,
    created_at: i64,
    updated_at: i64,
    /// The ledger's currency: the agent policy's cap currency, fixed at creation.
    currency: String,
    deactivated_at: Option<i64>,
    parent_id: Option<String>,
}

impl AgentRow {
    fn into_domain(self) -> Result<Agent> {
        Ok(Agent {
            status: AgentStatus::parse(&self.status).ok_or_else(|| corrupt("agent status", &self.status))?,
            policy: serde_json::from_str::<Policy>(&self.policy).map_err(|_| corrupt("agent policy", &self.id))?,
            currency: self.currency.parse().map_err(|_| corrupt("agent currency", &self.currency))?,
            id: AgentId::from_stored(self.id),
            name: self.name,
            department: self.department,
            created_at: from_millis(self.created_at)?,
            updated_at: from_millis(self.updated_at)?,
            deactivated_at: self.deactivated_at.map(from_millis).transpose()?,
            parent_id: self.parent_id.map(AgentId::from_stored),
            ancestors: Vec::new(),
            allowances: Vec::new(),
            shadows: Vec::new(),
        })
    }
}

pub(crate) fn policy_json(policy: &Policy) -> String {
    serde_json::to_string(policy).expect("a policy always serializes")
}

pub fn insert(conn: &mut DbConnection, agent: &Agent) -> Result<()> {
    let row = AgentRow {
        id: agent.id.to_string(),
        name: agent.name.clone(),
        department: agent.department.clone(),
        status: agent.status.as_str().to_owned(),
        policy: policy_json(&agent.policy),
        created_at: to_millis(agent.created_at),
        updated_at: to_millis(agent.updated_at),
        currency: agent.currency.code().to_owned(),
        deactivated_at: agent.deactivated_at.map(to_millis),
        parent_id: agent.parent_id.as_ref().map(|p| p.to_string()),
    };
    diesel::insert_into(agents::table).values(&row).execute(conn)?;
    Ok(())
}

pub fn find(conn: &mut DbConnection, id: &AgentId) -> Result<Option<Agent>> {
    agents::table
        .find(id.as_str())
        .select(AgentRow::as_select())
        .get_result(conn)
        .optional()?
        .map(AgentRow::into_domain)
        .transpose()
}

/// Agents in creation order, after `cursor` (an agent id), at most `limit`.
pub fn list(conn: &mut DbConnection, cursor: Option<&str>, limit: i64) -> Result<Vec<Agent>> {
    let mut query = agents::table.select(AgentRow::as_select()).order(agents::id).limit(limit).into_boxed();
    if let Some(cursor) = cursor {
        query = query.filter(agents::id.gt(cursor.to_owned()));
    }
    query.load(conn)?.into_iter().map(AgentRow::into_domain).collect()
}

/// The agents whose policy watches their spend rate (`alerts.spend_rate`), in id order.
pub fn watching_spend_rate(conn: &mut DbConnection) -> Result<Vec<Agent>> {
    let rows = agents::table
        .filter(agents::policy.like("%\"spend_rate\"%"))
        .select(AgentRow::as_select())
        .order(agents::id)
        .load(conn)?;
    let agents = rows.into_iter().map(AgentRow::into_domain).collect::<Result<Vec<_>>>()?;
    Ok(agents.into_iter().filter(|a| a.policy.alerts.as_ref().is_some_and(|x| x.spend_rate.is_some())).collect())
}

pub fn count(conn: &mut DbConnection) -> Result<i64> {
    Ok(agents::table.count().get_result(conn)?)
}

pub fn update_status(conn: &mut DbConnection, id: &AgentId, status: AgentStatus, now: jiff::Timestamp) -> Result<()> {
    diesel::update(agents::table.find(id.as_str()))
        .set((
            agents::status.eq(status.as_str()),
            agents::updated_at.eq(to_millis(now)),
            agents::config_version.eq(agents::config_version + 1),
        ))
        .execute(conn)?;
    Ok(())
}

/// The agent's ancestors, its parent first; at most `MAX_DEPTH` of them.
pub fn ancestors(conn: &mut DbConnection, id: &AgentId) -> Result<Vec<AgentId>> {
    let mut out = Vec::new();
    let mut at = id.as_str().to_owned();
    while out.len() <= MAX_DEPTH {
        let parent: Option<Option<String>> =
            agents::table.find(&at).select(agents::parent_id).get_result(conn).optional()?;
        let Some(Some(parent)) = parent else { break };
        out.push(AgentId::from_stored(parent.clone()));
        at = parent;
    }
    Ok(out)
}

/// Those of these agents that have a parent.
pub fn with_parents(conn: &mut DbConnection, ids: &[AgentId]) -> Result<std::collections::HashSet<AgentId>> {
    let ids: Vec<&str> = ids.iter().map(AgentId::as_str).collect();
    let found: Vec<String> = agents::table
        .filter(agents::id.eq_any(ids))
        .filter(agents::parent_id.is_not_null())
        .select(agents::id)
        .load(conn)?;
    Ok(found.into_iter().map(AgentId::from_stored).collect())
}

/// How many ancestors an agent may have: a child's decision locks each of them.
pub const MAX_DEPTH: usize = 4;

/// Counts a new child on its parent's row (in the transaction that makes the child).
pub fn add_child(conn: &mut DbConnection, parent: &AgentId) -> Result<()> {
    diesel::update(agents::table.find(parent.as_str())).set(agents::children.eq(agents::children + 1)).execute(conn)?;
    Ok(())
}

/// Every agent under `id`, at any depth.
pub fn descendants(conn: &mut DbConnection, id: &AgentId) -> Result<Vec<AgentId>> {
    let mut out = Vec::new();
    let mut level = vec![id.as_str().to_owned()];
    while !level.is_empty() && out.len() < 100_000 {
        level = agents::table.filter(agents::parent_id.eq_any(&level)).select(agents::id).load(conn)?;
        out.extend(level.iter().cloned().map(AgentId::from_stored));
    }
    Ok(out)
}

/// Deactivates (`Some`, frozen) or reactivates (`None`, active) an agent.
pub fn set_deactivated(
    conn: &mut DbConnection,
    id: &AgentId,
    at: Option<jiff::Timestamp>,
    now: jiff::Timestamp,
) -> Result<()> {
    let status = if at.is_some() { AgentStatus::Frozen } else { AgentStatus::Active };
    diesel::update(agents::table.find(id.as_str()))
        .set((
            agents::status.eq(status.as_str()),
            agents::deactivated_at.eq(at.map(to_millis)),
            agents::updated_at.eq(to_millis(now)),
            agents::config_version.eq(agents::config_version + 1),
        ))
        .execute(conn)?;
    Ok(())
}

pub fn update_policy(conn: &mut DbConnection, id: &AgentId, policy: &Policy, now: jiff::Timestamp) -> Result<()> {
    diesel::update(agents::table.find(id.as_str()))
        .set((
            agents::policy.eq(policy_json(policy)),
            agents::updated_at.eq(to_millis(now)),
            agents::config_version.eq(agents::config_version + 1),
        ))
        .execute(conn)?;
    Ok(())
}

/// Marks the agent's rules (or one of its cards') as changed, for every node's snapshot cache.
pub fn bump_config(conn: &mut DbConnection, id: &AgentId) -> Result<()> {
    diesel::update(agents::table.find(id.as_str()))
        .set(agents::config_version.eq(agents::config_version + 1))
        .execute(conn)?;
    Ok(())
}
