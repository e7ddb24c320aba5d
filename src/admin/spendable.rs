//! What an agent may still spend: its status and balance, its cards, and every limit over them
//! with what is used, what remains and when it frees up. `GET /v1/me` answers it for an agent key.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::Admin;
use super::agents::parse_agent_id;
use crate::domain::access::{Permission, Principal};
use crate::domain::agent::Agent;
use crate::domain::card::{Card, CardStatus};
use crate::domain::ids::CardId;
use crate::error::{Error, Result};
use crate::ledger::BalanceView;
use crate::policy::usage::LimitUsage;
use crate::store;

/// The cards counted: an agent has one per service it pays, far fewer than this.
const MAX_CARDS: i64 = 500;

#[derive(Debug, Serialize, ToSchema)]
pub struct Spendable {
    pub agent: Agent,
    pub balance: BalanceView,
    /// The agent's cards that can still pay (closed ones are left out).
    pub cards: Vec<CardSummary>,
    /// Every limit that applies: the agent's own, then each card's. A trace-scoped limit is shown
    /// for the trace asked for and for each card's active trace.
    pub limits: Vec<LimitUsage>,
}

/// A card as the agent needs to know it: which it is, whether it pays, and its active trace.
#[derive(Debug, Serialize, ToSchema)]
pub struct CardSummary {
    #[schema(value_type = String)]
    pub id: CardId,
    /// The service the card pays.
    pub label: String,
    pub last4: String,
    pub status: CardStatus,
    pub currency: crate::domain::money::Currency,
    pub trace_id: Option<String>,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct SpendableQuery {
    /// Also count the trace-scoped limits for this trace.
    pub trace: Option<String>,
}

impl Admin {
    pub async fn spendable(&self, who: &Principal, agent_id: &str, query: SpendableQuery) -> Result<Spendable> {
        let agent_id = parse_agent_id(who, agent_id)?;
        who.check(Permission::Read, Some(&agent_id))?;
        let trace = query.trace.map(|t| super::required_text("trace", &t, 200)).transpose()?;
        // The decision path's snapshot: it carries the approvals in force.
        let agent = self.ledger.agent(&agent_id).await?.ok_or_else(|| Error::not_found("agent", agent_id.as_str()))?;
        let agent = agent.value.clone();
        let id = agent_id.clone();
        let mut cards = self.db.read(move |conn| store::cards::list_for_agent(conn, &id, None, MAX_CARDS)).await?;
        cards.retain(|c| c.status != CardStatus::Closed);
        let balance = self.ledger.balance(&agent_id).await?;
        let summaries = cards.iter().map(CardSummary::of).collect();
        let limits = self.ledger.usage(&agent, cards, trace).await?;
        Ok(Spendable { agent, balance, cards: summaries, limits })
    }
}

impl CardSummary {
    fn of(c: &Card) -> Self {
        CardSummary {
            id: c.id.clone(),
            label: c.label.clone(),
            last4: c.last4.clone(),
            status: c.status,
            currency: c.currency,
            trace_id: c.trace_id.clone(),
        }
    }
}
