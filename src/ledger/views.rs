//! What the ledger answers: decisions, authorizations, transfers and balances as the API shows them.

use std::collections::HashMap;

use serde::Serialize;
use utoipa::ToSchema;

use crate::domain::authorization::{AuthRequest, DeclineReason, FxUsed, Merchant, Rail, RateSource};
use crate::domain::ids::{AgentId, AuthorizationId, TransferId, ulid_part};
use crate::domain::ledger::{HoldStatus, PaymentStatus, TransferKind, Treasury, TreasuryKind};
use crate::domain::money::{Currency, Money};
use crate::error::Result;
use crate::store::ledger::{self, AuthorizationRow, Balance, LedgerFilter, TransferRow};
use crate::store::treasury::{LockedTreasury, TreasuryTransferRow};
use crate::store::x402::PaymentRow;
use crate::store::{DbConnection, corrupt, from_millis};

/// An amount as the request gave it (its currency may be one spendgate does not know).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct RequestedAmount {
    pub amount: i64,
    pub currency: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct DecisionAmounts {
    /// As requested, in the merchant's currency.
    pub merchant: RequestedAmount,
    /// In the agent's (cap and balance) currency; 0 when the request was declined before it was converted.
    pub cap: Option<Money>,
}

/// The answer to an authorization.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct AuthOutcome {
    pub approved: bool,
    /// Absent only when nothing could be recorded (an unknown card).
    pub authorization_id: Option<String>,
    pub reason: Option<DeclineReason>,
    pub rule: Option<String>,
    pub amount: DecisionAmounts,
    /// The agent's available balance after this decision.
    pub available: Option<Money>,
    pub fx: Option<FxUsed>,
    /// True when this answers a retry of an authorization already decided.
    pub replayed: bool,
    /// For an `approval_required` decline, the request a person is asked to decide; for an
    /// approval, the person's approval that let it through.
    pub approval_id: Option<String>,
    /// The request's payment (`Authorize::payment`) was committed with this hold.
    #[serde(skip)]
    pub payment_stored: bool,
    /// Present (true) only on a dry run's answer: nothing was recorded.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
    /// On a dry run's decline: what would let the request through.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unblock: Option<&'static str>,
}

impl AuthOutcome {
    pub fn failed(reason: DeclineReason, req: &AuthRequest) -> Self {
        AuthOutcome {
            approved: false,
            authorization_id: None,
            reason: Some(reason),
            rule: None,
            amount: DecisionAmounts {
                merchant: RequestedAmount { amount: req.amount, currency: req.currency.clone() },
                cap: None,
            },
            available: None,
            fx: None,
            replayed: false,
            approval_id: None,
            payment_stored: false,
            dry_run: false,
            unblock: None,
        }
    }

