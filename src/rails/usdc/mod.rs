//! The USDC rail: agents pay x402 APIs from their wallets. A 402 is read (`x402`), the cheapest
//! payable requirement is signed (`eip3009`) and decided by the same ledger and policy core as
//! card spend (rail `usdc`); only an approved payment, committed with its hold, is ever sent.
//!
//! One payment per (agent, idempotency key): the signed payload is stored before it leaves, and a
//! retry re-sends that payload (same nonce, so it can settle at most once) instead of signing again.
//! Settlement has three outcomes: settled (the hold is posted), failed (voided), unknown (the hold
//! stays, so the spend keeps counting until someone knows better).
//!
//! A fetch whose payment needs a person's approval waits (`deferred`): the agent gets 202 and a
//! status URL, and spendgate pays by itself once someone approves.

mod deferred;
pub mod destination;
pub mod eip3009;
pub mod wallet;
pub mod x402;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use alloy_primitives::{B256, U256};
use reqwest::Url;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use crate::cache::Versioned;
use crate::domain::agent::Agent;
use crate::domain::authorization::{AuthRequest, DeclineReason, Merchant, NamedBy, Rail, Recipient};
use crate::domain::event::Event;
use crate::domain::ids::{AgentId, KeyId, PaymentId};
use crate::domain::ledger::{HoldStatus, PaymentStatus, Source};
use crate::domain::money::Money;
use crate::error::{Error, ErrorCode, Result};
use crate::ledger::{AuthOutcome, Authorize, Ledger, Movement, Payer, Target};
use crate::store::wallets::WalletRow;
use crate::store::x402::PaymentRow;
use crate::store::{self, Db};
use destination::Destinations;
use eip3009::Transfer;
use wallet::{MasterKey, Wallet};
use x402::{Asset, Challenge, Offer, Settlement};

pub use deferred::{Awaiting, DeferredStatus};

/// Largest upstream body kept to answer a retry of a finished payment.
const MAX_STORED_BODY: usize = 1 << 20;
/// Facilitators refuse an authorization that expires sooner than this; it is not re-sent then.
const MIN_VALIDITY_SECONDS: i64 = 6;
/// Headers that describe one hop, not the message: never forwarded either way.
const HOP_BY_HOP: [&str; 8] =
    ["connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade", "content-length"];
/// Upstream headers that would act on spendgate's own origin (cookies, HSTS, site data): never passed back.
const ORIGIN_BOUND: [&str; 5] =
    ["set-cookie", "set-cookie2", "strict-transport-security", "alt-svc", "clear-site-data"];

#[derive(Debug)]
pub struct UsdcSettings {
    /// None: the rail is off (no `SPENDGATE_MASTER_KEY`).
    pub master_key: Option<MasterKey>,
    pub assets: Vec<Asset>,
    /// Upper bound on an authorization's validity, whatever the server's `maxTimeoutSeconds`.
    pub max_valid_seconds: u64,
    /// Time allowed for each upstream request.
    pub timeout: Duration,
    /// The private destinations the operator allows; every other non-global address is refused.
    pub destinations: Destinations,
    /// Largest upstream answer passed back (and read at all).
    pub max_response_bytes: usize,
    /// Fetches in flight at once, in all and for one agent: beyond them, 429.
    pub max_fetches: usize,
    pub max_fetches_per_agent: usize,
}

#[derive(Clone)]
pub struct Usdc {
    inner: Arc<Inner>,
}

struct Inner {
    settings: UsdcSettings,
    http: reqwest::Client,
    db: Db,
    ledger: Ledger,
    /// One payment per key at a time in this process; across processes the unique key in the
    /// database decides, and the loser re-sends the winner's payload.
    in_flight: KeyLocks,
    /// Wallets as stored (the key sealed): an agent's wallet never changes once made.
    wallets: moka::sync::Cache<AgentId, WalletRow>,
    fetches: FetchSlots,
}

/// What an agent asks spendgate to call.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FetchRequest {
    /// An http(s) URL without credentials, on a public address (see docs/security.md).
    #[schema(pattern = "^[Hh][Tt][Tt][Pp][Ss]?://")]
    pub url: String,
    /// GET (default), POST, PUT, PATCH, DELETE or HEAD.
    #[schema(pattern = "^(?i:get|post|put|patch|delete|head)$")]
    pub method: Option<String>,
    #[serde(default)]
    pub headers: HashMap<String, String>,
    pub body: Option<String>,
    #[schema(min_length = 1, max_length = 200, pattern = r"\S")]
    pub trace_id: Option<String>,
    /// The most this call may cost, in minor units of the agent's currency.
    #[schema(minimum = 0)]
    pub max_amount: Option<i64>,
}

/// An agent that makes the HTTP call itself asks for the payment header only.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthorizeRequest {
    #[schema(pattern = "^[Hh][Tt][Tt][Pp][Ss]?://")]
    pub url: String,
    /// The 402's `PAYMENT-REQUIRED` header value (v2), or its JSON body (v1), or the decoded v2 document.
    #[schema(value_type = Object)]
    pub payment_required: serde_json::Value,
    #[schema(min_length = 1, max_length = 200, pattern = r"\S")]
    pub trace_id: Option<String>,
    #[schema(minimum = 0)]
    pub max_amount: Option<i64>,
}

/// The payment header to send, and the payment it belongs to.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Authorized {
    pub header: String,
    pub value: String,
    pub payment: PaymentView,
    pub cost: Money,
    pub remaining: Money,
}

/// What a fetch came to: the upstream answer, or, for a payment that needs a person's approval,
/// what its status URL answers (waiting, refused, or the answer once paid).
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // one per request, moved once: boxing saves nothing
pub enum FetchOutcome {
    Answered(Fetched),
    Deferred(DeferredStatus),
}

