//! Money operations of the admin API: fund an agent from its treasury and drain it back, read its
//! balance and its ledger.

use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use super::agents::parse_agent_id;
use super::{Admin, Page, PageQuery, required_text};
use crate::domain::access::{Permission, Principal};
use crate::domain::money::{MAX_AMOUNT, Money};
use crate::error::{Error, Result};
use crate::ledger::{Actor, BalanceView, LedgerEntry, TransferView};
use crate::store::ledger::LedgerFilter;
use crate::store::query_time;

/// `POST /v1/agents/{agent_id}/fund`: `id` is the caller's idempotency key.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FundRequest {
    /// Idempotency key of this funding.
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    pub id: String,
    /// Minor units of `currency`.
    #[schema(minimum = 1, maximum = 1_000_000_000_000_000_i64)]
    pub amount: i64,
    /// ISO 4217, the agent's currency.
    #[schema(pattern = "^[A-Za-z]{3}$", example = "USD")]
    pub currency: String,
    /// Why, kept with the transfer in the ledger and the audit trail.
    #[schema(
        min_length = 1,
        max_length = 500,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    pub reason: Option<String>,
}

/// `POST /v1/agents/{agent_id}/allocate`: available money from the agent's parent.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AllocateRequest {
    /// Idempotency key of this allocation.
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    pub id: String,
    /// Minor units of the agent's currency.
    #[schema(minimum = 1, maximum = 1_000_000_000_000_000_i64)]
    pub amount: i64,
    #[schema(
        min_length = 1,
        max_length = 500,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    pub reason: Option<String>,
}

/// `POST /v1/agents/{agent_id}/drain`: available money back to the treasury (a sub-agent's, to its parent).
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DrainRequest {
    /// Idempotency key of this drain.
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    pub id: String,
    /// Minor units of the agent's currency; all that is available when absent. Held money is never drained.
    #[schema(minimum = 1, maximum = 1_000_000_000_000_000_i64)]
    pub amount: Option<i64>,
    #[schema(
        min_length = 1,
        max_length = 500,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct LedgerQuery {
    /// Only this card's authorizations and transfers.
    pub card: Option<String>,
    /// Only this trace's.
    pub trace: Option<String>,
    /// From this time (RFC 3339), inclusive.
    pub from: Option<String>,
    /// Until this time (RFC 3339), exclusive.
    pub to: Option<String>,
    pub limit: Option<i64>,
    pub cursor: Option<String>,
}

/// The caller, as the ledger keeps who moved money and why.
pub(super) fn actor(who: &Principal, reason: Option<&str>) -> Result<Actor> {
    let reason = reason.map(|r| required_text("reason", r, 500)).transpose()?;
    Ok(Actor { key: who.key_id.to_string(), reason })
}

pub fn check_amount(field: &str, amount: i64) -> Result<()> {
    if !(1..=MAX_AMOUNT).contains(&amount) {
        return Err(Error::validation(format!("{field} must be a positive number of minor units up to {MAX_AMOUNT}")));
    }
    Ok(())
}

impl Admin {
    /// Adds to the agent's prepaid balance. Idempotent by `id`: the same id again returns the
    /// first transfer (`replayed`), a different amount under it is a 409.
    pub async fn fund(&self, who: &Principal, agent_id: &str, input: FundRequest) -> Result<(TransferView, bool)> {
        let agent_id = parse_agent_id(who, agent_id)?;
        who.check(Permission::Manage, Some(&agent_id))?;
        let id = required_text("id", &input.id, 200)?;
        check_amount("amount", input.amount)?;
        let currency = input.currency.parse().map_err(|e: String| Error::validation(format!("currency: {e}")))?;
        let actor = actor(who, input.reason.as_deref())?;
        let (transfer, replayed) =
            self.ledger.fund(&agent_id, &id, Money { amount: input.amount, currency }, &actor).await?;
        if !replayed {
            tracing::info!(agent = %agent_id, actor = %who.key_id, amount = %transfer.amount, "agent funded");
        }
        Ok((transfer, replayed))
    }

    /// Moves available money from the agent's parent into its balance. Idempotent by `id`.
    pub async fn allocate(
        &self,
        who: &Principal,
        agent_id: &str,
        input: AllocateRequest,
    ) -> Result<(TransferView, bool)> {
        let agent_id = parse_agent_id(who, agent_id)?;
        who.check(Permission::Manage, Some(&agent_id))?;
        let id = required_text("id", &input.id, 200)?;
        check_amount("amount", input.amount)?;
        let actor = actor(who, input.reason.as_deref())?;
        let (transfer, replayed) = self.ledger.allocate(&agent_id, &id, input.amount, &actor).await?;
        if !replayed {
            tracing::info!(agent = %agent_id, actor = %who.key_id, amount = %transfer.amount, "allocated from the parent");
        }
        Ok((transfer, replayed))
    }

    /// Returns available money to the treasury (to its parent, for a sub-agent). Idempotent by
    /// `id`, as funding is.
    pub async fn drain(&self, who: &Principal, agent_id: &str, input: DrainRequest) -> Result<(TransferView, bool)> {
        let agent_id = parse_agent_id(who, agent_id)?;
        who.check(Permission::Manage, Some(&agent_id))?;
        let id = required_text("id", &input.id, 200)?;
        if let Some(amount) = input.amount {
            check_amount("amount", amount)?;
        }
        let actor = actor(who, input.reason.as_deref())?;
        let (transfer, replayed) = self.ledger.drain(&agent_id, &id, input.amount, &actor).await?;
        if !replayed {
            tracing::info!(agent = %agent_id, actor = %who.key_id, amount = %transfer.amount, "agent drained");
        }
        Ok((transfer, replayed))
    }

    pub async fn balance(&self, who: &Principal, agent_id: &str) -> Result<BalanceView> {
        let agent_id = parse_agent_id(who, agent_id)?;
        who.check(Permission::Read, Some(&agent_id))?;
        self.ledger.balance(&agent_id).await
    }

    pub async fn ledger_entries(&self, who: &Principal, agent_id: &str, q: LedgerQuery) -> Result<Page<LedgerEntry>> {
        let agent_id = parse_agent_id(who, agent_id)?;
        who.check(Permission::Read, Some(&agent_id))?;
        // Make sure the agent exists, so a typo is a 404 rather than an empty page.
        self.ledger.balance(&agent_id).await?;
        let size = PageQuery { limit: q.limit, cursor: None }.size()?;
        if let Some(c) = &q.cursor
            && (c.len() != 26 || !c.bytes().all(|b| b.is_ascii_alphanumeric()))
        {
            return Err(Error::validation("cursor must be a next_cursor from a previous page"));
        }
        let filter = LedgerFilter {
            card_id: q.card,
            trace_id: q.trace,
            from_ms: query_time("from", q.from.as_deref())?,
            to_ms: query_time("to", q.to.as_deref())?,
        };
        let (data, next_cursor) = self.ledger.entries(&agent_id, filter, q.cursor, size).await?;
        Ok(Page { data, next_cursor })
    }
}
