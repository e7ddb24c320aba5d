//! Money between a treasury and its agents (funding, drains and top-ups), between a parent and its
//! child (allocations, and a child's drains), and what people record as backing a treasury. Each is
//! a step of `core` on the locked treasury and agents, saved as each side's row, each the next link
//! of its own audit chain.

use std::collections::HashMap;

use serde_json::json;

use super::{AllocateCmd, DepositCmd, DrainCmd, FundCmd, Locked, TreasuryCmd, Writer};
use crate::domain::agent::AgentStatus;
use crate::domain::event::Event;
use crate::domain::ids::{AgentId, TransferId, TreasuryTransferId};
use crate::domain::ledger::{TransferKind, TreasuryKind};
use crate::domain::money::Currency;
use crate::error::{Error, ErrorCode, Result};
use crate::ledger::Actor;
use crate::ledger::core::{self, Moved, Refusal};
use crate::ledger::views::{TransferView, TreasuryTransferView};
use crate::store::DbConnection;
use crate::store::deposits::{self, DepositRow};
use crate::store::ledger::{self as rows, TransferRow};
use crate::store::treasury::{self, LockedTreasury, TreasuryTransferRow};

/// The treasuries a batch has locked, by currency.
pub(super) type Treasuries = HashMap<Currency, LockedTreasury>;

/// What a rule moves is spendgate's own doing.
fn by_spendgate(reason: String) -> Actor {
    Actor { key: "spendgate".to_owned(), reason: Some(reason) }
}

impl Writer {
    /// Treasury → agent, by a person. Idempotent by the caller's id among the agent's transfers.
    pub(super) fn fund(
        &mut self,
        conn: &mut DbConnection,
        c: &FundCmd,
        locked: &mut HashMap<AgentId, Locked>,
        treasuries: &mut Treasuries,
        now_ms: i64,
    ) -> Result<(TransferView, bool)> {
        let l = locked.get_mut(&c.agent_id).ok_or_else(|| Error::not_found("agent", c.agent_id.as_str()))?;
        let same = |first: &TransferRow| {
            first.kind == TransferKind::Fund
                && first.amount == c.amount.amount
                && first.currency == c.amount.currency.code()
        };
        if let Some(replayed) = replay(conn, &c.agent_id, &c.external_id, same)? {
            return Ok(replayed);
        }
        if c.amount.currency != l.currency {
            return Err(Error::coded(
                ErrorCode::CurrencyMismatch,
                format!("the agent's balance is in {}, not {}", l.currency, c.amount.currency),
            ));
        }
        let agent = self.locked_agent(conn, &c.agent_id, l, None)?;
        let max_balance = agent.value.policy.funding.as_ref().and_then(|f| f.max_balance);
        let t = treasury_of(treasuries, l.currency)?;
        let moved = core::fund(&mut t.treasury, &mut l.ledger.balance, c.amount.amount, max_balance)
            .map_err(|r| refused(r, l.currency))?;
        let row = self.move_with_agent(conn, &c.agent_id, l, t, moved, &c.external_id, &c.actor, now_ms)?;
        Ok((TransferView::from_row(&row)?, false))
    }

    /// Agent → treasury of what is available (all of it when no amount is named), never what is held.
    pub(super) fn drain(
        &mut self,
        conn: &mut DbConnection,
        c: &DrainCmd,
        locked: &mut HashMap<AgentId, Locked>,
        treasuries: &mut Treasuries,
        now_ms: i64,
    ) -> Result<(TransferView, bool)> {
        let same = |first: &TransferRow| {
            matches!(first.kind, TransferKind::Drain | TransferKind::AllocationOut)
                && c.amount.is_none_or(|a| a == first.amount)
        };
        if let Some(replayed) = replay(conn, &c.agent_id, &c.external_id, same)? {
            return Ok(replayed);
        }
        let l = locked.get(&c.agent_id).ok_or_else(|| Error::not_found("agent", c.agent_id.as_str()))?;
        // A sub-agent's money goes back to its parent, where it came from.
        if let Some(parent) = l.ancestors.first().cloned() {
            let row = self.between(conn, locked, (&c.agent_id, &parent), c.amount, &c.external_id, &c.actor, now_ms)?;
            return Ok((TransferView::from_row(&row)?, false));
        }
        let l = locked.get_mut(&c.agent_id).ok_or_else(|| Error::not_found("agent", c.agent_id.as_str()))?;
        let t = treasury_of(treasuries, l.currency)?;
        let moved =
            core::drain(&mut t.treasury, &mut l.ledger.balance, c.amount).map_err(|r| refused(r, l.currency))?;
        let row = self.move_with_agent(conn, &c.agent_id, l, t, moved, &c.external_id, &c.actor, now_ms)?;
        Ok((TransferView::from_row(&row)?, false))
    }

