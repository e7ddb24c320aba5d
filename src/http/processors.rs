//! The card processors' endpoints: Stripe Issuing, Lithic and Marqeta. Each verifies the caller on the
//! raw body, hands the parsed request to `rails::card::<processor>` and the ledger, and renders the
//! processor's answer. A refused caller gets 401 and changes nothing; a malformed body 400; an unknown
//! card or a failure inside spendgate a decline (fail closed), never a 5xx on the decision path.
//!
//! A signed request delivered again (a processor's retry, a proxy's, or a captured copy) is not
//! refused: every step is idempotent by the processor's own ids, so the copy gets the first
//! decision, on whichever node it lands, and changes nothing.

use std::time::Duration;

use actix_web::{HttpRequest, HttpResponse, post, web};
use serde::de::DeserializeOwned;

use super::AppState;
use super::error::{ErrorBody, SignedRefusals};
use crate::domain::authorization::{AuthRequest, DeclineReason};
use crate::domain::ledger::Source;
use crate::error::{Error, Result};
use crate::ledger::{AuthOutcome, Authorize, Ledger, Payer};
use crate::rails::card::signature::{BasicAuth, HexSignature, Refusal, StandardWebhooks, WebhookHeaders};
use crate::rails::card::{self, Applied, lithic, marqeta, stripe};

/// The processors' credentials as configured; None answers 404.
pub struct Processors {
    pub stripe: Option<HexSignature>,
    pub lithic: Option<StandardWebhooks>,
    pub lithic_deadline: Duration,
    pub marqeta: Option<BasicAuth>,
}

fn refuse(req: &HttpRequest, source: Source, why: Refusal) -> Error {
    super::refused(source.as_str(), req, why);
    metrics::counter!("spendgate_webhook_refused_total", "source" => source.as_str()).increment(1);
    Error::BadSignature
}

fn header<'a>(req: &'a HttpRequest, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|h| h.to_str().ok())
}

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T> {
    serde_json::from_slice(body).map_err(|e| Error::InvalidJson(format!("invalid JSON body: {e}")))
}

fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

fn not_configured(what: &str, setting: &str) -> Error {
    Error::NotFound(format!("the {what} endpoint is not configured (set {setting})"))
}

fn verify_stripe(state: &AppState, req: &HttpRequest, body: &[u8]) -> Result<()> {
    let keys =
        state.processors.stripe.as_ref().ok_or_else(|| not_configured("Stripe", "SPENDGATE_STRIPE_WEBHOOK_SECRET"))?;
    keys.verify(header(req, stripe::SIGNATURE_HEADER), body, now()).map_err(|why| refuse(req, stripe::SOURCE, why))
}

fn verify_lithic(state: &AppState, req: &HttpRequest, body: &[u8]) -> Result<()> {
    let keys =
        state.processors.lithic.as_ref().ok_or_else(|| not_configured("Lithic", "SPENDGATE_LITHIC_WEBHOOK_SECRET"))?;
    let headers = WebhookHeaders {
        id: header(req, "webhook-id"),
        timestamp: header(req, "webhook-timestamp"),
        signature: header(req, "webhook-signature"),
    };
    keys.verify(&headers, body, now()).map_err(|why| refuse(req, lithic::SOURCE, why))
}

fn verify_marqeta(state: &AppState, req: &HttpRequest) -> Result<()> {
    let auth =
        state.processors.marqeta.as_ref().ok_or_else(|| {
            not_configured("Marqeta JIT", "SPENDGATE_MARQETA_USERNAME and SPENDGATE_MARQETA_PASSWORD")
        })?;
    auth.verify(header(req, "Authorization")).map_err(|why| refuse(req, marqeta::SOURCE, why))
}