/// The upstream answer, and what was paid for it.
#[derive(Debug)]
pub struct Fetched {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub paid: Option<Paid>,
}

impl Fetched {
    /// Status, headers and body for the agent: the upstream ones, plus `Spendgate-*` headers
    /// saying what was paid.
    pub fn into_parts(self) -> (u16, Vec<(String, String)>, Vec<u8>) {
        let mut headers = self.headers;
        if let Some(paid) = &self.paid {
            headers.extend([
                ("Spendgate-Payment".to_owned(), paid.payment.id.clone()),
                ("Spendgate-Settlement".to_owned(), paid.payment.status.as_str().to_owned()),
                ("Spendgate-Cost".to_owned(), paid.cost.amount.to_string()),
                ("Spendgate-Remaining".to_owned(), paid.remaining.amount.to_string()),
                ("Spendgate-Currency".to_owned(), paid.cost.currency.code().to_owned()),
            ]);
        }
        (self.status, headers, self.body)
    }
}

#[derive(Debug, Clone)]
pub struct Paid {
    pub payment: PaymentView,
    /// What the payment counts against limits, in the agent's currency.
    pub cost: Money,
    pub remaining: Money,
}

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct WalletView {
    pub agent_id: String,
    /// EIP-55 checksummed.
    pub address: String,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: jiff::Timestamp,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ExportedWallet {
    pub address: String,
    /// 0x-hex secp256k1 private key.
    pub private_key: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct PaymentView {
    pub id: String,
    pub authorization_id: String,
    pub url: String,
    pub x402_version: i32,
    pub network: String,
    pub asset: String,
    pub pay_to: String,
    /// Atomic units of the asset (USDC: 6 decimals).
    pub amount: String,
    pub payer: String,
    /// `signed` (sent or handed out, no answer yet), `settled`, `failed` or `unknown`.
    pub status: PaymentStatus,
    pub transaction_hash: Option<String>,
    pub error: Option<String>,
    #[schema(value_type = String, format = DateTime)]
    pub valid_before: jiff::Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: jiff::Timestamp,
}

impl PaymentView {
    pub fn from_row(row: &PaymentRow) -> Self {
        let at = |ms: i64| jiff::Timestamp::from_millisecond(ms).unwrap_or_default();
        PaymentView {
            id: row.id.clone(),
            authorization_id: row.authorization_id.clone(),
            url: row.url.clone(),
            x402_version: row.x402_version,
            network: row.network.clone(),
            asset: row.asset.clone(),
            pay_to: row.pay_to.clone(),
            amount: row.amount.clone(),
            payer: row.payer.clone(),
            status: row.status,
            transaction_hash: row.transaction_hash.clone(),
            error: row.error.clone(),
            valid_before: jiff::Timestamp::from_second(row.valid_before).unwrap_or_default(),
            created_at: at(row.created_at),
        }
    }
}

/// A call to make upstream, checked.
struct Call {
    method: reqwest::Method,
    url: Url,
    headers: Vec<(String, String)>,
    body: Option<String>,
}

/// What came back from upstream.
#[derive(Debug)]
struct Upstream {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Upstream {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn headers_named(&self, name: &str) -> Vec<&str> {
        self.headers.iter().filter(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str()).collect()
    }

    fn settlement(&self) -> Option<Settlement> {
        x402::settlement(self.header("payment-response").or_else(|| self.header("x-payment-response")))
    }
}

/// The payment requirements to pay, and where.
struct Purchase {
    url: Url,
    version: u8,
    offer: Offer,
    resource: Option<serde_json::Value>,
    /// Who named these requirements: the server, or the agent handing them in.
    named_by: NamedBy,
    trace_id: Option<String>,
    max_amount: Option<i64>,
    request_hash: String,
    /// The ledger's idempotency key for this decision.
    external_id: String,
    /// The sealed fetch to replay if the payment needs a person's approval (fetches only).
    deferred: Option<String>,
}

/// What `sign` came to: a stored payment (and whether this call stored it), or a wait for the
/// named approval.
#[allow(clippy::large_enum_variant)] // one per request, moved once: boxing saves nothing
enum Signed {
    Payment { row: PaymentRow, ours: bool, outcome: AuthOutcome },
    Awaiting(String),
}

impl Usdc {
    pub fn new(settings: UsdcSettings, db: Db, ledger: Ledger) -> anyhow::Result<Usdc> {
        // The agent names the URL: no redirect is followed, no proxy from the environment is used
        // (it would resolve names where the resolver cannot check them), and every name is
        // resolved by the guarded resolver.
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(Arc::new(settings.destinations.resolver()))
            .build()
            .map_err(|e| anyhow::anyhow!("x402 HTTP client: {e}"))?;
        let wallets = moka::sync::Cache::new(100_000);
        let fetches = FetchSlots::new(settings.max_fetches, settings.max_fetches_per_agent);
        let inner = Inner { settings, http, db, ledger, in_flight: KeyLocks::default(), wallets, fetches };
        Ok(Usdc { inner: Arc::new(inner) })
    }

    pub fn enabled(&self) -> bool {
        self.inner.settings.master_key.is_some()
    }

    fn master(&self) -> Result<&MasterKey> {
        self.inner.settings.master_key.as_ref().ok_or_else(|| {
            Error::coded(
                ErrorCode::UsdcRailDisabled,
                "the USDC rail is off: set SPENDGATE_MASTER_KEY (32 bytes, base64) and restart",
            )
        })
    }

    /// Gives the agent a wallet unless it has one; returns it and whether it is new.
    pub async fn create_wallet(&self, agent: &AgentId) -> Result<(WalletView, bool)> {
        let master = self.master()?;
        self.agent_exists(agent).await?;
        let wallet = Wallet::generate();
        let row = WalletRow {
            agent_id: agent.to_string(),
            address: wallet.address().to_checksum(None),
            sealed_key: master.seal(agent, &wallet),
            created_at: store::now().as_millisecond(),
        };
        let agent_id = agent.clone();
        let written = self.inner.db.write(move |conn| store::wallets::insert_or_get(conn, &row)).await;
        let (stored, created) = match written {
            // Another process gave the agent a wallet at the same moment: that one stands.
            Err(Error::Coded { code: ErrorCode::AlreadyExists, .. }) => (self.wallet_row(&agent_id).await?, false),
            other => other?,
        };
        if created {
            tracing::info!(agent = %agent, address = %stored.address, "wallet created");
        }
        Ok((wallet_view(&stored), created))
    }

    pub async fn wallet(&self, agent: &AgentId) -> Result<WalletView> {
        self.agent_exists(agent).await?;
        Ok(wallet_view(&self.wallet_row(agent).await?))
    }

    /// The wallet's private key, for its owner to move the funds elsewhere: recorded in the audit trail.
    pub async fn export_wallet(&self, agent: &AgentId, actor: &KeyId) -> Result<ExportedWallet> {
        let master = self.master()?;
        self.agent_exists(agent).await?;
        let row = self.wallet_row(agent).await?;
        let wallet = master.open(agent, &row.sealed_key).map_err(|e| Error::Internal(e.to_string()))?;
        let mut event = Event::new(agent, None, "wallet_exported", actor, store::now());
        event.data = Some(serde_json::json!({"address": row.address}));
        self.inner.db.write(move |conn| store::events::insert(conn, &event)).await?;
        tracing::warn!(target: "security", agent = %agent, address = %row.address, key = %actor, "wallet key exported");
        Ok(ExportedWallet { address: row.address, private_key: wallet.export_hex().to_string() })
    }

    pub async fn payment(&self, agent: &AgentId, id: &str) -> Result<PaymentView> {
        self.agent_exists(agent).await?;
        let (agent_id, id) = (agent.clone(), id.to_owned());
        let row = self.inner.db.read(move |conn| store::x402::find(conn, &agent_id, &id)).await?;
        row.map(|r| PaymentView::from_row(&r)).ok_or_else(|| Error::NotFound("payment not found".into()))
    }

    /// Calls `url`; on an x402 402, pays it if the policy allows and calls again with the payment.
    /// A payment that needs a person's approval waits for one, and is then paid by spendgate.
    pub async fn fetch(&self, agent: &AgentId, key: &str, input: FetchRequest) -> Result<FetchOutcome> {
        self.fetch_as(agent, key, input, None).await
    }

    /// `approval`: the approval this fetch runs under (spendgate paying a deferred fetch), which
    /// gives its decision an idempotency key of its own beside the declined attempt's.
    async fn fetch_as(
        &self,
        agent: &AgentId,
        key: &str,
        input: FetchRequest,
        approval: Option<&str>,
    ) -> Result<FetchOutcome> {
        let master = self.master()?;
        let key = idempotency_key(key)?;
        let call = check_call(&input)?;
        let max_amount = check_max_amount(input.max_amount)?;
        let sealed = deferred::seal(master, agent, &key, &input);
        let trace_id = check_trace(input.trace_id)?;
        let snapshot = self.agent(agent).await?;
        // Contact only hosts the policy lets the agent pay: a host outside them is never called.
        let host = host_of(&call.url);
        if !snapshot.value.policy.x402_allows_host(&host) {
            crate::refusals::refused("x402 host not allowed", &host, agent.as_str(), "not in x402.allow_hosts");
            return Err(refused(
                ErrorCode::Declined(DeclineReason::HostNotAllowed),
                &format!(
                    "{host} is not in the agent's x402.allow_hosts (rule agent.x402.allow_hosts); it was not contacted"
                ),
            ));
        }
        // Before the retry path too: a payment signed earlier is not re-sent to a destination now
        // refused (`send` checks again, and the resolver checks every name it resolves).
        self.inner.settings.destinations.check_url(&call.url).map_err(destination_refused)?;
        let _slot = self.inner.fetches.take(agent)?;
        let request_hash = hash(&["fetch", call.method.as_str(), call.url.as_str()]);
        let _one_at_a_time = self.inner.in_flight.lock(format!("{agent}:{key}")).await;

        if let Some(previous) = self.find_payment(agent, &key).await? {
            return self.resume(previous, &request_hash, &call).await.map(FetchOutcome::Answered);
        }
        let first = self.send(&call, None).await.map_err(|e| e.into_error(&call.url, None))?;
        if first.status != 402 {
            return Ok(FetchOutcome::Answered(first.into_fetched(None)));
        }
        let www_authenticate = first.headers_named("www-authenticate");
        let challenge = x402::challenge(first.header("payment-required"), &www_authenticate, &first.body);
        let (version, accepts, resource) = match challenge {
            None => return Ok(FetchOutcome::Answered(first.into_fetched(None))),
            Some(Challenge::Mpp) => {
                return Err(refused(
                    ErrorCode::UnsupportedPaymentProtocol,
                    "the server asks for MPP (WWW-Authenticate: Payment), which spendgate does not pay; nothing was signed",
                ));
            }
            Some(Challenge::X402 { version, accepts, resource }) => (version, accepts, resource),
        };
        let offer = self.choose(version, &accepts)?;
        let external_id = match approval {
            None => format!("{agent}:{key}"),
            Some(approval) => format!("{agent}:{key}:{approval}"),
        };
        let url = call.url.clone();
        let purchase = Purchase {
            url,
            version,
            offer,
            resource,
            named_by: NamedBy::Server,
            trace_id,
            max_amount,
            request_hash: request_hash.clone(),
            external_id,
            deferred: Some(sealed),
        };
        match self.sign(agent, &key, purchase).await? {
            Signed::Awaiting(approval) => self.deferred_status(agent, &approval).await.map(FetchOutcome::Deferred),
            // Another process signed for this key first: its payload is the one that goes.
            Signed::Payment { row, ours: false, .. } => {
                self.resume(row, &request_hash, &call).await.map(FetchOutcome::Answered)
            }
            Signed::Payment { row, ours: true, outcome } => {
                self.deliver(row, &call, true, Some(&outcome)).await.map(FetchOutcome::Answered)
            }
        }
    }

    /// Decides and signs a payment for the agent to send itself.
    pub async fn authorize(&self, agent: &AgentId, key: &str, input: AuthorizeRequest) -> Result<Authorized> {
        self.master()?;
        let key = idempotency_key(key)?;
        let url = check_url(&input.url)?;
        let max_amount = check_max_amount(input.max_amount)?;
        let trace_id = check_trace(input.trace_id)?;
        self.agent_exists(agent).await?;
        let (version, accepts, resource) = match &input.payment_required {
            serde_json::Value::String(header) => x402::challenge(Some(header), &[], b""),
            doc => x402::required(doc),
        }
        .and_then(|c| match c {
            Challenge::X402 { version, accepts, resource } => Some((version, accepts, resource)),
            Challenge::Mpp => None,
        })
        .ok_or_else(|| {
            Error::validation(
                "payment_required must be the PAYMENT-REQUIRED header value (x402 v2) or the 402's JSON body (x402 v1)",
            )
        })?;
        let request_hash = hash(&["authorize", url.as_str(), &input.payment_required.to_string()]);
        let _one_at_a_time = self.inner.in_flight.lock(format!("{agent}:{key}")).await;
        // No look-up first: a key used before is a retry the ledger recognizes, and then the
        // payment made the first time is the answer (nothing signed now is ever stored or sent).
        let offer = self.choose(version, &accepts)?;
        let external_id = format!("{agent}:{key}");
        let purchase = Purchase {
            url,
            version,
            offer,
            resource,
            named_by: NamedBy::Agent,
            trace_id,
            max_amount,
            request_hash: request_hash.clone(),
            external_id,
            deferred: None,
        };
        let (row, cost, remaining) = match self.sign(agent, &key, purchase).await? {
            Signed::Payment { row, ours: true, outcome } => {
                let (cost, remaining) = costs(&outcome)?;
                (row, cost, remaining)
            }
            Signed::Payment { row, ours: false, .. } => {
                same_request(&row, &request_hash)?;
                let (cost, remaining) = self.amounts_of(&row).await?;
                (row, cost, remaining)
            }
            Signed::Awaiting(_) => {
                return Err(Error::Internal("a payment with nothing to defer waits for an approval".into()));
            }
        };
        Ok(Authorized {
            header: row.header_name.clone(),
            value: row.header_value.clone(),
            payment: PaymentView::from_row(&row),
            cost,
            remaining,
        })
    }

    /// The server's `PAYMENT-RESPONSE` for a payment the agent sent itself. A success posts the
    /// hold; a failure voids it only when `may_void` (a manager's report): an agent cannot free
    /// its own budget by saying a payment failed.
    pub async fn report(
        &self,
        agent: &AgentId,
        id: &str,
        payment_response: &str,
        may_void: bool,
    ) -> Result<PaymentView> {
        self.agent_exists(agent).await?;
        let settlement = x402::settlement(Some(payment_response)).ok_or_else(|| {
            Error::validation("payment_response must be the server's PAYMENT-RESPONSE (or X-PAYMENT-RESPONSE) value")
        })?;
        let (agent_id, pid) = (agent.clone(), id.to_owned());
        let row = self.inner.db.read(move |conn| store::x402::find(conn, &agent_id, &pid)).await?;
        let row = row.ok_or_else(|| Error::NotFound("payment not found".into()))?;
        let final_status = match &settlement {
            Settlement::Settled { .. } => PaymentStatus::Settled,
            Settlement::Failed { .. } => PaymentStatus::Failed,
        };
        if row.status == final_status {
            return Ok(PaymentView::from_row(&row));
        }
        if row.status.is_final() {
            return Err(Error::coded(ErrorCode::PaymentFinal, format!("payment {} is already {}", row.id, row.status)));
        }
        if final_status == PaymentStatus::Failed && !may_void {
            return Err(Error::Forbidden("only a manager or owner may report that a payment failed".into()));
        }
        let row = self.conclude(row, Some(settlement), None, true).await?;
        Ok(PaymentView::from_row(&row))
    }

    fn choose(&self, version: u8, accepts: &[serde_json::Value]) -> Result<Offer> {
        x402::choose(version, accepts, &self.inner.settings.assets).map_err(|why| {
            refused(ErrorCode::NoPayableRequirement, &format!("no payment requirement spendgate can pay: {why}"))
        })
    }

    /// Signs the payment, then has the ledger decide it: an approval commits the hold and the
    /// signed payload in one transaction, so nothing is sent before both are durable and a crash
    /// never leads to a second signature. A decline drops the payload unsent; it is refused,
    /// unless it asks for an approval of a deferrable fetch.
    async fn sign(&self, agent: &AgentId, key: &str, p: Purchase) -> Result<Signed> {
        let master = self.master()?;
        let wallet_row = self.wallet_row(agent).await?;
        let wallet = master.open(agent, &wallet_row.sealed_key).map_err(|e| Error::Internal(e.to_string()))?;
        if wallet.address().to_checksum(None) != wallet_row.address {
            return Err(Error::Internal(format!("agent {agent}'s wallet key does not match its stored address")));
        }
        let host = host_of(&p.url);
        let request = AuthRequest {
            rail: Rail::Usdc,
            amount: x402::atomic_to_cents(p.offer.amount),
            currency: "USD".into(),
            merchant: Merchant { id: Some(p.offer.pay_to.to_checksum(None)), name: host, mcc: None, country: None },
            trace_id: p.trace_id,
            max_amount: p.max_amount,
            recipient: Some(Recipient::new(p.offer.network.caip2, &p.offer.pay_to.to_checksum(None), p.named_by)),
        };

        let now = jiff::Timestamp::now().as_second();
        let validity = p.offer.max_timeout_seconds.min(self.inner.settings.max_valid_seconds) as i64;
        let mut nonce = B256::ZERO;
        rand::RngCore::fill_bytes(&mut rand::rng(), nonce.as_mut_slice());
        let transfer = Transfer {
            from: wallet.address(),
            to: p.offer.pay_to,
            value: p.offer.amount,
            valid_after: (now - 600).max(0) as u64,
            valid_before: (now + validity) as u64,
            nonce,
        };
        let (signature, authorization) =
            transfer.sign(&wallet, &p.offer.domain).map_err(|e| Error::Internal(e.to_string()))?;
        drop(wallet);
        let (header_name, header_value) =
            x402::payment_header(p.version, &p.offer, p.resource.as_ref(), signature, &authorization);
        let now_ms = store::now().as_millisecond();
        let mut row = PaymentRow {
            id: PaymentId::generate().to_string(),
            agent_id: agent.to_string(),
            idempotency_key: key.to_owned(),
            request_hash: p.request_hash,
            // Set by the ledger to the hold's id.
            authorization_id: String::new(),
            url: p.url.to_string(),
            x402_version: i32::from(p.version),
            network: p.offer.network.caip2.to_owned(),
            asset: p.offer.asset.to_checksum(None),
            pay_to: p.offer.pay_to.to_checksum(None),
            amount: p.offer.amount.to_string(),
            payer: wallet_row.address,
            valid_before: transfer.valid_before as i64,
            header_name: header_name.to_owned(),
            header_value,
            status: PaymentStatus::Signed,
            transaction_hash: None,
            error: None,
            response_status: None,
            response_headers: None,
            response_body: None,
            created_at: now_ms,
            updated_at: now_ms,
        };

        let deferrable = p.deferred.is_some();
        let auth = Authorize {
            source: Source::X402,
            external_id: p.external_id,
            payer: Payer::Wallet(agent.clone()),
            request,
            deferred: p.deferred,
            payment: Some(Box::new(row.clone())),
        };
        let outcome = self.inner.ledger.authorize(auth).await;
        let Some(authorization_id) = outcome.authorization_id.clone().filter(|_| outcome.approved) else {
            if let (true, Some(DeclineReason::ApprovalRequired), Some(id)) =
                (deferrable, outcome.reason, &outcome.approval_id)
            {
                return Ok(Signed::Awaiting(id.clone()));
            }
            // A decline always has its reason; failing closed, one without would be an internal error.
            let reason = outcome.reason.unwrap_or(DeclineReason::InternalError);
            let rule = outcome.rule.as_deref().map(|r| format!(" (rule {r})")).unwrap_or_default();
            let asked = match &outcome.approval_id {
                Some(id) => format!("; approval {id} was requested: once approved, retry with a new Idempotency-Key"),
                None => String::new(),
            };
            return Err(refused(
                ErrorCode::Declined(reason),
                &format!("the payment was declined: {reason}{rule}; nothing was signed{asked}"),
            ));
        };
        row.authorization_id = authorization_id.clone();
        if outcome.payment_stored {
            return Ok(Signed::Payment { row, ours: true, outcome });
        }
        if !outcome.replayed {
            // A fresh hold, but a payment under this key was made by another decision: that one
            // stands, and this hold must not stay behind without a payment.
            let void = Movement::Reverse { amount: None, currency: None };
            let target = Target::Id(authorization_id.clone());
            self.inner.ledger.movement(target, &format!("{authorization_id}:duplicate"), void).await?;
        }

        // A retry of a decision already made: its payment (made by this or another process) goes.
        if let Some(earlier) = self.find_payment(agent, key).await? {
            return Ok(Signed::Payment { row: earlier, ours: false, outcome });
        }
        // An earlier attempt's hold with no payment: it must still stand to pay against it.
        let id = authorization_id.clone();
        let hold = self.inner.db.read(move |conn| store::ledger::find(conn, &id)).await?;
        if hold.is_none_or(|h| h.status != HoldStatus::Pending) {
            return Err(Error::coded(
                ErrorCode::IdempotencyConflict,
                format!("the hold {authorization_id} of this key's earlier attempt was released; use a new key"),
            ));
        }
        let stored = self.inner.db.write(move |conn| store::x402::insert_or_get(conn, &row)).await;
        match stored {
            Ok((row, ours)) => Ok(Signed::Payment { row, ours, outcome }),
            // Another process stored a payment for this key at the same moment: that one goes.
            Err(Error::Coded { code: ErrorCode::AlreadyExists, .. }) => match self.find_payment(agent, key).await? {
                Some(winner) => Ok(Signed::Payment { row: winner, ours: false, outcome }),
                None => Err(Error::Internal("a payment vanished after a conflicting insert".into())),
            },
            Err(e) => {
                // Nothing was sent: the hold must not outlive the payload it was for.
                let void = Movement::Reverse { amount: None, currency: None };
                let target = Target::Id(authorization_id.clone());
                if let Err(v) = self.inner.ledger.movement(target, &format!("{authorization_id}:unsigned"), void).await
                {
                    tracing::error!(error = %v, authorization = %authorization_id, "could not void the hold of an unstored payment");
                }
                Err(e)
            }
        }
    }

    /// A retry with a key already used: replay a finished payment's answer, or re-send the same
    /// payload while it is still valid. Never a second signature.
    async fn resume(&self, row: PaymentRow, request_hash: &str, call: &Call) -> Result<Fetched> {
        same_request(&row, request_hash)?;
        if row.status.is_final() {
            let (cost, remaining) = self.amounts_of(&row).await?;
            let paid = Paid { payment: PaymentView::from_row(&row), cost, remaining };
            return match (row.response_status, &row.response_headers, &row.response_body) {
                (Some(status), Some(headers), Some(body)) => Ok(Fetched {
                    status: status as u16,
                    headers: serde_json::from_str(headers).unwrap_or_default(),
                    body: body.clone(),
                    paid: Some(paid),
                }),
                _ => Err(Error::coded(
                    ErrorCode::IdempotencyConflict,
                    format!(
                        "payment {} is {}{}; no answer was kept to replay (too large, or none came)",
                        row.id,
                        row.status,
                        row.error.as_deref().map(|e| format!(" ({e})")).unwrap_or_default()
                    ),
                )),
            };
        }
        if row.valid_before <= jiff::Timestamp::now().as_second() + MIN_VALIDITY_SECONDS {
            return Err(Error::coded(
                ErrorCode::PaymentOutcomeUnknown,
                format!(
                    "payment {} was signed and its outcome is unknown; its authorization has expired, so it is \
                     not sent again and nothing new is signed (its hold stays until the payment is resolved)",
                    row.id
                ),
            ));
        }
        self.deliver(row, call, false, None).await
    }

    /// Sends the stored payload with the call and records what the answer says. `first`: this
    /// payload was never sent before, so a refusal means nothing moved.
    async fn deliver(
        &self,
        row: PaymentRow,
        call: &Call,
        first: bool,
        outcome: Option<&AuthOutcome>,
    ) -> Result<Fetched> {
        let answer = self.send(call, Some((&row.header_name, &row.header_value))).await;
        let (settlement, upstream, failure) = match answer {
            Ok(upstream) => {
                let settlement = upstream.settlement().or_else(|| {
                    // A fresh payload answered by a new 402 with requirements was refused before settling.
                    let again = upstream.status == 402 && upstream.header("payment-required").is_some();
                    (first && again).then(|| Settlement::Failed { reason: "payment_rejected".into() })
                });
                (settlement, Some(upstream), None)
            }
            // The answer's headers say how the payment went even when its body is not passed on.
            Err(SendError::TooLarge { headers }) => {
                let settlement = headers.settlement();
                (settlement, None, Some(SendError::TooLarge { headers }))
            }
            Err(e) => {
                tracing::warn!(payment = %row.id, error = %e, "x402 paid request failed; the payment's outcome is unknown");
                (None, None, Some(e))
            }
        };
        let row = self.conclude(row, settlement, upstream.as_ref(), first).await?;
        let (cost, remaining) = match outcome {
            Some(o) if row.status != PaymentStatus::Failed => costs(o)?,
            _ => self.amounts_of(&row).await?,
        };
        let paid = Paid { payment: PaymentView::from_row(&row), cost, remaining };
        match (upstream, failure) {
            (Some(upstream), _) => Ok(upstream.into_fetched(Some(paid))),
            (None, failure) => {
                let failure = failure.unwrap_or(SendError::Failed("no answer".into()));
                Err(failure.into_error(&call.url, Some(&paid.payment)))
            }
        }
    }

    /// Records the settlement (or that it is unknown) and moves the hold: posted when settled,
    /// voided when a refusal is final (`refusal_voids`: the payload was never sent before), kept otherwise.
    async fn conclude(
        &self,
        mut row: PaymentRow,
        settlement: Option<Settlement>,
        upstream: Option<&Upstream>,
        refusal_voids: bool,
    ) -> Result<PaymentRow> {
        let movement = match settlement {
            Some(Settlement::Settled { transaction, .. }) => {
                let cents = x402::atomic_to_cents(row.amount.parse::<U256>().unwrap_or(U256::MAX));
                row.status = PaymentStatus::Settled;
                row.transaction_hash = Some(transaction).filter(|t| !t.is_empty());
                row.error = None;
                Some(("settled", Movement::Capture { amount: cents, currency: "USD".into() }))
            }
            Some(Settlement::Failed { reason }) if refusal_voids => {
                row.status = PaymentStatus::Failed;
                row.error = Some(reason);
                Some(("failed", Movement::Reverse { amount: None, currency: None }))
            }
            // A re-sent payload refused may have settled the first time (its nonce is then used):
            // the spend keeps counting.
            Some(Settlement::Failed { reason }) => {
                row.status = PaymentStatus::Unknown;
                row.error = Some(reason);
                None
            }
            None => {
                row.status = PaymentStatus::Unknown;
                row.error = Some("no readable settlement answer".into());
                None
            }
        };
        if let Some(up) = upstream.filter(|_| row.status.is_final()) {
            row.response_status = Some(i32::from(up.status));
            row.response_headers = serde_json::to_string(&up.headers).ok();
            row.response_body = (up.body.len() <= MAX_STORED_BODY).then(|| up.body.clone());
            if row.response_body.is_none() {
                row.response_headers = None;
            }
        }
        row.updated_at = store::now().as_millisecond();
        match movement {
            // The hold moves and the payment's outcome is recorded in one commit.
            Some((outcome, movement)) => {
                let target = Target::Id(row.authorization_id.clone());
                let external_id = format!("{}:{outcome}", row.id);
                self.inner.ledger.settle(target, &external_id, movement, row.clone()).await?;
            }
            None => {
                let saved = row.clone();
                self.inner.db.write(move |conn| store::x402::update_outcome(conn, &saved)).await?;
            }
        }
        tracing::info!(payment = %row.id, status = %row.status, transaction = ?row.transaction_hash, "x402 payment");
        Ok(row)
    }

    /// One request upstream, to a destination the rules allow, its answer read up to the limit.
    async fn send(&self, call: &Call, payment: Option<(&str, &str)>) -> std::result::Result<Upstream, SendError> {
        self.inner.settings.destinations.check_url(&call.url).map_err(SendError::Refused)?;
        let mut request = self.inner.http.request(call.method.clone(), call.url.clone());
        for (name, value) in &call.headers {
            request = request.header(name, value);
        }
        if let Some((name, value)) = payment {
            request = request.header(name, value);
        }
        if let Some(body) = &call.body {
            request = request.body(body.clone());
        }
        let mut response = request.send().await.map_err(SendError::from_client)?;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .filter(|(name, _)| !HOP_BY_HOP.contains(&name.as_str()) && !ORIGIN_BOUND.contains(&name.as_str()))
            .filter_map(|(name, value)| Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned())))
            .collect();
        let limit = self.inner.settings.max_response_bytes;
        let too_large = |headers| SendError::TooLarge { headers: Upstream { status, headers, body: Vec::new() } };
        if response.content_length().is_some_and(|n| n > limit as u64) {
            return Err(too_large(headers));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(SendError::from_client)? {
            if body.len() + chunk.len() > limit {
                return Err(too_large(headers));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Upstream { status, headers, body })
    }

    /// The agent's snapshot; NotFound when there is no such agent.
    async fn agent(&self, agent: &AgentId) -> Result<Arc<Versioned<Agent>>> {
        match self.inner.ledger.snapshots().agent(&self.inner.db, agent).await? {
            Some(snapshot) => Ok(snapshot),
            None => Err(Error::not_found("agent", agent.as_str())),
        }
    }

    async fn agent_exists(&self, agent: &AgentId) -> Result<()> {
        self.agent(agent).await.map(drop)
    }

    async fn wallet_row(&self, agent: &AgentId) -> Result<WalletRow> {
        if let Some(row) = self.inner.wallets.get(agent) {
            return Ok(row);
        }
        let id = agent.clone();
        let row = self.inner.db.read(move |conn| store::wallets::find(conn, &id)).await?;
        let row = row.ok_or_else(|| {
            Error::coded(
                ErrorCode::NoWallet,
                format!("agent {agent} has no wallet: POST /v1/agents/{agent}/wallet creates one"),
            )
        })?;
        self.inner.wallets.insert(agent.clone(), row.clone());
        Ok(row)
    }

    async fn find_payment(&self, agent: &AgentId, key: &str) -> Result<Option<PaymentRow>> {
        let (id, key) = (agent.clone(), key.to_owned());
        self.inner.db.read(move |conn| store::x402::find_by_key(conn, &id, &key)).await
    }

    /// What a recorded payment counts, and the agent's available balance now.
    async fn amounts_of(&self, row: &PaymentRow) -> Result<(Money, Money)> {
        let agent = AgentId::from_stored(row.agent_id.clone());
        let balance = self.inner.ledger.balance(&agent).await?;
        let auth_id = row.authorization_id.clone();
        let auth = self.inner.db.read(move |conn| store::ledger::find(conn, &auth_id)).await?;
        let counted = auth.map_or(0, |a| a.counted);
        Ok((
            Money { amount: counted, currency: balance.currency },
            Money { amount: balance.available, currency: balance.currency },
        ))
    }
}

impl Upstream {
    fn into_fetched(self, paid: Option<Paid>) -> Fetched {
        Fetched { status: self.status, headers: self.headers, body: self.body, paid }
    }
}

fn costs(outcome: &AuthOutcome) -> Result<(Money, Money)> {
    match (&outcome.amount.cap, &outcome.available) {
        (Some(cost), Some(remaining)) => Ok((*cost, *remaining)),
        _ => Err(Error::Internal("an approved payment without amounts".into())),
    }
}

/// A payment spendgate will not make (402).
fn refused(code: ErrorCode, message: &str) -> Error {
    Error::coded(code, message)
}

fn destination_refused(refusal: destination::Refused) -> Error {
    crate::refusals::refused("x402 destination forbidden", &refusal.host, "", &refusal.reason);
    Error::coded(
        ErrorCode::DestinationForbidden,
        format!(
            "{refusal}; it was not contacted (an operator allows private destinations with x402_private_destinations)"
        ),
    )
}

/// The host as policies name it: lowercase, with the port when the URL gives one.
fn host_of(url: &Url) -> String {
    let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
    match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host,
    }
}

/// Why a request upstream got no usable answer.
#[derive(Debug)]
enum SendError {
    /// The destination is not one spendgate contacts (nothing was sent).
    Refused(destination::Refused),
    /// The answer is larger than allowed; its status and headers were read.
    TooLarge {
        headers: Upstream,
    },
    Failed(String),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Refused(r) => r.fmt(f),
            SendError::TooLarge { .. } => f.write_str("the answer is larger than allowed"),
            SendError::Failed(e) => f.write_str(e),
        }
    }
}

