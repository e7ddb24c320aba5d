use std::time::Duration;

use actix_web::{HttpResponse, get, web};
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;
use crate::admin::Page;
use crate::domain::access::Principal;
use crate::domain::catalog::PolicyTemplate;

/// Liveness: the process answers.
#[utoipa::path(tag = "system", responses((status = 200, description = "alive")))]
#[get("/healthz")]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "ok" }))
}

/// How long readiness waits for the database, and how long a ledger commit may be under way.
const READY_WITHIN: Duration = Duration::from_secs(1);

/// Readiness: decisions can be made and recorded now. 503 with the reasons when the database does
/// not answer within a second, the ledger writer has stopped, is stuck in a commit or its last
/// commit failed, or (SQLite) the WAL could not be synced. Always answers within about a second.
#[utoipa::path(tag = "system", responses((status = 200, body = Readiness), (status = 503, body = Readiness)))]
#[get("/readyz")]
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let problems = state.ledger.problems(READY_WITHIN).await;
    let ready = problems.is_empty();
    let rates = state.ledger.rates();
    let fx = FxStatus { source: rates.source, date: rates.date.to_string() };
    let body = Readiness { status: if ready { "ready" } else { "unavailable" }, problems, fx };
    if ready { HttpResponse::Ok().json(body) } else { HttpResponse::ServiceUnavailable().json(body) }
}

/// Whether decisions can be made and recorded now, and if not, why.
#[derive(Serialize, ToSchema)]
pub struct Readiness {
    /// `ready` or `unavailable`.
    pub status: &'static str,
    pub problems: Vec<String>,
    /// The exchange rates in use.
    pub fx: FxStatus,
}

/// Which ECB table converts currencies now: `ecb` (fetched) or `bundled` (built into the release),
/// and the day it was published.
#[derive(Serialize, ToSchema)]
pub struct FxStatus {
    pub source: crate::domain::authorization::RateSource,
    #[schema(example = "2026-12-04")]
    pub date: String,
}

/// Prometheus text exposition.
#[utoipa::path(tag = "system", responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
#[get("/metrics")]
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(state.metrics.render())
}

#[get("/openapi.json")]
pub async fn openapi() -> HttpResponse {
    HttpResponse::Ok().json(&*super::openapi::DOCUMENT)
}

/// The policy templates a card can be issued with (`template`).
#[utoipa::path(tag = "policies", security(("bearer" = [])), responses((status = 200, body = Page<PolicyTemplate>)))]
#[get("/v1/policy-templates")]
pub async fn policy_templates(state: web::Data<AppState>, _any_key: Principal) -> HttpResponse {
    HttpResponse::Ok().json(Page { data: state.admin.catalog().templates.clone(), next_cursor: None })
}
