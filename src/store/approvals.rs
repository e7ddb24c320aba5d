//! Approval requests and what people decided about them.

use diesel::prelude::*;

use super::DbConnection;
use super::ledger::AuthorizationRow;
use super::schema::approvals;
use crate::domain::approval::{Allowance, ApprovalStatus, Ask, MANDATE_RULE, Mandate};
use crate::domain::ids::{AgentId, ApprovalId, CardId};
use crate::error::Result;

#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Insertable)]
#[diesel(table_name = approvals)]
#[diesel(treat_none_as_default_value = false)]
pub struct ApprovalRow {
    pub id: String,
    pub agent_id: String,
    pub card_id: Option<String>,
    pub authorization_id: String,
    pub rail: String,
    pub rule: String,
    pub single_use: bool,
    pub amount: i64,
    pub currency: String,
    pub cap_amount: i64,
    pub cap_currency: String,
    pub cap: Option<i64>,
    pub spent: Option<i64>,
    pub window_end_at: Option<i64>,
    pub merchant_id: Option<String>,
    pub merchant_name: String,
    pub mcc: Option<String>,
    pub country: Option<String>,
    pub trace_id: Option<String>,
    pub deferred: Option<String>,
    pub status: String,
    pub expires_at: i64,
    pub decided_by: Option<String>,
    pub decided_at: Option<i64>,
    pub allowance_until: Option<i64>,
    pub notify_status: String,
    pub notify_attempts: i32,
    pub notify_error: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    /// What an approved deferred fetch came to (JSON the rail replays).
    pub deferred_result: Option<String>,
    /// A mandate's: why the agent asks, and the hosts and merchants it may pay (JSON arrays).
    pub purpose: Option<String>,
    pub hosts: Option<String>,
    pub merchants: Option<String>,
}

impl ApprovalRow {
    /// A mandate's hosts or merchants, from their stored JSON.
    pub fn names(stored: Option<&str>) -> Vec<String> {
        stored.and_then(|s| serde_json::from_str(s).ok()).unwrap_or_default()
    }
}

/// A request for a person's approval of what `authorization` asked.
pub struct Asking<'a> {
    pub authorization: &'a AuthorizationRow,
    pub ask: &'a Ask,
    /// What to do once approved (JSON the rail replays), if the rail waits for it.
    pub deferred: Option<&'a str>,
    pub expires_at: i64,
    /// Whether a notifier will post it (else its notification is `off`).
    pub notified: bool,
    pub now_ms: i64,
}

/// Stores the request, or finds the same request still open; returns its id and whether it is new.
pub fn ask(conn: &mut DbConnection, asking: Asking<'_>) -> Result<(String, bool)> {
    let Asking { authorization: row, ask, deferred, expires_at, notified, now_ms } = asking;
    let request = ApprovalRow {
        id: ApprovalId::generate().to_string(),
        agent_id: row.agent_id.clone(),
        card_id: row.card_id.clone(),
        authorization_id: row.id.clone(),
        rail: row.rail.as_str().to_owned(),
        rule: row.rule.clone().unwrap_or_default(),
        single_use: ask.single_use,
        amount: row.amount,
        currency: row.currency.clone(),
        cap_amount: ask.amount,
        cap_currency: ask.currency.code().to_owned(),
        cap: ask.cap,
        spent: ask.spent,
        window_end_at: ask.window_end_ms,
        merchant_id: row.merchant_id.clone(),
        merchant_name: row.merchant_name.clone(),
        mcc: row.mcc.clone(),
        country: row.country.clone(),
        trace_id: row.trace_id.clone(),
        deferred: deferred.map(str::to_owned),
        status: ApprovalStatus::Pending.as_str().to_owned(),
        expires_at,
        decided_by: None,
        decided_at: None,
        allowance_until: None,
        notify_status: if notified { "pending" } else { "off" }.to_owned(),
        notify_attempts: 0,
        notify_error: None,
        created_at: now_ms,
        updated_at: now_ms,
        deferred_result: None,
        purpose: None,
        hosts: None,
        merchants: None,
    };
    if let Some(open) = find_pending_like(conn, &request, now_ms)? {
        return Ok((open.id, false));
    }
    insert(conn, &request)?;
    Ok((request.id, true))
}

pub fn insert(conn: &mut DbConnection, row: &ApprovalRow) -> Result<()> {
    diesel::insert_into(approvals::table).values(row).execute(conn)?;
    Ok(())
}

pub fn find(conn: &mut DbConnection, id: &str) -> Result<Option<ApprovalRow>> {
    Ok(approvals::table.find(id).select(ApprovalRow::as_select()).get_result(conn).optional()?)
}

/// A request still waiting for a person that asks the same thing (same payer, rule, merchant and
/// amount): an agent retrying before anyone decided asks once, not once per retry.
pub fn find_pending_like(conn: &mut DbConnection, row: &ApprovalRow, now_ms: i64) -> Result<Option<ApprovalRow>> {
    // A deferred payment is one request: another with the same terms is its own approval.
    if row.deferred.is_some() {
        return Ok(None);
    }
    let mut query = approvals::table
        .filter(approvals::agent_id.eq(&row.agent_id))
        .filter(approvals::status.eq("pending"))
        .filter(approvals::expires_at.gt(now_ms))
        .filter(approvals::rule.eq(&row.rule))
        .filter(approvals::merchant_name.eq(&row.merchant_name))
        .filter(approvals::amount.eq(row.amount))
        .filter(approvals::currency.eq(&row.currency))
        .select(ApprovalRow::as_select())
        .into_boxed();
    query = match &row.card_id {
        Some(card) => query.filter(approvals::card_id.eq(card)),
        None => query.filter(approvals::card_id.is_null()),
    };
    Ok(query.filter(approvals::deferred.is_null()).first(conn).optional()?)
}

