//! `Authorization: Bearer <key>` → the `Principal` a handler acts for.

use std::future::Future;
use std::pin::Pin;

use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{FromRequest, HttpRequest, web};

use super::AppState;
use crate::domain::access::Principal;
use crate::error::Error;

fn bearer(req: &HttpRequest) -> Option<String> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then(|| token.to_owned())
}

impl FromRequest for Principal {
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<Principal, Error>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let state = req.app_data::<web::Data<AppState>>().cloned();
        let secret = bearer(req);
        // A handle (reference-counted), to name the request only if it is refused.
        let req = req.clone();
        Box::pin(async move {
            let state = state.ok_or_else(|| Error::Internal("application state missing".into()))?;
            let Some(secret) = secret else {
                return Err(Error::Unauthenticated);
            };
            match state.admin.authenticate(&secret).await? {
                Some(principal) => Ok(principal),
                None => {
                    // Never the key itself, not even a part of it.
                    super::refused("API key", &req, "unknown or revoked API key");
                    Err(Error::Unauthenticated)
                }
            }
        })
    }
}
