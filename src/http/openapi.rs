use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{agents, approvals, cards, keys, ledger, system, usdc, webhooks};

#[derive(OpenApi)]
#[openapi(
    info(title = "spendgate", description = "Virtual cards and spending rules for AI agents: the admin API."),
    paths(
        system::healthz, system::readyz, system::metrics, system::policy_templates,
        agents::create_agent, agents::list_agents, agents::get_agent, agents::freeze_agent, agents::unfreeze_agent,
        agents::get_agent_policy, agents::put_agent_policy, agents::agent_events,
        cards::issue_card, cards::list_cards, cards::get_agent_card, cards::get_card, cards::freeze_card,
        cards::unfreeze_card, cards::close_card, cards::get_card_policy, cards::put_card_policy, cards::card_events,
        keys::create_key, keys::list_keys, keys::revoke_key,
        ledger::fund, ledger::balance, ledger::ledger, ledger::put_trace,
        webhooks::authorize, webhooks::capture, webhooks::reverse, webhooks::refund,
        usdc::get_wallet, usdc::create_wallet, usdc::export_wallet, usdc::fetch, usdc::authorize, usdc::get_payment, usdc::deferred_status,
        usdc::report_settlement,
        approvals::list_approvals, approvals::get_approval, approvals::approve, approvals::deny,
    ),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}
