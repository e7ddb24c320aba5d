//! After the payment is sent: what the server's answer says (settled, failed, unknown), the hold
//! moved to match in the same commit, and retries answered from what was stored.

use alloy_primitives::U256;

use super::Usdc;
use super::payments::{costs, same_request};
use super::proxy::{Call, SendError, Upstream};
use super::store::{PaymentRow, now_ms};
use super::views::{Fetched, Paid, PaymentView};
use super::x402::{self, Settlement};
use crate::domain::ids::AgentId;
use crate::domain::ledger::PaymentStatus;
use crate::domain::money::Money;
use crate::error::{Error, ErrorCode, Result};
use crate::ledger::{AuthOutcome, Movement, Target};

/// Largest upstream body kept to answer a retry of a finished payment.
pub(super) const MAX_STORED_BODY: usize = 1 << 20;

/// Facilitators refuse an authorization that expires sooner than this; it is not re-sent then.
pub(super) const MIN_VALIDITY_SECONDS: i64 = 6;

impl Usdc {
    /// The server's `PAYMENT-RESPONSE` for a payment the agent sent itself. A success posts the
    /// hold; a failure voids it only when `may_void` (a manager's report): an agent cannot free
    /// its own budget by saying a payment failed.
    pub async fn report(
        &self,
        agent: &AgentId,
        id: &str,
        payment_response: &str,
        may_void: bool,
    ) -> Result<PaymentView> {
        self.agent_exists(agent).await?;
        let settlement = x402::settlement(Some(payment_response)).ok_or_else(|| {
            Error::validation("payment_response must be the server's PAYMENT-RESPONSE (or X-PAYMENT-RESPONSE) value")
        })?;
        let (agent_id, pid) = (agent.clone(), id.to_owned());
        let row = self.inner.records.payment(&agent_id, &pid).await?;
        let row = row.ok_or_else(|| Error::NotFound("payment not found".into()))?;
        let final_status = match &settlement {
            Settlement::Settled { .. } => PaymentStatus::Settled,
            Settlement::Failed { .. } => PaymentStatus::Failed,
        };
        if row.status == final_status {
            return Ok(PaymentView::from_row(&row));
        }
        if row.status.is_final() {
            return Err(Error::coded(ErrorCode::PaymentFinal, format!("payment {} is already {}", row.id, row.status)));
        }
        if final_status == PaymentStatus::Failed && !may_void {
            return Err(Error::Forbidden("only a manager or owner may report that a payment failed".into()));
        }
        let row = self.conclude(row, Some(settlement), None, true).await?;
        Ok(PaymentView::from_row(&row))
    }

    /// A retry with a key already used: replay a finished payment's answer, or re-send the same
    /// payload while it is still valid. Never a second signature.
    pub(super) async fn resume(&self, row: PaymentRow, request_hash: &str, call: &Call) -> Result<Fetched> {
        same_request(&row, request_hash)?;
        if row.status.is_final() {
            let (cost, remaining) = self.amounts_of(&row).await?;
            let paid = Paid { payment: PaymentView::from_row(&row), cost, remaining };
            return match (row.response_status, &row.response_headers, &row.response_body) {
                (Some(status), Some(headers), Some(body)) => Ok(Fetched {
                    status: status as u16,
                    headers: serde_json::from_str(headers).unwrap_or_default(),
                    body: body.clone(),
                    paid: Some(paid),
                }),
                _ => Err(Error::coded(
                    ErrorCode::IdempotencyConflict,
                    format!(
                        "payment {} is {}{}; no answer was kept to replay (too large, or none came)",
                        row.id,
                        row.status,
                        row.error.as_deref().map(|e| format!(" ({e})")).unwrap_or_default()
                    ),
                )),
            };
        }
        if row.valid_before <= jiff::Timestamp::now().as_second() + MIN_VALIDITY_SECONDS {
            return Err(Error::coded(
                ErrorCode::PaymentOutcomeUnknown,
                format!(
                    "payment {} was signed and its outcome is unknown; its authorization has expired, so it is \
                     not sent again and nothing new is signed (its hold stays until the payment is resolved)",
                    row.id
                ),
            ));
        }
        self.deliver(row, call, false, None).await
    }

