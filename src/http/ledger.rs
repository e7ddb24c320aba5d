//! Funding and drains, balances, the ledger and a card's active trace.

use actix_web::{HttpResponse, get, post, put, web};
use serde::Deserialize;
use utoipa::ToSchema;

use super::AppState;
use crate::admin::Page;
use crate::admin::ledger::{AllocateRequest, DrainRequest, FundRequest, LedgerQuery};
use crate::domain::access::Principal;
use crate::domain::card::Card;
use crate::error::Result;
use crate::ledger::{BalanceView, LedgerEntry, TransferView};

/// Move money from the treasury of the agent's currency into its balance. 201 when new, 200 when
/// `id` was already applied; 409 `treasury_short` or `max_balance_exceeded` moves nothing.
#[utoipa::path(post, path = "/v1/agents/{agent_id}/fund", tag = "ledger", request_body = FundRequest,
    responses((status = 201, body = TransferView), (status = 200, body = TransferView)))]
#[post("/v1/agents/{agent_id}/fund")]
pub async fn fund(
    state: web::Data<AppState>,
    who: Principal,
    path: web::Path<String>,
    body: web::Json<FundRequest>,
) -> Result<HttpResponse> {
    let (transfer, replayed) = state.admin.fund(&who, &path, body.into_inner()).await?;
    Ok(if replayed { HttpResponse::Ok() } else { HttpResponse::Created() }.json(transfer))
}

/// Move available money from the agent's parent into its balance. 201 when new, 200 when `id` was
/// already applied; 409 `exceeds_available` or `max_balance_exceeded` moves nothing; 400 for an agent
/// without a parent.
#[utoipa::path(post, path = "/v1/agents/{agent_id}/allocate", tag = "ledger", request_body = AllocateRequest,
    responses((status = 201, body = TransferView), (status = 200, body = TransferView)))]
#[post("/v1/agents/{agent_id}/allocate")]
pub async fn allocate(
    state: web::Data<AppState>,
    who: Principal,
    path: web::Path<String>,
    body: web::Json<AllocateRequest>,
) -> Result<HttpResponse> {
    let (transfer, replayed) = state.admin.allocate(&who, &path, body.into_inner()).await?;
    Ok(if replayed { HttpResponse::Ok() } else { HttpResponse::Created() }.json(transfer))
}

/// Move the agent's available money (or `amount` of it) back to its treasury, or to its parent for
/// a sub-agent; held money stays held. 201 when new, 200 when `id` was already applied; 409 `exceeds_available` moves nothing.
#[utoipa::path(post, path = "/v1/agents/{agent_id}/drain", tag = "ledger", request_body = DrainRequest,
    responses((status = 201, body = TransferView), (status = 200, body = TransferView)))]
#[post("/v1/agents/{agent_id}/drain")]
pub async fn drain(
    state: web::Data<AppState>,
    who: Principal,
    path: web::Path<String>,
    body: web::Json<DrainRequest>,
) -> Result<HttpResponse> {
    let (transfer, replayed) = state.admin.drain(&who, &path, body.into_inner()).await?;
    Ok(if replayed { HttpResponse::Ok() } else { HttpResponse::Created() }.json(transfer))
}

#[utoipa::path(get, path = "/v1/agents/{agent_id}/balance", tag = "ledger", responses((status = 200, body = BalanceView)))]
#[get("/v1/agents/{agent_id}/balance")]
pub async fn balance(state: web::Data<AppState>, who: Principal, path: web::Path<String>) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(state.admin.balance(&who, &path).await?))
}

/// Authorizations (holds and declined attempts) and transfers, oldest first.
#[utoipa::path(get, path = "/v1/agents/{agent_id}/ledger", tag = "ledger", params(LedgerQuery),
    responses((status = 200, body = Page<LedgerEntry>)))]
#[get("/v1/agents/{agent_id}/ledger")]
pub async fn ledger(
    state: web::Data<AppState>,
    who: Principal,
    path: web::Path<String>,
    query: web::Query<LedgerQuery>,
) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(state.admin.ledger_entries(&who, &path, query.into_inner()).await?))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TraceBody {
    /// null clears it.
    pub trace_id: Option<String>,
}

/// Tag the card's authorizations with this trace when the processor sends none.
#[utoipa::path(put, path = "/v1/agents/{agent_id}/cards/{card_id}/trace", tag = "cards", request_body = TraceBody,
    responses((status = 200, body = Card)))]
#[put("/v1/agents/{agent_id}/cards/{card_id}/trace")]
pub async fn put_trace(
    state: web::Data<AppState>,
    who: Principal,
    path: web::Path<(String, String)>,
    body: web::Json<TraceBody>,
) -> Result<HttpResponse> {
    let (agent_id, card_id) = path.into_inner();
    Ok(HttpResponse::Ok()
        .json(state.admin.set_card_trace(&who, &agent_id, &card_id, body.into_inner().trace_id).await?))
}
