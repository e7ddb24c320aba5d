//! The canonical, rail-neutral authorization request and the decision about it. Every rail
//! (the native webhook, Stripe, Lithic, Marqeta, x402) translates to and from these types.

use std::fmt;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::approval::Ask;
use super::money::{Currency, Money};
pub use super::policy::Rail;

/// Who is being paid, as the network or the x402 server describes it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Merchant {
    /// The network's merchant (acceptor) id; for x402, the `payTo` address.
    #[serde(default)]
    pub id: Option<String>,
    /// The descriptor, e.g. `OPENAI *API`; for x402, the host.
    #[serde(default)]
    pub name: String,
    /// ISO 18245 merchant category code (four digits).
    #[serde(default)]
    pub mcc: Option<String>,
    /// ISO 3166 alpha-2.
    #[serde(default)]
    pub country: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AuthRequest {
    pub rail: Rail,
    /// Minor units of `currency`, the merchant's currency.
    pub amount: i64,
    /// As received, so that an unknown code can be declined and recorded rather than rejected.
    pub currency: String,
    pub merchant: Merchant,
    pub trace_id: Option<String>,
    /// A ceiling the caller sets on this one request (x402's `max_amount`), in minor units of the
    /// agent's currency.
    pub max_amount: Option<i64>,
    /// The address an x402 payment goes to (None on the card rail).
    pub recipient: Option<Recipient>,
}

/// Who an x402 payment goes to, and who named that recipient.
#[derive(Debug, Clone, PartialEq)]
pub struct Recipient {
    /// CAIP-10: `<CAIP-2 network>:<address>`, the address in lowercase, e.g. `eip155:8453:0xab…`.
    pub account: String,
    pub named_by: NamedBy,
}

impl Recipient {
    pub fn new(network: &str, address: &str, named_by: NamedBy) -> Self {
        Recipient { account: format!("{network}:{}", address.to_ascii_lowercase()), named_by }
    }
}

worded! {
    /// Where the payment requirements came from: a recipient is trusted only when the paid server
    /// named it in the 402 spendgate read itself, or when the policy lists it.
    pub enum NamedBy {
        /// The server, in the 402 spendgate received from it (`x402/fetch`).
        Server = "server",
        /// The agent, in requirements it handed in (`x402/authorize`).
        Agent = "agent",
    }
}

/// Why an authorization was declined. The codes are stable: processors' responses, metrics and
/// clients match on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeclineReason {
    UnknownCard,
    CardClosed,
    CardExpired,
    CardUsed,
    CardFrozen,
    AgentFrozen,
    UnsupportedCurrency,
    StaleFx,
    MccNotAllowed,
    MerchantNotAllowed,
    CountryNotAllowed,
    OutsideActiveHours,
    HostNotAllowed,
    RecipientNotAllowed,
    PerTransactionExceeded,
    PerCallExceeded,
    LimitExceeded,
    VelocityExceeded,
    ApprovalRequired,
    InsufficientFunds,
    /// A USDC payment the policy allows, but more than the wallet holds on the chain less what it
    /// has signed and not seen settle: nothing is signed.
    InsufficientOnchainFunds,
    Timeout,
    InternalError,
    /// The processor declined on its own (its controls, or its stand-in when spendgate was not asked).
    ProcessorDeclined,
}

impl DeclineReason {
    pub const ALL: [DeclineReason; 24] = {
        use DeclineReason::*;
        [
            UnknownCard,
            CardClosed,
            CardExpired,
            CardUsed,
            CardFrozen,
            AgentFrozen,
            UnsupportedCurrency,
            StaleFx,
            MccNotAllowed,
            MerchantNotAllowed,
            CountryNotAllowed,
            OutsideActiveHours,
            HostNotAllowed,
            RecipientNotAllowed,
            PerTransactionExceeded,
            PerCallExceeded,
            LimitExceeded,
            VelocityExceeded,
            ApprovalRequired,
            InsufficientFunds,
            InsufficientOnchainFunds,
            Timeout,
            InternalError,
            ProcessorDeclined,
        ]
    };

