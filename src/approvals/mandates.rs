//! Mandates: spend an agent asks people for before it needs it ("$40 on api.example.com for
//! PR-4823, for a day"). A mandate is an approval request like any other (Slack, links, the API
//! and CLI decide it); once approved, the policy core lets spend inside it through without asking
//! again (see `policy::evaluate`), until it is used up or expires, and each such spend names it.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{ApprovalView, Approvals};
use crate::domain::access::{Permission, Principal};
use crate::domain::approval::ApprovalStatus;
use crate::domain::event::Event;
use crate::domain::ids::{AgentId, ApprovalId};
use crate::domain::money::{Currency, MAX_AMOUNT};
use crate::error::{Error, Result};

/// What an agent asks for.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MandateRequest {
    /// Why, for the person who decides: what the money is for.
    #[schema(min_length = 1, max_length = 500)]
    pub purpose: String,
    /// The most it may spend under the mandate, in minor units of the agent's currency.
    #[schema(minimum = 1, maximum = 1_000_000_000_000_000_i64)]
    pub amount: i64,
    /// The agent's currency (the default); a mandate is counted in it.
    pub currency: Option<String>,
    /// Only spend tagged with this trace.
    #[schema(min_length = 1, max_length = 200)]
    pub trace_id: Option<String>,
    /// Hosts it may pay on the USDC rail, even ones the policy does not list.
    #[serde(default)]
    #[schema(max_items = 20)]
    pub hosts: Vec<String>,
    /// Merchant ids or descriptor patterns (`*` any run) its cards may pay, even past a merchant lock.
    #[serde(default)]
    #[schema(max_items = 20)]
    pub merchants: Vec<String>,
    /// How long it lasts from now, in hours (1 to 720, default 24).
    #[schema(minimum = 1, maximum = 720)]
    pub hours: Option<i64>,
}

/// A mandate as asked and as it stands.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct MandateView {
    pub purpose: String,
    pub hosts: Vec<String>,
    pub merchants: Vec<String>,
    /// What spend under it counts now (held and posted), in the agent's currency.
    pub used: i64,
    /// `cap_amount - used`, never below 0; 0 unless approved and in force.
    pub remaining: i64,
}

/// A mandate as asked, checked, for the records to store.
pub(super) struct Asked {
    pub id: String,
    pub agent: AgentId,
    pub purpose: String,
    pub amount: i64,
    pub currency: Currency,
    pub trace_id: Option<String>,
    pub hosts: Vec<String>,
    pub merchants: Vec<String>,
    /// When the mandate ends, if approved.
    pub until_ms: i64,
    /// Until when people may decide.
    pub expires_at: i64,
    /// Whether a notifier will post it (else its notification is `off`).
    pub notified: bool,
    pub now_ms: i64,
}

const MAX_NAMES: usize = 20;

impl MandateRequest {
    /// Checks every field; returns the stored hosts (lower-case) and merchants, and the hours.
    fn checked(&self, agent_currency: Currency) -> Result<(Vec<String>, Vec<String>, i64)> {
        let text = |field: &str, value: &str, max: usize| {
            let value = value.trim();
            if value.is_empty() || value.chars().count() > max || value.chars().any(char::is_control) {
                return Err(Error::validation(format!("{field}: must be 1 to {max} printable characters")));
            }
            Ok(value.to_owned())
        };
        text("purpose", &self.purpose, 500)?;
        if let Some(trace) = &self.trace_id {
            text("trace_id", trace, 200)?;
        }
        if !(1..=MAX_AMOUNT).contains(&self.amount) {
            return Err(Error::validation(format!("amount must be 1 to {MAX_AMOUNT} minor units")));
        }
        if let Some(c) = &self.currency
            && c.parse::<Currency>().ok() != Some(agent_currency)
        {
            return Err(Error::validation(format!("currency: a mandate is in the agent's currency, {agent_currency}")));
        }
        if self.hosts.len() > MAX_NAMES || self.merchants.len() > MAX_NAMES {
            return Err(Error::validation(format!("hosts and merchants: at most {MAX_NAMES} each")));
        }
        let hosts =
            self.hosts.iter().map(|h| text("hosts", h, 253).map(|h| h.to_ascii_lowercase())).collect::<Result<_>>()?;
        let merchants = self.merchants.iter().map(|m| text("merchants", m, 255)).collect::<Result<_>>()?;
        let hours = self.hours.unwrap_or(24);
        if !(1..=720).contains(&hours) {
            return Err(Error::validation("hours must be 1 to 720"));
        }
        Ok((hosts, merchants, hours))
    }
}

