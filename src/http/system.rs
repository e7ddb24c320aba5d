use actix_web::{HttpResponse, get, web};
use utoipa::OpenApi;

use super::AppState;
use super::error::ErrorBody;
use super::openapi::ApiDoc;
use crate::admin::Page;
use crate::domain::access::Principal;
use crate::domain::catalog::PolicyTemplate;
use crate::error::Result;

/// Liveness: the process answers.
#[utoipa::path(tag = "system", responses((status = 200, description = "alive")))]
#[get("/healthz")]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "ok" }))
}

/// Readiness: the database answers.
#[utoipa::path(tag = "system", responses((status = 200, description = "ready"), (status = 503, body = ErrorBody)))]
#[get("/readyz")]
pub async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse> {
    state.db.ping().await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "status": "ready" })))
}

/// Prometheus text exposition.
#[utoipa::path(tag = "system", responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
#[get("/metrics")]
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(state.metrics.render())
}

#[get("/openapi.json")]
pub async fn openapi() -> HttpResponse {
    HttpResponse::Ok().json(ApiDoc::openapi())
}

/// The policy templates a card can be issued with (`template`).
#[utoipa::path(tag = "policies", security(("bearer" = [])), responses((status = 200, body = Page<PolicyTemplate>)))]
#[get("/v1/policy-templates")]
pub async fn policy_templates(state: web::Data<AppState>, _any_key: Principal) -> HttpResponse {
    HttpResponse::Ok().json(Page { data: state.admin.catalog().templates.clone(), next_cursor: None })
}
