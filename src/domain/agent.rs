use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::approval::Allowance;
use super::ids::AgentId;
use super::money::Currency;
use super::policy::Policy;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AgentStatus {
    Active,
    /// Every card and rail of the agent declines until it is unfrozen.
    Frozen,
}

impl AgentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AgentStatus::Active => "active",
            AgentStatus::Frozen => "frozen",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(AgentStatus::Active),
            "frozen" => Some(AgentStatus::Frozen),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Agent {
    pub id: AgentId,
    pub name: String,
    pub department: Option<String>,
    pub status: AgentStatus,
    /// The currency of the agent's balance and of its policy's caps.
    pub currency: Currency,
    /// Agent-level rules that span all its cards and rails.
    pub policy: Policy,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: jiff::Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: jiff::Timestamp,
    /// Set while the agent is deactivated: frozen, its cards frozen, its keys revoked, what its
    /// holds release drained back to the treasury. Only reactivation undoes it.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub deactivated_at: Option<jiff::Timestamp>,
    /// The agent it works under (an orchestrator): its spend counts against the parent's limits too.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub parent_id: Option<AgentId>,
    /// The parent, its parent, …; loaded for decisions only.
    #[serde(skip)]
    pub ancestors: Vec<AgentId>,
    /// What people approved past these rules and is still in force; loaded for decisions only.
    #[serde(skip)]
    pub allowances: Vec<Allowance>,
    /// Drafts of its own policy or its cards' in shadow: evaluated beside each decision, deciding
    /// nothing; loaded for decisions only.
    #[serde(skip)]
    pub shadows: Vec<Shadow>,
}

/// A draft in shadow: the policy it would put in place of the agent's (`card_id` None) or a card's.
#[derive(Debug, Clone, PartialEq)]
pub struct Shadow {
    pub version_id: String,
    pub card_id: Option<super::ids::CardId>,
    pub policy: Policy,
}