    /// Sends the stored payload with the call and records what the answer says. `first`: this
    /// payload was never sent before, so a refusal means nothing moved.
    pub(super) async fn deliver(
        &self,
        row: PaymentRow,
        call: &Call,
        first: bool,
        outcome: Option<&AuthOutcome>,
    ) -> Result<Fetched> {
        let answer = self.send(call, Some((&row.header_name, &row.header_value))).await;
        let (settlement, upstream, failure) = match answer {
            Ok(upstream) => {
                let settlement = upstream.settlement().or_else(|| {
                    // A fresh payload answered by a new 402 with requirements was refused before settling.
                    (first && upstream.asks_again()).then(|| Settlement::Failed { reason: "payment_rejected".into() })
                });
                (settlement, Some(upstream), None)
            }
            // The answer's headers say how the payment went even when its body is not passed on.
            Err(SendError::TooLarge { headers }) => {
                let settlement = headers.settlement();
                (settlement, None, Some(SendError::TooLarge { headers }))
            }
            Err(e) => {
                tracing::warn!(payment = %row.id, error = %e, "x402 paid request failed; the payment's outcome is unknown");
                (None, None, Some(e))
            }
        };
        let row = self.conclude(row, settlement, upstream.as_ref(), first).await?;
        let (cost, remaining) = match outcome {
            Some(o) if row.status != PaymentStatus::Failed => costs(o)?,
            _ => self.amounts_of(&row).await?,
        };
        let paid = Paid { payment: PaymentView::from_row(&row), cost, remaining };
        match (upstream, failure) {
            (Some(upstream), _) => Ok(upstream.into_fetched(Some(paid))),
            (None, failure) => {
                let failure = failure.unwrap_or(SendError::Failed("no answer".into()));
                Err(failure.into_error(&call.url, Some(&paid.payment)))
            }
        }
    }

    /// Records the settlement (or that it is unknown) and moves the hold: posted when settled,
    /// voided when a refusal is final (`refusal_voids`: the payload was never sent before), kept otherwise.
    pub(super) async fn conclude(
        &self,
        mut row: PaymentRow,
        settlement: Option<Settlement>,
        upstream: Option<&Upstream>,
        refusal_voids: bool,
    ) -> Result<PaymentRow> {
        let movement = match settlement {
            Some(Settlement::Settled { transaction, .. }) => {
                let cents = x402::atomic_to_cents(row.amount.parse::<U256>().unwrap_or(U256::MAX));
                row.status = PaymentStatus::Settled;
                row.transaction_hash = Some(transaction).filter(|t| !t.is_empty());
                row.error = None;
                Some(("settled", Movement::Capture { amount: cents, currency: "USD".into() }))
            }
            Some(Settlement::Failed { reason }) if refusal_voids => {
                row.status = PaymentStatus::Failed;
                row.error = Some(reason);
                Some(("failed", Movement::Reverse { amount: None, currency: None }))
            }
            // A re-sent payload refused may have settled the first time (its nonce is then used):
            // the spend keeps counting.
            Some(Settlement::Failed { reason }) => {
                row.status = PaymentStatus::Unknown;
                row.error = Some(reason);
                None
            }
            None => {
                row.status = PaymentStatus::Unknown;
                row.error = Some("no readable settlement answer".into());
                None
            }
        };
        if let Some(up) = upstream.filter(|_| row.status.is_final()) {
            row.response_status = Some(i32::from(up.status));
            row.response_headers = serde_json::to_string(&up.headers).ok();
            row.response_body = (up.body.len() <= MAX_STORED_BODY).then(|| up.body.clone());
            if row.response_body.is_none() {
                row.response_headers = None;
            }
        }
        row.updated_at = now_ms();
        match movement {
            // The hold moves and the payment's outcome is recorded in one commit.
            Some((outcome, movement)) => {
                let target = Target::Id(row.authorization_id.clone());
                let external_id = format!("{}:{outcome}", row.id);
                self.inner.ledger.settle(target, &external_id, movement, row.clone()).await?;
            }
            None => {
                let saved = row.clone();
                self.inner.records.save_outcome(saved).await?;
            }
        }
        tracing::info!(payment = %row.id, status = %row.status, transaction = ?row.transaction_hash, "x402 payment");
        Ok(row)
    }

    /// What a recorded payment counts, and the agent's available balance now.
    pub(super) async fn amounts_of(&self, row: &PaymentRow) -> Result<(Money, Money)> {
        let agent = AgentId::from_stored(row.agent_id.clone());
        let balance = self.inner.ledger.balance(&agent).await?;
        let auth_id = row.authorization_id.clone();
        let auth = self.inner.ledger.authorization(&auth_id).await?;
        // What counts against limits: what is held and what was posted.
        let counted = auth.map_or(0, |a| a.held + a.posted);
        Ok((
            Money { amount: counted, currency: balance.currency },
            Money { amount: balance.available, currency: balance.currency },
        ))
    }
}
