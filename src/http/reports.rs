//! The ledger export, streamed, and spend reports.

use std::pin::Pin;
use std::task::{Context, Poll};

use actix_web::body::{BodySize, MessageBody};
use actix_web::http::header;
use actix_web::web::Bytes;
use actix_web::{HttpResponse, get, web};
use tokio::sync::mpsc;

use super::AppState;
use crate::domain::access::Principal;
use crate::error::{Error, Result};
use crate::reports::export::ExportRow;
use crate::reports::spend::SpendReport;
use crate::reports::{ExportQuery, SpendQuery};

/// Every authorization (approved or declined) and every transfer in the filter, oldest first, as
/// CSV (the default) or JSON Lines; the columns are listed in docs/reports.md. Streamed: a file
/// that ends early (the connection closes without its last chunk) was cut off by an error.
#[utoipa::path(get, path = "/v1/ledger/export", tag = "reports", params(ExportQuery),
    responses((status = 200, description = "the ledger lines",
        content((String = "text/csv"), (ExportRow = "application/x-ndjson")))))]
#[get("/v1/ledger/export")]
pub async fn export(
    state: web::Data<AppState>,
    who: Principal,
    query: web::Query<ExportQuery>,
) -> Result<HttpResponse> {
    let export = state.reports.export(&who, query.into_inner()).await?;
    let file = format!("attachment; filename=\"spendgate-ledger.{}\"", export.format.extension());
    Ok(HttpResponse::Ok()
        .content_type(export.format.content_type())
        .insert_header((header::CONTENT_DISPOSITION, file))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(Chunks(export.chunks)))
}

/// Spend per group (posted, held, refunded, declined attempts) in one currency: the top groups by
/// spend and the rest as "other"; with day, week or month, a series in the time zone.
#[utoipa::path(get, path = "/v1/reports/spend", tag = "reports", params(SpendQuery),
    responses((status = 200, body = SpendReport)))]
#[get("/v1/reports/spend")]
pub async fn spend(state: web::Data<AppState>, who: Principal, query: web::Query<SpendQuery>) -> Result<HttpResponse> {
    Ok(HttpResponse::Ok().json(state.reports.spend(&who, query.into_inner()).await?))
}

/// A response body made of the chunks a producer sends; an error ends the response unfinished.
struct Chunks(mpsc::Receiver<Result<Vec<u8>>>);

impl MessageBody for Chunks {
    type Error = Error;

    fn size(&self) -> BodySize {
        BodySize::Stream
    }

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes>>> {
        self.get_mut().0.poll_recv(cx).map(|chunk| chunk.map(|c| c.map(Bytes::from)))
    }
}
