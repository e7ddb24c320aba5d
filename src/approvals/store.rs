//! The approvals' records, the only way this module reaches the database: requests read as
//! views, listed, decided (with the agent's rules bumped and the trail written in the same
//! transaction), and the Slack delivery state.

use super::mandates::{Asked, MandateView};
use super::{ALLOWANCE_HOURS, ApprovalView, Notification, already};
use crate::domain::approval::{ApprovalAction, ApprovalStatus, MANDATE_RULE};
use crate::domain::authorization::Merchant;
use crate::domain::event::Event;
use crate::domain::ids::{AgentId, CardId, EventId, KeyId};
use crate::domain::money::Money;
use crate::error::{Error, ErrorCode, Result};
use crate::ledger::RequestedAmount;
pub use crate::store::Db;
use crate::store::approvals::ApprovalRow;
use crate::store::{self, DbConnection};

pub(super) struct Records {
    db: Db,
}

/// Now, in the milliseconds the records keep.
pub(super) fn now_ms() -> i64 {
    store::now().as_millisecond()
}

fn ts(ms: i64) -> jiff::Timestamp {
    store::from_millis(ms).unwrap_or_default()
}

impl ApprovalView {
    /// The request as people see it now (a pending one past its expiry is expired).
    /// `used`: what spend under it counts now, for a mandate.
    fn new(row: ApprovalRow, agent_name: String, card_label: Option<String>, used: i64, now_ms: i64) -> Result<Self> {
        let cap_currency = row.cap_currency.parse().map_err(|_| store::corrupt("approval currency", &row.id))?;
        let money = |amount| Money { amount, currency: cap_currency };
        let stored = ApprovalStatus::parse(&row.status).ok_or_else(|| store::corrupt("approval status", &row.id))?;
        let status = match stored {
            ApprovalStatus::Pending if row.expires_at <= now_ms => ApprovalStatus::Expired,
            other => other,
        };
        Ok(ApprovalView {
            status,
            agent_id: row.agent_id,
            agent_name,
            card_id: row.card_id,
            card_label,
            rail: row.rail,
            rule: row.rule,
            amount: RequestedAmount { amount: row.amount, currency: row.currency },
            cap_amount: money(row.cap_amount),
            cap: row.cap.map(money),
            spent: row.spent.map(money),
            merchant: Merchant { id: row.merchant_id, name: row.merchant_name, mcc: row.mcc, country: row.country },
            trace_id: row.trace_id,
            authorization_id: row.authorization_id,
            expires_at: ts(row.expires_at),
            decided_by: row.decided_by,
            decided_at: row.decided_at.map(ts),
            allowance_until: row.allowance_until.map(ts),
            single_use: row.single_use,
            notification: Notification {
                status: row.notify_status,
                attempts: row.notify_attempts,
                error: row.notify_error,
            },
            created_at: ts(row.created_at),
            mandate: row.purpose.clone().map(|purpose| {
                let in_force = stored == ApprovalStatus::Approved && row.allowance_until.is_some_and(|u| u > now_ms);
                MandateView {
                    purpose,
                    hosts: ApprovalRow::names(row.hosts.as_deref()),
                    merchants: ApprovalRow::names(row.merchants.as_deref()),
                    used,
                    remaining: if in_force { row.cap_amount.saturating_sub(used).max(0) } else { 0 },
                }
            }),
            id: row.id,
        })
    }
}

fn load_view(conn: &mut DbConnection, id: &str, now_ms: i64) -> Result<Option<ApprovalView>> {
    let Some(row) = store::approvals::find(conn, id)? else { return Ok(None) };
    let agent = AgentId::from_stored(row.agent_id.clone());
    let agent_name = store::agents::find(conn, &agent)?.map(|a| a.name).unwrap_or_default();
    let card_label = match &row.card_id {
        Some(card) => store::cards::find(conn, &CardId::from_stored(card.clone()))?.map(|c| c.label),
        None => None,
    };
    let used = match row.purpose {
        Some(_) => store::ledger::counted_under(conn, &agent, &row.id, row.created_at)?,
        None => 0,
    };
    ApprovalView::new(row, agent_name, card_label, used, now_ms).map(Some)
}

impl Records {
    pub fn new(db: Db) -> Self {
        Records { db }
    }

    pub async fn view(&self, id: &str, now_ms: i64) -> Result<Option<ApprovalView>> {
        let id = id.to_owned();
        self.db.read(move |conn| load_view(conn, &id, now_ms)).await
    }

    /// A page of requests, newest first; `stored` is the status to read, `wanted` the status
    /// people see (an expired request is stored as pending).
    pub async fn list(
        &self,
        stored: Option<ApprovalStatus>,
        wanted: Option<ApprovalStatus>,
        cursor: Option<String>,
        limit: i64,
        now_ms: i64,
    ) -> Result<(Vec<ApprovalView>, Option<String>)> {
        self.db
            .read(move |conn| {
                let mut views = Vec::new();
                let mut cursor = cursor;
                // Filtering by the status people see may skip rows: read on until the page is full.
                loop {
                    let rows =
                        store::approvals::list(conn, stored.map(|s| s.as_str()), None, cursor.as_deref(), limit + 1)?;
                    let exhausted = rows.len() as i64 <= limit;
                    for row in rows.into_iter().take(limit as usize) {
                        cursor = Some(row.id.clone());
                        if let Some(view) = load_view(conn, &row.id, now_ms)?
                            && wanted.is_none_or(|w| w == view.status)
                        {
                            views.push(view);
                        }
                        if views.len() as i64 == limit {
                            return Ok((views, (!exhausted).then(|| cursor.clone()).flatten()));
                        }
                    }
                    if exhausted {
                        return Ok((views, None));
                    }
                }
            })
            .await
    }