/// Finds the card and decides within `budget`. Every failure is a decline: an unknown card is not
/// recorded (there is no agent to record it against); anything else the ledger records. A dry run
/// (`Spendgate-Dry-Run: true`) records nothing, and its answer is spendgate's own, not the
/// processor's format: the handler returns it as is.
async fn decide(
    req: &HttpRequest,
    ledger: &Ledger,
    source: Source,
    external_id: String,
    card: Option<&str>,
    request: AuthRequest,
    budget: Duration,
) -> Decided {
    let dry_run = super::webhooks::is_dry_run(req);
    let answer = |outcome: AuthOutcome| match dry_run {
        true => Decided::DryRun(Ok(HttpResponse::Ok().json(AuthOutcome { dry_run: true, ..outcome }))),
        false => Decided::Real(outcome),
    };
    let Some(card) = card else { return answer(AuthOutcome::failed(DeclineReason::UnknownCard, &request)) };
    let card_id = match tokio::time::timeout(budget, ledger.card_for_processor(source.as_str(), card)).await {
        Ok(Ok(Some(id))) => id,
        Ok(Ok(None)) => {
            metrics::counter!("spendgate_decisions_total", "outcome" => "unknown_card").increment(1);
            return answer(AuthOutcome::failed(DeclineReason::UnknownCard, &request));
        }
        Ok(Err(e)) => {
            tracing::error!(error = %e, %source, "card lookup failed; declined");
            return answer(AuthOutcome::failed(DeclineReason::InternalError, &request));
        }
        Err(_) => return answer(AuthOutcome::failed(DeclineReason::Timeout, &request)),
    };
    let auth = Authorize {
        source,
        external_id,
        payer: Payer::Card(card_id),
        request,
        deferred: None,
        payment: None,
        onchain_short: false,
    };
    if dry_run {
        return Decided::DryRun(ledger.dry_run(auth, false).await.map(|outcome| HttpResponse::Ok().json(outcome)));
    }
    Decided::Real(ledger.authorize_within(auth, budget).await)
}

/// A decision to answer in the processor's format, or a dry run's own answer.
enum Decided {
    Real(AuthOutcome),
    DryRun(Result<HttpResponse>),
}

fn acknowledged(kind: &str, done: Applied) -> HttpResponse {
    for why in &done.skipped {
        tracing::info!(kind, why = %why, "processor event step skipped");
    }
    HttpResponse::Ok().json(serde_json::json!({"received": true, "applied": done.applied, "skipped": done.skipped}))
}

/// Stripe's real-time authorization request: answered with `{"approved", "metadata"}` and `Stripe-Version`.
#[utoipa::path(post, path = "/webhooks/stripe/authorizations", tag = "processors",
    params(("Spendgate-Dry-Run" = Option<bool>, Header, description = "`true`: decide, record nothing, answer spendgate's own decision")),
    request_body(content = Object, description = "Stripe's `issuing_authorization.request` event, signed with `Stripe-Signature`"),
    responses((status = 200, body = Object, description = "`{\"approved\": bool, \"metadata\": {…}}`"), SignedRefusals))]
