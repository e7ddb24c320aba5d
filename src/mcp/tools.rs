//! The tools an agent sees. Each acts as the agent key that called it, through the same operation
//! (and the same permission check) as the REST route it stands for: no argument can name another
//! agent, and nothing here decides anything the admin and rail operations do not.

use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::Duration;

use rmcp::handler::server::common::Extension;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, ContentBlock, Implementation, ServerCapabilities, ServerConfig};
use rmcp::schemars::{self, JsonSchema};
use rmcp::{tool, tool_handler, tool_router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::words;
use crate::admin::agents::{ME, agent_for, parse_agent_id};
use crate::admin::ledger::LedgerQuery;
use crate::admin::spendable::SpendableQuery;
use crate::admin::{Admin, PageQuery};
use crate::approvals::Approvals;
use crate::approvals::mandates::MandateRequest;
use crate::domain::access::{Permission, Principal};
use crate::domain::authorization::Merchant;
use crate::domain::card::CardStatus;
use crate::error::{Error, Result};
use crate::rails::card::native::Purchase;
use crate::rails::usdc::{DeferredStatus, FetchOutcome, FetchRequest, PaymentCheck, Usdc};

/// The MCP server of one request: the agent key's tools.
#[derive(Clone)]
pub struct AgentTools {
    admin: Admin,
    usdc: Usdc,
    approvals: Approvals,
}

/// The tools' table, built once (a server is made per request).
static TOOLS: LazyLock<ToolRouter<AgentTools>> = LazyLock::new(AgentTools::tool_router);

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SpendableArgs {
    /// Also count the limits scoped to this trace (a task, PR or ticket id you tag spend with).
    pub trace_id: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckArgs {
    /// Amount in minor units of `currency` (cents for USD: 1250 is $12.50).
    pub amount: i64,
    /// ISO 4217 code of `amount`; default USD. An x402 payment is always in USD.
    pub currency: Option<String>,
    /// For a paid API (x402 or MPP): the URL you would fetch. Give this or `card_id`.
    pub url: Option<String>,
    /// For an x402 payment: the recipient as CAIP-10 (eip155:8453:0x…), if you know it.
    pub pay_to: Option<String>,
    /// For a card purchase: which of your cards pays. Give this or `url`.
    pub card_id: Option<String>,
    /// For a card purchase: the merchant as it appears on the statement, e.g. "OPENAI *API".
    pub merchant_name: Option<String>,
    /// For a card purchase: the merchant category code (four digits), if known.
    pub merchant_mcc: Option<String>,
    /// For a card purchase: the merchant's country (ISO 3166 alpha-2), if known.
    pub merchant_country: Option<String>,
    /// The trace the payment would be tagged with.
    pub trace_id: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PayArgs {
    /// The http(s) URL of the paid API. If it answers 402 (x402 or MPP), spendgate pays within
    /// your policy and calls it again with the payment.
    pub url: String,
    /// GET (default), POST, PUT, PATCH, DELETE or HEAD.
    pub method: Option<String>,
    /// Request headers to send.
    #[serde(default)]
    pub headers: HashMap<String, String>,
    /// Request body to send.
    pub body: Option<String>,
    /// The task, PR or ticket this payment belongs to.
    pub trace_id: Option<String>,
    /// The most this call may cost, in cents (minor units of your currency).
    pub max_amount: Option<i64>,
    /// Any string unique to this payment. Retrying with the same key never pays twice. If you
    /// leave it out, each call is a new payment.
    pub idempotency_key: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApprovalArgs {
    /// The approval id a `pay` that needs a person's approval returned.
    pub approval_id: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TraceArgs {
    /// The trace (task, PR or ticket id) to tag your card spend with; null clears it.
    pub trace_id: Option<String>,
    /// One of your cards; default: every card of yours that can pay.
    pub card_id: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MandateArgs {
    /// Why you need the money, for the person who decides: the task and what it buys.
    pub purpose: String,
    /// The most you would spend under it, in minor units of your currency (cents for USD).
    pub amount: i64,
    /// Only spend tagged with this trace counts under it.
    pub trace_id: Option<String>,
    /// Paid-API hosts it covers (e.g. api.example.com), even ones your policy does not list.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Card merchants it covers (ids or descriptor patterns such as "OPENAI*").
    #[serde(default)]
    pub merchants: Vec<String>,
    /// How long it lasts from now, in hours (1 to 720, default 24).
    pub hours: Option<i64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MandateStatusArgs {
    /// The mandate id ask_for_mandate returned.
    pub mandate_id: String,
    /// Wait up to this many seconds (0 to 60) for a person to decide.
    pub wait_seconds: Option<u64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SpendArgs {
    /// Only spend tagged with this trace.
    pub trace_id: Option<String>,
    /// Only this card's.
    pub card_id: Option<String>,
    /// How many entries, oldest first (1 to 100, default 50).
    pub limit: Option<i64>,
}

/// The agent key behind a tool call, put in the request by the HTTP route that authenticated it.
fn caller(parts: &http::request::Parts) -> Result<Principal> {
    parts.extensions.get::<Principal>().cloned().ok_or(Error::Unauthenticated)
}

/// A tool's answer: the words for the model, and the same facts as structured data.
fn answer(text: String, data: Value) -> CallToolResult {
    let mut result = CallToolResult::success(vec![ContentBlock::text(text)]);
    result.structured_content = Some(data);
    result
}

/// What spendgate refused, as the tool's error (the model reads it; the protocol call succeeded).
fn refused(e: &Error) -> CallToolResult {
    // As on the REST routes, a server-side failure's detail goes to the log, not to the caller.
    match e {
        Error::Internal(detail) => tracing::error!(%detail, "internal error in an MCP tool"),
        Error::StorageUnavailable(detail) => tracing::warn!(%detail, "storage unavailable in an MCP tool"),
        _ => {}
    }
    let code = e.code();
    let mut result = CallToolResult::error(vec![ContentBlock::text(words::refusal(e))]);
    result.structured_content = Some(json!({"error": {"code": code.as_str(), "message": e.to_string()}}));
    result
}

fn respond(outcome: Result<CallToolResult>) -> CallToolResult {
    outcome.unwrap_or_else(|e| refused(&e))
}

#[tool_router]
impl AgentTools {
    pub fn new(admin: Admin, usdc: Usdc, approvals: Approvals) -> Self {
        AgentTools { admin, usdc, approvals }
    }

    #[tool(
        name = "what_can_i_spend",
        description = "What you may still spend: your status and balance, your cards, and every spending limit \
            over you with its cap, what is used, what remains and when it frees up. Call it before a payment \
            you are unsure of, or after a decline.",
        annotations(read_only_hint = true)
    )]
    async fn what_can_i_spend(
        &self,
        Extension(parts): Extension<http::request::Parts>,
        Parameters(args): Parameters<SpendableArgs>,
    ) -> CallToolResult {
        respond(
            async {
                let who = caller(&parts)?;
                let view = self.admin.spendable(&who, ME, SpendableQuery { trace: args.trace_id }).await?;
                let data = serde_json::to_value(&view).map_err(|e| Error::Internal(e.to_string()))?;
                Ok(answer(words::spendable(&view), data))
            }
            .await,
        )
    }

    #[tool(
        name = "check_payment",
        description = "Ask whether a payment would be approved right now, without making it: for a paid API give \
            `url` (and `pay_to` if you know it), for a card purchase give `card_id` and the merchant. The answer \
            says approved or declined, the reason and the rule, and what would unblock a decline. Nothing is \
            paid or recorded.",
        annotations(read_only_hint = true)
    )]
    async fn check_payment(
        &self,
        Extension(parts): Extension<http::request::Parts>,
        Parameters(args): Parameters<CheckArgs>,
    ) -> CallToolResult {
        respond(
            async {
                let who = caller(&parts)?;
                let outcome = match (args.url, args.card_id) {
                    (Some(url), None) => {
                        if args.currency.as_deref().is_some_and(|c| !c.eq_ignore_ascii_case("USD")) {
                            return Err(Error::validation("a payment to a paid API is in USD: leave currency out"));
                        }
                        let agent = agent_for(&who, ME, Permission::DryRun)?;
                        let check =
                            PaymentCheck { url, amount: args.amount, pay_to: args.pay_to, trace_id: args.trace_id };
                        self.usdc.dry_run(&agent, check, true).await?
                    }
                    (None, Some(card)) => {
                        let merchant = Merchant {
                            id: None,
                            name: args.merchant_name.unwrap_or_default(),
                            mcc: args.merchant_mcc,
                            country: args.merchant_country,
                        };
                        let currency = args.currency.unwrap_or_else(|| "USD".into());
                        let purchase = Purchase { amount: args.amount, currency, merchant, trace_id: args.trace_id };
                        self.admin.dry_run(&who, &card, purchase.request()?).await?
                    }
                    _ => return Err(Error::validation("give either url (a paid API) or card_id (a card purchase)")),
                };
                let data = serde_json::to_value(&outcome).map_err(|e| Error::Internal(e.to_string()))?;
                Ok(answer(words::outcome(&outcome), data))
            }
            .await,
        )
    }

    #[tool(
        name = "pay",
        description = "Call a paid API (x402 or MPP). If it answers 402 Payment Required, spendgate pays from your \
            wallet within your policy and calls it again; you get the API's answer and what was paid. A payment \
            past a limit that asks a person returns an approval id instead: follow it with payment_approval. \
            Pass an idempotency_key to retry safely without paying twice.",
        annotations(destructive_hint = false, idempotent_hint = false, open_world_hint = true)
    )]
    async fn pay(
        &self,
        Extension(parts): Extension<http::request::Parts>,
        Parameters(args): Parameters<PayArgs>,
    ) -> CallToolResult {
        respond(
            async {
                let who = caller(&parts)?;
                let agent = agent_for(&who, ME, Permission::Pay)?;
                let key = args
                    .idempotency_key
                    .unwrap_or_else(|| format!("mcp-{}", crate::domain::ids::PaymentId::generate()));
                let request = FetchRequest {
                    url: args.url,
                    method: args.method,
                    headers: args.headers,
                    body: args.body,
                    trace_id: args.trace_id,
                    max_amount: args.max_amount,
                };
                Ok(match self.usdc.fetch(&agent, &key, request).await? {
                    FetchOutcome::Answered(fetched) => {
                        let (status, headers, body) = fetched.into_parts();
                        let (text, data) = words::upstream(status, &headers, &body);
                        answer(text, data)
                    }
                    FetchOutcome::Deferred(status) => deferred(status),
                })
            }
            .await,
        )
    }

    #[tool(
        name = "payment_approval",
        description = "Where a payment that waits for a person's approval stands: still waiting, paid (with the \
            API's answer), or refused.",
        annotations(read_only_hint = true)
    )]
    async fn payment_approval(
        &self,
        Extension(parts): Extension<http::request::Parts>,
        Parameters(args): Parameters<ApprovalArgs>,
    ) -> CallToolResult {
        respond(
            async {
                let who = caller(&parts)?;
                let agent = agent_for(&who, ME, Permission::Read)?;
                Ok(deferred(self.usdc.deferred_status(&agent, &args.approval_id).await?))
            }
            .await,
        )
    }

    #[tool(
        name = "set_trace",
        description = "Tag your card spend with the task you are working on (a PR, ticket or run id), so every \
            charge carries it; null clears it. Applies to one card, or to all your cards that can pay.",
        annotations(idempotent_hint = true)
    )]
    async fn set_trace(
        &self,
        Extension(parts): Extension<http::request::Parts>,
        Parameters(args): Parameters<TraceArgs>,
    ) -> CallToolResult {
        respond(async {
            let who = caller(&parts)?;
            let cards = match args.card_id {
                Some(card) => vec![card],
                None => {
                    let page = self.admin.list_cards(&who, ME, PageQuery { limit: Some(500), cursor: None }).await?;
                    page.data.into_iter().filter(|c| c.status != CardStatus::Closed).map(|c| c.id.to_string()).collect()
                }
            };
            let mut tagged = Vec::new();
            for card in cards {
                tagged.push(self.admin.set_card_trace(&who, ME, &card, args.trace_id.clone()).await?);
            }
            let text = match &args.trace_id {
                Some(trace) => format!("{} card(s) now tag their spend with trace {trace}.", tagged.len()),
                None => format!("{} card(s) no longer tag their spend with a trace.", tagged.len()),
            };
            let data = json!({"cards": tagged.iter().map(|c| json!({"id": c.id, "label": c.label, "trace_id": c.trace_id})).collect::<Vec<_>>()});
            Ok(answer(text, data))
        }
        .await)
    }

    #[tool(
        name = "ask_for_mandate",
        description = "Ask a person, before you spend, for money past your limits: a purpose, an amount, and \
            optionally a trace, the hosts or merchants it covers, and how long it lasts. Once a person approves, \
            payments inside it go through without asking again until it is used up or expires. It never lifts a \
            freeze, your balance, or a lock it does not name. Follow it with mandate_status.",
        annotations(destructive_hint = false, idempotent_hint = false)
    )]
    async fn ask_for_mandate(
        &self,
        Extension(parts): Extension<http::request::Parts>,
        Parameters(args): Parameters<MandateArgs>,
    ) -> CallToolResult {
        respond(
            async {
                let who = caller(&parts)?;
                // Approvals checks who may ask, as on the REST route.
                let agent = parse_agent_id(&who, ME)?;
                let request = MandateRequest {
                    purpose: args.purpose,
                    amount: args.amount,
                    currency: None,
                    trace_id: args.trace_id,
                    hosts: args.hosts,
                    merchants: args.merchants,
                    hours: args.hours,
                };
                let view = self.approvals.request_mandate(&who, &agent, request).await?;
                let data = serde_json::to_value(&view).map_err(|e| Error::Internal(e.to_string()))?;
                Ok(answer(words::mandate(&view), data))
            }
            .await,
        )
    }

    #[tool(
        name = "mandate_status",
        description = "Where a mandate you asked for stands: pending, approved (with what is used and what \
            remains), denied or expired. With wait_seconds, answers as soon as a person decides.",
        annotations(read_only_hint = true)
    )]
    async fn mandate_status(
        &self,
        Extension(parts): Extension<http::request::Parts>,
        Parameters(args): Parameters<MandateStatusArgs>,
    ) -> CallToolResult {
        respond(
            async {
                let who = caller(&parts)?;
                let agent = parse_agent_id(&who, ME)?;
                let wait = Duration::from_secs(args.wait_seconds.unwrap_or(0));
                let view = self.approvals.mandate(&who, &agent, &args.mandate_id, wait).await?;
                let data = serde_json::to_value(&view).map_err(|e| Error::Internal(e.to_string()))?;
                Ok(answer(words::mandate(&view), data))
            }
            .await,
        )
    }

    #[tool(
        name = "recent_spend",
        description = "Your authorizations and transfers, oldest first: on one trace, one card, or all. Each with \
            its amount, merchant or host, status and trace.",
        annotations(read_only_hint = true)
    )]
    async fn recent_spend(
        &self,
        Extension(parts): Extension<http::request::Parts>,
        Parameters(args): Parameters<SpendArgs>,
    ) -> CallToolResult {
        respond(
            async {
                let who = caller(&parts)?;
                let limit = args.limit.unwrap_or(50);
                if !(1..=100).contains(&limit) {
                    return Err(Error::validation("limit must be 1 to 100"));
                }
                let query = LedgerQuery {
                    card: args.card_id,
                    trace: args.trace_id,
                    from: None,
                    to: None,
                    limit: Some(limit),
                    cursor: None,
                };
                let page = self.admin.ledger_entries(&who, ME, query).await?;
                let data = serde_json::to_value(&page).map_err(|e| Error::Internal(e.to_string()))?;
                Ok(answer(words::entries(&page), data))
            }
            .await,
        )
    }
}

fn deferred(status: DeferredStatus) -> CallToolResult {
    match status {
        DeferredStatus::Waiting(waiting) => {
            let text = format!(
                "needs a person's approval: approval {} is {}. Nothing is paid until someone approves; ask \
                 payment_approval with this id later.",
                waiting.approval_id, waiting.status
            );
            answer(text, json!({"approval_id": waiting.approval_id, "status": waiting.status}))
        }
        DeferredStatus::Answer { status, headers, body } => {
            let (text, data) = words::upstream(status, &headers, &body);
            answer(text, data)
        }
        DeferredStatus::Refused { code, message, .. } => {
            let mut result = CallToolResult::error(vec![ContentBlock::text(format!("refused: {code}: {message}"))]);
            result.structured_content = Some(json!({"error": {"code": code, "message": message}}));
            result
        }
    }
}

#[tool_handler(router = TOOLS)]
impl rmcp::ServerHandler for AgentTools {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("spendgate", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "spendgate holds your spending policy, your balance and your wallet. Ask what_can_i_spend \
                 before you spend, check_payment when unsure, tag your work with set_trace, and pay paid APIs \
                 with pay. You cannot change your policy, your balance or another agent's anything: a decline \
                 says what would unblock it, and only a person can.",
            )
    }
}
