//! Authorizations in the writer: the snapshot brought up to the locked version, `policy::evaluate`
//! (or the processor's own verdict) decides, `core::Hold` holds, and the rows follow. Also the
//! retries, the processor's overrides, the abandoned ones and the dry runs.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use super::{AbandonCmd, AuthorizeCmd, Locked, Recorded, Writer};
use crate::cache::{self, Versioned};
use crate::domain::agent::Agent;
use crate::domain::authorization::{AuthRequest, Crossed, Decision, DeclineReason};
use crate::domain::card::Card;
use crate::domain::event::Event;
use crate::domain::ids::{AgentId, AuthorizationId, CardId, DisagreementId};
use crate::domain::ledger::{Balance, HoldStatus};
use crate::error::{Error, ErrorCode, Result};
use crate::ledger::core::{Hold, Release};
use crate::ledger::views::AuthOutcome;
use crate::ledger::{Authorize, Payer, Verdict};
use crate::policy::{self, Snapshot};
use crate::store::approvals::Asking;
use crate::store::ledger::AuthorizationRow;
use crate::store::policies::DisagreementRow;
use crate::store::{self, DbConnection};

/// The agent and, for a card payment, the card, as of the locked version.
type Snapshots = (Arc<Versioned<Agent>>, Option<Arc<Versioned<Card>>>);

