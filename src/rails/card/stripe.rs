//! Stripe Issuing: the real-time `issuing_authorization.request` (answered in the response body within
//! Stripe's 2 s) and the events that follow it (`issuing_authorization.created` / `.updated`,
//! `issuing_transaction.created`). Both endpoints are signed with `Stripe-Signature`.

use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};

use super::{Step, amount, clean, id, mcc};
use crate::domain::authorization::{AuthRequest, Merchant};
use crate::domain::ledger::Source;
use crate::error::{Error, Result};
use crate::ledger::{AuthOutcome, Movement, Verdict};

pub const SOURCE: Source = Source::Stripe;
pub const SIGNATURE_HEADER: &str = "Stripe-Signature";
/// Stripe applies its timeout setting to a request not answered within 2 s.
pub const DEADLINE: Duration = Duration::from_secs(2);
/// Answered when the event names no version (the version whose JSON webhook answers this format follows).
pub const DEFAULT_VERSION: &str = "2025-03-31.basil";

#[derive(Debug, Deserialize)]
pub struct Event {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub api_version: Option<String>,
    pub data: EventData,
}

#[derive(Debug, Deserialize)]
pub struct EventData {
    pub object: Value,
}

/// A field Stripe sends as an id or, expanded, as the object.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Expandable {
    Id(String),
    Object { id: String },
}

