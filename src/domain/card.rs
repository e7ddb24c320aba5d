use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::ids::{AgentId, CardId};
use super::money::Currency;
use super::policy::Policy;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CardStatus {
    Active,
    Frozen,
    /// Final: a closed card never authorizes again.
    Closed,
}

impl CardStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CardStatus::Active => "active",
            CardStatus::Frozen => "frozen",
            CardStatus::Closed => "closed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(CardStatus::Active),
            "frozen" => Some(CardStatus::Frozen),
            "closed" => Some(CardStatus::Closed),
            _ => None,
        }
    }

    /// The status after `action`, or why the action is refused. Repeating an action is allowed
    /// and changes nothing (freezing a frozen card is not an error).
    pub fn apply(self, action: CardAction) -> Result<CardStatus, &'static str> {
        use CardStatus::*;
        match (self, action) {
            (Closed, CardAction::Close) => Ok(Closed),
            (Closed, CardAction::Freeze) => Err("the card is closed and cannot be frozen"),
            (Closed, CardAction::Unfreeze) => Err("the card is closed and cannot be unfrozen"),
            (_, CardAction::Freeze) => Ok(Frozen),
            (_, CardAction::Unfreeze) => Ok(Active),
            (_, CardAction::Close) => Ok(Closed),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CardAction {
    Freeze,
    Unfreeze,
    Close,
}

impl CardAction {
    /// The event kind recorded in the card's audit trail.
    pub fn event_kind(self) -> &'static str {
        match self {
            CardAction::Freeze => "frozen",
            CardAction::Unfreeze => "unfrozen",
            CardAction::Close => "closed",
        }
    }
}

/// Who issued the card and authorizes its spending through a webhook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Processor {
    /// spendgate's own test issuer: makes Luhn-valid numbers in a test BIN.
    Simulator,
    Stripe,
    Lithic,
    Marqeta,
}

impl Processor {
    pub fn as_str(self) -> &'static str {
        match self {
            Processor::Simulator => "simulator",
            Processor::Stripe => "stripe",
            Processor::Lithic => "lithic",
            Processor::Marqeta => "marqeta",
        }
    }
}

impl fmt::Display for Processor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Processor {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "simulator" => Ok(Processor::Simulator),
            "stripe" => Ok(Processor::Stripe),
            "lithic" => Ok(Processor::Lithic),
            "marqeta" => Ok(Processor::Marqeta),
            other => Err(format!("unknown processor {other:?} (simulator, stripe, lithic, marqeta)")),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Card {
    pub id: CardId,
    pub agent_id: AgentId,
    /// The service the card pays, e.g. `openai`.
    pub label: String,
    /// The cap currency.
    pub currency: Currency,
    pub last4: String,
    pub exp_month: u8,
    pub exp_year: u16,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<jiff::Timestamp>,
    pub single_use: bool,
    pub status: CardStatus,
    pub processor: Processor,
    pub processor_card_id: String,
    /// spendgate created the card at the processor: its status and mirrored spending controls
    /// there follow every change made here.
    pub processor_managed: bool,
    /// The trace authorizations on this card are tagged with when the processor sends none.
    pub trace_id: Option<String>,
    pub policy: Policy,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: jiff::Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: jiff::Timestamp,
}

/// The Luhn check digit that completes `payload` (all ASCII digits).
pub fn luhn_check_digit(payload: &str) -> u8 {
    let sum: u32 = payload
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 0 {
                let doubled = d * 2;
                if doubled > 9 { doubled - 9 } else { doubled }
            } else {
                d
            }
        })
        .sum();
    ((10 - sum % 10) % 10) as u8
}

pub fn luhn_valid(number: &str) -> bool {
    match number.len().checked_sub(1) {
        Some(n) if n > 0 && number.bytes().all(|b| b.is_ascii_digit()) => {
            luhn_check_digit(&number[..n]) == number.as_bytes()[n] - b'0'
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luhn_matches_known_numbers() {
        assert!(luhn_valid("4242424242424242"));
        assert!(luhn_valid("4000056655665556"));
        assert!(luhn_valid("79927398713"));
        assert!(!luhn_valid("4242424242424241"));
        assert!(!luhn_valid("42424242a2424242"));
        assert_eq!(luhn_check_digit("7992739871"), 3);
    }

    #[test]
    fn status_transitions() {
        use CardAction::*;
        use CardStatus::*;
        assert_eq!(Active.apply(Freeze), Ok(Frozen));
        assert_eq!(Frozen.apply(Freeze), Ok(Frozen));
        assert_eq!(Frozen.apply(Unfreeze), Ok(Active));
        assert_eq!(Active.apply(Unfreeze), Ok(Active));
        assert_eq!(Frozen.apply(Close), Ok(Closed));
        assert_eq!(Closed.apply(Close), Ok(Closed));
        assert!(Closed.apply(Unfreeze).is_err());
        assert!(Closed.apply(Freeze).is_err());
    }
}