impl Writer {
    pub(super) fn authorize(
        &mut self,
        conn: &mut DbConnection,
        c: &AuthorizeCmd,
        locked: &mut HashMap<AgentId, Locked>,
        recorded: &mut Recorded,
        now: jiff::Timestamp,
    ) -> Result<AuthOutcome> {
        let key = (c.auth.source, c.auth.external_id.clone());
        let agent_id = &c.agent.value.id;
        // The ancestors, locked with the agent: their limits and freezes decide too.
        let mut ancestors = Vec::with_capacity(c.agent.value.ancestors.len());
        for id in &c.agent.value.ancestors {
            let Some(la) = locked.get_mut(id) else {
                return Err(Error::Internal(format!("ancestor {id} was not locked with its child")));
            };
            ancestors.push(self.locked_agent(conn, id, la, None)?);
        }
        let Some(l) = locked.get_mut(agent_id) else {
            return Ok(AuthOutcome::failed(DeclineReason::UnknownCard, &c.auth.request));
        };
        if let Some(row) = recorded.get(&key) {
            let overridden = c.verdict == Some(Verdict::Approved)
                && row.posted == 0
                && row.held == 0
                && (row.status == HoldStatus::Declined || row.reason.is_some());
            let withdrawn =
                c.verdict == Some(Verdict::Declined) && row.status == HoldStatus::Pending && row.posted == 0;
            if withdrawn {
                // The processor declined what spendgate approved (its answer came too late, or its own
                // controls said no): nothing will be captured, so the hold goes.
                self.write_authorizations(conn)?;
                let mut row = row.clone();
                row.reason = Some(DeclineReason::ProcessorDeclined.as_str().to_owned());
                let external_id = format!("declined:{}", row.id);
                self.step(conn, &mut row, l, &external_id, now.as_millisecond(), |hold, balance| {
                    Ok(vec![hold.release_all(balance, Release::Void)])
                })?;
                let data = serde_json::json!({"authorization_id": row.id, "previous_reason": null});
                self.record_event(conn, l, &event(&row, "authorization_overridden", row.reason.clone(), data, now))?;
                let outcome = AuthOutcome::from_row(&row, l.currency, l.ledger.balance.available(), false);
                recorded.insert(key, row);
                return Ok(outcome);
            }
            if !overridden {
                return Ok(AuthOutcome::from_row(row, l.currency, l.ledger.balance.available(), true));
            }
        }
        let (agent, card) = match self.fresh_snapshots(conn, c, l)? {
            Some(fresh) => fresh,
            None => return Ok(AuthOutcome::failed(DeclineReason::UnknownCard, &c.auth.request)),
        };
        let card = card.as_ref().map(|c| &c.value);

        // The card's active trace tags requests that carry none, for trace limits as for the record.
        let tagged;
        let request = match (&c.auth.request.trace_id, card.and_then(|c| c.trace_id.as_ref())) {
            (None, Some(trace)) => {
                tagged = AuthRequest { trace_id: Some(trace.clone()), ..c.auth.request.clone() };
                &tagged
            }
            _ => &c.auth.request,
        };
        let version = l.ledger.config_version;
        let book = self.books.get_mut(agent_id).expect("locked agents have a book");
        if c.verdict.is_none() {
            // The running totals follow the rules they sum for: a new version starts them over.
            if book.totals_of != Some(version) {
                book.totals.clear();
                book.totals_of = Some(version);
            }
            let (spends, totals) = book.spends_and_totals();
            totals.prepare(request, &agent.value, card, spends, self.catalog, now);
        }
        let book = self.books.get(agent_id).expect("locked agents have a book");
        let above: Vec<policy::Ancestor<'_>> = ancestors
            .iter()
            .map(|a| policy::Ancestor {
                agent: &a.value,
                spends: self.books.get(&a.value.id).map_or(&[][..], |b| b.spends()),
            })
            .collect();
        let rates = self.rates.read().unwrap_or_else(|e| e.into_inner()).clone();
        let allowances = book.allowances(&agent.value.allowances);
        let snap = Snapshot {
            agent: &agent.value,
            card,
            card_used: card.is_some_and(|card| book.card_used(&card.id)),
            spends: book.spends(),
            available: l.ledger.balance.available(),
            rates: &rates,
            fx: self.fx,
            catalog: self.catalog,
            allowances: &allowances,
            totals: Some(&book.totals),
            ancestors: &above,
        };
        let decision = match c.verdict {
            Some(verdict) => processor_decision(verdict, request, &snap, now)?,
            None if Instant::now() > c.deadline => Decision::decline(DeclineReason::Timeout, None),
            None => unpayable_onchain(policy::evaluate(request, &snap, now), c.auth.onchain_short),
        };
        let shadowed = match c.verdict {
            None if !c.dry_run && Instant::now() <= c.deadline => shadow_decisions(request, &snap, now),
            _ => Vec::new(),
        };
        let trace = request.trace_id.clone();
        if c.dry_run {
            // Held on a copy of the balance: nothing is recorded, so there is nothing to name either
            // (`Ledger::dry_run` marks the answer).
            let mut balance = l.ledger.balance;
            let hold = hold_for(&decision, &mut balance);
            let row = new_row(&c.auth, agent_id, card, l, &decision, &hold, trace, now.as_millisecond());
            return Ok(AuthOutcome {
                authorization_id: None,
                ..AuthOutcome::from_row(&row, l.currency, balance.available(), false)
            });
        }
        if let Some(previous) = recorded.get(&key).cloned() {
            return self.approve_after_all(conn, previous, &decision, l, recorded, now);
        }

        let hold = hold_for(&decision, &mut l.ledger.balance);
        let mut row = new_row(&c.auth, agent_id, card, l, &decision, &hold, trace, now.as_millisecond());
        if let (Some(ask), None) = (&decision.ask, c.verdict) {
            let (id, new) = store::approvals::ask(
                conn,
                Asking {
                    authorization: &row,
                    ask,
                    deferred: c.auth.deferred.as_deref(),
                    expires_at: now.as_millisecond() + self.approval_ttl_ms,
                    notified: self.notify.is_some(),
                    now_ms: now.as_millisecond(),
                },
            )?;
            if new {
                self.asked.push(id.clone());
            }
            row.approval_id = Some(id);
        }
        self.chain(l, &mut row);
        self.unwritten.push(row.clone());
        for (version_id, shadow) in
            shadowed.into_iter().filter(|(_, s)| s.decline != decision.decline || s.rule != decision.rule)
        {
            self.disagreements.push(DisagreementRow {
                id: DisagreementId::generate().to_string(),
                version_id,
                authorization_id: row.id.clone(),
                agent_id: row.agent_id.clone(),
                live_reason: decision.decline.map(|r| r.as_str().to_owned()),
                live_rule: decision.rule.clone(),
                shadow_reason: shadow.decline.map(|r| r.as_str().to_owned()),
                shadow_rule: shadow.rule,
                created_at: now.as_millisecond(),
            });
        }
        let mut payment_stored = false;
        if decision.approved() {
            let lineage = l.ancestors.clone();
            self.book_row(&row, &lineage);
            if let Some(payment) = &c.auth.payment {
                payment_stored = self.stage_payment(conn, payment, &row.id)?;
            }
            let spent = spent_on(&row, card);
            for crossed in &decision.crossed {
                self.record_event(conn, l, &threshold_event(&row, &agent.value, &spent, crossed, now))?;
            }
            l.spent_by = Some(spent);
        } else {
            self.record_event(conn, l, &decline_event(&row, now))?;
        }
        let mut outcome = AuthOutcome::from_row(&row, l.currency, l.ledger.balance.available(), false);
        outcome.payment_stored = payment_stored;
        let label = if decision.approved() { "approved" } else { "declined" };
        metrics::counter!("spendgate_decisions_total", "outcome" => label).increment(1);
        recorded.insert(key, row);
        Ok(outcome)
    }