    /// Parent → child, by a person. Idempotent by the caller's id among the child's transfers.
    pub(super) fn allocate(
        &mut self,
        conn: &mut DbConnection,
        c: &AllocateCmd,
        locked: &mut HashMap<AgentId, Locked>,
        now_ms: i64,
    ) -> Result<(TransferView, bool)> {
        let same = |first: &TransferRow| first.kind == TransferKind::AllocationIn && first.amount == c.amount;
        if let Some(replayed) = replay(conn, &c.child, &c.external_id, same)? {
            return Ok(replayed);
        }
        let l = locked.get(&c.child).ok_or_else(|| Error::not_found("agent", c.child.as_str()))?;
        let Some(parent) = l.ancestors.first().cloned() else {
            return Err(Error::validation("the agent has no parent to allocate from: fund it from the treasury"));
        };
        let row = self.between(conn, locked, (&parent, &c.child), Some(c.amount), &c.external_id, &c.actor, now_ms)?;
        Ok((TransferView::from_row(&row)?, false))
    }

    /// Available money between a child and its parent, either way: each side a transfer in its own
    /// chain. The caller's id names the child's side (the agent it acted on), which is returned;
    /// the parent's side is `allocation:<that transfer's id>`. Only money into a child is held to
    /// its maximum: what a child gives back was its parent's.
    #[allow(clippy::too_many_arguments)]
    fn between(
        &mut self,
        conn: &mut DbConnection,
        locked: &mut HashMap<AgentId, Locked>,
        (from_id, to_id): (&AgentId, &AgentId),
        amount: Option<i64>,
        external_id: &str,
        actor: &Actor,
        now_ms: i64,
    ) -> Result<TransferRow> {
        let unlocked = || Error::Internal("money between agents that are not both locked".into());
        let to_child = locked.get(to_id).ok_or_else(unlocked)?.ancestors.first() == Some(from_id);
        let to_max = match locked.get_mut(to_id) {
            Some(to) if to_child => {
                let agent = self.locked_agent(conn, to_id, to, None)?;
                agent.value.policy.funding.as_ref().and_then(|f| f.max_balance)
            }
            _ => None,
        };
        let [Some(from), Some(to)] = locked.get_disjoint_mut([from_id, to_id]) else { return Err(unlocked()) };
        let currency = from.currency;
        let (out, into) = core::allocate(&mut from.ledger.balance, &mut to.ledger.balance, amount, to_max)
            .map_err(|r| refused(r, currency))?;
        let ((child, child_l, child_moved), (parent, parent_l, parent_moved)) = if to_child {
            ((to_id, to, into), (from_id, from, out))
        } else {
            ((from_id, from, out), (to_id, to, into))
        };
        let mut child_side = agent_transfer(child, child_moved, external_id, currency, actor, now_ms);
        let parent_id = format!("allocation:{}", child_side.id);
        let mut parent_side = agent_transfer(parent, parent_moved, &parent_id, currency, actor, now_ms);
        self.chain(child_l, &mut child_side);
        rows::insert_transfer(conn, &child_side)?;
        self.chain(parent_l, &mut parent_side);
        rows::insert_transfer(conn, &parent_side)?;
        Ok(child_side)
    }

    /// A deposit into or a withdrawal from a treasury, recorded by a person. Idempotent by the
    /// caller's id among the treasury's movements.
    pub(super) fn record_treasury(
        &mut self,
        conn: &mut DbConnection,
        c: &TreasuryCmd,
        treasuries: &mut Treasuries,
        now_ms: i64,
    ) -> Result<(TreasuryTransferView, bool)> {
        let currency = c.amount.currency;
        if let Some(first) = treasury::find_transfer(conn, currency.code(), &c.external_id)? {
            if first.kind != c.kind || first.amount != c.amount.amount {
                return Err(Error::coded(
                    ErrorCode::IdempotencyConflict,
                    format!("id {} was already used for another movement of the treasury", c.external_id),
                ));
            }
            return Ok((TreasuryTransferView::from_row(&first)?, true));
        }
        let t = treasury_of(treasuries, currency)?;
        match c.kind {
            TreasuryKind::Deposit => core::deposit(&mut t.treasury, c.amount.amount),
            TreasuryKind::Withdrawal => {
                core::withdraw(&mut t.treasury, c.amount.amount).map_err(|r| refused(r, currency))?
            }
            other => return Err(Error::Internal(format!("a person records no {other} of a treasury"))),
        }
        let mut row = treasury_row(currency, &c.external_id, c.kind, c.amount.amount, &c.actor, now_ms);
        row.reference = c.reference.clone();
        self.links.push(crate::store::chain::link(&mut t.chain, &mut row));
        treasury::insert_transfer(conn, &row)?;
        Ok((TreasuryTransferView::from_row(&row)?, false))
    }

