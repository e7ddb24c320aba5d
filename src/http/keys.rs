use actix_web::{HttpResponse, delete, get, post, web};

use super::AppState;
use super::error::ErrorBody;
use crate::admin::Page;
use crate::admin::keys::{CreatedKey, NewKey};
use crate::domain::access::Principal;
use crate::domain::key::ApiKey;
use crate::error::Result;

/// Creates an API key (owner only). The secret `key` is in this response only.
#[utoipa::path(tag = "keys", request_body = NewKey, security(("bearer" = [])),
    responses((status = 201, body = CreatedKey), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)))]
#[post("/v1/keys")]
pub async fn create_key(state: web::Data<AppState>, who: Principal, body: web::Json<NewKey>) -> Result<HttpResponse> {
    let created = state.admin.create_key(&who, body.into_inner()).await?;
    Ok(HttpResponse::Created().insert_header(("Cache-Control", "no-store")).json(created))
}

#[utoipa::path(tag = "keys", security(("bearer" = [])), responses((status = 200, body = Page<ApiKey>)))]
#[get("/v1/keys")]
pub async fn list_keys(state: web::Data<AppState>, who: Principal) -> Result<HttpResponse> {
    let data = state.admin.list_keys(&who).await?;
    Ok(HttpResponse::Ok().json(Page { data, next_cursor: None }))
}

/// Revokes a key; requests with it fail at once. The last owner key cannot be revoked (409).
#[utoipa::path(tag = "keys", security(("bearer" = [])),
    responses((status = 200, body = ApiKey), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
#[delete("/v1/keys/{key_id}")]
pub async fn revoke_key(state: web::Data<AppState>, who: Principal, path: web::Path<String>) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(state.admin.revoke_key(&who, &path).await?))
}