    /// Applies a decision, once; returns the request as it now stands and whether it carries a
    /// deferred payment. A request already decided or expired is a conflict.
    pub async fn decide(
        &self,
        key: String,
        action: ApprovalAction,
        decided_by: String,
        actor: Option<KeyId>,
    ) -> Result<(ApprovalView, bool)> {
        self.db
            .write(move |conn| {
                let now = store::now();
                let now_ms = now.as_millisecond();
                let row = store::approvals::find(conn, &key)?.ok_or_else(|| Error::not_found("approval", &key))?;
                let until = match action {
                    ApprovalAction::Approve => {
                        let day = now_ms + ALLOWANCE_HOURS * 3_600_000;
                        Some(if row.single_use { day } else { row.window_end_at.unwrap_or(day) })
                    }
                    ApprovalAction::Deny => None,
                };
                let status = action.status().as_str();
                if !store::approvals::decide(conn, &key, status, &decided_by, until, now_ms)? {
                    let current = load_view(conn, &key, now_ms)?.ok_or_else(|| Error::not_found("approval", &key))?;
                    return Err(already(&current));
                }
                let agent = AgentId::from_stored(row.agent_id.clone());
                // The agent's rules (and so its allowances) changed: every node re-reads them.
                store::agents::bump_config(conn, &agent)?;
                let card = row.card_id.clone().map(CardId::from_stored);
                let kind = match action {
                    ApprovalAction::Approve => "approval_granted",
                    ApprovalAction::Deny => "approval_denied",
                };
                let data = serde_json::json!({
                        "approval_id": row.id,
                        "authorization_id": row.authorization_id,
                        "rule": row.rule,
                        "decided_by": decided_by,
                        "allowance": until.map(|until| serde_json::json!({
                            "amount": {"amount": row.cap_amount, "currency": row.cap_currency},
                            "until": ts(until),
                            "single_use": row.single_use,
                        })),
                });
                let event = Event {
                    id: EventId::generate(),
                    agent_id: agent,
                    card_id: card,
                    kind: kind.to_owned(),
                    actor,
                    reason: None,
                    data: Some(data),
                    created_at: now,
                };
                store::events::record(conn, &event)?;
                let view = load_view(conn, &key, now_ms)?.ok_or_else(|| Error::not_found("approval", &key))?;
                Ok((view, row.deferred.is_some()))
            })
            .await
    }

    /// Stores a mandate the agent asked for, with its event in the agent's trail, unless it has
    /// `max_pending` waiting for people already (429).
    pub async fn ask_mandate(&self, m: Asked, event: Event, max_pending: i64) -> Result<ApprovalView> {
        let names = |list: &[String]| serde_json::to_string(list).map_err(|e| Error::Internal(e.to_string()));
        let row = ApprovalRow {
            hosts: Some(names(&m.hosts)?),
            merchants: Some(names(&m.merchants)?),
            id: m.id,
            agent_id: m.agent.to_string(),
            card_id: None,
            // No declined attempt asked: the agent did, before spending.
            authorization_id: String::new(),
            rail: match (m.hosts.is_empty(), m.merchants.is_empty()) {
                (false, true) => "usdc",
                (true, false) => "card",
                _ => "any",
            }
            .to_owned(),
            rule: MANDATE_RULE.to_owned(),
            single_use: false,
            amount: m.amount,
            currency: m.currency.code().to_owned(),
            cap_amount: m.amount,
            cap_currency: m.currency.code().to_owned(),
            cap: None,
            spent: None,
            // An approval's allowance lasts until then.
            window_end_at: Some(m.until_ms),
            merchant_id: None,
            merchant_name: m.purpose.clone(),
            mcc: None,
            country: None,
            trace_id: m.trace_id,
            deferred: None,
            status: ApprovalStatus::Pending.as_str().to_owned(),
            expires_at: m.expires_at,
            decided_by: None,
            decided_at: None,
            allowance_until: None,
            notify_status: if m.notified { "pending" } else { "off" }.to_owned(),
            notify_attempts: 0,
            notify_error: None,
            created_at: m.now_ms,
            updated_at: m.now_ms,
            deferred_result: None,
            purpose: Some(m.purpose),
        };
        self.db
            .write(move |conn| {
                if store::approvals::pending_mandates(conn, &row.agent_id, row.created_at)? >= max_pending {
                    return Err(Error::coded(
                        ErrorCode::TooManyMandates,
                        format!("{max_pending} mandates already wait for a person's decision; wait for them first"),
                    ));
                }
                store::approvals::insert(conn, &row)?;
                store::events::record(conn, &event)?;
                load_view(conn, &row.id, row.created_at)?.ok_or_else(|| Error::not_found("approval", &row.id))
            })
            .await
    }

    /// Requests whose Slack message is still to be sent.
    pub async fn unsent(&self, limit: i64) -> Result<Vec<String>> {
        self.db.read(move |conn| store::approvals::unsent(conn, limit)).await
    }

    pub async fn set_notified(
        &self,
        id: &str,
        status: &'static str,
        attempts: i32,
        error: Option<String>,
    ) -> Result<()> {
        let (id, now) = (id.to_owned(), now_ms());
        self.db
            .write(move |conn| store::approvals::set_notified(conn, &id, status, attempts, error.as_deref(), now))
            .await
    }
}
