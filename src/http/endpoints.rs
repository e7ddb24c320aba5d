//! Webhook endpoints: subscribe, list, delete, and what was delivered to each.

use actix_web::{HttpResponse, delete, get, post, web};
use serde::Deserialize;
use utoipa::IntoParams;

use super::AppState;
use super::error::ErrorBody;
use crate::admin::PageQuery;
use crate::domain::access::Principal;
use crate::domain::webhook::Endpoint;
use crate::error::Result;
use crate::outbox::NewEndpoint;

/// Subscribes an endpoint to event types; the answer carries its signing secret, once.
#[utoipa::path(tag = "webhooks", request_body = NewEndpoint, security(("bearer" = [])),
    responses((status = 201, body = Endpoint), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
#[post("/v1/webhook-endpoints")]
pub async fn create_endpoint(
    state: web::Data<AppState>,
    who: Principal,
    body: web::Json<NewEndpoint>,
) -> Result<HttpResponse> {
    Ok(HttpResponse::Created().json(state.outbox.create(&who, body.into_inner()).await?))
}

#[utoipa::path(tag = "webhooks", security(("bearer" = [])),
    responses((status = 200, body = Vec<Endpoint>), (status = 403, body = ErrorBody)))]
#[get("/v1/webhook-endpoints")]
pub async fn list_endpoints(state: web::Data<AppState>, who: Principal) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(state.outbox.list(&who).await?))
}

/// Stops deliveries to an endpoint (those pending are not sent).
#[utoipa::path(tag = "webhooks", security(("bearer" = [])),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[delete("/v1/webhook-endpoints/{endpoint_id}")]
pub async fn delete_endpoint(
    state: web::Data<AppState>,
    who: Principal,
    path: web::Path<String>,
) -> Result<HttpResponse> {
    state.outbox.delete(&who, &path).await?;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DeliveryQuery {
    /// 1 to 500, default 100.
    pub limit: Option<i64>,
}

/// An endpoint's latest deliveries, newest first: status, attempts, the last error.
#[utoipa::path(tag = "webhooks", params(DeliveryQuery), security(("bearer" = [])),
    responses((status = 200, body = Vec<Object>), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
#[get("/v1/webhook-endpoints/{endpoint_id}/deliveries")]
pub async fn endpoint_deliveries(
    state: web::Data<AppState>,
    who: Principal,
    path: web::Path<String>,
    query: web::Query<DeliveryQuery>,
) -> Result<HttpResponse> {
    let limit = PageQuery { limit: query.limit, cursor: None }.size()?;
    Ok(HttpResponse::Ok().json(state.outbox.deliveries(&who, &path, limit).await?))
}
