//! Marqeta Gateway JIT Funding: one endpoint for every funding message. `pgfs.authorization` (and its
//! incremental form) is decided; clearings, reversals and refunds are the lifecycle, answered 200.
//! Authenticated with HTTP Basic credentials; amounts are decimal major units.

use std::time::Duration;

use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::Value;

use super::{Step, clean, id, mcc};
use crate::domain::authorization::{AuthRequest, DeclineReason, Merchant};
use crate::domain::ledger::Source;
use crate::domain::money::Currency;
use crate::error::{Error, Result};
use crate::ledger::{Movement, Verdict};

pub const SOURCE: Source = Source::Marqeta;
/// Marqeta declines to the network when the gateway has not answered within 3 s.
pub const DEADLINE: Duration = Duration::from_secs(3);

#[derive(Debug, Default, Deserialize)]
pub struct CardAcceptor {
    pub mid: Option<String>,
    pub mcc: Option<String>,
    pub name: Option<String>,
    /// Marqeta's field; `country` also accepted.
    pub country_code: Option<String>,
    pub country: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct GpaOrder {
    pub jit_funding: Value,
}

#[derive(Debug, Deserialize)]
pub struct Message {
    #[serde(default)]
    pub card_token: Option<String>,
    #[serde(default)]
    pub currency_code: Option<String>,
    #[serde(default)]
    pub card_acceptor: CardAcceptor,
    #[serde(default)]
    pub gpa_order: Option<GpaOrder>,
    #[serde(default)]
    pub gpa_order_unload: Option<GpaOrder>,
}

/// The `jit_funding` fields spendgate reads; the object itself is echoed back as received.
#[derive(Debug, Deserialize)]
struct JitFunding {
    token: String,
    method: String,
    #[allow(dead_code)] // required by Marqeta's schema: a message without it is malformed
    user_token: String,
    amount: Decimal,
    #[serde(default)]
    original_jit_funding_token: Option<String>,
}

/// What a JIT funding message asks.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // one per request, moved once: boxing saves nothing
pub enum Jit {
    Decide {
        token: String,
        card: Option<String>,
        request: AuthRequest,
    },
    /// Lifecycle and informative messages: applied to the ledger, always answered 200.
    Inform(Vec<Step>),
}

/// The message's `jit_funding` object, to echo.
pub fn jit_funding(message: &Message) -> Result<&Value> {
    message
        .gpa_order
        .as_ref()
        .or(message.gpa_order_unload.as_ref())
        .map(|o| &o.jit_funding)
        .ok_or_else(|| Error::validation("the message has no gpa_order.jit_funding"))
}

/// Decimal major units to minor units of `currency`; an amount finer than the currency's minor unit is refused.
fn minor_units(amount: Decimal, currency: &str) -> Result<i64> {
    let ccy: Currency = currency.parse().map_err(|_| Error::validation(format!("unknown currency_code {currency}")))?;
    // Checked: a decimal near its 7.9e28 limit would overflow when scaled.
    let scaled = amount
        .checked_mul(Decimal::from(10i64.pow(ccy.exponent())))
        .ok_or_else(|| Error::validation("jit_funding.amount is too large"))?;
    if scaled.fract() != Decimal::ZERO || scaled.is_sign_negative() {
        return Err(Error::validation(format!(
            "jit_funding.amount {amount} is not a whole number of {currency} minor units"
        )));
    }
    let minor = i64::try_from(scaled).map_err(|_| Error::validation("jit_funding.amount is too large"))?;
    super::amount("jit_funding.amount", minor)
}

pub fn read(message: &Message) -> Result<Jit> {
    let funding: JitFunding = serde_json::from_value(jit_funding(message)?.clone())
        .map_err(|e| Error::validation(format!("jit_funding: {e}")))?;
    let token = id("jit_funding.token", &funding.token)?;
    let currency = clean(message.currency_code.as_deref().unwrap_or("USD"), 8).to_ascii_uppercase();
    let amount = minor_units(funding.amount, &currency)?;
    let a = &message.card_acceptor;
    let merchant = Merchant {
        id: a.mid.as_deref().map(|v| clean(v, 255)).filter(|v| !v.is_empty()),
        name: a.name.as_deref().map(|v| clean(v, 255)).unwrap_or_default(),
        mcc: mcc(a.mcc.as_deref()),
        country: a.country_code.as_deref().or(a.country.as_deref()).and_then(country),
    };
    let request = super::request(amount, &currency, merchant)?;
    let card = message.card_token.as_deref().map(|c| id("card_token", c)).transpose()?;
    let original =
        funding.original_jit_funding_token.as_deref().map(|t| id("original_jit_funding_token", t)).transpose()?;
    let step = |movement| -> Result<Vec<Step>> {
        let Some(authorization) = original.clone() else { return Ok(Vec::new()) };
        Ok(vec![Step::Move { authorization, id: token.clone(), movement }])
    };
    match funding.method.as_str() {
        "pgfs.authorization" | "pgfs.authorization.incremental" => Ok(Jit::Decide { token, card, request }),
        "pgfs.authorization.clearing" => {
            // Without an original authorization it is a force post: it records its own hold first.
            let authorization = original.clone().unwrap_or_else(|| token.clone());
            let mut steps = Vec::new();
            if let Some(card) = card {
                steps.push(Step::Record {
                    card,
                    external_id: authorization.clone(),
                    request,
                    verdict: Verdict::Approved,
                });
            }
            steps.push(Step::Move { authorization, id: token, movement: Movement::Capture { amount, currency } });
            Ok(Jit::Inform(steps))
        }
        "pgfs.authorization.reversal" => {
            Ok(Jit::Inform(step(Movement::Reverse { amount: Some(amount), currency: Some(currency) })?))
        }
        "pgfs.refund" | "pgfs.authorization.clearing.refund" => {
            Ok(Jit::Inform(step(Movement::Refund { amount, currency: Some(currency) })?))
        }
        other => {
            tracing::info!(method = other, "Marqeta JIT funding method acknowledged without a ledger change");
            Ok(Jit::Inform(Vec::new()))
        }
    }
}

/// Marqeta sends alpha-3 or alpha-2 country codes depending on the field; alpha-2 is stored.
fn country(code: &str) -> Option<String> {
    match code.len() {
        2 if code.bytes().all(|b| b.is_ascii_alphabetic()) => Some(code.to_ascii_uppercase()),
        3 => super::alpha2(code).map(str::to_owned),
        _ => None,
    }
}

/// The echoed `jit_funding`, with `decline_reason` when declined.
pub fn answer(jit_funding: &Value, decline: Option<DeclineReason>) -> Value {
    let mut echoed = jit_funding.clone();
    if let (Some(reason), Some(object)) = (decline, echoed.as_object_mut()) {
        object.insert("decline_reason".into(), Value::from(super::codes::marqeta(reason)));
    }
    serde_json::json!({ "jit_funding": echoed })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_amounts_become_minor_units_exactly() {
        assert_eq!(minor_units("12.50".parse().unwrap(), "USD").unwrap(), 1250);
        assert_eq!(minor_units("1500".parse().unwrap(), "JPY").unwrap(), 1500);
        assert_eq!(minor_units("1.234".parse().unwrap(), "BHD").unwrap(), 1234);
        assert!(minor_units("1.005".parse().unwrap(), "USD").is_err());
        assert!(minor_units("-1.00".parse().unwrap(), "USD").is_err());
        assert!(minor_units("1.00".parse().unwrap(), "XYZ").is_err());
        assert!(minor_units("793000000000000000000000000".parse().unwrap(), "USD").is_err(), "overflows when scaled");
        assert!(minor_units(Decimal::MAX, "BHD").is_err());
    }
}
