//! What happens to a hold after its decision, and money into a balance: each is one step of
//! `core::Hold` on the row read again under its agent's lock, saved with the transfers it made.
//! A movement's id is its idempotency key: a repeat answers with the first transfers.

use std::collections::HashMap;

use super::{Locked, MovementCmd, Writer};
use crate::domain::ids::{AgentId, TransferId};
use crate::domain::ledger::{Balance, HoldStatus, TransferKind};
use crate::domain::money::Currency;
use crate::error::{Error, ErrorCode, Result};
use crate::ledger::Movement;
use crate::ledger::book::set_hold;
use crate::ledger::core::{self, Hold, Moved, Refusal, Release};
use crate::ledger::views::{AuthorizationView, LifecycleOutcome, TransferView};
use crate::store::DbConnection;
use crate::store::ledger::{self as rows, AuthorizationRow, TransferRow};

impl Writer {
    /// Applies `step` to the row's hold and its agent's balance; unless it refuses, saves both and
    /// writes the transfers it made, each named `external_id` (and its suffix).
    pub(super) fn step(
        &mut self,
        conn: &mut DbConnection,
        row: &mut AuthorizationRow,
        l: &mut Locked,
        external_id: &str,
        now_ms: i64,
        step: impl FnOnce(&mut Hold, &mut Balance) -> std::result::Result<Vec<Moved>, Refusal>,
    ) -> Result<Vec<TransferRow>> {
        let (mut hold, mut balance) = (hold_of(row), l.ledger.balance);
        let moved = step(&mut hold, &mut balance).map_err(|refusal| refused(refusal, row))?;
        l.ledger.balance = balance;
        set_hold(row, &hold);
        row.seq = l.ledger.seq;
        row.updated_at = now_ms;
        self.chain(l, row);
        rows::update_amounts(conn, row)?;
        self.book_row(row, &l.ancestors);
        let mut transfers: Vec<TransferRow> = moved.iter().map(|m| transfer(row, external_id, m, now_ms)).collect();
        for t in &mut transfers {
            self.chain(l, t);
            rows::insert_transfer(conn, t)?;
        }
        Ok(transfers)
    }

    pub(super) fn movement(
        &mut self,
        conn: &mut DbConnection,
        c: &MovementCmd,
        target: Option<AuthorizationRow>,
        locked: &mut HashMap<AgentId, Locked>,
        now_ms: i64,
    ) -> Result<LifecycleOutcome> {
        let missing = || Error::not_found("authorization", &c.target.to_string());
        let Some(stale) = target else { return Err(missing()) };
        // Read again under the agent's lock: the row may have moved since.
        let mut row = rows::find(conn, &stale.id)?.ok_or_else(missing)?;
        let agent = AgentId::from_stored(row.agent_id.clone());
        let l = locked.get_mut(&agent).ok_or_else(missing)?;

        let prior = rows::find_transfers(conn, &agent, &c.external_id)?;
        if let Some(first) = prior.first() {
            let same_kind = match c.movement {
                Movement::Capture { .. } => first.kind == TransferKind::Post,
                Movement::Reverse { .. } => first.kind == TransferKind::Void,
                Movement::Refund { .. } => first.kind == TransferKind::Refund,
                Movement::Adjust { .. } => matches!(first.kind, TransferKind::Void | TransferKind::Increase),
            };
            if first.authorization_id.as_deref() != Some(row.id.as_str()) || !same_kind {
                return Err(Error::coded(
                    ErrorCode::IdempotencyConflict,
                    format!("id {} was already used for another transfer", c.external_id),
                ));
            }
            let transfers = prior.iter().map(TransferView::from_row).collect::<Result<_>>()?;
            return Ok(LifecycleOutcome {
                authorization: AuthorizationView::from_row(&row),
                transfers,
                replayed: true,
            });
        }
        if row.status == HoldStatus::Declined {
            return Err(refused(Refusal::Declined, &row));
        }
        // The amount in the agent's currency, before the step (which cannot read rates).
        let in_cap =
            |amount: i64, currency: Option<&str>| self.in_cap_currency(&row, amount, currency.unwrap_or(&row.currency));
        let transfers = match &c.movement {
            Movement::Capture { amount, currency } => {
                let amount = in_cap(*amount, Some(currency))?;
                self.step(conn, &mut row, l, &c.external_id, now_ms, |h, b| h.capture(b, amount))?
            }
            Movement::Reverse { amount, currency } => {
                let amount = amount.map(|a| in_cap(a, currency.as_deref())).transpose()?;
                self.step(conn, &mut row, l, &c.external_id, now_ms, |h, b| h.reverse(b, amount).map(|m| vec![m]))?
            }
            Movement::Refund { amount, currency } => {
                let amount = in_cap(*amount, currency.as_deref())?;
                self.step(conn, &mut row, l, &c.external_id, now_ms, |h, b| h.refund(b, amount).map(|m| vec![m]))?
            }
            Movement::Adjust { amount, currency } => {
                let total = in_cap(*amount, Some(currency))?;
                self.step(conn, &mut row, l, &c.external_id, now_ms, |h, b| h.adjust(b, total).map(|m| vec![m]))?
            }
        };
        let transfers = transfers.iter().map(TransferView::from_row).collect::<Result<_>>()?;
        Ok(LifecycleOutcome { authorization: AuthorizationView::from_row(&row), transfers, replayed: false })
    }

