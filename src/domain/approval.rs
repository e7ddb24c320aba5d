//! Human approvals: what a decision that needs a person asks for, and what a person's "yes"
//! lets through afterwards (an allowance).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::ids::CardId;
use super::money::Currency;

/// What a human's approval lets through, until `until_ms`. A limit that asked is raised by `amount`
/// (and by one authorization, for a count) for the card, trace or agent the limit covers. An
/// approval threshold that asked lets one authorization of at most `amount` pass, then it is spent.
#[derive(Debug, Clone, PartialEq)]
pub struct Allowance {
    pub approval_id: String,
    /// The rule that asked: `card.limit.daily`, `agent.approval`, …
    pub rule: String,
    pub card_id: Option<CardId>,
    pub trace_id: Option<String>,
    /// In the currency of the rule's policy.
    pub amount: i64,
    pub until_ms: i64,
    pub single_use: bool,
    /// Set when this is a mandate the agent asked for, rather than a rule's request.
    pub mandate: Option<Mandate>,
}

/// The rule name a mandate's approval carries.
pub const MANDATE_RULE: &str = "mandate";

/// Spend an agent asked people for in advance, and a person approved: up to the allowance's
/// `amount` (in the agent's currency), on its trace if it names one, to the hosts or merchants it
/// names, until it expires. Within it, limits, approval thresholds and per-payment caps do not
/// decline; a freeze, the balance, and every lock it does not name still do.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Mandate {
    /// Hosts (the USDC rail) it pays, even where the policy's `x402.allow_hosts` leaves them out.
    pub hosts: Vec<String>,
    /// Merchant ids or descriptor patterns (`*` any run), even where a merchant lock leaves them out.
    pub merchants: Vec<String>,
    /// Already spent under it, in the agent's currency.
    pub used: i64,
}

impl Mandate {
    /// It names this host (`host` or `host:port`, as a URL gives it), in any case.
    pub fn names_host(&self, host: &str) -> bool {
        self.hosts.iter().any(|h| h.eq_ignore_ascii_case(host))
    }
}

impl Allowance {
    /// A mandate in force at `now_ms` that names this host: a person allowed paying it.
    pub fn mandates_host(&self, host: &str, now_ms: i64) -> bool {
        self.until_ms > now_ms && self.mandate.as_ref().is_some_and(|m| m.names_host(host))
    }
}

/// Why a decline needs a person, as the policy saw it: what a request would put the rule at.
#[derive(Debug, Clone, PartialEq)]
pub struct Ask {
    /// The request in the currency of the rule's policy.
    pub amount: i64,
    pub currency: Currency,
    /// The limit's amount cap, or the approval threshold.
    pub cap: Option<i64>,
    /// What the window had counted before this request (limits only).
    pub spent: Option<i64>,
    /// When the limit's current calendar window ends: an approval raises it until then.
    pub window_end_ms: Option<i64>,
    /// An approval threshold (one authorization passes) rather than a limit (raised for a while).
    pub single_use: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ApprovalStatus {
    Pending,
    Approved,
    Denied,
    /// Nobody decided before it expired.
    Expired,
}

impl ApprovalStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalStatus::Pending => "pending",
            ApprovalStatus::Approved => "approved",
            ApprovalStatus::Denied => "denied",
            ApprovalStatus::Expired => "expired",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Pending, Self::Approved, Self::Denied, Self::Expired].into_iter().find(|x| x.as_str() == s)
    }
}

/// What a person decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ApprovalAction {
    Approve,
    Deny,
}

impl ApprovalAction {
    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalAction::Approve => "approve",
            ApprovalAction::Deny => "deny",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "approve" => Some(ApprovalAction::Approve),
            "deny" => Some(ApprovalAction::Deny),
            _ => None,
        }
    }

    /// The status an approval takes when this action is applied.
    pub fn status(self) -> ApprovalStatus {
        match self {
            ApprovalAction::Approve => ApprovalStatus::Approved,
            ApprovalAction::Deny => ApprovalStatus::Denied,
        }
    }
}
