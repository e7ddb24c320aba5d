use actix_web::{HttpResponse, get, web};
use utoipa::OpenApi;

use super::AppState;
use super::error::ErrorBody;
use super::openapi::ApiDoc;
use crate::domain::access::{Permission, Principal};
use crate::domain::catalog::PolicyTemplate;
use crate::error::{Error, Result};

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
#[utoipa::path(tag = "policies", security(("bearer" = [])), responses((status = 200, body = Vec<PolicyTemplate>)))]
#[get("/v1/policy-templates")]
pub async fn policy_templates(state: web::Data<AppState>, who: Principal) -> Result<HttpResponse> {
    // Any valid key may read the templates, agent keys included.
    if let Err(message) = who.check(Permission::Read, who.agent_id.as_ref()) {
        return Err(Error::Forbidden(message));
    }
    Ok(HttpResponse::Ok().json(serde_json::json!({ "data": state.admin.catalog().templates })))
}