    /// The agent and card as of the locked `config_version`: a snapshot older than it is read
    /// again under the lock. None when the card is gone.
    fn fresh_snapshots(
        &mut self,
        conn: &mut DbConnection,
        c: &AuthorizeCmd,
        l: &mut Locked,
    ) -> Result<Option<Snapshots>> {
        let version = l.ledger.config_version;
        let agent = self.locked_agent(conn, &c.agent.value.id, l, Some(&c.agent))?;
        let card = match &c.card {
            None => None,
            Some(card) if card.version == version => Some(card.clone()),
            Some(card) => match cache::load_card(conn, &card.value.id)? {
                Some(fresh) => {
                    let fresh = Arc::new(fresh);
                    self.snapshots.put_card(fresh.clone());
                    Some(fresh)
                }
                None => return Ok(None),
            },
        };
        Ok(Some((agent, card)))
    }

    /// The processor approved what spendgate declined (or answered too late for): the attempt
    /// becomes a hold after all, and the card's trail says whose decision it was.
    fn approve_after_all(
        &mut self,
        conn: &mut DbConnection,
        mut row: AuthorizationRow,
        decision: &Decision,
        l: &mut Locked,
        recorded: &mut Recorded,
        now: jiff::Timestamp,
    ) -> Result<AuthOutcome> {
        self.write_authorizations(conn)?;
        let amounts = decision.amounts.ok_or_else(|| Error::Internal("an approval without amounts".into()))?;
        let previous = row.reason.take();
        // The approval it asked for, if any, was not what let it through.
        row.approval_id = None;
        row.rule = decision.rule.clone();
        let (cap, card) = (amounts.agent.amount, amounts.card.amount);
        self.step(conn, &mut row, l, "", now.as_millisecond(), |hold, balance| {
            hold.approve_after_all(balance, cap, card).map(|()| Vec::new())
        })?;
        let data = serde_json::json!({"authorization_id": row.id, "previous_reason": previous});
        self.record_event(conn, l, &event(&row, "authorization_overridden", previous.clone(), data, now))?;
        let outcome = AuthOutcome::from_row(&row, l.currency, l.ledger.balance.available(), false);
        recorded.insert((row.source, row.external_id.clone()), row);
        Ok(outcome)
    }

    /// The caller answered "declined" (the budget ran out, or the decision failed): the decline
    /// is recorded, and a hold committed for it after all is released with its unsent payment.
    pub(super) fn abandon(
        &mut self,
        conn: &mut DbConnection,
        c: &AbandonCmd,
        locked: &mut HashMap<AgentId, Locked>,
        recorded: &mut Recorded,
        now: jiff::Timestamp,
    ) -> Result<()> {
        let key = (c.auth.source, c.auth.external_id.clone());
        if let Some(row) = recorded.get(&key).cloned() {
            let agent = AgentId::from_stored(row.agent_id.clone());
            let Some(l) = locked.get_mut(&agent) else { return Ok(()) };
            if row.status == HoldStatus::Pending && row.reason.is_none() {
                let mut row = row;
                row.reason = Some(c.reason.as_str().to_owned());
                let external_id = format!("abandoned:{}", row.id);
                self.step(conn, &mut row, l, &external_id, now.as_millisecond(), |hold, balance| {
                    Ok(vec![hold.release_all(balance, Release::Void)])
                })?;
                // Its caller was told "declined": the payment committed with the hold is never sent.
                store::x402::fail_unsent(conn, &row.id, "the decision came after its budget", now.as_millisecond())?;
                recorded.insert(key, row);
            }
            return Ok(());
        }
        let (agent_id, card) = match &c.auth.payer {
            Payer::Card(id) => match cache::load_card(conn, id)? {
                Some(card) => (card.value.agent_id.clone(), Some(card.value)),
                None => return Ok(()),
            },
            Payer::Wallet(agent) => (agent.clone(), None),
        };
        let Some(l) = locked.get_mut(&agent_id) else { return Ok(()) };
        let decision = Decision::decline(c.reason, None);
        let trace = c.auth.request.trace_id.clone();
        let hold = hold_for(&decision, &mut l.ledger.balance);
        let mut row = new_row(&c.auth, &agent_id, card.as_ref(), l, &decision, &hold, trace, now.as_millisecond());
        self.chain(l, &mut row);
        self.unwritten.push(row.clone());
        self.record_event(conn, l, &decline_event(&row, now))?;
        recorded.insert(key, row);
        Ok(())
    }
}

