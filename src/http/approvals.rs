//! Approvals: the API (managers and owners), the approval page behind the signed links, and
//! Slack's interactivity endpoint.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, get, post, web};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::error::{ErrorBody, LinkRefusals};
use crate::admin::agents::parse_agent_id;
use crate::admin::{Page, PageQuery};
use crate::approvals::link::TokenError;
use crate::approvals::mandates::MandateRequest;
use crate::approvals::{ApprovalView, Approver, page};
use crate::domain::access::Principal;
use crate::domain::approval::ApprovalAction;
use crate::error::{Error, Result};

#[derive(Debug, Deserialize, IntoParams)]
pub struct ApprovalQuery {
    /// `pending`, `approved`, `denied` or `expired`.
    pub status: Option<String>,
    /// 1 to 500, default 100.
    pub limit: Option<i64>,
    pub cursor: Option<String>,
}

#[utoipa::path(tag = "approvals", params(ApprovalQuery), security(("bearer" = [])),
    responses((status = 200, body = Page<ApprovalView>), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
#[get("/v1/approvals")]
pub async fn list_approvals(
    state: web::Data<AppState>,
    who: Principal,
    query: web::Query<ApprovalQuery>,
) -> Result<HttpResponse> {
    let q = query.into_inner();
    let limit = PageQuery { limit: q.limit, cursor: None }.size()?;
    let (data, next_cursor) = state.approvals.list(&who, q.status.as_deref(), q.cursor, limit).await?;
    Ok(HttpResponse::Ok().json(Page { data, next_cursor }))
}

#[utoipa::path(tag = "approvals", security(("bearer" = [])),
    responses((status = 200, body = ApprovalView), (status = 404, body = ErrorBody)))]
#[get("/v1/approvals/{approval_id}")]
pub async fn get_approval(state: web::Data<AppState>, who: Principal, path: web::Path<String>) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(state.approvals.get(&who, &path).await?))
}

/// Approves: the limit that asked is raised by the amount (or one authorization passes the threshold).
#[utoipa::path(tag = "approvals", security(("bearer" = [])),
    responses((status = 200, body = ApprovalView), (status = 409, body = ErrorBody)))]
#[post("/v1/approvals/{approval_id}/approve")]
pub async fn approve(state: web::Data<AppState>, who: Principal, path: web::Path<String>) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(state.approvals.decide_as(&who, &path, ApprovalAction::Approve).await?))
}

#[utoipa::path(tag = "approvals", security(("bearer" = [])),
    responses((status = 200, body = ApprovalView), (status = 409, body = ErrorBody)))]
#[post("/v1/approvals/{approval_id}/deny")]
pub async fn deny(state: web::Data<AppState>, who: Principal, path: web::Path<String>) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(state.approvals.decide_as(&who, &path, ApprovalAction::Deny).await?))
}

/// What an approval link carries (in its query, or in the confirm form).
#[derive(Debug, Deserialize, ToSchema, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LinkParams {
    /// `approve` or `deny`.
    pub action: Option<String>,
    /// The link's signed token.
    pub token: Option<String>,
}

/// An HTML page; never cached, never framed, and never telling another site the token in its URL.
fn html(status: StatusCode, body: String) -> HttpResponse {
    HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        .insert_header(("Cache-Control", "no-store"))
        .insert_header(("Referrer-Policy", "no-referrer"))
        .insert_header(("X-Frame-Options", "DENY"))
        .insert_header(("X-Content-Type-Options", "nosniff"))
        .insert_header(("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'"))
        .body(body)
}

fn refused(status: StatusCode, title: &str, message: &str) -> HttpResponse {
    html(status, page::refused(title, message))
}

/// The link's approval and action, once its token holds; else the page that says why not.
async fn checked_link(
    state: &AppState,
    id: &str,
    params: &LinkParams,
) -> std::result::Result<(ApprovalView, ApprovalAction, String), HttpResponse> {
    let action = params.action.as_deref().and_then(ApprovalAction::parse);
    let (Some(action), Some(token)) = (action, params.token.clone()) else {
        return Err(refused(StatusCode::BAD_REQUEST, "Incomplete link", TokenError::Malformed.message()));
    };
    if !state.approvals.links_enabled() {
        return Err(refused(StatusCode::NOT_FOUND, "Links are off", "This server does not sign approval links."));
    }
    if let Err(e) = state.approvals.check_link(id, action, &token) {
        crate::refusals::refused("approval link", &format!("/approvals/{id}"), "", e.message());
        let status = match e {
            TokenError::Malformed => StatusCode::BAD_REQUEST,
            TokenError::Forged => StatusCode::FORBIDDEN,
            TokenError::Expired => StatusCode::GONE,
        };
        return Err(refused(status, "This link cannot be used", e.message()));
    }
    match state.approvals.view(id).await {
        Ok(view) => Ok((view, action, token)),
        Err(Error::NotFound(_)) => Err(refused(StatusCode::NOT_FOUND, "Not found", "There is no such request.")),
        Err(e) => {
            tracing::error!(error = %e, "approval page");
            Err(refused(
                StatusCode::SERVICE_UNAVAILABLE,
                "Try again",
                "The request could not be read. Try again shortly.",
            ))
        }
    }
}

