use serde::Serialize;
use utoipa::ToSchema;

use super::ids::{AgentId, CardId, EventId, KeyId};

/// One entry of an audit trail: what happened, who did it (the API key), when and why.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Event {
    pub id: EventId,
    pub agent_id: AgentId,
    /// Absent for agent-wide events (agent frozen, agent policy changed), which every card shows.
    pub card_id: Option<CardId>,
    /// `issued`, `policy_changed`, `frozen`, `unfrozen`, `closed`, `agent_created`, `agent_frozen`, …
    pub kind: String,
    pub actor: Option<KeyId>,
    pub reason: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub data: Option<serde_json::Value>,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: jiff::Timestamp,
}

impl Event {
    pub fn new(agent_id: &AgentId, card_id: Option<&CardId>, kind: &str, actor: &KeyId, now: jiff::Timestamp) -> Self {
        Event { actor: Some(actor.clone()), ..Event::by_spendgate(agent_id, card_id, kind, now) }
    }

    /// An event spendgate records itself (a decision's, an alert), made by no API key.
    pub fn by_spendgate(agent_id: &AgentId, card_id: Option<&CardId>, kind: &str, now: jiff::Timestamp) -> Self {
        Event {
            id: EventId::generate(),
            agent_id: agent_id.clone(),
            card_id: card_id.cloned(),
            kind: kind.to_owned(),
            actor: None,
            reason: None,
            data: None,
            created_at: now,
        }
    }

    pub fn reason(mut self, reason: Option<String>) -> Self {
        self.reason = reason;
        self
    }

    pub fn data(mut self, data: serde_json::Value) -> Self {
        self.data = Some(data);
        self
    }
}
