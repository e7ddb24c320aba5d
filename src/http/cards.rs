use actix_web::{HttpResponse, get, post, put, web};

use super::AppState;
use super::error::ErrorBody;
use crate::admin::cards::{IssuedCard, NewCard};
use crate::admin::{Page, PageQuery, ReasonBody};
use crate::domain::access::Principal;
use crate::domain::authorization::Merchant;
use crate::domain::card::{Card, CardAction};
use crate::domain::event::Event;
use crate::domain::policy::Policy;
use crate::error::Result;
use crate::ledger::AuthOutcome;
use crate::rails::card::native::Purchase;

/// Issues a card. The full `number` is in this response only; spendgate never stores it.
#[utoipa::path(tag = "cards", request_body = NewCard, security(("bearer" = [])),
    responses((status = 201, body = IssuedCard), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
#[post("/v1/agents/{agent_id}/cards")]
pub async fn issue_card(
    state: web::Data<AppState>,
    who: Principal,
    path: web::Path<String>,
    body: web::Json<NewCard>,
) -> Result<HttpResponse> {
    let issued = state.admin.issue_card(&who, &path, body.into_inner()).await?;
    Ok(HttpResponse::Created().insert_header(("Cache-Control", "no-store")).json(issued))
}

#[utoipa::path(tag = "cards", params(PageQuery), security(("bearer" = [])), responses((status = 200, body = Page<Card>)))]
#[get("/v1/agents/{agent_id}/cards")]
pub async fn list_cards(
    state: web::Data<AppState>,
    who: Principal,
    path: web::Path<String>,
    page: web::Query<PageQuery>,
) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(state.admin.list_cards(&who, &path, page.into_inner()).await?))
}

#[utoipa::path(tag = "cards", security(("bearer" = [])), responses((status = 200, body = Card), (status = 404, body = ErrorBody)))]
#[get("/v1/agents/{agent_id}/cards/{card_id}")]
pub async fn get_agent_card(
    state: web::Data<AppState>,
    who: Principal,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse> {
    let (agent_id, card_id) = path.into_inner();
    Ok(HttpResponse::Ok().json(state.admin.get_card(&who, Some(&agent_id), &card_id).await?))
}

#[utoipa::path(tag = "cards", security(("bearer" = [])), responses((status = 200, body = Card), (status = 404, body = ErrorBody)))]
#[get("/v1/cards/{card_id}")]
pub async fn get_card(state: web::Data<AppState>, who: Principal, path: web::Path<String>) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(state.admin.get_card(&who, None, &path).await?))
}

/// A purchase to decide without recording it.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DryRunBody {
    /// Minor units of `currency`.
    #[schema(minimum = 0, maximum = 1_000_000_000_000_000_i64)]
    pub amount: i64,
    /// ISO 4217; an unknown code is decided (declined `unsupported_currency`), not refused.
    #[schema(min_length = 1, max_length = 8, pattern = r"^[^\x00-\x1f\x7f-\x9f]+$", example = "USD")]
    pub currency: String,
    #[serde(default)]
    pub merchant: Merchant,
    pub trace_id: Option<String>,
}

/// What an authorization on this card would be answered now, and why: the same rules, balance and
/// spending windows as a real one, with nothing recorded (no hold, no decline, no approval request).
#[utoipa::path(tag = "cards", request_body = DryRunBody, security(("bearer" = [])),
    responses((status = 200, body = AuthOutcome), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 429, body = ErrorBody, description = "the agent's key has a dry run under way (`too_many_dry_runs`)")))]
#[post("/v1/cards/{card_id}/dry-run")]
pub async fn dry_run(
    state: web::Data<AppState>,
    who: Principal,
    path: web::Path<String>,
    body: web::Json<DryRunBody>,
) -> Result<HttpResponse> {
    let b = body.into_inner();
    let request =
        Purchase { amount: b.amount, currency: b.currency, merchant: b.merchant, trace_id: b.trace_id }.request()?;
    Ok(HttpResponse::Ok().json(state.admin.dry_run(&who, &path, request).await?))
}

