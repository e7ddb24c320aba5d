//! Funding, balances, the ledger and a card's active trace.

use actix_web::{HttpResponse, get, post, put, web};
use serde::Deserialize;
use utoipa::ToSchema;

use super::AppState;
use crate::admin::Page;
use crate::admin::ledger::{FundRequest, LedgerQuery};
use crate::domain::access::Principal;
use crate::domain::card::Card;
use crate::error::Result;
use crate::ledger::{BalanceView, LedgerEntry, TransferView};

/// Add to an agent's prepaid balance. 201 when new, 200 when `id` was already applied.
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
