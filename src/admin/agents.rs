use serde::Deserialize;
use utoipa::ToSchema;

use super::{Admin, Page, PageQuery, ReasonBody, parse_policy, required_text};
use crate::domain::access::{Permission, Principal};
use crate::domain::agent::{Agent, AgentStatus};
use crate::domain::event::Event;
use crate::domain::ids::AgentId;
use crate::domain::money::Currency;
use crate::domain::policy::Policy;
use crate::error::{Error, Result};
use crate::store::{self, DbConnection};

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewAgent {
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    pub name: String,
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    pub department: Option<String>,
    /// Agent-level policy; defaults to none (USD, no limits).
    #[schema(value_type = Option<Object>)]
    pub policy: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentAction {
    Freeze,
    Unfreeze,
}

/// What a route may name instead of an agent id: the agent of the agent key that calls it.
pub const ME: &str = "me";

/// The agent a route names: its id, or `me` for an agent key's own agent.
pub(crate) fn parse_agent_id(who: &Principal, id: &str) -> Result<AgentId> {
    if id == ME {
        return who.agent_id.clone().ok_or_else(|| {
            Error::validation("`me` names the agent of an agent key, and this key belongs to no agent")
        });
    }
    AgentId::parse(id).ok_or_else(|| Error::not_found("agent", id))
}

/// The agent a route (or an MCP tool) names, once the caller may act on it this way.
pub(crate) fn agent_for(who: &Principal, id: &str, permission: Permission) -> Result<AgentId> {
    let agent = parse_agent_id(who, id)?;
    who.check(permission, Some(&agent))?;
    Ok(agent)
}

/// Loads an agent inside a transaction or read, as a 404 when it does not exist.
pub(crate) fn load_agent(conn: &mut DbConnection, id: &AgentId) -> Result<Agent> {
    store::agents::find(conn, id)?.ok_or_else(|| Error::not_found("agent", id.as_str()))
}

impl Admin {
    pub async fn create_agent(&self, who: &Principal, input: NewAgent) -> Result<Agent> {
        who.check(Permission::Manage, None)?;
        let name = required_text("name", &input.name, 100)?;
        let department = input.department.as_deref().map(|d| required_text("department", d, 100)).transpose()?;
        let policy = parse_policy(self.catalog, input.policy.unwrap_or_else(|| serde_json::json!({})), None)?;
        let now = store::now();
        let agent = Agent {
            id: AgentId::generate(),
            name,
            department,
            status: AgentStatus::Active,
            currency: policy.currency.unwrap_or(Currency::USD),
            policy,
            created_at: now,
            updated_at: now,
            allowances: Vec::new(),
            shadows: Vec::new(),
        };
        let event = Event::new(&agent.id, None, "agent_created", &who.key_id, now);
        let stored = agent.clone();
        self.db
            .write(move |conn| {
                store::agents::insert(conn, &stored)?;
                let by = event.actor.as_ref().map(|k| k.as_str());
                let first = event.created_at.as_millisecond();
                store::policies::record_live(conn, &stored.id, None, &stored.policy, by, None, first)?;
                store::events::record(conn, &event)
            })
            .await?;
        tracing::info!(agent = %agent.id, actor = %who.key_id, "agent created");
        Ok(agent)
    }

    pub async fn list_agents(&self, who: &Principal, page: PageQuery) -> Result<Page<Agent>> {
        who.check(Permission::Read, None)?;
        self.page(page, |a: &Agent| a.id.to_string(), store::agents::list).await
    }

    pub async fn get_agent(&self, who: &Principal, id: &str) -> Result<Agent> {
        let id = parse_agent_id(who, id)?;
        who.check(Permission::Read, Some(&id))?;
        self.db.read(move |conn| load_agent(conn, &id)).await
    }

    /// Freezes or unfreezes the whole agent: every card and rail declines while it is frozen.
    /// Each of its cards shows the change in its trail. Repeating the action changes nothing.
    pub async fn agent_action(
        &self,
        who: &Principal,
        id: &str,
        action: AgentAction,
        body: ReasonBody,
    ) -> Result<Agent> {
        let id = parse_agent_id(who, id)?;
        let permission = match action {
            AgentAction::Freeze => Permission::Freeze,
            AgentAction::Unfreeze => Permission::Manage,
        };
        who.check(permission, Some(&id))?;
        let reason = body.checked()?;
        let (target, kind) = match action {
            AgentAction::Freeze => (AgentStatus::Frozen, "agent_frozen"),
            AgentAction::Unfreeze => (AgentStatus::Active, "agent_unfrozen"),
        };
        let actor = who.key_id.clone();
        let agent = self
            .db
            .write(move |conn| {
                let mut agent = load_agent(conn, &id)?;
                if agent.status == target {
                    return Ok(agent);
                }
                let now = store::now();
                store::agents::update_status(conn, &id, target, now)?;
                store::events::record(conn, &Event::new(&id, None, kind, &actor, now).reason(Some(reason)))?;
                agent.status = target;
                agent.updated_at = now;
                Ok(agent)
            })
            .await?;
        self.snapshots().invalidate_agent(&agent.id);
        tracing::info!(agent = %agent.id, actor = %who.key_id, status = agent.status.as_str(), "agent status");
        Ok(agent)
    }

    pub async fn get_agent_policy(&self, who: &Principal, id: &str) -> Result<Policy> {
        Ok(self.get_agent(who, id).await?.policy)
    }

    pub async fn set_agent_policy(&self, who: &Principal, id: &str, doc: serde_json::Value) -> Result<Policy> {
        let id = parse_agent_id(who, id)?;
        who.check(Permission::Manage, Some(&id))?;
        let currency = self.get_agent(who, id.as_str()).await?.currency;
        let policy = parse_policy(self.catalog, doc, Some(currency))?;
        let actor = who.key_id.clone();
        let stored = policy.clone();
        let key = id.clone();
        self.db
            .write(move |conn| {
                let old = load_agent(conn, &id)?.policy;
                let now = store::now();
                store::agents::update_policy(conn, &id, &stored, now)?;
                let by = Some(actor.as_str());
                let (version_id, version) =
                    store::policies::record_live(conn, &id, None, &stored, by, None, now.as_millisecond())?;
                let data = serde_json::json!({ "previous": old, "policy": stored, "version": version,
                    "version_id": version_id });
                store::events::record(conn, &Event::new(&id, None, "agent_policy_changed", &actor, now).data(data))
            })
            .await?;
        self.snapshots().invalidate_agent(&key);
        Ok(policy)
    }

    pub async fn agent_events(&self, who: &Principal, id: &str, page: PageQuery) -> Result<Page<Event>> {
        let id = parse_agent_id(who, id)?;
        who.check(Permission::Read, Some(&id))?;
        self.page(
            page,
            |e: &Event| e.id.to_string(),
            move |conn, cursor, n| {
                load_agent(conn, &id)?;
                store::events::list_for_agent(conn, &id, cursor, n)
            },
        )
        .await
    }
}