async fn act(
    state: web::Data<AppState>,
    who: Principal,
    path: web::Path<(String, String)>,
    body: web::Json<ReasonBody>,
    action: CardAction,
) -> Result<HttpResponse> {
    let (agent_id, card_id) = path.into_inner();
    let card = state.admin.card_action(&who, &agent_id, &card_id, action, body.into_inner()).await?;
    Ok(HttpResponse::Ok().json(card))
}

/// Freezes the card; the next authorization declines. Freezing a frozen card is a no-op.
#[utoipa::path(tag = "cards", request_body = ReasonBody, security(("bearer" = [])),
    responses((status = 200, body = Card), (status = 409, body = ErrorBody)))]
#[post("/v1/agents/{agent_id}/cards/{card_id}/freeze")]
pub async fn freeze_card(
    state: web::Data<AppState>,
    who: Principal,
    path: web::Path<(String, String)>,
    body: web::Json<ReasonBody>,
) -> Result<HttpResponse> {
    act(state, who, path, body, CardAction::Freeze).await
}

/// Unfreezes the card (manager or owner). A closed card cannot be unfrozen (409).
#[utoipa::path(tag = "cards", request_body = ReasonBody, security(("bearer" = [])),
    responses((status = 200, body = Card), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
#[post("/v1/agents/{agent_id}/cards/{card_id}/unfreeze")]
pub async fn unfreeze_card(
    state: web::Data<AppState>,
    who: Principal,
    path: web::Path<(String, String)>,
    body: web::Json<ReasonBody>,
) -> Result<HttpResponse> {
    act(state, who, path, body, CardAction::Unfreeze).await
}

/// Closes the card for good.
#[utoipa::path(tag = "cards", request_body = ReasonBody, security(("bearer" = [])), responses((status = 200, body = Card)))]
#[post("/v1/agents/{agent_id}/cards/{card_id}/close")]
pub async fn close_card(
    state: web::Data<AppState>,
    who: Principal,
    path: web::Path<(String, String)>,
    body: web::Json<ReasonBody>,
) -> Result<HttpResponse> {
    act(state, who, path, body, CardAction::Close).await
}

#[utoipa::path(tag = "cards", security(("bearer" = [])), responses((status = 200, body = Policy)))]
#[get("/v1/agents/{agent_id}/cards/{card_id}/policy")]
pub async fn get_card_policy(
    state: web::Data<AppState>,
    who: Principal,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse> {
    let (agent_id, card_id) = path.into_inner();
    Ok(HttpResponse::Ok().json(state.admin.get_card_policy(&who, &agent_id, &card_id).await?))
}

/// Replaces the card's policy; its `currency` must be the card's.
#[utoipa::path(tag = "cards", request_body = Policy, security(("bearer" = [])),
    responses((status = 200, body = Policy), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
#[put("/v1/agents/{agent_id}/cards/{card_id}/policy")]
pub async fn put_card_policy(
    state: web::Data<AppState>,
    who: Principal,
    path: web::Path<(String, String)>,
    body: web::Json<serde_json::Value>,
) -> Result<HttpResponse> {
    let (agent_id, card_id) = path.into_inner();
    let policy = state.admin.set_card_policy(&who, &agent_id, &card_id, body.into_inner()).await?;
    Ok(HttpResponse::Ok().json(policy))
}

/// The card's audit trail (with its agent's agent-wide events), oldest first.
#[utoipa::path(tag = "cards", params(PageQuery), security(("bearer" = [])), responses((status = 200, body = Page<Event>)))]
#[get("/v1/agents/{agent_id}/cards/{card_id}/events")]
pub async fn card_events(
    state: web::Data<AppState>,
    who: Principal,
    path: web::Path<(String, String)>,
    page: web::Query<PageQuery>,
) -> Result<HttpResponse> {
    let (agent_id, card_id) = path.into_inner();
    Ok(HttpResponse::Ok().json(state.admin.card_events(&who, &agent_id, &card_id, page.into_inner()).await?))
}
