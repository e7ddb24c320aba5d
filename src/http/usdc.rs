//! The USDC rail's routes: wallets and x402 payments.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, get, post, web};
use serde::Deserialize;
use utoipa::ToSchema;

use super::AppState;
use super::error::{ErrorBody, ErrorDetail};
use crate::admin::Page;
use crate::admin::agents::agent_for;
use crate::domain::access::{Permission, Principal, Role};
use crate::error::Result;
use crate::ledger::AuthOutcome;
use crate::rails::usdc::{
    AuthorizeRequest, Authorized, Awaiting, DeferredStatus, ExportedWallet, FetchOutcome, FetchRequest, PaymentCheck,
    PaymentView, WalletReconciliation, WalletView,
};

fn idempotency_key(req: &HttpRequest) -> &str {
    req.headers().get("idempotency-key").and_then(|v| v.to_str().ok()).unwrap_or("")
}

#[utoipa::path(tag = "usdc", security(("bearer" = [])),
    responses((status = 200, body = WalletView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
#[get("/v1/agents/{agent_id}/wallet")]
pub async fn get_wallet(state: web::Data<AppState>, who: Principal, path: web::Path<String>) -> Result<HttpResponse> {
    let agent = agent_for(&who, &path, Permission::Read)?;
    Ok(HttpResponse::Ok().json(state.usdc.wallet(&agent).await?))
}

/// Gives the agent a wallet (201), or returns the one it has (200).
#[utoipa::path(tag = "usdc", security(("bearer" = [])),
    responses((status = 201, body = WalletView), (status = 200, body = WalletView), (status = 503, body = ErrorBody)))]
#[post("/v1/agents/{agent_id}/wallet")]
pub async fn create_wallet(
    state: web::Data<AppState>,
    who: Principal,
    path: web::Path<String>,
) -> Result<HttpResponse> {
    let agent = agent_for(&who, &path, Permission::Manage)?;
    let (wallet, created) = state.usdc.create_wallet(&agent).await?;
    Ok(HttpResponse::build(if created { StatusCode::CREATED } else { StatusCode::OK }).json(wallet))
}

/// The wallet's private key. Owner only; recorded in the agent's audit trail.
#[utoipa::path(tag = "usdc", security(("bearer" = [])),
    responses((status = 200, body = ExportedWallet), (status = 403, body = ErrorBody)))]
#[post("/v1/agents/{agent_id}/wallet/export")]
pub async fn export_wallet(
    state: web::Data<AppState>,
    who: Principal,
    path: web::Path<String>,
) -> Result<HttpResponse> {
    let agent = agent_for(&who, &path, Permission::ExportWallet)?;
    let exported = state.usdc.export_wallet(&agent, &who.key_id).await?;
    Ok(HttpResponse::Ok().insert_header(("Cache-Control", "no-store")).json(exported))
}

/// Calls `url` for the agent; an x402 402 is paid if the agent's policy allows, and the call made
/// again with the payment. The answer is the upstream one, with `Spendgate-*` headers; a refused
/// payment is a 402 with spendgate's error (`code` = the decline reason). A payment that needs a
/// person's approval answers 202 with a status URL, and spendgate pays once someone approves.
/// Needs `Idempotency-Key`.
#[utoipa::path(tag = "usdc", request_body = FetchRequest, security(("bearer" = [])),
    params(("Idempotency-Key" = String, Header, description = "one payment per key: 1 to 255 printable ASCII characters", min_length = 1, max_length = 255, pattern = "^[!-~]+$")),
    responses((status = 200, description = "the upstream answer"), (status = 202, body = Awaiting),
        (status = "default", description = "the upstream's own answer, whatever its status, passed through"),
        (status = 402, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 429, body = ErrorBody, description = "too many fetches in flight (`too_many_fetches`); see `Retry-After`"),
        (status = 502, body = ErrorBody)))]
#[post("/v1/agents/{agent_id}/x402/fetch")]
pub async fn fetch(
    state: web::Data<AppState>,
    who: Principal,
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Json<FetchRequest>,
) -> Result<HttpResponse> {
    let agent = agent_for(&who, &path, Permission::Pay)?;
    Ok(match state.usdc.fetch(&agent, idempotency_key(&req), body.into_inner()).await? {
        FetchOutcome::Answered(fetched) => {
            let (status, headers, body) = fetched.into_parts();
            upstream_answer(status, &headers, body)
        }
        FetchOutcome::Deferred(status) => deferred_answer(status),
    })
}

