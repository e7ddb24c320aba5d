//! The one place an `Error` becomes an HTTP answer: its status and `{"error": {"code", "message"}}`.

use actix_web::error::{JsonPayloadError, PayloadError, QueryPayloadError, UrlencodedError};
use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, ResponseError};
use serde::Serialize;
use utoipa::{IntoResponses, ToSchema};

use crate::error::{Error, ErrorCode};

#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What a signed processor route answers besides its own answer.
#[derive(IntoResponses)]
pub enum SignedRefusals {
    /// malformed body
    #[response(status = 400)]
    Malformed(ErrorBody),
    /// missing, stale or wrong signature
    #[response(status = 401)]
    BadSignature(ErrorBody),
    /// not configured on this server
    #[response(status = 404)]
    NotConfigured(ErrorBody),
    #[response(status = 413)]
    TooLarge(ErrorBody),
}

/// The pages an approval link answers with when it cannot be used (the 400 is declared with each
/// route: it may also be JSON).
#[derive(IntoResponses)]
pub enum LinkRefusals {
    /// a link this server did not sign for this request and action (HTML)
    #[response(status = 403, content_type = "text/html")]
    Forged(String),
    /// no such request, or links are off (HTML)
    #[response(status = 404, content_type = "text/html")]
    NotFound(String),
    /// an expired link (HTML)
    #[response(status = 410, content_type = "text/html")]
    Expired(String),
    /// storage unavailable; try again (HTML)
    #[response(status = 503, content_type = "text/html")]
    Unavailable(String),
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    #[schema(schema_with = error_codes)]
    pub code: String,
    pub message: String,
}

/// Every code an error answer can carry, for the API description (a client can match on all).
fn error_codes() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(ErrorCode::every().map(ErrorCode::as_str)))
        .description(Some("Stable and machine-readable; a 402's code is the decline reason."))
        .build()
        .into()
}

impl ResponseError for Error {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        // The detail of a server-side failure goes to the log, not to the client.
        match self {
            Error::Internal(detail) => tracing::error!(%detail, "internal error"),
            Error::StorageUnavailable(detail) => tracing::warn!(%detail, "storage unavailable"),
            _ => {}
        }
        let body =
            ErrorBody { error: ErrorDetail { code: self.code().as_str().to_owned(), message: self.to_string() } };
        let mut response = HttpResponse::build(self.status_code()).json(body);
        if matches!(self, Error::Unauthenticated) {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if self.status() == 429 {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// Largest accepted request body.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

pub fn json_error(err: JsonPayloadError, _req: &HttpRequest) -> actix_web::Error {
    let error = match err {
        JsonPayloadError::Overflow { .. }
        | JsonPayloadError::OverflowKnownLength { .. }
        | JsonPayloadError::Payload(PayloadError::Overflow) => Error::PayloadTooLarge(MAX_BODY_BYTES),
        JsonPayloadError::ContentType => Error::UnsupportedMediaType("Content-Type must be application/json".into()),
        JsonPayloadError::Deserialize(e) if e.is_data() => Error::Validation(e.to_string()),
        JsonPayloadError::Deserialize(e) => Error::InvalidJson(format!("body is not valid JSON: {e}")),
        other => Error::InvalidJson(format!("could not read the body: {other}")),
    };
    error.into()
}

pub fn form_error(err: UrlencodedError, _req: &HttpRequest) -> actix_web::Error {
    let error = match err {
        UrlencodedError::Overflow { .. } | UrlencodedError::Payload(PayloadError::Overflow) => {
            Error::PayloadTooLarge(MAX_BODY_BYTES)
        }
        UrlencodedError::ContentType => {
            Error::UnsupportedMediaType("Content-Type must be application/x-www-form-urlencoded".into())
        }
        other => Error::Validation(format!("form: {other}")),
    };
    error.into()
}

pub fn query_error(err: QueryPayloadError, _req: &HttpRequest) -> actix_web::Error {
    let message = match err {
        QueryPayloadError::Deserialize(e) => format!("query string: {e}"),
        other => format!("query string: {other}"),
    };
    Error::Validation(message).into()
}