impl SendError {
    fn from_client(e: reqwest::Error) -> SendError {
        match destination::refusal_in(&e) {
            Some(refusal) => SendError::Refused(refusal.clone()),
            None => SendError::Failed(e.without_url().to_string()),
        }
    }

    /// The error the agent gets; `paid`: the payment the request carried, if any.
    fn into_error(self, url: &Url, paid: Option<&PaymentView>) -> Error {
        let payment = match paid {
            Some(p) => format!(
                "; payment {} is {}{}",
                p.id,
                p.status,
                if p.status == PaymentStatus::Unknown {
                    " and its hold stays; retry with the same Idempotency-Key to send the same payment again"
                } else {
                    ", and a retry with the same Idempotency-Key pays nothing again"
                }
            ),
            None => String::new(),
        };
        match self {
            SendError::Refused(r) => destination_refused(r),
            SendError::TooLarge { .. } => Error::UpstreamTooLarge(format!(
                "the answer from {url} is larger than spendgate passes on (x402_max_response_bytes){payment}"
            )),
            SendError::Failed(e) => Error::Upstream(format!("calling {url}: {e}{payment}")),
        }
    }
}

/// Fetches in flight, in all and per agent: a flood from one agent cannot take every connection.
struct FetchSlots {
    total: usize,
    per_agent: usize,
    in_use: Mutex<(usize, HashMap<AgentId, usize>)>,
}

