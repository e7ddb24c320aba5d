use std::collections::{BTreeMap, BTreeSet};
use std::sync::LazyLock;

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use super::{
    agents, approvals, audit, cards, endpoints, keys, ledger, mcp, policies, processors, reports, system, treasury,
    usdc, webhooks,
};

#[derive(OpenApi)]
#[openapi(
    info(title = "spendgate", description = "Virtual cards and spending rules for AI agents: the admin API."),
    paths(
        system::healthz, system::readyz, system::metrics, system::policy_templates,
        agents::create_agent, agents::list_agents, agents::get_agent, agents::freeze_agent, agents::unfreeze_agent,
        agents::deactivate_agent, agents::reactivate_agent,
        agents::get_agent_policy, agents::put_agent_policy, agents::agent_events, agents::me, agents::spendable, mcp::mcp,
        cards::issue_card, cards::list_cards, cards::get_agent_card, cards::get_card, cards::dry_run, cards::freeze_card,
        cards::unfreeze_card, cards::close_card, cards::get_card_policy, cards::put_card_policy, cards::card_events,
        policies::versions, policies::get_draft, policies::put_draft, policies::discard_draft, policies::promote,
        policies::put_shadow, policies::shadow_report,
        policies::start_backtest, policies::list_backtests, policies::get_backtest, policies::cancel_backtest,
        keys::create_key, keys::list_keys, keys::revoke_key,
        ledger::fund, ledger::drain, ledger::allocate, ledger::balance, ledger::ledger, ledger::put_trace, reports::export, reports::spend,
        treasury::treasuries, treasury::transfers, treasury::deposit, treasury::withdraw,
        audit::verify, audit::checkpoints, audit::make_checkpoint,
        endpoints::create_endpoint, endpoints::list_endpoints, endpoints::delete_endpoint, endpoints::endpoint_deliveries,
        webhooks::authorize, webhooks::capture, webhooks::reverse, webhooks::refund,
        usdc::get_wallet, usdc::create_wallet, usdc::export_wallet, usdc::fetch, usdc::authorize, usdc::dry_run, usdc::get_payment, usdc::deferred_status,
        usdc::report_settlement, usdc::reconciliation,
        approvals::list_approvals, approvals::get_approval, approvals::approve, approvals::deny, approvals::request_mandate, approvals::get_mandate,
        processors::stripe_authorization, processors::stripe_event, processors::lithic_asa, processors::lithic_event,
        processors::marqeta_jit,
        approvals::approval_page, approvals::approval_submit, approvals::slack_interactions,
    ),
    modifiers(&BearerAuth, &CommonResponses)
)]
pub struct ApiDoc;

/// The document, built once.
pub static DOCUMENT: LazyLock<utoipa::openapi::OpenApi> = LazyLock::new(ApiDoc::openapi);

/// The methods the document gives a path pattern (as actix writes it, `/v1/agents/{agent_id}`):
/// the `Allow` header of a 405.
pub fn allowed_methods(pattern: &str) -> Option<String> {
    static BY_PATH: LazyLock<BTreeMap<String, BTreeSet<&'static str>>> = LazyLock::new(|| {
        DOCUMENT
            .paths
            .paths
            .iter()
            .map(|(path, item)| {
                let methods = [("GET", &item.get), ("PUT", &item.put), ("POST", &item.post), ("DELETE", &item.delete)]
                    .into_iter()
                    .filter_map(|(method, op)| op.is_some().then_some(method))
                    .collect();
                (path.clone(), methods)
            })
            .collect()
    });
    Some(BY_PATH.get(pattern)?.iter().copied().collect::<Vec<_>>().join(", "))
}

/// The answers an API operation gives besides its own, all rendered by `http::error` as an
/// `ErrorBody`: listed on every `/v1` operation so the document names every status the server sends.
struct CommonResponses;

impl Modify for CommonResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (path, item) in openapi.paths.paths.iter_mut() {
            if !path.starts_with("/v1/") {
                continue;
            }
            let signed = path.starts_with("/v1/authorizations");
            for (method, op) in
                [("get", &mut item.get), ("put", &mut item.put), ("post", &mut item.post), ("delete", &mut item.delete)]
            {
                let Some(op) = op else { continue };
                let keyed = op.security.as_ref().is_some_and(|s| !s.is_empty());
                let mut add = |status: &str, why: &str| {
                    let error = ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build();
                    let response = ResponseBuilder::new().description(why).content("application/json", error).build();
                    op.responses.responses.entry(status.to_owned()).or_insert(response.into());
                };
                add("400", "a path parameter, query or body that breaks a rule (`validation_failed`, `invalid_json`)");
                if keyed {
                    add("401", "no API key, or an unknown or revoked one (`unauthenticated`)");
                    add("403", "the key's role or agent may not do this (`forbidden`)");
                }
                if signed {
                    add("401", "a missing, stale or wrong `Spendgate-Signature` (`invalid_signature`)");
                }
                add("404", "no such object, or the feature is not configured (`not_found`)");
                if method != "get" {
                    add("409", "the object's state or an idempotency key forbids it (`code` says which)");
                    add("413", "the body is larger than 64 KiB (`payload_too_large`)");
                    add("415", "the body is not `application/json` (`unsupported_media_type`)");
                    add("422", "well-formed, but names something that cannot be used (`code` says what)");
                }
                add("503", "storage did not answer in time, or the feature is off (`storage_unavailable`, …)");
            }
        }
    }
}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme(
            "marqeta_basic",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Basic).build()),
        );
    }
}
