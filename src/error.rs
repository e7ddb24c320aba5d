//! The one error type. Each variant has a stable machine code and an HTTP status; `http::error`
//! is the one place that renders it as the `{"error": {"code", "message"}}` body.

use crate::domain::policy::PolicyError;

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
    /// Allowed in general, but not in the current state (409).
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    /// Well-formed but refers to something that cannot be used (422).
    #[error("{message}")]
    Unprocessable { code: &'static str, message: String },
    /// A payment spendgate will not make: a policy decline or a 402 it cannot pay (402).
    #[error("{message}")]
    PaymentRefused { code: String, message: String },
    /// A part of spendgate that is not configured on this server (503).
    #[error("{message}")]
    Disabled { code: &'static str, message: String },
    /// The upstream server of a proxied request failed or answered something unusable (502).
    #[error("{0}")]
    Upstream(String),
    /// The upstream answer is larger than spendgate passes on (502).
    #[error("{0}")]
    UpstreamTooLarge(String),
    /// A bound on concurrent work is reached; safe to retry shortly (429).
    #[error("{message}")]
    TooManyRequests { code: &'static str, message: String },
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
    pub fn code(&self) -> &str {
        match self {
            Error::Validation(_) => "validation_failed",
            Error::InvalidJson(_) => "invalid_json",
            Error::Unauthenticated => "unauthenticated",
            Error::BadSignature => "invalid_signature",
            Error::Forbidden(_) => "forbidden",
            Error::NotFound(_) => "not_found",
            Error::Conflict { code, .. }
            | Error::Unprocessable { code, .. }
            | Error::Disabled { code, .. }
            | Error::TooManyRequests { code, .. } => code,
            Error::PaymentRefused { code, .. } => code,
            Error::Upstream(_) => "upstream_failed",
            Error::UpstreamTooLarge(_) => "upstream_too_large",
            Error::MethodNotAllowed(_) => "method_not_allowed",
            Error::PayloadTooLarge(_) => "payload_too_large",
            Error::UnsupportedMediaType(_) => "unsupported_media_type",
            Error::StorageUnavailable(_) => "storage_unavailable",
            Error::Internal(_) => "internal",
        }
    }

    /// The HTTP status this error is answered with.
    pub fn status(&self) -> u16 {
        match self {
            Error::Validation(_) | Error::InvalidJson(_) => 400,
            Error::Unauthenticated | Error::BadSignature => 401,
            Error::PaymentRefused { .. } => 402,
            Error::Forbidden(_) => 403,
            Error::NotFound(_) => 404,
            Error::MethodNotAllowed(_) => 405,
            Error::Conflict { .. } => 409,
            Error::PayloadTooLarge(_) => 413,
            Error::UnsupportedMediaType(_) => 415,
            Error::Unprocessable { .. } => 422,
            Error::TooManyRequests { .. } => 429,
            Error::Internal(_) => 500,
            Error::Upstream(_) | Error::UpstreamTooLarge(_) => 502,
            Error::Disabled { .. } | Error::StorageUnavailable(_) => 503,
        }
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

impl From<diesel::result::Error> for Error {
    fn from(e: diesel::result::Error) -> Self {
        use diesel::result::{DatabaseErrorKind as Kind, Error as D};
        match e {
            D::NotFound => Error::NotFound("not found".into()),
            // Two writers raced for the same unique value; the loser is told, not failed.
            D::DatabaseError(Kind::UniqueViolation, _) => Error::Conflict {
                code: "already_exists",
                message: "a record with the same unique value already exists".into(),
            },
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