/// A fetch's place, given back when dropped.
struct FetchSlot<'a> {
    slots: &'a FetchSlots,
    agent: AgentId,
}

impl FetchSlots {
    fn new(total: usize, per_agent: usize) -> Self {
        FetchSlots { total, per_agent, in_use: Mutex::new((0, HashMap::new())) }
    }

    fn take(&self, agent: &AgentId) -> Result<FetchSlot<'_>> {
        let mut guard = self.in_use.lock().unwrap_or_else(|e| e.into_inner());
        let (total, per_agent) = &mut *guard;
        let mine = per_agent.get(agent).copied().unwrap_or(0);
        if *total >= self.total || mine >= self.per_agent {
            let which = if mine >= self.per_agent { "this agent's" } else { "spendgate's" };
            return Err(Error::coded(
                ErrorCode::TooManyFetches,
                format!("{which} fetches in flight are at their limit; retry shortly"),
            ));
        }
        *total += 1;
        per_agent.insert(agent.clone(), mine + 1);
        Ok(FetchSlot { slots: self, agent: agent.clone() })
    }
}

impl Drop for FetchSlot<'_> {
    fn drop(&mut self) {
        let mut guard = self.slots.in_use.lock().unwrap_or_else(|e| e.into_inner());
        let (total, per_agent) = &mut *guard;
        *total -= 1;
        if let Some(n) = per_agent.get_mut(&self.agent) {
            *n -= 1;
            if *n == 0 {
                per_agent.remove(&self.agent);
            }
        }
    }
}