    /// A token transfer into the agent's wallet, read on the chain: what came in backs the USD
    /// treasury (a deposit), which funds the agent with it, in one transaction. Neither the agent's
    /// maximum balance nor a deactivation refuses it: the money is already in its wallet (a
    /// deactivated agent's drain then takes it back). An agent whose balance is in another currency
    /// leaves it in the treasury. Once per (network, transaction, log): a second reading of the
    /// same log credits nothing.
    pub(super) fn credit_deposit(
        &mut self,
        conn: &mut DbConnection,
        c: &DepositCmd,
        locked: &mut HashMap<AgentId, Locked>,
        treasuries: &mut Treasuries,
        now_ms: i64,
    ) -> Result<(DepositRow, bool)> {
        let d = &c.deposit;
        if let Some(first) = deposits::find(conn, &d.network, &d.tx_hash, d.log_index)? {
            return Ok((first, true));
        }
        let mut row = DepositRow { currency: Currency::USD.code().to_owned(), created_at: now_ms, ..d.clone() };
        let agent_id = AgentId::from_stored(d.agent_id.clone());
        let l = locked.get_mut(&agent_id).ok_or_else(|| Error::not_found("agent", &d.agent_id))?;
        if row.amount > 0 {
            let external_id = format!("chain:{}:{}:{}", d.network, d.tx_hash, d.log_index);
            let actor = Actor {
                key: "chain".to_owned(),
                reason: Some(format!("deposit to wallet {} on {}", d.address, d.network)),
            };
            let t = treasury_of(treasuries, Currency::USD)?;
            core::deposit(&mut t.treasury, row.amount);
            let mut deposit =
                treasury_row(Currency::USD, &external_id, TreasuryKind::Deposit, row.amount, &actor, now_ms);
            deposit.reference = Some(d.tx_hash.clone());
            self.links.push(crate::store::chain::link(&mut t.chain, &mut deposit));
            treasury::insert_transfer(conn, &deposit)?;
            row.treasury_transfer_id = Some(deposit.id);
            if l.currency == Currency::USD {
                let moved = core::fund(&mut t.treasury, &mut l.ledger.balance, row.amount, None)
                    .map_err(|r| refused(r, Currency::USD))?;
                let funded = self.move_with_agent(conn, &agent_id, l, t, moved, &external_id, &actor, now_ms)?;
                row.transfer_id = Some(funded.id);
            }
        }
        deposits::insert(conn, &row)?;
        Ok((row, false))
    }