    pub fn as_str(self) -> &'static str {
        use DeclineReason::*;
        match self {
            UnknownCard => "unknown_card",
            CardClosed => "card_closed",
            CardExpired => "card_expired",
            CardUsed => "card_used",
            CardFrozen => "card_frozen",
            AgentFrozen => "agent_frozen",
            UnsupportedCurrency => "unsupported_currency",
            StaleFx => "stale_fx",
            MccNotAllowed => "mcc_not_allowed",
            MerchantNotAllowed => "merchant_not_allowed",
            CountryNotAllowed => "country_not_allowed",
            OutsideActiveHours => "outside_active_hours",
            HostNotAllowed => "host_not_allowed",
            RecipientNotAllowed => "recipient_not_allowed",
            PerTransactionExceeded => "per_transaction_exceeded",
            PerCallExceeded => "per_call_exceeded",
            LimitExceeded => "limit_exceeded",
            VelocityExceeded => "velocity_exceeded",
            ApprovalRequired => "approval_required",
            InsufficientFunds => "insufficient_funds",
            InsufficientOnchainFunds => "insufficient_onchain_funds",
            Timeout => "timeout",
            InternalError => "internal_error",
            ProcessorDeclined => "processor_declined",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// What would let a request declined for this reason through, said to the agent that asked.
    pub fn remedy(self) -> &'static str {
        use DeclineReason::*;
        match self {
            UnknownCard | CardClosed | CardExpired | CardUsed => "use another of your cards: this one cannot pay",
            CardFrozen | AgentFrozen => "nothing you can do: only an operator can unfreeze",
            UnsupportedCurrency => "pay in a currency spendgate converts (its rate table lists them)",
            StaleFx | Timeout | InternalError => "retry later: this is spendgate's side, not your policy",
            MerchantNotAllowed | HostNotAllowed => {
                "your policy does not allow this payee: ask a person for a mandate that names it"
            }
            MccNotAllowed | CountryNotAllowed | RecipientNotAllowed => {
                "your policy does not allow this payee, and only a person changing the policy can"
            }
            OutsideActiveHours => "retry within your policy's active hours",
            PerTransactionExceeded | PerCallExceeded => {
                "no single payment this large passes your policy: ask a person for a mandate that covers it"
            }
            LimitExceeded | VelocityExceeded => {
                "wait until the limit frees up (GET /v1/me says when), or ask a person for a mandate"
            }
            ApprovalRequired => "make the payment to ask a person: it is approved or denied by them",
            InsufficientFunds => "your balance is too low: an operator must fund it",
            InsufficientOnchainFunds => {
                "your wallet holds too little USDC on the chain: a deposit to it is credited once confirmed"
            }
            ProcessorDeclined => "the card processor declined on its own; retry or ask an operator",
        }
    }
}

impl fmt::Display for DeclineReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The rate a conversion used: `to = from × rate`, as fresh as `date` (the older of the two
/// currencies' rates), from `source`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct FxUsed {
    #[schema(value_type = String, example = "0.9241")]
    pub rate: String,
    #[schema(value_type = String, example = "2026-11-20")]
    pub date: String,
    /// Absent on decisions recorded before sources were.
    pub source: Option<RateSource>,
}

/// Where a rate came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RateSource {
    /// The ECB's daily reference rates, as fetched.
    Ecb,
    /// The ECB table built into this release: an offline fallback, as old as the release.
    Bundled,
    /// The second source (`fx_extra_url`), for currencies the ECB does not publish.
    Extra,
}

impl RateSource {
    pub fn as_str(self) -> &'static str {
        match self {
            RateSource::Ecb => "ecb",
            RateSource::Bundled => "bundled",
            RateSource::Extra => "extra",
        }
    }

    pub fn parse(text: &str) -> Option<RateSource> {
        [RateSource::Ecb, RateSource::Bundled, RateSource::Extra].into_iter().find(|s| s.as_str() == text)
    }
}

/// The request's amount in each currency a rule counts it in: the agent's (its caps and balance)
/// and the card's (its caps). `None` when the request could not be converted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Amounts {
    pub agent: Money,
    pub card: Money,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// `None` is an approval.
    pub decline: Option<DeclineReason>,
    /// The rule that fired, e.g. `agent.limit.daily` or `card.mcc.allow`.
    pub rule: Option<String>,
    pub amounts: Option<Amounts>,
    pub fx: Option<FxUsed>,
    /// The approval whose allowance let this authorization through.
    pub allowance: Option<String>,
    /// For an `approval_required` decline: what to ask a person.
    pub ask: Option<Ask>,
    /// For an approval: the alert thresholds of limits it took past (`alert_at`).
    pub crossed: Vec<Crossed>,
}

/// An approval took a limit past one of its alert thresholds.
#[derive(Debug, Clone, PartialEq)]
pub struct Crossed {
    /// e.g. `agent.limit.daily`.
    pub rule: String,
    pub percent: u8,
    /// The limit's amount, and what its window counts with this authorization, in `currency`.
    pub cap: i64,
    pub used: i64,
    pub currency: Currency,
    /// When the limit's current window began: the threshold is crossed once per window.
    pub window_start_ms: i64,
}

impl Decision {
    pub fn approved(&self) -> bool {
        self.decline.is_none()
    }

    pub fn decline(reason: DeclineReason, rule: Option<String>) -> Self {
        Decision {
            decline: Some(reason),
            rule,
            amounts: None,
            fx: None,
            allowance: None,
            ask: None,
            crossed: Vec::new(),
        }
    }
}
