//! Policy versions, drafts, shadow and promotion (`/v1/policies/{owner}`, where the owner is an
//! agent `agt_…` or a card `card_…`), and backtests (`/v1/backtests`).

use actix_web::{HttpResponse, delete, get, post, put, web};

use super::AppState;
use super::error::ErrorBody;
use crate::admin::policies::{Backtest, Draft, NewBacktest, NewDraft, PolicyVersion, ShadowSwitch};
use crate::admin::{Page, PageQuery, ReasonBody};
use crate::backtest::report::Report;
use crate::domain::access::Principal;
use crate::error::Result;

/// The owner's policy versions, newest first: the live one, those it replaced, drafts.
#[utoipa::path(tag = "policies", params(PageQuery), security(("bearer" = [])),
    responses((status = 200, body = Page<PolicyVersion>), (status = 404, body = ErrorBody)))]
#[get("/v1/policies/{owner}/versions")]
pub async fn versions(
    state: web::Data<AppState>,
    who: Principal,
    path: web::Path<String>,
    page: web::Query<PageQuery>,
) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(state.admin.policy_versions(&who, &path, page.into_inner()).await?))
}

/// The owner's draft beside its live policy, with what it changes.
#[utoipa::path(tag = "policies", security(("bearer" = [])),
    responses((status = 200, body = Draft), (status = 404, body = ErrorBody)))]
#[get("/v1/policies/{owner}/draft")]
pub async fn get_draft(state: web::Data<AppState>, who: Principal, path: web::Path<String>) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(state.admin.get_draft(&who, &path).await?))
}

/// Saves the owner's draft (one per owner; saving again replaces it). It decides nothing until
/// promoted; in shadow it is compared with every live decision.
#[utoipa::path(tag = "policies", request_body = NewDraft, security(("bearer" = [])),
    responses((status = 200, body = Draft), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[put("/v1/policies/{owner}/draft")]
pub async fn put_draft(
    state: web::Data<AppState>,
    who: Principal,
    path: web::Path<String>,
    body: web::Json<NewDraft>,
) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(state.admin.save_draft(&who, &path, body.into_inner()).await?))
}

/// Discards the owner's draft.
#[utoipa::path(tag = "policies", request_body = ReasonBody, security(("bearer" = [])),
    responses((status = 200, body = PolicyVersion), (status = 404, body = ErrorBody)))]
#[delete("/v1/policies/{owner}/draft")]
pub async fn discard_draft(
    state: web::Data<AppState>,
    who: Principal,
    path: web::Path<String>,
    body: web::Json<ReasonBody>,
) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(state.admin.discard_draft(&who, &path, body.into_inner()).await?))
}

/// Makes the owner's draft its live policy, atomically, with the reason in its trail.
#[utoipa::path(tag = "policies", request_body = ReasonBody, security(("bearer" = [])),
    responses((status = 200, body = PolicyVersion), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
#[post("/v1/policies/{owner}/draft/promote")]
pub async fn promote(
    state: web::Data<AppState>,
    who: Principal,
    path: web::Path<String>,
    body: web::Json<ReasonBody>,
) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(state.admin.promote_draft(&who, &path, body.into_inner()).await?))
}

/// Puts the owner's draft in shadow (`{"shadow": true}`) or takes it out.
#[utoipa::path(tag = "policies", request_body = ShadowSwitch, security(("bearer" = [])),
    responses((status = 200, body = PolicyVersion), (status = 404, body = ErrorBody)))]
#[put("/v1/policies/{owner}/draft/shadow")]
pub async fn put_shadow(
    state: web::Data<AppState>,
    who: Principal,
    path: web::Path<String>,
    body: web::Json<ShadowSwitch>,
) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(state.admin.set_shadow(&who, &path, body.into_inner()).await?))
}

/// What the draft in shadow has decided otherwise than the live policy, as a backtest reports it.
#[utoipa::path(tag = "policies", security(("bearer" = [])),
    responses((status = 200, body = Report), (status = 404, body = ErrorBody)))]
#[get("/v1/policies/{owner}/draft/shadow")]
pub async fn shadow_report(
    state: web::Data<AppState>,
    who: Principal,
    path: web::Path<String>,
) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(state.admin.shadow_report(&who, &path).await?))
}

/// Starts a backtest: the draft replayed over the decisions of a range, in the background.
#[utoipa::path(tag = "backtests", request_body = NewBacktest, security(("bearer" = [])),
    responses((status = 202, body = Backtest), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 429, body = ErrorBody)))]
#[post("/v1/backtests")]
pub async fn start_backtest(
    state: web::Data<AppState>,
    who: Principal,
    body: web::Json<NewBacktest>,
) -> Result<HttpResponse> {
    Ok(HttpResponse::Accepted().json(state.admin.start_backtest(&who, body.into_inner()).await?))
}

#[utoipa::path(tag = "backtests", params(PageQuery), security(("bearer" = [])),
    responses((status = 200, body = Page<Backtest>)))]
#[get("/v1/backtests")]
pub async fn list_backtests(
    state: web::Data<AppState>,
    who: Principal,
    page: web::Query<PageQuery>,
) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(state.admin.list_backtests(&who, page.into_inner()).await?))
}

/// A backtest's progress, and its report once done.
#[utoipa::path(tag = "backtests", security(("bearer" = [])),
    responses((status = 200, body = Backtest), (status = 404, body = ErrorBody)))]
#[get("/v1/backtests/{backtest_id}")]
pub async fn get_backtest(state: web::Data<AppState>, who: Principal, path: web::Path<String>) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(state.admin.get_backtest(&who, &path).await?))
}

/// Stops a running backtest.
#[utoipa::path(tag = "backtests", security(("bearer" = [])),
    responses((status = 200, body = Backtest), (status = 404, body = ErrorBody)))]
#[post("/v1/backtests/{backtest_id}/cancel")]
pub async fn cancel_backtest(
    state: web::Data<AppState>,
    who: Principal,
    path: web::Path<String>,
) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(state.admin.cancel_backtest(&who, &path).await?))
}