    /// The agent's top-up rule, right after a batch took its balance down: under the agent's lock,
    /// so of all the batches (and nodes) that saw it fall, the first brings it back up and the
    /// rest find it above the line. `crossed`: that batch took it from at or above the line to
    /// below, so a treasury too short to cover it is announced (once per fall).
    pub(super) fn top_up(
        &mut self,
        conn: &mut DbConnection,
        id: &AgentId,
        crossed: bool,
        locked: &mut HashMap<AgentId, Locked>,
        treasuries: &mut Treasuries,
        now: jiff::Timestamp,
    ) -> Result<()> {
        let Some(l) = locked.get_mut(id) else { return Ok(()) };
        let agent = self.locked_agent(conn, id, l, None)?;
        let Some(funding) = agent.value.policy.funding.as_deref() else { return Ok(()) };
        let Some(rule) = funding.top_up else { return Ok(()) };
        // A frozen agent's money is left as it is.
        if agent.value.status != AgentStatus::Active {
            return Ok(());
        }
        let (day, month) = starts_of_day_and_month(now);
        let topped = treasury::top_ups_since(conn, id.as_str(), month)?;
        let this_month = topped.iter().map(|(_, amount)| amount).sum();
        let today = topped.iter().filter(|(at, _)| *at >= day).map(|(_, amount)| amount).sum();
        let t = treasury_of(treasuries, l.currency)?;
        let before = l.ledger.balance.available();
        let Some(done) =
            core::top_up(&mut t.treasury, &mut l.ledger.balance, &rule, today, this_month, funding.max_balance)
        else {
            return Ok(());
        };
        let currency = l.currency;
        let money = move |amount: i64| json!({"amount": amount, "currency": currency.code()});
        let moved = done.moved.map_or(0, |m| m.amount);
        if let Some(m) = done.moved {
            let actor = by_spendgate(format!("top-up rule: below {} brings it to {}", rule.below, rule.to));
            let external_id = format!("top_up:{}", TransferId::generate());
            let row = self.move_with_agent(conn, id, l, t, m, &external_id, &actor, now.as_millisecond())?;
            let data = json!({
                "transfer_id": row.id,
                "amount": money(moved),
                "available_before": money(before),
                "available": money(l.ledger.balance.available()),
                "below": money(rule.below),
                "to": money(rule.to),
            });
            let event = Event::by_spendgate(id, None, "balance_topped_up", now).data(data);
            self.record_event(conn, l, &event)?;
        }
        if done.short() > 0 && (crossed || done.moved.is_some()) {
            tracing::warn!(agent = %id, wanted = done.wanted, moved, currency = %l.currency, "the treasury could not cover a top-up");
            let data = json!({
                "agent_name": agent.value.name,
                "wanted": money(done.wanted),
                "moved": money(moved),
                "treasury_available": money(t.treasury.available()),
                "available": money(l.ledger.balance.available()),
            });
            let event = Event::by_spendgate(id, None, "treasury_short", now).data(data);
            self.record_event(conn, l, &event)?;
        }
        Ok(())
    }

    /// A deactivated agent's available money back to the treasury: what a hold released or a
    /// refund credited after the deactivation drained it.
    pub(super) fn drain_deactivated(
        &mut self,
        conn: &mut DbConnection,
        id: &AgentId,
        locked: &mut HashMap<AgentId, Locked>,
        treasuries: &mut Treasuries,
        now_ms: i64,
    ) -> Result<()> {
        let Some(l) = locked.get(id) else { return Ok(()) };
        if !l.ledger.deactivated || l.ledger.balance.available() <= 0 {
            return Ok(());
        }
        let external_id = format!("drain:{}", TransferId::generate());
        let actor = by_spendgate("deactivated: what its holds released goes back".to_owned());
        if let Some(parent) = l.ancestors.first().cloned() {
            self.between(conn, locked, (id, &parent), None, &external_id, &actor, now_ms)?;
            return Ok(());
        }
        let Some(l) = locked.get_mut(id) else { return Ok(()) };
        let t = treasury_of(treasuries, l.currency)?;
        let moved = core::drain(&mut t.treasury, &mut l.ledger.balance, None).map_err(|r| refused(r, l.currency))?;
        self.move_with_agent(conn, id, l, t, moved, &external_id, &actor, now_ms)?;
        Ok(())
    }

    /// Writes one movement between a treasury and an agent: the agent's transfer and the
    /// treasury's journal row naming it, each linked in its chain.
    #[allow(clippy::too_many_arguments)]
    fn move_with_agent(
        &mut self,
        conn: &mut DbConnection,
        agent_id: &AgentId,
        l: &mut Locked,
        t: &mut LockedTreasury,
        moved: Moved,
        external_id: &str,
        actor: &Actor,
        now_ms: i64,
    ) -> Result<TransferRow> {
        let mut agent_side = agent_transfer(agent_id, moved, external_id, l.currency, actor, now_ms);
        self.chain(l, &mut agent_side);
        rows::insert_transfer(conn, &agent_side)?;
        let kind = match moved.kind {
            TransferKind::Fund => TreasuryKind::Fund,
            TransferKind::TopUp => TreasuryKind::TopUp,
            TransferKind::Drain => TreasuryKind::Drain,
            other => return Err(Error::Internal(format!("a {other} is no movement with the treasury"))),
        };
        let mut treasury_side = treasury_row(l.currency, &agent_side.id, kind, moved.amount, actor, now_ms);
        treasury_side.agent_id = Some(agent_side.agent_id.clone());
        treasury_side.transfer_id = Some(agent_side.id.clone());
        self.links.push(crate::store::chain::link(&mut t.chain, &mut treasury_side));
        treasury::insert_transfer(conn, &treasury_side)?;
        Ok(agent_side)
    }
}

