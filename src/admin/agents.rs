use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{Admin, Page, PageQuery, ReasonBody, parse_policy, required_text};
use crate::domain::access::{Permission, Principal};
use crate::domain::agent::{Agent, AgentStatus};
use crate::domain::card::{Card, CardAction, CardStatus};
use crate::domain::event::Event;
use crate::domain::ids::{AgentId, CardId, KeyId};
use crate::domain::money::Currency;
use crate::domain::policy::Policy;
use crate::error::{Error, ErrorCode, Result};
use crate::ledger::{Actor, TransferView};
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
    /// The agent it works under: its spend will count against the parent's limits too, and a
    /// freeze of the parent stops it. In the parent's currency; at most four levels deep.
    #[schema(pattern = "^agt_[0-9a-z]{26}$")]
    pub parent_id: Option<String>,
}

/// `POST /v1/agents/{agent_id}/reactivate`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Reactivation {
    #[schema(
        min_length = 1,
        max_length = 500,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    pub reason: String,
    /// Unfreeze every frozen card of the agent too (default: they stay frozen, to be unfrozen one by one).
    #[serde(default)]
    pub unfreeze_cards: bool,
}

/// What a deactivation did.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Deactivation {
    pub agent: Agent,
    /// The cards it froze (those already frozen or closed are not listed).
    #[schema(value_type = Vec<String>)]
    pub cards_frozen: Vec<CardId>,
    /// How many of the agent's API keys it revoked.
    pub keys_revoked: usize,
    /// What it drained back to the treasury now; what the agent's holds release later follows.
    pub drained: Option<TransferView>,
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

/// Freezes every active card of the agent, or unfreezes every frozen one, each with its event;
/// returns the cards it changed (a card changed meanwhile by another request is left as it is).
fn act_on_cards(
    conn: &mut DbConnection,
    agent: &AgentId,
    action: CardAction,
    actor: &KeyId,
    reason: &str,
    now: jiff::Timestamp,
) -> Result<Vec<Card>> {
    let (from, to) = match action {
        CardAction::Freeze => (CardStatus::Active, CardStatus::Frozen),
        CardAction::Unfreeze => (CardStatus::Frozen, CardStatus::Active),
        CardAction::Close => return Err(Error::Internal("an agent's cards are not closed together".into())),
    };
    let mut changed = Vec::new();
    for mut card in store::cards::list_for_agent(conn, agent, None, i64::MAX)? {
        if card.status == from && store::cards::update_status(conn, &card.id, from, to, now)? {
            let event =
                Event::new(agent, Some(&card.id), action.event_kind(), actor, now).reason(Some(reason.to_owned()));
            store::events::record(conn, &event)?;
            card.status = to;
            changed.push(card);
        }
    }
    Ok(changed)
}