    pub(super) fn from_row(row: &AuthorizationRow, agent_currency: Currency, available: i64, replayed: bool) -> Self {
        let view = AuthorizationView::from_row(row);
        AuthOutcome {
            approved: view.approved,
            authorization_id: Some(row.id.clone()),
            reason: view.reason,
            rule: view.rule,
            amount: DecisionAmounts { merchant: view.amount, cap: view.cap },
            available: Some(Money { amount: available, currency: agent_currency }),
            fx: view.fx,
            replayed,
            approval_id: view.approval_id,
            payment_stored: false,
            dry_run: false,
            unblock: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct AuthorizationView {
    pub id: String,
    pub status: HoldStatus,
    pub approved: bool,
    pub reason: Option<DeclineReason>,
    pub rule: Option<String>,
    pub rail: Rail,
    pub card_id: Option<String>,
    pub trace_id: Option<String>,
    pub amount: RequestedAmount,
    pub cap: Option<Money>,
    /// Still held, posted and refunded, in the agent's currency.
    pub held: i64,
    pub posted: i64,
    pub refunded: i64,
    pub merchant: Merchant,
    pub fx: Option<FxUsed>,
    #[schema(value_type = String, format = DateTime)]
    pub authorized_at: jiff::Timestamp,
    /// The x402 payment behind a USDC authorization.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub x402: Option<X402Payment>,
    /// The approval request this decline made, or the approval this authorization used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub approval_id: Option<String>,
}

/// Where a USDC payment went, and how it settled.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct X402Payment {
    pub payment_id: String,
    pub network: String,
    pub asset: String,
    pub pay_to: String,
    /// Atomic units of the asset.
    pub amount: String,
    pub status: PaymentStatus,
    pub transaction_hash: Option<String>,
}

impl X402Payment {
    fn from_row(row: &PaymentRow) -> Self {
        X402Payment {
            payment_id: row.id.clone(),
            network: row.network.clone(),
            asset: row.asset.clone(),
            pay_to: row.pay_to.clone(),
            amount: row.amount.clone(),
            status: row.status,
            transaction_hash: row.transaction_hash.clone(),
        }
    }
}

impl AuthorizationView {
    pub fn from_row(row: &AuthorizationRow) -> Self {
        let reason = row.reason.as_deref().and_then(DeclineReason::parse);
        // A hold voided because its answer came too late was a decline to the caller.
        let approved = row.status != HoldStatus::Declined && reason.is_none();
        AuthorizationView {
            id: row.id.clone(),
            status: row.status,
            approved,
            reason,
            rule: row.rule.clone(),
            rail: row.rail,
            card_id: row.card_id.clone(),
            trace_id: row.trace_id.clone(),
            amount: RequestedAmount { amount: row.amount, currency: row.currency.clone() },
            cap: row.cap_currency.parse().ok().map(|currency| Money { amount: row.cap_amount, currency }),
            held: row.held,
            posted: row.posted,
            refunded: row.refunded,
            merchant: Merchant {
                id: row.merchant_id.clone(),
                name: row.merchant_name.clone(),
                mcc: row.mcc.clone(),
                country: row.country.clone(),
            },
            fx: match (&row.fx_rate, &row.fx_date) {
                (Some(rate), Some(date)) => Some(FxUsed {
                    rate: rate.clone(),
                    date: date.clone(),
                    source: row.fx_source.as_deref().and_then(RateSource::parse),
                }),
                _ => None,
            },
            authorized_at: from_millis(row.authorized_at).unwrap_or_default(),
            x402: None,
            approval_id: row.approval_id.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct TransferView {
    pub id: String,
    pub external_id: String,
    pub kind: TransferKind,
    pub authorization_id: Option<String>,
    pub card_id: Option<String>,
    pub trace_id: Option<String>,
    pub amount: Money,
    /// Who moved money between the treasury and the agent (a key id, or `spendgate` for its
    /// top-up rule), and why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: jiff::Timestamp,
}

impl TransferView {
    pub(super) fn from_row(row: &TransferRow) -> Result<Self> {
        Ok(TransferView {
            id: row.id.clone(),
            external_id: row.external_id.clone(),
            kind: row.kind,
            authorization_id: row.authorization_id.clone(),
            card_id: row.card_id.clone(),
            trace_id: row.trace_id.clone(),
            amount: Money {
                amount: row.amount,
                currency: row.currency.parse().map_err(|_| corrupt("transfer currency", &row.currency))?,
            },
            actor: row.actor.clone(),
            reason: row.reason.clone(),
            created_at: from_millis(row.created_at)?,
        })
    }
}

/// The result of a capture, reversal or refund.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct LifecycleOutcome {
    pub authorization: AuthorizationView,
    pub transfers: Vec<TransferView>,
    /// True when this answers a retry with an id already applied.
    pub replayed: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct BalanceView {
    pub currency: Currency,
    pub funded: i64,
    pub refunded: i64,
    pub held: i64,
    pub spent: i64,
    pub available: i64,
}

impl BalanceView {
    pub fn new(currency: &str, b: &Balance) -> Result<Self> {
        Ok(BalanceView {
            currency: currency.parse().map_err(|_| corrupt("agent currency", currency))?,
            funded: b.funded,
            refunded: b.refunded,
            held: b.held,
            spent: b.spent,
            available: b.available(),
        })
    }
}

/// A currency's treasury: what backs it, what went to agents and came back, and what it still has.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct TreasuryView {
    pub currency: Currency,
    /// Recorded by people as backing it, and taken out by them.
    pub deposited: i64,
    pub withdrawn: i64,
    /// Funded and topped up to agents; drained back from them.
    pub granted: i64,
    pub returned: i64,
    /// What it can still fund: deposited − withdrawn − granted + returned.
    pub available: i64,
}

impl TreasuryView {
    pub fn new(t: &LockedTreasury) -> Self {
        let Treasury { deposited, withdrawn, granted, returned } = t.treasury;
        TreasuryView {
            currency: t.currency,
            deposited,
            withdrawn,
            granted,
            returned,
            available: t.treasury.available(),
        }
    }
}

/// One movement of a treasury.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct TreasuryTransferView {
    pub id: String,
    /// The caller's idempotency key; for a movement with an agent, the agent's transfer id.
    pub external_id: String,
    pub kind: TreasuryKind,
    pub amount: Money,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// The agent's side of the movement.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transfer_id: Option<String>,
    /// The key id that moved it, or `spendgate` for a top-up rule.
    pub actor: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: jiff::Timestamp,
}

impl TreasuryTransferView {
    pub fn from_row(row: &TreasuryTransferRow) -> Result<Self> {
        Ok(TreasuryTransferView {
            id: row.id.clone(),
            external_id: row.external_id.clone(),
            kind: row.kind,
            amount: Money {
                amount: row.amount,
                currency: row.currency.parse().map_err(|_| corrupt("treasury currency", &row.currency))?,
            },
            agent_id: row.agent_id.clone(),
            transfer_id: row.transfer_id.clone(),
            actor: row.actor.clone(),
            reason: row.reason.clone(),
            reference: row.reference.clone(),
            created_at: from_millis(row.created_at)?,
        })
    }
}

/// One line of an agent's ledger.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum LedgerEntry {
    Authorization(Box<AuthorizationView>),
    Transfer(TransferView),
}

/// Authorizations and transfers merged in time order. Ids end in a ULID from one monotonic
/// generator, so the ULID part orders both tables and is the cursor.
pub(super) fn entries(
    conn: &mut DbConnection,
    agent: &AgentId,
    filter: &LedgerFilter,
    cursor: Option<&str>,
    limit: i64,
) -> Result<(Vec<LedgerEntry>, Option<String>)> {
    let auth_cursor = cursor.map(|c| format!("{}_{c}", AuthorizationId::PREFIX));
    let trf_cursor = cursor.map(|c| format!("{}_{c}", TransferId::PREFIX));
    let auths = ledger::list_authorizations(conn, agent, filter, auth_cursor.as_deref(), limit + 1)?;
    let transfers = ledger::list_transfers(conn, agent, filter, trf_cursor.as_deref(), limit + 1)?;
    let usdc: Vec<&str> = auths.iter().filter(|a| a.rail == Rail::Usdc).map(|a| a.id.as_str()).collect();
    let payments: HashMap<String, PaymentRow> = crate::store::x402::for_authorizations(conn, &usdc)?
        .into_iter()
        .map(|p| (p.authorization_id.clone(), p))
        .collect();
    let mut merged: Vec<(String, LedgerEntry)> = Vec::with_capacity(auths.len() + transfers.len());
    for a in &auths {
        let mut view = AuthorizationView::from_row(a);
        view.x402 = payments.get(&a.id).map(X402Payment::from_row);
        merged.push((ulid_part(&a.id).to_owned(), LedgerEntry::Authorization(Box::new(view))));
    }
    for t in &transfers {
        merged.push((ulid_part(&t.id).to_owned(), LedgerEntry::Transfer(TransferView::from_row(t)?)));
    }
    merged.sort_by(|a, b| a.0.cmp(&b.0));
    let more = merged.len() as i64 > limit;
    merged.truncate(limit as usize);
    let next = if more { merged.last().map(|(k, _)| k.clone()) } else { None };
    Ok((merged.into_iter().map(|(_, e)| e).collect(), next))
}
