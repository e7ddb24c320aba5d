//! Lithic: Auth Stream Access (`card_authorization.approval_request`, answered in the response body)
//! and the `card_transaction.updated` events that carry clearing, reversal, expiry, advice and return.
//! Both are signed with Standard Webhooks headers.

use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};

use super::{Step, alpha2, amount, clean, id, mcc};
use crate::domain::authorization::{AuthRequest, DeclineReason, Merchant};
use crate::domain::ledger::Source;
use crate::error::{Error, Result};
use crate::ledger::{Movement, Verdict};

pub const SOURCE: Source = Source::Lithic;
/// Lithic's recommended answer time (it gives up later, around 6 s).
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(3);
/// Lithic cards are issued in US dollars; the deprecated flat amounts carry no currency.
const FLAT_CURRENCY: &str = "USD";

#[derive(Debug, Deserialize)]
pub struct Amount {
    pub amount: i64,
    pub currency: String,
}

#[derive(Debug, Default, Deserialize)]
pub struct Amounts {
    pub cardholder: Option<Amount>,
    pub merchant: Option<Amount>,
}

#[derive(Debug, Default, Deserialize)]
pub struct LithicMerchant {
    pub acceptor_id: Option<String>,
    pub descriptor: Option<String>,
    pub mcc: Option<String>,
    /// ISO 3166 alpha-3.
    pub country: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct CardRef {
    pub token: String,
}

/// `card_authorization.approval_request`: the fields spendgate reads.
#[derive(Debug, Deserialize)]
pub struct ApprovalRequest {
    #[serde(default)]
    pub event_type: Option<String>,
    pub token: String,
    #[serde(default)]
    pub card: Option<CardRef>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub amounts: Option<Amounts>,
    /// Deprecated flat fields, read when `amounts` is absent.
    #[serde(default)]
    pub amount: Option<i64>,
    #[serde(default)]
    pub cardholder_currency: Option<String>,
    #[serde(default)]
    pub merchant_amount: Option<i64>,
    #[serde(default)]
    pub merchant_currency: Option<String>,
    #[serde(default)]
    pub merchant: LithicMerchant,
}

fn merchant(m: &LithicMerchant) -> Merchant {
    Merchant {
        id: m.acceptor_id.as_deref().map(|v| clean(v, 255)).filter(|v| !v.is_empty()),
        name: m.descriptor.as_deref().map(|v| clean(v, 255)).unwrap_or_default(),
        mcc: mcc(m.mcc.as_deref()),
        country: m.country.as_deref().and_then(alpha2).map(str::to_owned),
    }
}

/// The cardholder amount (what Lithic holds on the card); else the deprecated flat fields.
fn cardholder_amount(
    amounts: Option<&Amounts>,
    flat: Option<i64>,
    flat_currency: Option<&str>,
) -> Option<(i64, String)> {
    if let Some(a) = amounts.and_then(|a| a.cardholder.as_ref()) {
        return Some((a.amount, a.currency.clone()));
    }
    flat.map(|a| (a, flat_currency.unwrap_or(FLAT_CURRENCY).to_owned()))
}

fn request(amount_minor: i64, currency: &str, m: &LithicMerchant) -> Result<AuthRequest> {
    super::request(amount_minor, currency, merchant(m))
}

/// What to do with an ASA request.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // one per request, moved once: boxing saves nothing
pub enum Asa {
    Decide {
        token: String,
        card: Option<String>,
        request: AuthRequest,
    },
    /// Credits and balance inquiries move no money out: approved without a hold.
    Approve {
        token: String,
    },
}

pub fn asa(body: &ApprovalRequest) -> Result<Asa> {
    if let Some(kind) = &body.event_type
        && kind != "card_authorization.approval_request"
    {
        return Err(Error::validation(format!("expected card_authorization.approval_request, got {kind}")));
    }
    let token = id("token", &body.token)?;
    if matches!(
        body.status.as_deref(),
        Some("CREDIT_AUTHORIZATION" | "FINANCIAL_CREDIT_AUTHORIZATION" | "BALANCE_INQUIRY")
    ) {
        return Ok(Asa::Approve { token });
    }
    let (amount_minor, currency) =
        cardholder_amount(body.amounts.as_ref(), body.amount, body.cardholder_currency.as_deref())
            .or_else(|| {
                body.merchant_amount.map(|a| (a, body.merchant_currency.clone().unwrap_or(FLAT_CURRENCY.into())))
            })
            .ok_or_else(|| Error::validation("the request has no amount"))?;
    let card = body.card.as_ref().map(|c| id("card.token", &c.token)).transpose()?;
    Ok(Asa::Decide { token, card, request: request(amount_minor, &currency, &body.merchant)? })
}

/// `{"token": …, "result": "APPROVED" | <decline code>}`.
pub fn answer(token: &str, decline: Option<DeclineReason>) -> Value {
    let result = decline.map_or("APPROVED", super::codes::lithic);
    json!({"token": token, "result": result})
}

#[derive(Debug, Deserialize)]
pub struct TransactionEvent {
    pub token: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub result: Option<String>,
    #[serde(default)]
    pub amounts: Option<Amounts>,
    #[serde(default)]
    pub amount: Option<i64>,
}

/// `card_transaction.updated`: the transaction with all its events so far.
#[derive(Debug, Deserialize)]
pub struct Transaction {
    pub event_type: String,
    #[serde(default)]
    pub token: Option<String>,
    #[serde(default)]
    pub card_token: Option<String>,
    #[serde(default)]
    pub merchant: LithicMerchant,
    #[serde(default)]
    pub events: Vec<TransactionEvent>,
}

/// The ledger steps of a transaction's events, in order; each event's token makes its step idempotent,
/// so the events Lithic sends again with every update change nothing the second time.
pub fn steps(body: &Transaction) -> Result<Vec<Step>> {
    if body.event_type != "card_transaction.updated" {
        return Ok(Vec::new());
    }
    let transaction = id("token", body.token.as_deref().unwrap_or_default())?;
    let card = id("card_token", body.card_token.as_deref().unwrap_or_default())?;
    let mut steps = Vec::new();
    for event in &body.events {
        let event_id = id("events[].token", &event.token)?;
        let approved = event.result.as_deref().is_none_or(|r| r == "APPROVED");
        let Some((amount_minor, currency)) = cardholder_amount(event.amounts.as_ref(), event.amount, None) else {
            continue;
        };
        // Lithic signs amounts by direction; i64::MIN has no absolute value and is refused.
        let amount_minor = amount("events[].amount", amount_minor.checked_abs().unwrap_or(-1))?;
        let record = |verdict| -> Result<Step> {
            Ok(Step::Record {
                card: card.clone(),
                external_id: transaction.clone(),
                request: request(amount_minor, &currency, &body.merchant)?,
                verdict,
            })
        };
        let movement = |movement| Step::Move { authorization: transaction.clone(), id: event_id.clone(), movement };
        match event.kind.as_str() {
            "AUTHORIZATION" | "FINANCIAL_AUTHORIZATION" => {
                steps.push(record(if approved { Verdict::Approved } else { Verdict::Declined })?);
            }
            // The network approved on the issuer's behalf, or changed the amount: the hold becomes it.
            "AUTHORIZATION_ADVICE" if approved => {
                steps.push(record(Verdict::Approved)?);
                steps.push(movement(Movement::Adjust { amount: amount_minor, currency: currency.clone() }));
            }
            // A clearing without a prior authorization is a force post: it records its own hold first.
            "CLEARING" if approved => {
                steps.push(record(Verdict::Approved)?);
                steps.push(movement(Movement::Capture { amount: amount_minor, currency: currency.clone() }));
            }
            "AUTHORIZATION_REVERSAL" if approved => {
                steps
                    .push(movement(Movement::Reverse { amount: Some(amount_minor), currency: Some(currency.clone()) }));
            }
            "AUTHORIZATION_EXPIRY" => steps.push(movement(Movement::Reverse { amount: None, currency: None })),
            "RETURN" if approved => {
                steps.push(movement(Movement::Refund { amount: amount_minor, currency: Some(currency.clone()) }));
            }
            _ => {}
        }
    }
    Ok(steps)
}
