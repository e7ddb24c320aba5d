use actix_web::{HttpResponse, get, post, put, web};

use super::AppState;
use super::error::ErrorBody;
use crate::admin::agents::{AgentAction, Deactivation, ME, NewAgent, Reactivation};
use crate::admin::spendable::{Spendable, SpendableQuery};
use crate::admin::{Page, PageQuery, ReasonBody};
use crate::domain::access::Principal;
use crate::domain::agent::Agent;
use crate::domain::event::Event;
use crate::domain::policy::Policy;
use crate::error::Result;

#[utoipa::path(tag = "agents", request_body = NewAgent, security(("bearer" = [])),
    responses((status = 201, body = Agent), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
#[post("/v1/agents")]
pub async fn create_agent(
    state: web::Data<AppState>,
    who: Principal,
    body: web::Json<NewAgent>,
) -> Result<HttpResponse> {
    let agent = state.admin.create_agent(&who, body.into_inner()).await?;
    // Every new agent gets its wallet when the USDC rail is on; POST /wallet makes one later otherwise.
    if state.usdc.enabled()
        && let Err(e) = state.usdc.create_wallet(&agent.id).await
    {
        tracing::warn!(agent = %agent.id, error = %e, "the new agent has no wallet yet");
    }
    Ok(HttpResponse::Created().json(agent))
}

#[utoipa::path(tag = "agents", params(PageQuery), security(("bearer" = [])),
    responses((status = 200, body = Page<Agent>), (status = 401, body = ErrorBody)))]
#[get("/v1/agents")]
pub async fn list_agents(
    state: web::Data<AppState>,
    who: Principal,
    page: web::Query<PageQuery>,
) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(state.admin.list_agents(&who, page.into_inner()).await?))
}

#[utoipa::path(tag = "agents", security(("bearer" = [])),
    responses((status = 200, body = Agent), (status = 404, body = ErrorBody)))]
#[get("/v1/agents/{agent_id}")]
pub async fn get_agent(state: web::Data<AppState>, who: Principal, path: web::Path<String>) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(state.admin.get_agent(&who, &path).await?))
}

/// Freezes the agent: every card and rail of it declines until it is unfrozen.
#[utoipa::path(tag = "agents", request_body = ReasonBody, security(("bearer" = [])),
    responses((status = 200, body = Agent), (status = 404, body = ErrorBody)))]
#[post("/v1/agents/{agent_id}/freeze")]
pub async fn freeze_agent(
    state: web::Data<AppState>,
    who: Principal,
    path: web::Path<String>,
    body: web::Json<ReasonBody>,
) -> Result<HttpResponse> {
    let agent = state.admin.agent_action(&who, &path, AgentAction::Freeze, body.into_inner()).await?;
    Ok(HttpResponse::Ok().json(agent))
}

#[utoipa::path(tag = "agents", request_body = ReasonBody, security(("bearer" = [])),
    responses((status = 200, body = Agent), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[post("/v1/agents/{agent_id}/unfreeze")]
pub async fn unfreeze_agent(
    state: web::Data<AppState>,
    who: Principal,
    path: web::Path<String>,
    body: web::Json<ReasonBody>,
) -> Result<HttpResponse> {
    let agent = state.admin.agent_action(&who, &path, AgentAction::Unfreeze, body.into_inner()).await?;
    Ok(HttpResponse::Ok().json(agent))
}

/// Deactivates the agent: frozen with every card, its keys revoked, its top-ups stopped, and its
/// available money drained back to the treasury, now and as its holds settle.
#[utoipa::path(tag = "agents", request_body = ReasonBody, security(("bearer" = [])),
    responses((status = 200, body = Deactivation), (status = 404, body = ErrorBody)))]
#[post("/v1/agents/{agent_id}/deactivate")]
pub async fn deactivate_agent(
    state: web::Data<AppState>,
    who: Principal,
    path: web::Path<String>,
    body: web::Json<ReasonBody>,
) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(state.admin.deactivate(&who, &path, body.into_inner()).await?))
}

/// Makes a deactivated agent active again; its cards too when `unfreeze_cards`. Keys stay revoked.
#[utoipa::path(tag = "agents", request_body = Reactivation, security(("bearer" = [])),
    responses((status = 200, body = Agent), (status = 404, body = ErrorBody)))]
#[post("/v1/agents/{agent_id}/reactivate")]
pub async fn reactivate_agent(
    state: web::Data<AppState>,
    who: Principal,
    path: web::Path<String>,
    body: web::Json<Reactivation>,
) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(state.admin.reactivate(&who, &path, body.into_inner()).await?))
}

#[utoipa::path(tag = "agents", security(("bearer" = [])), responses((status = 200, body = Policy)))]
#[get("/v1/agents/{agent_id}/policy")]
pub async fn get_agent_policy(
    state: web::Data<AppState>,
    who: Principal,
    path: web::Path<String>,
) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(state.admin.get_agent_policy(&who, &path).await?))
}

/// Replaces the agent-level policy (limits that span all its cards and rails).
#[utoipa::path(tag = "agents", request_body = Policy, security(("bearer" = [])),
    responses((status = 200, body = Policy), (status = 400, body = ErrorBody)))]
#[put("/v1/agents/{agent_id}/policy")]
pub async fn put_agent_policy(
    state: web::Data<AppState>,
    who: Principal,
    path: web::Path<String>,
    body: web::Json<serde_json::Value>,
) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(state.admin.set_agent_policy(&who, &path, body.into_inner()).await?))
}

/// Everything that happened to the agent and its cards, oldest first.
#[utoipa::path(tag = "agents", params(PageQuery), security(("bearer" = [])), responses((status = 200, body = Page<Event>)))]
#[get("/v1/agents/{agent_id}/events")]
pub async fn agent_events(
    state: web::Data<AppState>,
    who: Principal,
    path: web::Path<String>,
    page: web::Query<PageQuery>,
) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(state.admin.agent_events(&who, &path, page.into_inner()).await?))
}

/// What the agent behind this agent key may still spend: its status, balance and cards, and each
/// limit over them with its cap, what is used, what remains and when the window next frees some.
/// Every route that names an agent takes `me` for it too.
#[utoipa::path(tag = "agents", params(SpendableQuery), security(("bearer" = [])),
    responses((status = 200, body = Spendable), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
#[get("/v1/me")]
pub async fn me(state: web::Data<AppState>, who: Principal, query: web::Query<SpendableQuery>) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(state.admin.spendable(&who, ME, query.into_inner()).await?))
}

/// `GET /v1/me` for any agent a key may read.
#[utoipa::path(tag = "agents", params(SpendableQuery), security(("bearer" = [])),
    responses((status = 200, body = Spendable), (status = 404, body = ErrorBody)))]
#[get("/v1/agents/{agent_id}/spendable")]
pub async fn spendable(
    state: web::Data<AppState>,
    who: Principal,
    path: web::Path<String>,
    query: web::Query<SpendableQuery>,
) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(state.admin.spendable(&who, &path, query.into_inner()).await?))
}