    /// A movement's amount in the agent's currency: at the authorization's own rate when it is in
    /// the authorization's currency, as is when in the agent's, else at today's rate. Rounded up.
    fn in_cap_currency(&self, row: &AuthorizationRow, amount: i64, currency: &str) -> Result<i64> {
        if amount <= 0 {
            return Err(Error::validation("amount must be a positive number of minor units"));
        }
        if currency.eq_ignore_ascii_case(&row.currency) && row.amount > 0 {
            return Ok(core::scale_up(amount, row.cap_amount, row.amount));
        }
        if currency.eq_ignore_ascii_case(&row.cap_currency) {
            return Ok(amount);
        }
        let unsupported = || {
            Error::coded(ErrorCode::UnsupportedCurrency, format!("cannot convert {currency} to {}", row.cap_currency))
        };
        let from: Currency = currency.parse().map_err(|_| unsupported())?;
        let to: Currency = row.cap_currency.parse().map_err(|_| unsupported())?;
        let rates = self.rates.read().unwrap_or_else(|e| e.into_inner()).clone();
        rates.convert(amount, from, to).map(|c| c.amount).map_err(|_| unsupported())
    }

    /// Releases what each stale hold still holds, as an `expire` transfer.
    pub(super) fn expire(
        &mut self,
        conn: &mut DbConnection,
        expiring: &[AuthorizationRow],
        locked: &mut HashMap<AgentId, Locked>,
        now_ms: i64,
    ) -> Result<usize> {
        let mut n = 0;
        for stale in expiring {
            let Some(mut row) = rows::find(conn, &stale.id)? else { continue };
            let Some(l) = locked.get_mut(&AgentId::from_stored(row.agent_id.clone())) else { continue };
            if row.status != HoldStatus::Pending || row.held == 0 {
                continue;
            }
            let external_id = format!("expire:{}", row.id);
            self.step(conn, &mut row, l, &external_id, now_ms, |h, b| Ok(vec![h.release_all(b, Release::Expire)]))?;
            n += 1;
        }
        if n > 0 {
            tracing::info!(count = n, "expired holds voided");
        }
        Ok(n)
    }
}

/// The row's hold, for a step of the core.
fn hold_of(row: &AuthorizationRow) -> Hold {
    Hold {
        status: row.status,
        cap_amount: row.cap_amount,
        card_amount: row.card_amount,
        held: row.held,
        posted: row.posted,
        counted: row.counted,
        counted_card: row.counted_card,
        refunded: row.refunded,
    }
}

/// A refusal of the core, as the API says it.
fn refused(refusal: Refusal, row: &AuthorizationRow) -> Error {
    match refusal {
        Refusal::Declined => {
            Error::coded(ErrorCode::AuthorizationDeclined, "the authorization was declined: nothing was held")
        }
        Refusal::NothingHeld(status) => {
            Error::coded(ErrorCode::NothingHeld, format!("authorization {} is {status}: it holds nothing", row.id))
        }
        Refusal::RefundExceedsPosted { posted } => {
            Error::coded(ErrorCode::RefundExceedsPosted, format!("refunds would total more than the {posted} posted"))
        }
        other => Error::Internal(format!("an unexpected refusal of a hold: {other:?}")),
    }
}

fn transfer(row: &AuthorizationRow, external_id: &str, moved: &Moved, now_ms: i64) -> TransferRow {
    TransferRow {
        id: TransferId::generate().to_string(),
        external_id: match moved.suffix {
            Some(suffix) => format!("{external_id}{suffix}"),
            None => external_id.to_owned(),
        },
        agent_id: row.agent_id.clone(),
        authorization_id: Some(row.id.clone()),
        card_id: row.card_id.clone(),
        trace_id: row.trace_id.clone(),
        kind: moved.kind,
        amount: moved.amount,
        currency: row.cap_currency.clone(),
        created_at: now_ms,
        chain_n: 0,
        actor: None,
        reason: None,
    }
}