impl Approvals {
    /// Asks people for a mandate; it waits for their decision like any approval request.
    pub async fn request_mandate(
        &self,
        who: &Principal,
        agent: &AgentId,
        input: MandateRequest,
    ) -> Result<ApprovalView> {
        who.check(Permission::Ask, Some(agent))?;
        let snapshot =
            self.inner.ledger.agent(agent).await?.ok_or_else(|| Error::not_found("agent", agent.as_str()))?;
        let currency = snapshot.value.currency;
        let (hosts, merchants, hours) = input.checked(currency)?;
        let now_ms = super::store::now_ms();
        let until = now_ms + hours * 3_600_000;
        let notified = self.inner.settings.slack_webhook_url.is_some();
        let asked = Asked {
            id: ApprovalId::generate().to_string(),
            agent: agent.clone(),
            purpose: input.purpose.trim().to_owned(),
            amount: input.amount,
            currency,
            trace_id: input.trace_id.map(|t| t.trim().to_owned()),
            hosts,
            merchants,
            until_ms: until,
            // People have the usual time to decide, and no longer than the mandate would last.
            expires_at: (now_ms + self.inner.settings.request_ttl.as_millis() as i64).min(until),
            notified,
            now_ms,
        };
        let data = serde_json::json!({
            "approval_id": asked.id, "purpose": asked.purpose,
            "amount": {"amount": asked.amount, "currency": currency.code()}, "trace_id": asked.trace_id,
            "hosts": asked.hosts, "merchants": asked.merchants, "until": jiff::Timestamp::from_millisecond(until).ok(),
        });
        let event = Event::new(agent, None, "mandate_requested", &who.key_id, crate::clock::now()).data(data);
        let id = asked.id.clone();
        let view = self.inner.records.ask_mandate(asked, event, MAX_PENDING).await?;
        if notified {
            let approvals = self.clone();
            actix_web::rt::spawn(async move { approvals.deliver(&id).await });
        }
        tracing::info!(approval = %view.id, agent = %agent, "mandate requested");
        Ok(view)
    }

    /// One of the agent's mandates; with `wait`, answers once it is decided or the wait is over.
    pub async fn mandate(
        &self,
        who: &Principal,
        agent: &AgentId,
        id: &str,
        wait: std::time::Duration,
    ) -> Result<ApprovalView> {
        who.check(Permission::Read, Some(agent))?;
        if wait > MAX_WAIT {
            return Err(Error::validation(format!("wait must be 0 to {} seconds", MAX_WAIT.as_secs())));
        }
        // One wait per agent: another asked meanwhile is answered at once, so an agent cannot
        // keep many waits polling the database.
        let turn = self.inner.waiting.take(agent);
        let wait = if turn.is_some() { wait } else { std::time::Duration::ZERO };
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let view = self.view(id).await?;
            if view.agent_id != agent.as_str() || view.mandate.is_none() {
                return Err(Error::not_found("mandate", id));
            }
            if view.status != ApprovalStatus::Pending || tokio::time::Instant::now() >= deadline {
                return Ok(view);
            }
            tokio::time::sleep(POLL.min(deadline - tokio::time::Instant::now())).await;
        }
    }
}

/// Most mandate requests an agent may have waiting for people at once: asking is cheap for an
/// agent and costs people's attention.
const MAX_PENDING: i64 = 5;

/// The longest a request waits for a decision.
const MAX_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// How often a waiting request looks again: a decision reaches the agent within this.
const POLL: std::time::Duration = std::time::Duration::from_millis(250);
