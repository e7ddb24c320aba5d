//! The one error type and every machine code it carries. Each code has one HTTP status;
//! `http::error` is the one place that renders an error as the `{"error": {"code", "message"}}` body.

use crate::domain::authorization::DeclineReason;
use crate::domain::policy::PolicyError;

/// Declares `ErrorCode`: each code once, with its text and its HTTP status.
macro_rules! error_codes {
    ($($status:literal => { $($(#[$doc:meta])* $variant:ident = $text:literal,)+ })+) => {
        /// Every machine code an error answer carries, with its HTTP status. Clients match on the
        /// text (`as_str`), which never changes for a variant.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum ErrorCode {
            /// A payment the policy declined (402): the code is the decline reason.
            Declined(DeclineReason),
            $($($(#[$doc])* $variant,)+)+
        }

        impl ErrorCode {
            /// Every code but the decline reasons, which `DeclineReason::ALL` lists.
            pub const ALL: &[ErrorCode] = &[$($(ErrorCode::$variant,)+)+];

            pub fn as_str(self) -> &'static str {
                match self {
                    ErrorCode::Declined(reason) => reason.as_str(),
                    $($(ErrorCode::$variant => $text,)+)+
                }
            }

            /// The HTTP status this code is answered with.
            pub fn status(self) -> u16 {
                match self {
                    ErrorCode::Declined(_) => 402,
                    $($(ErrorCode::$variant => $status,)+)+
                }
            }
        }
    };
}

error_codes! {
    400 => { ValidationFailed = "validation_failed", InvalidJson = "invalid_json", }
    401 => { Unauthenticated = "unauthenticated", InvalidSignature = "invalid_signature", }
    402 => {
        NoPayableRequirement = "no_payable_requirement",
        UnsupportedPaymentProtocol = "unsupported_payment_protocol",
        /// A person denied the approval a deferred payment waited for.
        ApprovalDenied = "approval_denied",
    }
    403 => { Forbidden = "forbidden", }
    404 => { NotFound = "not_found", }
    405 => { MethodNotAllowed = "method_not_allowed", }
    409 => {
        AlreadyExists = "already_exists",
        ConcurrentUpdate = "concurrent_update",
        CardClosed = "card_closed",
        CardExists = "card_exists",
        LastOwnerKey = "last_owner_key",
        /// An idempotency key (or a movement's id) already used for something else, or whose
        /// first use left nothing to replay.
        IdempotencyConflict = "idempotency_conflict",
        AuthorizationDeclined = "authorization_declined",
        NothingHeld = "nothing_held",
        RefundExceedsPosted = "refund_exceeds_posted",
        NoWallet = "no_wallet",
        PaymentOutcomeUnknown = "payment_outcome_unknown",
        PaymentFinal = "payment_final",
        ApprovalDecided = "approval_decided",
        ApprovalExpired = "approval_expired",
        AnswerTooLarge = "answer_too_large",
        /// The treasury has less than a funding, top-up or withdrawal asks.
        TreasuryShort = "treasury_short",
        /// A funding would take the agent's available balance past its policy's `funding.max_balance`.
        MaxBalanceExceeded = "max_balance_exceeded",
        /// A drain asks for more than the agent has available (held money is never drained).
        ExceedsAvailable = "exceeds_available",
        /// The agent is deactivated: only reactivation undoes it.
        AgentDeactivated = "agent_deactivated",
    }
    413 => { PayloadTooLarge = "payload_too_large", }
    415 => { UnsupportedMediaType = "unsupported_media_type", }
    422 => {
        UnknownAgent = "unknown_agent",
        UnknownTemplate = "unknown_template",
        TemplateCurrencyMismatch = "template_currency_mismatch",
        CurrencyMismatch = "currency_mismatch",
        UnsupportedCurrency = "unsupported_currency",
        ProcessorCurrencyUnsupported = "processor_currency_unsupported",
        DestinationForbidden = "destination_forbidden",
        /// A processor's API refused to issue the card.
        ProcessorRefused = "processor_refused",
    }
    429 => {
        TooManyFetches = "too_many_fetches",
        TooManyDryRuns = "too_many_dry_runs",
        /// An agent's mandate requests waiting for people are at their bound.
        TooManyMandates = "too_many_mandates",
        /// A node runs at most two backtests at once.
        TooManyBacktests = "too_many_backtests",
    }
    500 => { Internal = "internal", }
    502 => {
        UpstreamFailed = "upstream_failed",
        UpstreamTooLarge = "upstream_too_large",
    }
    503 => {
        StorageUnavailable = "storage_unavailable",
        UsdcRailDisabled = "usdc_rail_disabled",
        /// A network's JSON-RPC endpoint could not be read (or serves another chain): a payment
        /// that needs the wallet's balance is not signed.
        ChainUnavailable = "chain_unavailable",
    }
}

impl ErrorCode {
    /// Every code an answer can carry, each once: `ALL`, then the decline reasons not in it (a
    /// declined payment's `card_closed` or `unsupported_currency` means what the same code does
    /// elsewhere, answered as 402).
    pub fn every() -> impl Iterator<Item = ErrorCode> {
        let declines = DeclineReason::ALL.into_iter().map(ErrorCode::Declined);
        let new = |code: &ErrorCode| !ErrorCode::ALL.iter().any(|c| c.as_str() == code.as_str());
        ErrorCode::ALL.iter().copied().chain(declines.filter(new))
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed or breaks a rule of its own (400).
    #[error("{0}")]
    Validation(String),
    /// The body is not valid JSON (400).
    #[error("{0}")]
    InvalidJson(String),
    #[error("missing or invalid API key")]
    Unauthenticated,
    /// A webhook whose signature is missing, stale or wrong (401).
    #[error("missing, stale or invalid signature")]
    BadSignature,
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    /// A case with a code of its own (a conflict with the current state, something that cannot be
    /// used, a payment refused, a part not configured, a bound reached): its status is the code's.
    #[error("{message}")]
    Coded { code: ErrorCode, message: String },
    /// The upstream server of a proxied request failed or answered something unusable (502).
    #[error("{0}")]
    Upstream(String),
    /// The upstream answer is larger than spendgate passes on (502).
    #[error("{0}")]
    UpstreamTooLarge(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The database could not be reached or is busy; safe to retry (503).
    #[error("storage is unavailable, retry shortly")]
    StorageUnavailable(String),
    #[error("internal error")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::Validation(_) => ErrorCode::ValidationFailed,
            Error::InvalidJson(_) => ErrorCode::InvalidJson,
            Error::Unauthenticated => ErrorCode::Unauthenticated,
            Error::BadSignature => ErrorCode::InvalidSignature,
            Error::Forbidden(_) => ErrorCode::Forbidden,
            Error::NotFound(_) => ErrorCode::NotFound,
            Error::Coded { code, .. } => *code,
            Error::Upstream(_) => ErrorCode::UpstreamFailed,
            Error::UpstreamTooLarge(_) => ErrorCode::UpstreamTooLarge,
            Error::MethodNotAllowed(_) => ErrorCode::MethodNotAllowed,
            Error::PayloadTooLarge(_) => ErrorCode::PayloadTooLarge,
            Error::UnsupportedMediaType(_) => ErrorCode::UnsupportedMediaType,
            Error::StorageUnavailable(_) => ErrorCode::StorageUnavailable,
            Error::Internal(_) => ErrorCode::Internal,
        }
    }

    /// The HTTP status this error is answered with: its code's.
    pub fn status(&self) -> u16 {
        self.code().status()
    }

    pub fn coded(code: ErrorCode, message: impl Into<String>) -> Self {
        Error::Coded { code, message: message.into() }
    }

    pub fn validation(message: impl Into<String>) -> Self {
        Error::Validation(message.into())
    }

    pub fn not_found(what: &str, id: &str) -> Self {
        Error::NotFound(format!("{what} {id} not found"))
    }

    /// A policy document error, named as a field of the request body.
    pub fn policy(field: &str, e: PolicyError) -> Self {
        Error::Validation(format!("{field}.{e}"))
    }
}

impl From<crate::domain::access::Denied> for Error {
    fn from(denied: crate::domain::access::Denied) -> Self {
        Error::Forbidden(denied.0)
    }
}

impl From<diesel::result::Error> for Error {
    fn from(e: diesel::result::Error) -> Self {
        use diesel::result::{DatabaseErrorKind as Kind, Error as D};
        match e {
            D::NotFound => Error::NotFound("not found".into()),
            // Two writers raced for the same unique value; the loser is told, not failed.
            D::DatabaseError(Kind::UniqueViolation, _) => {
                Error::coded(ErrorCode::AlreadyExists, "a record with the same unique value already exists")
            }
            D::DatabaseError(Kind::ClosedConnection | Kind::SerializationFailure, info) => {
                Error::StorageUnavailable(info.message().to_owned())
            }
            // SQLite reports a lock held past busy_timeout as an error of no particular kind.
            D::DatabaseError(_, info) if is_busy(info.message()) => {
                Error::StorageUnavailable(info.message().to_owned())
            }
            other => Error::Internal(format!("database: {other}")),
        }
    }
}

fn is_busy(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("database is locked") || m.contains("database is busy")
}

impl From<diesel::r2d2::PoolError> for Error {
    fn from(e: diesel::r2d2::PoolError) -> Self {
        Error::StorageUnavailable(format!("connection pool: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;

    #[test]
    fn every_code_is_listed_once_and_the_docs_list_exactly_them_by_status() {
        let every: Vec<&str> = ErrorCode::every().map(ErrorCode::as_str).collect();
        assert_eq!(every.iter().collect::<BTreeSet<_>>().len(), every.len(), "a code named twice: {every:?}");

        let mut documented: BTreeMap<u16, BTreeSet<String>> = BTreeMap::new();
        let api = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/api.md"));
        let errors = &api[api.find("## Errors").expect("docs/api.md has an Errors section")..];
        for row in errors.lines().filter(|l| l.starts_with("| ") && !l.starts_with("| status")) {
            let mut cells = row.split('|').map(str::trim).filter(|c| !c.is_empty());
            let (Some(status), Some(codes)) = (cells.next(), cells.next()) else { continue };
            let Ok(status) = status.parse::<u16>() else { continue };
            let named = codes.split('`').skip(1).step_by(2).map(str::to_owned);
            documented.entry(status).or_default().extend(named);
            if status == 402 {
                assert!(codes.contains("the decline reason"), "402 names the decline reasons: {codes}");
            }
        }
        let mut listed: BTreeMap<u16, BTreeSet<String>> = BTreeMap::new();
        for code in ErrorCode::ALL {
            listed.entry(code.status()).or_default().insert(code.as_str().to_owned());
        }
        assert_eq!(documented, listed, "docs/api.md's error table and ErrorCode disagree");
    }
}