/// Newest first, optionally only those in one stored status, before `cursor` (an approval id).
pub fn list(
    conn: &mut DbConnection,
    status: Option<&str>,
    agent: Option<&AgentId>,
    cursor: Option<&str>,
    limit: i64,
) -> Result<Vec<ApprovalRow>> {
    let mut query =
        approvals::table.select(ApprovalRow::as_select()).order(approvals::id.desc()).limit(limit).into_boxed();
    if let Some(status) = status {
        query = query.filter(approvals::status.eq(status.to_owned()));
    }
    if let Some(agent) = agent {
        query = query.filter(approvals::agent_id.eq(agent.as_str().to_owned()));
    }
    if let Some(cursor) = cursor {
        query = query.filter(approvals::id.lt(cursor.to_owned()));
    }
    Ok(query.load(conn)?)
}

/// Records a person's decision, if the request is still pending and unexpired; false otherwise
/// (decided already, or expired): the first decision is the only one.
pub fn decide(
    conn: &mut DbConnection,
    id: &str,
    status: &str,
    by: &str,
    allowance_until: Option<i64>,
    now_ms: i64,
) -> Result<bool> {
    let changed = diesel::update(
        approvals::table.find(id).filter(approvals::status.eq("pending")).filter(approvals::expires_at.gt(now_ms)),
    )
    .set((
        approvals::status.eq(status),
        approvals::decided_by.eq(by),
        approvals::decided_at.eq(now_ms),
        approvals::allowance_until.eq(allowance_until),
        approvals::updated_at.eq(now_ms),
    ))
    .execute(conn)?;
    Ok(changed == 1)
}

/// How many mandates the agent asked for still wait for a person (pending, unexpired).
pub fn pending_mandates(conn: &mut DbConnection, agent: &str, now_ms: i64) -> Result<i64> {
    Ok(approvals::table
        .filter(approvals::agent_id.eq(agent))
        .filter(approvals::status.eq("pending"))
        .filter(approvals::rule.eq(MANDATE_RULE))
        .filter(approvals::expires_at.gt(now_ms))
        .count()
        .get_result(conn)?)
}

/// The allowances in force for an agent: approved, and not yet ended.
pub fn allowances(conn: &mut DbConnection, agent: &AgentId, now_ms: i64) -> Result<Vec<Allowance>> {
    let rows: Vec<ApprovalRow> = approvals::table
        .filter(approvals::agent_id.eq(agent.as_str()))
        .filter(approvals::status.eq("approved"))
        .filter(approvals::allowance_until.gt(now_ms))
        .select(ApprovalRow::as_select())
        .load(conn)?;
    Ok(rows
        .into_iter()
        .map(|r| Allowance {
            mandate: (r.rule == MANDATE_RULE).then(|| Mandate {
                hosts: ApprovalRow::names(r.hosts.as_deref()),
                merchants: ApprovalRow::names(r.merchants.as_deref()),
                used: 0,
            }),
            approval_id: r.id,
            rule: r.rule,
            card_id: r.card_id.map(CardId::from_stored),
            trace_id: r.trace_id,
            amount: r.cap_amount,
            until_ms: r.allowance_until.unwrap_or(0),
            single_use: r.single_use,
        })
        .collect())
}

/// Requests whose Slack message is still to be sent (after a restart, or a full queue).
pub fn unsent(conn: &mut DbConnection, limit: i64) -> Result<Vec<String>> {
    Ok(approvals::table
        .filter(approvals::notify_status.eq("pending"))
        .select(approvals::id)
        .order(approvals::id)
        .limit(limit)
        .load(conn)?)
}

pub fn set_notified(
    conn: &mut DbConnection,
    id: &str,
    status: &str,
    attempts: i32,
    error: Option<&str>,
    now_ms: i64,
) -> Result<()> {
    diesel::update(approvals::table.find(id))
        .set((
            approvals::notify_status.eq(status),
            approvals::notify_attempts.eq(attempts),
            approvals::notify_error.eq(error),
            approvals::updated_at.eq(now_ms),
        ))
        .execute(conn)?;
    Ok(())
}

/// Approved deferred payments with no result yet, decided before `decided_before`: a process
/// that died while paying one leaves it here for the sweep.
pub fn unfinished_deferred(conn: &mut DbConnection, decided_before: i64, limit: i64) -> Result<Vec<String>> {
    Ok(approvals::table
        .filter(approvals::status.eq("approved"))
        .filter(approvals::deferred.is_not_null())
        .filter(approvals::deferred_result.is_null())
        .filter(approvals::decided_at.lt(decided_before))
        .select(approvals::id)
        .order(approvals::id)
        .limit(limit)
        .load(conn)?)
}

/// Records what a deferred payment came to, once: false if a result was recorded already.
pub fn set_deferred_result(conn: &mut DbConnection, id: &str, result: &str, now_ms: i64) -> Result<bool> {
    let changed = diesel::update(approvals::table.find(id).filter(approvals::deferred_result.is_null()))
        .set((approvals::deferred_result.eq(result), approvals::updated_at.eq(now_ms)))
        .execute(conn)?;
    Ok(changed == 1)
}
