//! The HTTP surface (actix-web): routes, the bearer-key extractor, and the error rendering.
//! Handlers translate between HTTP and `admin`; they hold no rule.

mod agents;
mod approvals;
mod audit;
mod auth;
mod cards;
mod endpoints;
pub mod error;
mod keys;
mod ledger;
mod mcp;
pub mod openapi;
mod policies;
pub mod processors;
mod reports;
mod system;
mod treasury;
mod usdc;
pub mod webhooks;

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{HttpRequest, web};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::admin::Admin;
use crate::approvals::Approvals;
use crate::audit::Audit;
use crate::error::Error;
use crate::ledger::Ledger;
use crate::outbox::Outbox;
use crate::rails::card::signature::HexSignature;
use crate::rails::usdc::Usdc;
use crate::reports::Reports;

pub struct AppState {
    pub admin: Admin,
    pub metrics: PrometheusHandle,
    pub ledger: Ledger,
    /// None when no webhook secret is configured: the native webhook answers 404.
    pub webhook: Option<HexSignature>,
    pub processors: processors::Processors,
    pub usdc: Usdc,
    pub approvals: Approvals,
    pub reports: Reports,
    pub audit: Audit,
    pub outbox: Outbox,
    pub mcp: crate::mcp::Endpoint,
}

/// Every route, with the JSON and query settings that turn bad input into our error shape.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.app_data(web::JsonConfig::default().limit(error::MAX_BODY_BYTES).error_handler(error::json_error))
        .app_data(web::QueryConfig::default().error_handler(error::query_error))
        .app_data(web::FormConfig::default().limit(error::MAX_BODY_BYTES).error_handler(error::form_error))
        .service(system::healthz)
        // The decision paths first: a request is matched against the routes in this order (and
        // again for its metrics label), each pattern with parameters by a regex.
        .service(webhooks::authorize)
        .service(webhooks::capture)
        .service(webhooks::reverse)
        .service(webhooks::refund)
        .service(processors::stripe_authorization)
        .service(processors::stripe_event)
        .service(processors::lithic_asa)
        .service(processors::lithic_event)
        .service(processors::marqeta_jit)
        .service(usdc::get_wallet)
        .service(usdc::create_wallet)
        .service(usdc::export_wallet)
        .service(usdc::fetch)
        .service(usdc::authorize)
        .service(usdc::dry_run)
        .service(usdc::get_payment)
        .service(usdc::deferred_status)
        .service(usdc::report_settlement)
        .service(usdc::reconciliation)
        .service(system::readyz)
        .service(system::metrics)
        .service(system::openapi)
        .service(system::policy_templates)
        .service(mcp::mcp)
        .service(policies::versions)
        .service(policies::get_draft)
        .service(policies::put_draft)
        .service(policies::discard_draft)
        .service(policies::promote)
        .service(policies::put_shadow)
        .service(policies::shadow_report)
        .service(policies::start_backtest)
        .service(policies::list_backtests)
        .service(policies::get_backtest)
        .service(policies::cancel_backtest)
        .service(agents::me)
        .service(agents::spendable)
        .service(agents::create_agent)
        .service(agents::list_agents)
        .service(agents::get_agent)
        .service(agents::freeze_agent)
        .service(agents::unfreeze_agent)
        .service(agents::get_agent_policy)
        .service(agents::put_agent_policy)
        .service(agents::agent_events)
        .service(cards::issue_card)
        .service(cards::list_cards)
        .service(cards::get_agent_card)
        .service(cards::get_card)
        .service(cards::dry_run)
        .service(cards::freeze_card)
        .service(cards::unfreeze_card)
        .service(cards::close_card)
        .service(cards::get_card_policy)
        .service(cards::put_card_policy)
        .service(cards::card_events)
        .service(keys::create_key)
        .service(keys::list_keys)
        .service(keys::revoke_key)
        .service(ledger::fund)
        .service(ledger::drain)
        .service(ledger::allocate)
        .service(agents::deactivate_agent)
        .service(agents::reactivate_agent)
        .service(treasury::treasuries)
        .service(treasury::transfers)
        .service(treasury::deposit)
        .service(treasury::withdraw)
        .service(ledger::balance)
        .service(ledger::ledger)
        .service(ledger::put_trace)
        .service(reports::export)
        .service(reports::spend)
        .service(audit::verify)
        .service(audit::checkpoints)
        .service(audit::make_checkpoint)
        .service(endpoints::create_endpoint)
        .service(endpoints::list_endpoints)
        .service(endpoints::delete_endpoint)
        .service(endpoints::endpoint_deliveries)
        .service(approvals::request_mandate)
        .service(approvals::get_mandate)
        .service(approvals::list_approvals)
        .service(approvals::get_approval)
        .service(approvals::approve)
        .service(approvals::deny)
        .service(approvals::approval_page)
        .service(approvals::approval_submit)
        .service(approvals::slack_interactions)
        .default_service(web::to(no_route));
}

/// Logs a refused request in summary (see `refusals`), naming its path and the peer it came from.
fn refused(cause: &'static str, req: &HttpRequest, why: &str) {
    let peer = req.peer_addr().map(|a| a.ip().to_string()).unwrap_or_default();
    crate::refusals::refused(cause, req.path(), &peer, why);
}

/// A path we serve with another method is 405, with the methods it takes in `Allow`; anything
/// else is 404.
async fn no_route(req: HttpRequest) -> Result<actix_web::HttpResponse, Error> {
    if let Some(pattern) = req.match_pattern() {
        let error = Error::MethodNotAllowed(format!("{} is not allowed on {}", req.method(), req.path()));
        let mut response = actix_web::ResponseError::error_response(&error);
        if let Some(allow) = openapi::allowed_methods(&pattern)
            && let Ok(value) = actix_web::http::header::HeaderValue::from_str(&allow)
        {
            response.headers_mut().insert(actix_web::http::header::ALLOW, value);
        }
        return Ok(response);
    }
    Err(Error::NotFound(format!("no route for {} {}", req.method(), req.path())))
}

/// Counts and times every request by route pattern (never by raw path, which holds ids).
pub async fn observe(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let start = Instant::now();
    // Clients may send any method token; only the standard ones become label values.
    let method = match req.method().as_str() {
        m @ ("GET" | "POST" | "PUT" | "PATCH" | "DELETE" | "HEAD" | "OPTIONS") => m.to_owned(),
        _ => "OTHER".to_owned(),
    };
    let response = next.call(req).await?;
    let route = response.request().match_pattern().unwrap_or_else(|| "unmatched".to_owned());
    let status = response.status().as_u16();
    let elapsed = start.elapsed();
    metrics::counter!("spendgate_http_requests_total", "method" => method.clone(), "route" => route.clone(),
        "status" => status.to_string())
    .increment(1);
    metrics::histogram!("spendgate_http_request_duration_seconds", "method" => method.clone(), "route" => route.clone())
        .record(elapsed.as_secs_f64());
    tracing::debug!(%method, %route, status, micros = elapsed.as_micros() as u64, "request");
    Ok(response)
}
