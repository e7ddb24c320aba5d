//! The treasuries: what backs each currency's, what it has, and its journal.

use actix_web::{HttpResponse, get, post, web};

use super::AppState;
use crate::admin::Page;
use crate::admin::treasury::{TreasuryMovement, TreasuryTransfersQuery};
use crate::domain::access::Principal;
use crate::domain::ledger::TreasuryKind;
use crate::error::Result;
use crate::ledger::{TreasuryTransferView, TreasuryView};

/// Record money placed behind a treasury (at the card program, in a treasury wallet). Owners only.
/// 201 when new, 200 when `id` was already recorded for this currency.
#[utoipa::path(post, path = "/v1/treasury/deposits", tag = "treasury", request_body = TreasuryMovement,
    responses((status = 201, body = TreasuryTransferView), (status = 200, body = TreasuryTransferView)))]
#[post("/v1/treasury/deposits")]
pub async fn deposit(
    state: web::Data<AppState>,
    who: Principal,
    body: web::Json<TreasuryMovement>,
) -> Result<HttpResponse> {
    record(&state, &who, TreasuryKind::Deposit, body.into_inner()).await
}

/// Record money taken out of a treasury: only what no agent holds. Owners only; 409
/// `treasury_short` records nothing.
#[utoipa::path(post, path = "/v1/treasury/withdrawals", tag = "treasury", request_body = TreasuryMovement,
    responses((status = 201, body = TreasuryTransferView), (status = 200, body = TreasuryTransferView)))]
#[post("/v1/treasury/withdrawals")]
pub async fn withdraw(
    state: web::Data<AppState>,
    who: Principal,
    body: web::Json<TreasuryMovement>,
) -> Result<HttpResponse> {
    record(&state, &who, TreasuryKind::Withdrawal, body.into_inner()).await
}

async fn record(
    state: &AppState,
    who: &Principal,
    kind: TreasuryKind,
    input: TreasuryMovement,
) -> Result<HttpResponse> {
    let (movement, replayed) = state.admin.record_treasury(who, kind, input).await?;
    Ok(if replayed { HttpResponse::Ok() } else { HttpResponse::Created() }.json(movement))
}

/// Every currency's treasury: deposited, withdrawn, granted to agents, returned, available.
#[utoipa::path(get, path = "/v1/treasury", tag = "treasury", responses((status = 200, body = Page<TreasuryView>)))]
#[get("/v1/treasury")]
pub async fn treasuries(state: web::Data<AppState>, who: Principal) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(Page { data: state.admin.treasuries(&who).await?, next_cursor: None }))
}

/// A treasury's movements, oldest first: deposits, withdrawals, and each funding, top-up and drain.
#[utoipa::path(get, path = "/v1/treasury/transfers", tag = "treasury", params(TreasuryTransfersQuery),
    responses((status = 200, body = Page<TreasuryTransferView>)))]
#[get("/v1/treasury/transfers")]
pub async fn transfers(
    state: web::Data<AppState>,
    who: Principal,
    query: web::Query<TreasuryTransfersQuery>,
) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(state.admin.treasury_transfers(&who, query.into_inner()).await?))
}
