//! The native authorization webhook's routes: the signature checked on the raw body, the body read
//! in spendgate's own format (`rails::card::native`), the ledger's decision or movement answered.

use actix_web::{HttpRequest, HttpResponse, post, web};

use super::AppState;
use crate::domain::ids::CardId;
use crate::error::{Error, Result};
use crate::ledger::{AuthOutcome, Authorize, LifecycleOutcome, Movement, Payer, Target};

use crate::rails::card::MAX_AMOUNT;
use crate::rails::card::native::{
    CaptureBody, NativeAuthorization, Purchase, RefundBody, ReverseBody, SIGNATURE_HEADER, text,
};
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
        onchain_short: false,
    };
    let outcome = match dry_run {
        true => state.ledger.dry_run(auth, false).await?,
        false => state.ledger.authorize(auth).await,
    };
    Ok(HttpResponse::Ok().json(outcome))
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