/// An x402 fetch that waited for a person's approval: 202 while it waits (or is being paid), then
/// what the fetch would have answered: the upstream answer once paid, or spendgate's refusal
/// (402 `approval_denied`, 409 `approval_expired`, or the decline of the payment made after the approval).
#[utoipa::path(tag = "usdc", security(("bearer" = [])),
    responses((status = 200, description = "the upstream answer"), (status = 202, body = Awaiting),
        (status = "default", description = "the upstream's own answer, whatever its status, once paid"),
        (status = 402, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[get("/v1/agents/{agent_id}/x402/approvals/{approval_id}")]
pub async fn deferred_status(
    state: web::Data<AppState>,
    who: Principal,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse> {
    let (agent, approval) = path.into_inner();
    let agent = agent_for(&who, &agent, Permission::Read)?;
    Ok(deferred_answer(state.usdc.deferred_status(&agent, &approval).await?))
}

fn deferred_answer(status: DeferredStatus) -> HttpResponse {
    match status {
        DeferredStatus::Waiting(waiting) => {
            HttpResponse::Accepted().insert_header(("Location", waiting.status_url.as_str())).json(waiting)
        }
        DeferredStatus::Answer { status, headers, body } => upstream_answer(status, &headers, body),
        DeferredStatus::Refused { status, code, message } => {
            HttpResponse::build(StatusCode::from_u16(status).unwrap_or(StatusCode::PAYMENT_REQUIRED))
                .json(ErrorBody { error: ErrorDetail { code, message } })
        }
    }
}

fn upstream_answer(status: u16, headers: &[(String, String)], body: Vec<u8>) -> HttpResponse {
    let mut response = HttpResponse::build(StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY));
    for (name, value) in headers {
        response.append_header((name.as_str(), value.as_str()));
    }
    response.body(body)
}

/// Would a payment of `amount` to this URL's host be approved now, and if not, why and what would
/// unblock it: the same rules, balance and windows as a payment, with nothing signed or recorded.
#[utoipa::path(tag = "usdc", request_body = PaymentCheck, security(("bearer" = [])),
    responses((status = 200, body = AuthOutcome), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 429, body = ErrorBody, description = "the agent's key has a dry run under way (`too_many_dry_runs`)")))]
#[post("/v1/agents/{agent_id}/x402/dry-run")]
pub async fn dry_run(
    state: web::Data<AppState>,
    who: Principal,
    path: web::Path<String>,
    body: web::Json<PaymentCheck>,
) -> Result<HttpResponse> {
    let agent = agent_for(&who, &path, Permission::DryRun)?;
    Ok(HttpResponse::Ok().json(state.usdc.dry_run(&agent, body.into_inner(), who.role == Role::Agent).await?))
}

/// Decides and signs a payment for an agent that makes the HTTP call itself: send `header: value`.
#[utoipa::path(tag = "usdc", request_body = AuthorizeRequest, security(("bearer" = [])),
    params(("Idempotency-Key" = String, Header, description = "one payment per key: 1 to 255 printable ASCII characters", min_length = 1, max_length = 255, pattern = "^[!-~]+$")),
    responses((status = 200, body = Authorized), (status = 402, body = ErrorBody), (status = 409, body = ErrorBody)))]
#[post("/v1/agents/{agent_id}/x402/authorize")]
pub async fn authorize(
    state: web::Data<AppState>,
    who: Principal,
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Json<AuthorizeRequest>,
) -> Result<HttpResponse> {
    let agent = agent_for(&who, &path, Permission::Pay)?;
    Ok(HttpResponse::Ok().json(state.usdc.authorize(&agent, idempotency_key(&req), body.into_inner()).await?))
}

#[utoipa::path(tag = "usdc", security(("bearer" = [])),
    responses((status = 200, body = PaymentView), (status = 404, body = ErrorBody)))]
#[get("/v1/agents/{agent_id}/x402/payments/{payment_id}")]
pub async fn get_payment(
    state: web::Data<AppState>,
    who: Principal,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse> {
    let (agent, payment) = path.into_inner();
    let agent = agent_for(&who, &agent, Permission::Read)?;
    Ok(HttpResponse::Ok().json(state.usdc.payment(&agent, &payment).await?))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SettlementReport {
    /// The server's `PAYMENT-RESPONSE` (or `X-PAYMENT-RESPONSE`) header value: base64 of its JSON.
    #[schema(min_length = 1, pattern = "^[A-Za-z0-9+/=_-]+$")]
    pub payment_response: String,
}

/// The settlement of a payment from `/x402/authorize`, as the server answered it: a success posts
/// the hold; a failure voids it, and only a manager or owner may report one.
#[utoipa::path(tag = "usdc", request_body = SettlementReport, security(("bearer" = [])),
    responses((status = 200, body = PaymentView), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
#[post("/v1/agents/{agent_id}/x402/payments/{payment_id}/settlement")]
pub async fn report_settlement(
    state: web::Data<AppState>,
    who: Principal,
    path: web::Path<(String, String)>,
    body: web::Json<SettlementReport>,
) -> Result<HttpResponse> {
    let (agent, payment) = path.into_inner();
    let agent = agent_for(&who, &agent, Permission::Pay)?;
    let may_void = who.check(Permission::Manage, Some(&agent)).is_ok();
    let view = state.usdc.report(&agent, &payment, &body.payment_response, may_void).await?;
    Ok(HttpResponse::Ok().json(view))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ReconciliationQuery {
    /// One agent's wallet only (an agent key may ask for its own).
    pub agent_id: Option<String>,
}

/// Each wallet on each network spendgate reads (`SPENDGATE_CHAIN_RPC`), against what the ledger
/// says it holds, with the transfers that explain a difference (docs/treasury.md#reconciliation).
#[utoipa::path(tag = "usdc", security(("bearer" = [])), params(ReconciliationQuery),
    responses((status = 200, body = Page<WalletReconciliation>), (status = 403, body = ErrorBody)))]
#[get("/v1/wallets/reconciliation")]
pub async fn reconciliation(
    state: web::Data<AppState>,
    who: Principal,
    query: web::Query<ReconciliationQuery>,
) -> Result<HttpResponse> {
    let agent = match &query.agent_id {
        Some(id) => Some(agent_for(&who, id, Permission::Read)?),
        None => {
            who.check(Permission::Read, None)?;
            None
        }
    };
    let data = state.usdc.reconcile(agent.as_ref()).await?;
    Ok(HttpResponse::Ok().json(Page { data, next_cursor: None }))
}
