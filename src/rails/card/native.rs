//! spendgate's own processor-neutral format, for a processor or a program that calls spendgate
//! directly: signed JSON in, the decision out. `Spendgate-Signature: t=<unix seconds>,v2=<hex
//! HMAC-SHA256 of "<t>.<METHOD>.<path>.<raw body>">`; the older `v1=` (of `"<t>.<raw body>"`) only
//! on `POST /v1/authorizations`, whose body alone names what it asks.

use serde::Deserialize;
use utoipa::ToSchema;

use super::MAX_AMOUNT;
use crate::domain::authorization::{AuthRequest, Merchant, Rail};
use crate::error::{Error, Result};

pub const SIGNATURE_HEADER: &str = "Spendgate-Signature";

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NativeAuthorization {
    /// The caller's id for this authorization: its idempotency key.
    pub id: String,
    pub card_id: String,
    /// Minor units of `currency`.
    pub amount: i64,
    pub currency: String,
    pub merchant: Merchant,
    pub trace_id: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CaptureBody {
    /// Idempotency key of this capture.
    pub id: String,
    pub amount: i64,
    pub currency: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReverseBody {
    pub id: String,
    /// Omitted: the whole remaining hold.
    pub amount: Option<i64>,
    /// Defaults to the authorization's currency.
    pub currency: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefundBody {
    pub id: String,
    pub amount: i64,
    /// Defaults to the authorization's currency.
    pub currency: Option<String>,
}

/// A text field: present, printable, at most `max` bytes.
pub fn text(field: &str, value: &str, max: usize) -> Result<()> {
    if value.is_empty() || value.len() > max || value.chars().any(char::is_control) {
        return Err(Error::validation(format!("{field} must be 1 to {max} printable characters")));
    }
    Ok(())
}

/// What is being bought, as the native webhook and the dry-run route take it.
pub struct Purchase {
    pub amount: i64,
    pub currency: String,
    pub merchant: Merchant,
    pub trace_id: Option<String>,
}

impl Purchase {
    /// Checks every field and makes the rail's request of it (codes upper-cased).
    pub fn request(self) -> Result<AuthRequest> {
        text("currency", &self.currency, 8)?;
        if !(0..=MAX_AMOUNT).contains(&self.amount) {
            return Err(Error::validation(format!("amount must be 0 to {MAX_AMOUNT} minor units")));
        }
        let m = &self.merchant;
        if !m.name.is_empty() {
            text("merchant.name", &m.name, 255)?;
        }
        if let Some(id) = &m.id {
            text("merchant.id", id, 255)?;
        }
        if let Some(mcc) = &m.mcc
            && (mcc.len() != 4 || !mcc.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(Error::validation("merchant.mcc must be four digits"));
        }
        if let Some(c) = &m.country
            && (c.len() != 2 || !c.bytes().all(|b| b.is_ascii_alphabetic()))
        {
            return Err(Error::validation("merchant.country must be an ISO 3166 alpha-2 code"));
        }
        if let Some(t) = &self.trace_id {
            text("trace_id", t, 200)?;
        }
        Ok(AuthRequest {
            rail: Rail::Card,
            amount: self.amount,
            currency: self.currency.trim().to_ascii_uppercase(),
            merchant: Merchant { country: self.merchant.country.map(|c| c.to_ascii_uppercase()), ..self.merchant },
            trace_id: self.trace_id,
            max_amount: None,
            recipient: None,
        })
    }
}
