//! `/mcp`: the MCP server over Streamable HTTP, for agent keys. The key is checked here, as on every
//! route, and handed to the tools with the request; the MCP service itself speaks `http` 1.x, so
//! the request and its answer are carried across.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, route, web};
use http_body_util::{BodyDataStream, Full};

use super::AppState;
use super::error::ErrorBody;
use crate::domain::access::{Permission, Principal};
use crate::error::{Error, Result};

/// The MCP endpoint (Streamable HTTP, stateless, JSON answers). The bearer must be an agent key:
/// the tools act for its agent and for nothing else.
#[utoipa::path(post, tag = "agents", security(("bearer" = [])),
    request_body(content = Object, description = "a JSON-RPC message of the Model Context Protocol"),
    responses((status = 200, description = "the JSON-RPC answer"), (status = 202, description = "a notification, taken"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
#[route("/mcp", method = "GET", method = "POST", method = "DELETE")]
pub async fn mcp(
    state: web::Data<AppState>,
    who: Principal,
    req: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse> {
    who.check(Permission::Tools, who.agent_id.as_ref())?;
    let mut request = http::Request::builder().method(req.method().as_str()).uri(req.uri().to_string());
    for (name, value) in req.headers() {
        request = request.header(name.as_str(), value.as_bytes());
    }
    let mut request = request.body(Full::new(body)).map_err(|e| Error::validation(format!("request: {e}")))?;
    request.extensions_mut().insert(who);
    let answer = state.mcp.handle(request).await;
    let (parts, body) = answer.into_parts();
    let mut response =
        HttpResponse::build(StatusCode::from_u16(parts.status.as_u16()).unwrap_or(StatusCode::BAD_GATEWAY));
    for (name, value) in &parts.headers {
        response.append_header((name.as_str(), value.as_bytes()));
    }
    Ok(response.streaming(BodyDataStream::new(body)))
}