impl Expandable {
    fn id(&self) -> &str {
        match self {
            Expandable::Id(id) | Expandable::Object { id } => id,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct MerchantData {
    pub category_code: Option<String>,
    pub network_id: Option<String>,
    pub name: Option<String>,
    pub country: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct PendingRequest {
    pub amount: i64,
    pub currency: String,
}

#[derive(Debug, Deserialize)]
pub struct RequestHistory {
    pub amount: i64,
    pub currency: String,
}

/// `issuing.authorization`, the fields spendgate reads.
#[derive(Debug, Deserialize)]
pub struct Authorization {
    pub id: String,
    #[serde(default)]
    pub amount: i64,
    #[serde(default)]
    pub currency: String,
    #[serde(default)]
    pub approved: bool,
    #[serde(default)]
    pub status: String,
    pub card: Expandable,
    #[serde(default)]
    pub merchant_amount: i64,
    #[serde(default)]
    pub merchant_currency: String,
    #[serde(default)]
    pub merchant_data: MerchantData,
    #[serde(default)]
    pub pending_request: Option<PendingRequest>,
    #[serde(default)]
    pub request_history: Vec<RequestHistory>,
}

/// `issuing.transaction`: a capture (negative amount) or a refund (positive), in the card's currency.
#[derive(Debug, Deserialize)]
pub struct Transaction {
    pub id: String,
    pub amount: i64,
    pub currency: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub authorization: Option<Expandable>,
    pub card: Expandable,
    #[serde(default)]
    pub merchant_data: MerchantData,
}

fn object<T: serde::de::DeserializeOwned>(event: &Event) -> Result<T> {
    serde_json::from_value(event.data.object.clone())
        .map_err(|e| Error::validation(format!("{}: data.object: {e}", event.kind)))
}

fn merchant(m: &MerchantData) -> Merchant {
    Merchant {
        id: m.network_id.as_deref().map(|v| clean(v, 255)).filter(|v| !v.is_empty()),
        name: m.name.as_deref().map(|v| clean(v, 255)).unwrap_or_default(),
        mcc: mcc(m.category_code.as_deref()),
        country: m.country.as_deref().filter(|c| c.len() == 2).map(str::to_ascii_uppercase),
    }
}

fn request(amount_minor: i64, currency: &str, m: &MerchantData) -> Result<AuthRequest> {
    super::request(amount_minor, currency, merchant(m))
}

/// A real-time authorization request to decide.
#[derive(Debug)]
pub struct Decide {
    /// `iauth_…`: the idempotency key and the id later events use.
    pub authorization_id: String,
    pub card: String,
    pub request: AuthRequest,
    pub api_version: String,
}

/// Reads an `issuing_authorization.request`: the amount is the one Stripe will hold, in the card's currency.
pub fn decide(event: &Event) -> Result<Decide> {
    if event.kind != "issuing_authorization.request" {
        return Err(Error::validation(format!("expected issuing_authorization.request, got {}", event.kind)));
    }
    let a: Authorization = object(event)?;
    let pending =
        a.pending_request.as_ref().ok_or_else(|| Error::validation("data.object.pending_request is missing"))?;
    Ok(Decide {
        authorization_id: id("data.object.id", &a.id)?,
        card: id("data.object.card.id", a.card.id())?,
        request: request(pending.amount, &pending.currency, &a.merchant_data)?,
        api_version: version(event),
    })
}

/// The version to answer with: the event's own when it is a plausible version string.
pub fn version(event: &Event) -> String {
    event
        .api_version
        .as_deref()
        .filter(|v| {
            !v.is_empty() && v.len() <= 40 && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        })
        .unwrap_or(DEFAULT_VERSION)
        .to_owned()
}

/// `{"approved": …, "metadata": {…}}`; metadata values are strings, as Stripe requires.
pub fn answer(outcome: &AuthOutcome) -> Value {
    let mut metadata = serde_json::Map::new();
    if let Some(reason) = outcome.reason {
        metadata.insert("spendgate_reason".into(), json!(reason.as_str()));
    }
    if let Some(rule) = &outcome.rule {
        metadata.insert("spendgate_rule".into(), json!(rule));
    }
    if let Some(id) = &outcome.authorization_id {
        metadata.insert("spendgate_authorization_id".into(), json!(id));
    }
    json!({"approved": outcome.approved, "metadata": metadata})
}

/// What an event does to the ledger; an empty list for events spendgate does not act on.
pub fn steps(event: &Event) -> Result<Vec<Step>> {
    let event_id = id("id", &event.id)?;
    match event.kind.as_str() {
        "issuing_authorization.created" | "issuing_authorization.updated" => {
            let a: Authorization = object(event)?;
            let authorization = id("data.object.id", &a.id)?;
            // What Stripe holds when it approved; what was asked when it declined.
            let (amount_minor, currency) = match (a.approved, a.request_history.last()) {
                (true, _) => (a.amount, a.currency.as_str()),
                (false, Some(last)) => (last.amount, last.currency.as_str()),
                (false, None) => (a.merchant_amount, a.merchant_currency.as_str()),
            };
            let verdict = if a.approved { Verdict::Approved } else { Verdict::Declined };
            let mut steps = vec![Step::Record {
                card: id("data.object.card", a.card.id())?,
                external_id: authorization.clone(),
                request: request(amount_minor, currency, &a.merchant_data)?,
                verdict,
            }];
            let movement = match (a.status.as_str(), a.approved) {
                ("reversed" | "expired", true) => Some(Movement::Reverse { amount: None, currency: None }),
                // The amount Stripe holds changed (an increment or a partial reversal).
                ("pending", true) if event.kind.ends_with(".updated") => {
                    Some(Movement::Adjust { amount: amount("amount", a.amount)?, currency: a.currency })
                }
                _ => None,
            };
            steps.extend(movement.map(|movement| Step::Move { authorization, id: event_id, movement }));
            Ok(steps)
        }
        "issuing_transaction.created" => {
            let t: Transaction = object(event)?;
            let transaction = id("data.object.id", &t.id)?;
            let card = id("data.object.card", t.card.id())?;
            let currency = clean(&t.currency, 8).to_ascii_uppercase();
            match t.kind.as_str() {
                "capture" => {
                    // Without an authorization it is a force post: the transaction stands for its own hold.
                    let authorization = t.authorization.as_ref().map_or(transaction.clone(), |a| a.id().to_owned());
                    // Stripe writes a capture as a negative amount; i64::MIN has no positive.
                    let captured = amount("amount", t.amount.checked_neg().unwrap_or(-1))?;
                    Ok(vec![
                        Step::Record {
                            card,
                            external_id: authorization.clone(),
                            request: request(captured, &currency, &t.merchant_data)?,
                            verdict: Verdict::Approved,
                        },
                        Step::Move {
                            authorization,
                            id: transaction,
                            movement: Movement::Capture { amount: captured, currency },
                        },
                    ])
                }
                "refund" => {
                    let Some(authorization) = &t.authorization else {
                        tracing::warn!(transaction = %t.id, "Stripe refund without an authorization: not recorded");
                        return Ok(Vec::new());
                    };
                    let refunded = amount("amount", t.amount)?;
                    Ok(vec![Step::Move {
                        authorization: authorization.id().to_owned(),
                        id: transaction,
                        movement: Movement::Refund { amount: refunded, currency: Some(currency) },
                    }])
                }
                other => {
                    tracing::info!(kind = other, transaction = %t.id, "Stripe transaction type ignored");
                    Ok(Vec::new())
                }
            }
        }
        _ => Ok(Vec::new()),
    }
}