/// An agent's side of money moved between it and a treasury or another agent.
fn agent_transfer(
    agent_id: &AgentId,
    moved: Moved,
    external_id: &str,
    currency: Currency,
    actor: &Actor,
    now_ms: i64,
) -> TransferRow {
    TransferRow {
        id: TransferId::generate().to_string(),
        external_id: external_id.to_owned(),
        agent_id: agent_id.to_string(),
        authorization_id: None,
        card_id: None,
        trace_id: None,
        kind: moved.kind,
        amount: moved.amount,
        currency: currency.code().to_owned(),
        created_at: now_ms,
        chain_n: 0,
        actor: Some(actor.key.clone()),
        reason: actor.reason.clone(),
    }
}

/// A treasury's side of a movement, naming no agent (the caller names one where there is).
fn treasury_row(
    currency: Currency,
    external_id: &str,
    kind: TreasuryKind,
    amount: i64,
    actor: &Actor,
    now_ms: i64,
) -> TreasuryTransferRow {
    TreasuryTransferRow {
        id: TreasuryTransferId::generate().to_string(),
        currency: currency.code().to_owned(),
        external_id: external_id.to_owned(),
        kind,
        amount,
        agent_id: None,
        transfer_id: None,
        actor: actor.key.clone(),
        reason: actor.reason.clone(),
        reference: None,
        created_at: now_ms,
        chain_n: 0,
    }
}

/// The first transfer under the caller's id, when this is a retry of it: the same again replays
/// it, anything else under that id is a conflict.
fn replay(
    conn: &mut DbConnection,
    agent: &AgentId,
    external_id: &str,
    same: impl Fn(&TransferRow) -> bool,
) -> Result<Option<(TransferView, bool)>> {
    let Some(first) = rows::find_transfers(conn, agent, external_id)?.into_iter().next() else { return Ok(None) };
    if !same(&first) || first.external_id != external_id {
        return Err(Error::coded(
            ErrorCode::IdempotencyConflict,
            format!("id {external_id} was already used for another transfer"),
        ));
    }
    Ok(Some((TransferView::from_row(&first)?, true)))
}

fn treasury_of(treasuries: &mut Treasuries, currency: Currency) -> Result<&mut LockedTreasury> {
    treasuries.get_mut(&currency).ok_or_else(|| Error::Internal(format!("the {currency} treasury was not locked")))
}

/// A refusal of the core about money between a treasury and an agent, as the API says it.
fn refused(refusal: Refusal, currency: Currency) -> Error {
    match refusal {
        Refusal::TreasuryShort { available } => Error::coded(
            ErrorCode::TreasuryShort,
            format!("the {currency} treasury has {available} available; record a deposit first"),
        ),
        Refusal::OverMaxBalance { room } => Error::coded(
            ErrorCode::MaxBalanceExceeded,
            format!("the agent's funding.max_balance leaves room for {room} more"),
        ),
        Refusal::NotAvailable { available } => Error::coded(
            ErrorCode::ExceedsAvailable,
            format!("the agent has {available} available to drain (held money is not drained)"),
        ),
        other => Error::Internal(format!("an unexpected refusal of the treasury: {other:?}")),
    }
}

/// The UTC day's and month's first millisecond: the top-up rule's allowances.
fn starts_of_day_and_month(now: jiff::Timestamp) -> (i64, i64) {
    let date = now.to_zoned(jiff::tz::TimeZone::UTC).date();
    let ms =
        |d: jiff::civil::Date| d.to_zoned(jiff::tz::TimeZone::UTC).map(|z| z.timestamp().as_millisecond()).unwrap_or(0);
    (ms(date), ms(date.first_of_month()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowances_start_at_the_utc_day_and_month() {
        let now: jiff::Timestamp = "2026-12-06T23:59:59.999Z".parse().unwrap();
        let (day, month) = starts_of_day_and_month(now);
        assert_eq!(jiff::Timestamp::from_millisecond(day).unwrap().to_string(), "2026-12-06T00:00:00Z");
        assert_eq!(jiff::Timestamp::from_millisecond(month).unwrap().to_string(), "2026-12-01T00:00:00Z");
    }
}