/// What each draft in shadow that covers the request decides: the agent's policy, or this card's,
/// replaced by the draft. Its windows are counted by a scan: the running totals sum the live rules.
fn shadow_decisions(request: &AuthRequest, snap: &Snapshot<'_>, now: jiff::Timestamp) -> Vec<(String, Decision)> {
    let mut out = Vec::new();
    for shadow in &snap.agent.shadows {
        let decision = match (&shadow.card_id, snap.card) {
            (None, _) => {
                let agent = Agent { policy: shadow.policy.clone(), ..snap.agent.clone() };
                policy::evaluate(request, &Snapshot { agent: &agent, totals: None, ..*snap }, now)
            }
            (Some(id), Some(card)) if *id == card.id => {
                let card = Card { policy: shadow.policy.clone(), ..card.clone() };
                policy::evaluate(request, &Snapshot { card: Some(&card), totals: None, ..*snap }, now)
            }
            _ => continue,
        };
        out.push((shadow.version_id.clone(), decision));
    }
    out
}

/// The decision's hold: an approval holds its amount in `balance`; a decline holds nothing.
fn hold_for(decision: &Decision, balance: &mut Balance) -> Hold {
    let (cap, card) = decision.amounts.map_or((0, 0), |a| (a.agent.amount, a.card.amount));
    if decision.approved() { Hold::approve(balance, cap, card) } else { Hold::declined(cap, card) }
}

/// The row of a new decision and its hold.
#[allow(clippy::too_many_arguments)]
fn new_row(
    auth: &Authorize,
    agent_id: &AgentId,
    card: Option<&Card>,
    l: &Locked,
    decision: &Decision,
    hold: &Hold,
    trace: Option<String>,
    now_ms: i64,
) -> AuthorizationRow {
    let req = &auth.request;
    let mut row = AuthorizationRow {
        id: AuthorizationId::generate().to_string(),
        source: auth.source,
        external_id: auth.external_id.clone(),
        agent_id: agent_id.to_string(),
        card_id: card.map(|c| c.id.to_string()),
        rail: req.rail,
        status: hold.status,
        reason: decision.decline.map(|r| r.as_str().to_owned()),
        rule: decision.rule.clone(),
        amount: req.amount,
        currency: req.currency.clone(),
        cap_amount: hold.cap_amount,
        cap_currency: l.currency.code().to_owned(),
        card_amount: hold.card_amount,
        card_currency: card.map_or(l.currency, |c| c.currency).code().to_owned(),
        fx_rate: decision.fx.as_ref().map(|f| f.rate.clone()),
        fx_date: decision.fx.as_ref().map(|f| f.date.clone()),
        fx_source: decision.fx.as_ref().and_then(|f| f.source).map(|s| s.as_str().to_owned()),
        held: 0,
        posted: 0,
        counted: 0,
        counted_card: 0,
        refunded: 0,
        merchant_id: req.merchant.id.clone(),
        merchant_name: req.merchant.name.clone(),
        mcc: req.merchant.mcc.clone(),
        country: req.merchant.country.clone(),
        trace_id: trace,
        seq: l.ledger.seq,
        authorized_at: now_ms,
        updated_at: now_ms,
        approval_id: decision.allowance.clone(),
        chain_n: 0,
        recipient: req.recipient.as_ref().map(|r| r.account.clone()),
        recipient_named_by: req.recipient.as_ref().map(|r| r.named_by),
        max_amount: req.max_amount,
    };
    crate::ledger::book::set_hold(&mut row, hold);
    row
}