/// Shows the request and a button confirming the link's action. Changes nothing.
#[utoipa::path(get, path = "/approvals/{approval_id}", tag = "approvals", params(LinkParams),
    responses((status = 200, description = "the confirmation page", content_type = "text/html"),
        (status = 400, description = "an incomplete or malformed link (HTML), or an unreadable query or form (JSON)",
            content((String = "text/html"), (ErrorBody = "application/json"))),
        LinkRefusals))]
#[get("/approvals/{approval_id}")]
pub async fn approval_page(
    state: web::Data<AppState>,
    path: web::Path<String>,
    params: web::Query<LinkParams>,
) -> HttpResponse {
    match checked_link(&state, &path, &params).await {
        Ok((view, action, token)) => html(StatusCode::OK, page::confirm(&view, action, &token)),
        Err(page) => page,
    }
}

/// Applies the decision the confirm button carries.
#[utoipa::path(post, path = "/approvals/{approval_id}", tag = "approvals",
    request_body(content = LinkParams, content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, description = "the decision, done", content_type = "text/html"),
        (status = 409, description = "already decided (HTML)", content_type = "text/html"),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
        (status = 400, description = "an incomplete or malformed link (HTML), or an unreadable query or form (JSON)",
            content((String = "text/html"), (ErrorBody = "application/json"))),
        LinkRefusals))]
#[post("/approvals/{approval_id}")]
pub async fn approval_submit(
    state: web::Data<AppState>,
    path: web::Path<String>,
    form: web::Form<LinkParams>,
) -> HttpResponse {
    let (_, action, _) = match checked_link(&state, &path, &form).await {
        Ok(checked) => checked,
        Err(page) => return page,
    };
    match state.approvals.decide(&path, action, Approver::Link).await {
        Ok(view) => html(StatusCode::OK, page::decided(&view)),
        Err(e) if e.status() == 409 => refused(StatusCode::CONFLICT, "Already settled", &e.to_string()),
        Err(e) => {
            tracing::error!(error = %e, "approval decision");
            refused(StatusCode::SERVICE_UNAVAILABLE, "Try again", "The decision could not be saved. Try again shortly.")
        }
    }
}

/// Slack's interactivity requests (the Approve and Deny buttons), signed with the app's signing secret.
#[utoipa::path(post, path = "/slack/interactions", tag = "approvals",
    request_body(content = String, content_type = "application/x-www-form-urlencoded",
        description = "Slack's `payload=<JSON>` form, signed with `X-Slack-Signature`"),
    responses((status = 200, description = "taken"),
        (status = 400, body = ErrorBody, description = "not an interaction Slack sends"),
        (status = 401, body = ErrorBody, description = "missing, stale or wrong signature"),
        (status = 404, body = ErrorBody, description = "Slack interactivity is not configured"),
        (status = 413, body = ErrorBody)))]
#[post("/slack/interactions")]
pub async fn slack_interactions(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse> {
    let Some(signature) = state.approvals.slack_signature() else {
        return Err(Error::NotFound("Slack interactivity is not configured on this server".into()));
    };
    let header = |name: &str| req.headers().get(name).and_then(|h| h.to_str().ok());
    let now = jiff::Timestamp::now().as_second();
    if let Err(why) = signature.verify(header("x-slack-request-timestamp"), header("x-slack-signature"), &body, now) {
        super::refused("Slack signature", &req, why);
        return Err(Error::BadSignature);
    }
    state.approvals.interaction(&body).await.map_err(Error::Validation)?;
    Ok(HttpResponse::Ok().finish())
}

/// Asks people for a mandate: spend the agent may make past its limits (never past a freeze, a
/// lock the mandate does not name, or the balance), on a trace and to the hosts or merchants it
/// names, until it is used up or expires. It is an approval request like any other.
#[utoipa::path(tag = "approvals", request_body = MandateRequest, security(("bearer" = [])),
    responses((status = 201, body = ApprovalView), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 429, body = ErrorBody, description = "five of the agent's mandates wait for people already (`too_many_mandates`)")))]
#[post("/v1/agents/{agent_id}/mandates")]
pub async fn request_mandate(
    state: web::Data<AppState>,
    who: Principal,
    path: web::Path<String>,
    body: web::Json<MandateRequest>,
) -> Result<HttpResponse> {
    let agent = parse_agent_id(&who, &path)?;
    Ok(HttpResponse::Created().json(state.approvals.request_mandate(&who, &agent, body.into_inner()).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct MandateQuery {
    /// Wait up to this many seconds (0 to 60) for a pending mandate to be decided.
    #[param(minimum = 0, maximum = 60)]
    pub wait: Option<u64>,
}

/// A mandate and where it stands: pending, approved (with what is used and what remains), denied
/// or expired. With `?wait=`, answers as soon as a person decides, or when the wait is over.
#[utoipa::path(tag = "approvals", params(MandateQuery), security(("bearer" = [])),
    responses((status = 200, body = ApprovalView), (status = 404, body = ErrorBody)))]
#[get("/v1/agents/{agent_id}/mandates/{mandate_id}")]
pub async fn get_mandate(
    state: web::Data<AppState>,
    who: Principal,
    path: web::Path<(String, String)>,
    query: web::Query<MandateQuery>,
) -> Result<HttpResponse> {
    let (agent, id) = path.into_inner();
    let agent = parse_agent_id(&who, &agent)?;
    let wait = std::time::Duration::from_secs(query.wait.unwrap_or(0));
    Ok(HttpResponse::Ok().json(state.approvals.mandate(&who, &agent, &id, wait).await?))
}