#[post("/webhooks/stripe/authorizations")]
pub async fn stripe_authorization(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse> {
    verify_stripe(&state, &req, &body)?;
    let event: stripe::Event = parse(&body)?;
    let ask = stripe::decide(&event)?;
    let budget = card::budget(stripe::DEADLINE);
    let outcome =
        match decide(&req, &state.ledger, stripe::SOURCE, ask.authorization_id, Some(&ask.card), ask.request, budget)
            .await
        {
            Decided::Real(outcome) => outcome,
            Decided::DryRun(answer) => return answer,
        };
    Ok(HttpResponse::Ok().insert_header(("Stripe-Version", ask.api_version)).json(stripe::answer(&outcome)))
}

/// Stripe's events: authorizations created or updated, transactions (captures and refunds).
#[utoipa::path(post, path = "/webhooks/stripe", tag = "processors",
    request_body(content = Object, description = "a Stripe event, signed with `Stripe-Signature`"),
    responses((status = 200, body = Object, description = "`{\"received\": true, \"applied\", \"skipped\"}`"), SignedRefusals,
        (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
#[post("/webhooks/stripe")]
pub async fn stripe_event(state: web::Data<AppState>, req: HttpRequest, body: web::Bytes) -> Result<HttpResponse> {
    verify_stripe(&state, &req, &body)?;
    let event: stripe::Event = parse(&body)?;
    let steps = stripe::steps(&event)?;
    if steps.is_empty() {
        tracing::info!(kind = %event.kind, id = %event.id, "Stripe event ignored");
    }
    let done = card::apply(&state.ledger, stripe::SOURCE, steps).await?;
    Ok(acknowledged(&event.kind, done))
}

/// Lithic's Auth Stream Access request: answered with `{"token", "result"}`.
#[utoipa::path(post, path = "/webhooks/lithic/asa", tag = "processors",
    params(("Spendgate-Dry-Run" = Option<bool>, Header, description = "`true`: decide, record nothing, answer spendgate's own decision")),
    request_body(content = Object, description = "Lithic's ASA request, signed with Standard Webhooks headers"),
    responses((status = 200, body = Object, description = "`{\"token\", \"result\"}`"), SignedRefusals))]
#[post("/webhooks/lithic/asa")]
pub async fn lithic_asa(state: web::Data<AppState>, req: HttpRequest, body: web::Bytes) -> Result<HttpResponse> {
    verify_lithic(&state, &req, &body)?;
    let request: lithic::ApprovalRequest = parse(&body)?;
    let (token, outcome) = match lithic::asa(&request)? {
        lithic::Asa::Approve { token } => return Ok(HttpResponse::Ok().json(lithic::answer(&token, None))),
        lithic::Asa::Decide { token, card: card_token, request } => {
            let budget = card::budget(state.processors.lithic_deadline);
            let decided =
                decide(&req, &state.ledger, lithic::SOURCE, token.clone(), card_token.as_deref(), request, budget);
            match decided.await {
                Decided::Real(outcome) => (token, outcome),
                Decided::DryRun(answer) => return answer,
            }
        }
    };
    let decline = if outcome.approved { None } else { Some(outcome.reason.unwrap_or(DeclineReason::InternalError)) };
    Ok(HttpResponse::Ok().json(lithic::answer(&token, decline)))
}

/// Lithic's events: `card_transaction.updated` carries the lifecycle; other types are acknowledged.
#[utoipa::path(post, path = "/webhooks/lithic", tag = "processors",
    request_body(content = Object, description = "a Lithic event, signed with Standard Webhooks headers"),
    responses((status = 200, body = Object, description = "`{\"received\": true, \"applied\", \"skipped\"}`"), SignedRefusals,
        (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
#[post("/webhooks/lithic")]
pub async fn lithic_event(state: web::Data<AppState>, req: HttpRequest, body: web::Bytes) -> Result<HttpResponse> {
    verify_lithic(&state, &req, &body)?;
    let value: serde_json::Value = parse(&body)?;
    let kind = value.get("event_type").and_then(|k| k.as_str()).unwrap_or_default().to_owned();
    if kind != "card_transaction.updated" {
        tracing::info!(kind = %kind, "Lithic event ignored");
        return Ok(acknowledged(&kind, Applied::default()));
    }
    let transaction: lithic::Transaction =
        serde_json::from_value(value).map_err(|e| Error::validation(format!("card_transaction.updated: {e}")))?;
    let done = card::apply(&state.ledger, lithic::SOURCE, lithic::steps(&transaction)?).await?;
    Ok(acknowledged(&kind, done))
}

/// Marqeta's JIT funding: approve = 200 echoing `jit_funding`; decline = 402 with its `decline_reason`.
#[utoipa::path(post, path = "/webhooks/marqeta/jit", tag = "processors", security(("marqeta_basic" = [])),
    params(("Spendgate-Dry-Run" = Option<bool>, Header, description = "`true`: decide, record nothing, answer spendgate's own decision")),
    request_body(content = Object, description = "a Marqeta JIT funding message, with HTTP Basic credentials"),
    responses((status = 200, body = Object, description = "approved: `{\"jit_funding\": {…}}`"),
        (status = 402, body = Object, description = "declined: `{\"jit_funding\": {…, \"decline_reason\"}}`"), SignedRefusals,
        (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
#[post("/webhooks/marqeta/jit")]
pub async fn marqeta_jit(state: web::Data<AppState>, req: HttpRequest, body: web::Bytes) -> Result<HttpResponse> {
    verify_marqeta(&state, &req)?;
    let message: marqeta::Message = parse(&body)?;
    let funding = marqeta::jit_funding(&message)?;
    match marqeta::read(&message)? {
        marqeta::Jit::Decide { token, card: card_token, request } => {
            let budget = card::budget(marqeta::DEADLINE);
            let decided = decide(&req, &state.ledger, marqeta::SOURCE, token, card_token.as_deref(), request, budget);
            let outcome = match decided.await {
                Decided::Real(outcome) => outcome,
                Decided::DryRun(answer) => return answer,
            };
            if outcome.approved {
                return Ok(HttpResponse::Ok().json(marqeta::answer(funding, None)));
            }
            let reason = outcome.reason.unwrap_or(DeclineReason::InternalError);
            Ok(HttpResponse::PaymentRequired().json(marqeta::answer(funding, Some(reason))))
        }
        marqeta::Jit::Inform(steps) => {
            let done = card::apply(&state.ledger, marqeta::SOURCE, steps).await?;
            for why in &done.skipped {
                tracing::info!(why = %why, "Marqeta funding message step skipped");
            }
            Ok(HttpResponse::Ok().json(marqeta::answer(funding, None)))
        }
    }
}