/// What a processor decided on its own, in the agent's and card's currencies.
fn processor_decision(
    verdict: Verdict,
    request: &AuthRequest,
    snap: &Snapshot<'_>,
    now: jiff::Timestamp,
) -> Result<Decision> {
    let rule = Some("processor".to_owned());
    match (verdict, policy::amounts_of(request, snap, now)) {
        (Verdict::Approved, Ok((amounts, fx))) => Ok(Decision {
            decline: None,
            rule,
            amounts: Some(amounts),
            fx,
            allowance: None,
            ask: None,
            crossed: Vec::new(),
        }),
        (Verdict::Approved, Err(_)) => Err(Error::coded(
            ErrorCode::UnsupportedCurrency,
            format!("cannot convert {} to the agent's currency to record the hold", request.currency),
        )),
        (Verdict::Declined, converted) => {
            let (amounts, fx) = converted.map_or((None, None), |(a, fx)| (Some(a), fx));
            Ok(Decision { rule, amounts, fx, ..Decision::decline(DeclineReason::ProcessorDeclined, None) })
        }
    }
}

/// An event of an authorization's trail, by the ledger (no API key).
fn event(
    row: &AuthorizationRow,
    kind: &str,
    reason: Option<String>,
    data: serde_json::Value,
    now: jiff::Timestamp,
) -> Event {
    let agent = AgentId::from_stored(row.agent_id.clone());
    let card = row.card_id.clone().map(CardId::from_stored);
    Event::by_spendgate(&agent, card.as_ref(), kind, now).reason(reason).data(data)
}

/// What an approval was for, as an alert names it.
fn spent_on(row: &AuthorizationRow, card: Option<&Card>) -> serde_json::Value {
    serde_json::json!({
        "authorization_id": row.id,
        "trace_id": row.trace_id,
        "service": card.map(|card| &card.label),
        "merchant": {"id": row.merchant_id, "name": row.merchant_name},
    })
}

/// A limit past one of its alert thresholds, with what it cost and where.
fn threshold_event(
    row: &AuthorizationRow,
    agent: &Agent,
    spent: &serde_json::Value,
    c: &Crossed,
    now: jiff::Timestamp,
) -> Event {
    let money = |amount: i64| serde_json::json!({"amount": amount, "currency": c.currency.code()});
    let window_start = jiff::Timestamp::from_millisecond(c.window_start_ms).map(|t| t.to_string()).ok();
    let mut data = serde_json::json!({
        "agent_name": agent.name,
        "rule": c.rule,
        "percent": c.percent,
        "cap": money(c.cap),
        "used": money(c.used),
        "window_start": window_start,
    });
    if let (Some(data), Some(spent)) = (data.as_object_mut(), spent.as_object()) {
        data.extend(spent.clone());
    }
    event(row, "limit_threshold_crossed", None, data, now)
}

/// Declines show in the card's trail, attempts on frozen cards included.
fn decline_event(row: &AuthorizationRow, now: jiff::Timestamp) -> Event {
    let data = serde_json::json!({
        "authorization_id": row.id,
        "reason": row.reason,
        "rule": row.rule,
        "amount": {"amount": row.amount, "currency": row.currency},
        "merchant": {"id": row.merchant_id, "name": row.merchant_name, "mcc": row.mcc, "country": row.country},
        "trace_id": row.trace_id,
        "approval_id": row.approval_id,
    });
    event(row, "authorization_declined", row.reason.clone(), data, now)
}

/// What the policy approves but the wallet cannot pay on the chain is declined, with what the
/// policy measured.
fn unpayable_onchain(decision: Decision, onchain_short: bool) -> Decision {
    if !onchain_short || !decision.approved() {
        return decision;
    }
    let rule = Some("wallet.onchain_balance".to_owned());
    Decision {
        amounts: decision.amounts,
        fx: decision.fx,
        ..Decision::decline(DeclineReason::InsufficientOnchainFunds, rule)
    }
}
