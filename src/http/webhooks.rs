//! The native authorization webhook, spendgate's own processor-neutral format: signed JSON in,
//! the decision out. `Spendgate-Signature: t=<unix seconds>,v2=<hex HMAC-SHA256 of
//! "<t>.<METHOD>.<path>.<raw body>">`; the older `v1=` (of `"<t>.<raw body>"`) only on
//! `POST /v1/authorizations`, whose body alone names what it asks.

use actix_web::{HttpRequest, HttpResponse, post, web};
use serde::Deserialize;
use utoipa::ToSchema;

use super::AppState;
use crate::domain::authorization::{AuthRequest, Merchant, Rail};
use crate::domain::ids::CardId;
use crate::error::{Error, Result};
use crate::ledger::{AuthOutcome, Authorize, LifecycleOutcome, Movement, Payer, Target};

pub const SIGNATURE_HEADER: &str = "Spendgate-Signature";
use crate::rails::card::MAX_AMOUNT;
use crate::rails::card::signature::{Accept, Route};

/// Verifies the request's signature and parses its body; 404 when no secret is configured.
fn signed<T: serde::de::DeserializeOwned>(
    state: &AppState,
    req: &HttpRequest,
    body: &[u8],
    accept: Accept,
) -> Result<T> {
    let Some(keys) = &state.webhook else {
        return Err(Error::NotFound("the native webhook is not configured (set SPENDGATE_WEBHOOK_SECRET)".into()));
    };
    let header = req.headers().get(SIGNATURE_HEADER).and_then(|h| h.to_str().ok());
    let route = Route { method: req.method().as_str(), path: req.uri().path() };
    if let Err(why) = keys.verify_route(header, route, body, jiff::Timestamp::now().as_second(), accept) {
        super::refused("native webhook signature", req, why);
        metrics::counter!("spendgate_webhook_refused_total", "source" => "native").increment(1);
        return Err(Error::BadSignature);
    }
    serde_json::from_slice(body).map_err(|e| Error::InvalidJson(format!("invalid JSON body: {e}")))
}

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

fn text(field: &str, value: &str, max: usize) -> Result<()> {
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

/// `Spendgate-Dry-Run: true` on a signed authorization request: decide it against the current state
/// and answer spendgate's own decision (`"dry_run": true`), recording nothing. The answer is never
/// in a processor's format, so no processor can take it for an approval.
pub const DRY_RUN_HEADER: &str = "Spendgate-Dry-Run";

pub fn is_dry_run(req: &HttpRequest) -> bool {
    req.headers().get(DRY_RUN_HEADER).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"))
}

/// Decide an authorization. Always 200 with the decision once the signature and body are good:
/// an unknown card, a frozen one or an internal failure are declines, never errors. With
/// `Spendgate-Dry-Run: true`, nothing is recorded.
#[utoipa::path(post, path = "/v1/authorizations", tag = "authorizations", request_body = NativeAuthorization,
    params(("Spendgate-Dry-Run" = Option<bool>, Header, description = "`true`: decide, record nothing")),
    responses((status = 200, body = AuthOutcome), (status = 401, description = "missing, stale or wrong signature")))]
#[post("/v1/authorizations")]
pub async fn authorize(state: web::Data<AppState>, req: HttpRequest, body: web::Bytes) -> Result<HttpResponse> {
    let input: NativeAuthorization = signed(&state, &req, &body, Accept::BodyOrRoute)?;
    text("id", &input.id, 255)?;
    text("card_id", &input.card_id, 100)?;
    let purchase =
        Purchase { amount: input.amount, currency: input.currency, merchant: input.merchant, trace_id: input.trace_id };
    let request = purchase.request()?;
    let dry_run = is_dry_run(&req);
    let Some(card_id) = CardId::parse(&input.card_id) else {
        let failed = AuthOutcome::failed(crate::domain::authorization::DeclineReason::UnknownCard, &request);
        return Ok(HttpResponse::Ok().json(AuthOutcome { dry_run, ..failed }));
    };
    let auth = Authorize {
        source: crate::domain::ledger::Source::Native,
        external_id: input.id,
        payer: Payer::Card(card_id),
        request,
        deferred: None,
        payment: None,
    };
    let outcome = match dry_run {
        true => state.ledger.dry_run(auth).await?,
        false => state.ledger.authorize(auth).await,
    };
    Ok(HttpResponse::Ok().json(outcome))
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

async fn lifecycle(state: &AppState, authorization_id: &str, id: &str, movement: Movement) -> Result<HttpResponse> {
    text("id", id, 255)?;
    let amount = match &movement {
        Movement::Capture { amount, .. } | Movement::Refund { amount, .. } => Some(*amount),
        Movement::Reverse { amount, .. } => *amount,
        Movement::Adjust { amount, .. } => Some(*amount),
    };
    if amount.is_some_and(|a| !(1..=MAX_AMOUNT).contains(&a)) {
        return Err(Error::validation(format!("amount must be 1 to {MAX_AMOUNT} minor units")));
    }
    let target = Target::Id(authorization_id.to_owned());
    let outcome: LifecycleOutcome = state.ledger.movement(target, id, movement).await?;
    Ok(HttpResponse::Ok().json(outcome))
}

/// Post (capture) an authorization: a partial capture releases the rest of the hold; a capture
/// above it records the excess as its own transfer.
#[utoipa::path(post, path = "/v1/authorizations/{authorization_id}/capture", tag = "authorizations",
    request_body = CaptureBody, responses((status = 200, body = LifecycleOutcome)))]
#[post("/v1/authorizations/{authorization_id}/capture")]
pub async fn capture(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse> {
    let b: CaptureBody = signed(&state, &req, &body, Accept::Route)?;
    lifecycle(&state, &path, &b.id, Movement::Capture { amount: b.amount, currency: b.currency }).await
}

/// Void the hold, all of it or part.
#[utoipa::path(post, path = "/v1/authorizations/{authorization_id}/reverse", tag = "authorizations",
    request_body = ReverseBody, responses((status = 200, body = LifecycleOutcome)))]
#[post("/v1/authorizations/{authorization_id}/reverse")]
pub async fn reverse(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse> {
    let b: ReverseBody = signed(&state, &req, &body, Accept::Route)?;
    lifecycle(&state, &path, &b.id, Movement::Reverse { amount: b.amount, currency: b.currency }).await
}

/// Credit a refund to the agent's balance. Limits are not restored.
#[utoipa::path(post, path = "/v1/authorizations/{authorization_id}/refund", tag = "authorizations",
    request_body = RefundBody, responses((status = 200, body = LifecycleOutcome)))]
#[post("/v1/authorizations/{authorization_id}/refund")]
pub async fn refund(
    state: web::Data<AppState>,
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse> {
    let b: RefundBody = signed(&state, &req, &body, Accept::Route)?;
    lifecycle(&state, &path, &b.id, Movement::Refund { amount: b.amount, currency: b.currency }).await
}
