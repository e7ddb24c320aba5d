//! The audit trail: verify every agent's chain, and the checkpoints of their heads.

use actix_web::{HttpResponse, get, post, web};
use serde::Deserialize;
use utoipa::IntoParams;

use super::AppState;
use super::error::ErrorBody;
use crate::admin::PageQuery;
use crate::audit::checkpoint::Checkpoint;
use crate::audit::{Verification, VerifyRequest};
use crate::domain::access::Principal;
use crate::error::Result;

/// Walks every agent's audit chain against the records and names each broken chain's first broken
/// link; held to the checkpoint given (one kept elsewhere), else to the latest the server made.
/// Owner keys only. A broken chain is still a 200: `verified` says.
#[utoipa::path(tag = "audit", request_body = VerifyRequest, security(("bearer" = [])),
    responses((status = 200, body = Verification), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
#[post("/v1/audit/verify")]
pub async fn verify(
    state: web::Data<AppState>,
    who: Principal,
    body: web::Json<VerifyRequest>,
) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(state.audit.verify(&who, body.into_inner().checkpoint).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct CheckpointQuery {
    /// 1 to 500, default 100.
    pub limit: Option<i64>,
}

/// The checkpoints the server made, newest first.
#[utoipa::path(tag = "audit", params(CheckpointQuery), security(("bearer" = [])),
    responses((status = 200, body = Vec<Checkpoint>), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
#[get("/v1/audit/checkpoints")]
pub async fn checkpoints(
    state: web::Data<AppState>,
    who: Principal,
    query: web::Query<CheckpointQuery>,
) -> Result<HttpResponse> {
    let limit = PageQuery { limit: query.limit, cursor: None }.size()?;
    Ok(HttpResponse::Ok().json(state.audit.checkpoints(&who, limit).await?))
}

/// Records every chain's head now (the server also does every `audit_checkpoint_minutes`).
/// Owner keys only.
#[utoipa::path(tag = "audit", security(("bearer" = [])),
    responses((status = 201, body = Checkpoint), (status = 403, body = ErrorBody)))]
#[post("/v1/audit/checkpoints")]
pub async fn make_checkpoint(state: web::Data<AppState>, who: Principal) -> Result<HttpResponse> {
    Ok(HttpResponse::Created().json(state.audit.make_checkpoint(&who).await?))
}