fn wallet_view(row: &WalletRow) -> WalletView {
    WalletView {
        agent_id: row.agent_id.clone(),
        address: row.address.clone(),
        created_at: jiff::Timestamp::from_millisecond(row.created_at).unwrap_or_default(),
    }
}

fn same_request(row: &PaymentRow, request_hash: &str) -> Result<()> {
    if row.request_hash == request_hash {
        return Ok(());
    }
    Err(Error::coded(
        ErrorCode::IdempotencyConflict,
        format!("this Idempotency-Key was used for another request (payment {})", row.id),
    ))
}

fn hash(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for part in parts {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    hex::encode(h.finalize())
}

fn idempotency_key(key: &str) -> Result<String> {
    let key = key.trim();
    let ok = (1..=255).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic());
    if !ok {
        return Err(Error::validation("the Idempotency-Key header is required: 1 to 255 printable characters"));
    }
    Ok(key.to_owned())
}

fn check_url(url: &str) -> Result<Url> {
    let parsed = Url::parse(url).map_err(|e| Error::validation(format!("url: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none_or(str::is_empty) {
        return Err(Error::validation("url must be an http or https URL with a host"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(Error::validation("url must not carry credentials"));
    }
    Ok(parsed)
}

fn check_call(input: &FetchRequest) -> Result<Call> {
    let url = check_url(&input.url)?;
    let method = match input.method.as_deref().map(str::to_ascii_uppercase).as_deref() {
        None | Some("GET") => reqwest::Method::GET,
        Some("POST") => reqwest::Method::POST,
        Some("PUT") => reqwest::Method::PUT,
        Some("PATCH") => reqwest::Method::PATCH,
        Some("DELETE") => reqwest::Method::DELETE,
        Some("HEAD") => reqwest::Method::HEAD,
        Some(other) => {
            return Err(Error::validation(format!(
                "method {other:?} is not one of GET, POST, PUT, PATCH, DELETE, HEAD"
            )));
        }
    };
    let mut headers = Vec::with_capacity(input.headers.len());
    for (name, value) in &input.headers {
        let lower = name.to_ascii_lowercase();
        if HOP_BY_HOP.contains(&lower.as_str()) || lower == "host" {
            return Err(Error::validation(format!("headers.{name}: set by spendgate, not by the caller")));
        }
        if matches!(lower.as_str(), "payment-signature" | "x-payment") {
            return Err(Error::validation(format!("headers.{name}: spendgate adds the payment itself")));
        }
        if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err()
            || reqwest::header::HeaderValue::from_str(value).is_err()
        {
            return Err(Error::validation(format!("headers.{name}: not a valid HTTP header")));
        }
        headers.push((name.clone(), value.clone()));
    }
    Ok(Call { method, url, headers, body: input.body.clone() })
}

fn check_max_amount(max: Option<i64>) -> Result<Option<i64>> {
    match max {
        Some(m) if m < 0 => {
            Err(Error::validation("max_amount must be 0 or more (minor units of the agent's currency)"))
        }
        other => Ok(other),
    }
}

fn check_trace(trace: Option<String>) -> Result<Option<String>> {
    match trace {
        Some(t) if t.trim().is_empty() || t.chars().count() > 200 => {
            Err(Error::validation("trace_id must be 1 to 200 characters"))
        }
        other => Ok(other),
    }
}

/// Per-key async locks, dropped when nobody holds them.
#[derive(Default)]
struct KeyLocks(Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>);

impl KeyLocks {
    async fn lock(&self, key: String) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
            map.retain(|_, held| held.strong_count() > 0);
            match map.get(&key).and_then(Weak::upgrade) {
                Some(lock) => lock,
                None => {
                    let lock = Arc::new(tokio::sync::Mutex::new(()));
                    map.insert(key, Arc::downgrade(&lock));
                    lock
                }
            }
        };
        lock.lock_owned().await
    }
}