impl Admin {
    pub async fn create_agent(&self, who: &Principal, input: NewAgent) -> Result<Agent> {
        who.check(Permission::Manage, None)?;
        let name = required_text("name", &input.name, 100)?;
        let department = input.department.as_deref().map(|d| required_text("department", d, 100)).transpose()?;
        let policy = parse_policy(self.catalog, input.policy.unwrap_or_else(|| serde_json::json!({})), None)?;
        let parent_id = match input.parent_id.as_deref() {
            None => None,
            Some(p) => Some(
                AgentId::parse(p)
                    .ok_or_else(|| Error::coded(ErrorCode::UnknownAgent, format!("parent_id: no agent {p}")))?,
            ),
        };
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
            deactivated_at: None,
            parent_id,
            ancestors: Vec::new(),
        };
        let data = agent.parent_id.as_ref().map(|p| serde_json::json!({"parent_id": p}));
        let mut event = Event::new(&agent.id, None, "agent_created", &who.key_id, now);
        if let Some(data) = data {
            event = event.data(data);
        }
        let stored = agent.clone();
        self.db
            .write(move |conn| {
                if let Some(parent_id) = &stored.parent_id {
                    // The parent's row is locked for the count, so it cannot change under its new child.
                    store::chain::lock_head(conn, parent_id.as_str())?;
                    let parent = store::agents::find(conn, parent_id)?.ok_or_else(|| {
                        Error::coded(ErrorCode::UnknownAgent, format!("parent_id: no agent {parent_id}"))
                    })?;
                    if parent.currency != stored.currency {
                        return Err(Error::coded(
                            ErrorCode::CurrencyMismatch,
                            format!("a child spends in its parent's currency, {}", parent.currency),
                        ));
                    }
                    if parent.deactivated_at.is_some() {
                        return Err(Error::coded(ErrorCode::AgentDeactivated, "the parent is deactivated"));
                    }
                    if store::agents::ancestors(conn, parent_id)?.len() >= store::agents::MAX_DEPTH {
                        return Err(Error::validation(format!(
                            "parent_id: an agent has at most {} ancestors",
                            store::agents::MAX_DEPTH
                        )));
                    }
                    store::agents::add_child(conn, parent_id)?;
                }
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
                if agent.deactivated_at.is_some() {
                    return Err(Error::coded(
                        ErrorCode::AgentDeactivated,
                        "the agent is deactivated: reactivate it (POST /v1/agents/{id}/reactivate)",
                    ));
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

    /// Deactivates an agent: it is frozen with every card, its keys are revoked, its top-ups stop,
    /// and what is available goes back to the treasury, now and as its holds settle (they still
    /// capture: the merchant must be paid). Repeating it changes nothing but retries the drain.
    pub async fn deactivate(&self, who: &Principal, id: &str, body: ReasonBody) -> Result<Deactivation> {
        let id = agent_for(who, id, Permission::Manage)?;
        let reason = body.checked()?;
        let actor = who.key_id.clone();
        let why = reason.clone();
        let (agent, frozen, keys_revoked) = self
            .db
            .write(move |conn| {
                let mut agent = load_agent(conn, &id)?;
                if agent.deactivated_at.is_some() {
                    return Ok((agent, Vec::new(), 0));
                }
                let now = store::now();
                store::agents::set_deactivated(conn, &id, Some(now), now)?;
                let frozen = act_on_cards(conn, &id, CardAction::Freeze, &actor, &why, now)?;
                let revoked = store::keys::revoke_for_agent(conn, &id, now)?;
                let ids: Vec<&str> = frozen.iter().map(|c| c.id.as_str()).collect();
                let data = serde_json::json!({"cards_frozen": ids, "keys_revoked": revoked});
                let event = Event::new(&id, None, "agent_deactivated", &actor, now).reason(Some(why)).data(data);
                store::events::record(conn, &event)?;
                agent.status = AgentStatus::Frozen;
                agent.deactivated_at = Some(now);
                agent.updated_at = now;
                Ok((agent, frozen, revoked))
            })
            .await?;
        self.snapshots().invalidate_agent(&agent.id);
        for card in &frozen {
            self.snapshots().invalidate_card(&card.id);
        }
        if keys_revoked > 0 {
            self.live_keys.forget_all();
        }
        for card in &frozen {
            self.sync_processor(card, &who.key_id).await;
        }
        tracing::info!(agent = %agent.id, actor = %who.key_id, cards = frozen.len(), keys = keys_revoked, "agent deactivated");
        let at = agent.deactivated_at.map_or(0, |t| t.as_millisecond());
        let actor = Actor { key: who.key_id.to_string(), reason: Some(format!("deactivated: {reason}")) };
        let drained = match self.ledger.drain(&agent.id, &format!("deactivate:{at}"), None, &actor).await {
            Ok((t, _)) => Some(t),
            Err(Error::Coded { code: ErrorCode::ExceedsAvailable, .. }) => None,
            Err(e) => return Err(e),
        };
        let cards_frozen = frozen.into_iter().map(|c| c.id).collect();
        Ok(Deactivation { agent, cards_frozen, keys_revoked, drained })
    }

    /// Makes a deactivated agent active again, with its cards unfrozen if asked. Its keys stay
    /// revoked (make new ones) and its balance stays as the drains left it (fund it).
    pub async fn reactivate(&self, who: &Principal, id: &str, body: Reactivation) -> Result<Agent> {
        let id = agent_for(who, id, Permission::Manage)?;
        let reason = ReasonBody { reason: body.reason }.checked()?;
        let actor = who.key_id.clone();
        let (agent, unfrozen) = self
            .db
            .write(move |conn| {
                let mut agent = load_agent(conn, &id)?;
                if agent.deactivated_at.is_none() {
                    return Ok((agent, Vec::new()));
                }
                let now = store::now();
                store::agents::set_deactivated(conn, &id, None, now)?;
                let unfrozen = if body.unfreeze_cards {
                    act_on_cards(conn, &id, CardAction::Unfreeze, &actor, &reason, now)?
                } else {
                    Vec::new()
                };
                let ids: Vec<&str> = unfrozen.iter().map(|c| c.id.as_str()).collect();
                let event = Event::new(&id, None, "agent_reactivated", &actor, now)
                    .reason(Some(reason))
                    .data(serde_json::json!({"cards_unfrozen": ids}));
                store::events::record(conn, &event)?;
                agent.status = AgentStatus::Active;
                agent.deactivated_at = None;
                agent.updated_at = now;
                Ok((agent, unfrozen))
            })
            .await?;
        self.snapshots().invalidate_agent(&agent.id);
        for card in &unfrozen {
            self.snapshots().invalidate_card(&card.id);
            self.sync_processor(card, &who.key_id).await;
        }
        tracing::info!(agent = %agent.id, actor = %who.key_id, cards = unfrozen.len(), "agent reactivated");
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
