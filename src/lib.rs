//! spendgate: virtual cards and spending rules for AI agents. This file builds and starts the
//! server; what each module may use is stated in docs/architecture.md ("The layers").

pub mod admin;
pub mod alerts;
pub mod approvals;
pub mod audit;
pub mod backtest;
pub mod cache;
pub mod cli;
pub mod clock;
pub mod config;
pub mod crypto;
pub mod demo;
pub mod domain;
pub mod error;
pub mod fixtures;
pub mod http;
pub mod ledger;
pub mod mcp;
pub mod outbox;
pub mod policy;
pub mod rails;
pub mod rates;
pub mod refusals;
pub mod reports;
pub mod store;

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use actix_web::middleware::from_fn;
use actix_web::{App, HttpServer, web};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::admin::Admin;
use crate::admin::keys::FirstKey;
use crate::alerts::Alerts;
use crate::approvals::link::LinkSigner;
use crate::approvals::slack::SlackSignature;
use crate::approvals::{ApprovalSettings, Approvals};
use crate::audit::Audit;
use crate::audit::checkpoint::CheckpointSigner;
use crate::cache::Snapshots;
use crate::config::Config;
use crate::ledger::{Ledger, LedgerSettings};
use crate::outbox::{Outbox, OutboxSettings};
use crate::policy::FxRules;
use crate::rails::card::issuing::{Issuer, IssuingSettings, LithicApi, StripeApi};
use crate::rails::card::signature::{BasicAuth, HexSignature, StandardWebhooks};
use crate::rails::usdc::chain::{ChainSettings, parse_rpc, redact};
use crate::rails::usdc::destination::Destinations;
use crate::rails::usdc::wallet::MasterKey;
use crate::rails::usdc::x402::parse_assets;
use crate::rails::usdc::{Usdc, UsdcSettings};
use crate::store::Db;

/// A server that is listening; await `server` to run it until shutdown.
pub struct Started {
    pub addr: SocketAddr,
    pub admin: Admin,
    pub first_key: FirstKey,
    pub ledger: Ledger,
    pub usdc: Usdc,
    pub server: actix_web::dev::Server,
}

/// Makes ring the process's TLS provider, once, before any HTTP client is built.
pub fn install_tls() {
    // An error means a provider is installed already, which is all this asks.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Opens and migrates the database, makes the first key if none exists, and binds the listener.
pub async fn start(config: &Config) -> anyhow::Result<Started> {
    install_tls();
    let catalog = fixtures::catalog();
    let db = Db::connect(&config.database_url, config.database_pool_size)?
        .with_timeout(Duration::from_millis(config.database_timeout_ms));
    db.migrate().await?;
    // A verification reads every chain whole: it gets a report's bound, not a decision-path read's.
    let audit = Audit::new(
        db.clone().with_timeout(Duration::from_millis(config.report_timeout_ms)),
        checkpoint_signer(config)?,
    );
    audit.adopt().await?;
    let rates = rates::built_in();
    // New approval requests go to Slack when a webhook is set; a bounded queue, swept from the database.
    let (asked_tx, asked_rx) = match config.slack_webhook_url {
        Some(_) => {
            let (tx, rx) = tokio::sync::mpsc::channel(1_024);
            (Some(tx), Some(rx))
        }
        None => (None, None),
    };
    let settings = LedgerSettings {
        budget: Duration::from_millis(config.decision_budget_ms),
        fx: FxRules {
            max_age: jiff::SignedDuration::from_hours(config.fx_max_age_hours as i64),
            decline_stale: config.fx_stale_declines,
            accept_bundled: config.fx_accept_bundled,
        },
        max_batch: config.ledger_batch,
        queue: 16_384,
        approval_ttl: Duration::from_secs(config.approval_ttl_hours * 3_600),
        asked: asked_tx,
    };
    let ledger = Ledger::start(db.clone(), Snapshots::new(config.cache_capacity), rates.clone(), catalog, settings);
    let admin = Admin::new(db.clone(), catalog, config.simulator_bin.clone(), ledger.clone(), issuer(config)?);
    spawn_background(config, &ledger, &rates);
    let outbox = Outbox::new(
        db.clone(),
        OutboxSettings {
            destinations: Destinations::parse(&config.webhook_private_destinations)
                .map_err(|e| anyhow::anyhow!("webhook_private_destinations: {e}"))?,
            retry_base: Duration::from_millis(config.webhook_retry_ms),
            timeout: Duration::from_millis(config.webhook_timeout_ms),
        },
    )?;
    actix_web::rt::spawn(outbox.clone().run_forever(Duration::from_millis(250)));
    let every = Duration::from_secs(config.spend_rate_check_seconds.max(1));
    actix_web::rt::spawn(Alerts::new(db.clone()).run_forever(every));
    if config.audit_checkpoint_minutes > 0 {
        actix_web::rt::spawn(
            audit.clone().checkpoint_forever(Duration::from_secs(config.audit_checkpoint_minutes * 60)),
        );
    }
    let first_key = admin.ensure_first_key(config.bootstrap_admin_key.as_ref().map(|k| k.expose())).await?;

    let listener = std::net::TcpListener::bind(&config.listen)
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
    let addr = listener.local_addr()?;
    let webhook = HexSignature::new(config.webhook_secret.as_ref(), config.webhook_secret_previous.as_ref());
    if webhook.is_none() {
        tracing::warn!("SPENDGATE_WEBHOOK_SECRET is not set: the native authorization webhook answers 404");
    }
    let processors = processors(config)?;
    let usdc = usdc(config, &db, &ledger)?;
    // Approved x402 fetches that waited for a person are paid by the rail, off the request path.
    let approved_tx = usdc.enabled().then(|| {
        let (tx, rx) = tokio::sync::mpsc::channel(1_024);
        actix_web::rt::spawn(usdc.clone().pay_approved_forever(rx));
        tx
    });
    // Deposits into agents' wallets are credited, and the wallets reconciled, off the request path.
    if usdc.enabled() {
        usdc.watch_chain();
    }
    let approvals = approvals(config, &db, &ledger, asked_rx, approved_tx)?;
    let state = web::Data::new(http::AppState {
        admin: admin.clone(),
        metrics: metrics_handle(),
        ledger: ledger.clone(),
        webhook,
        processors,
        usdc: usdc.clone(),
        approvals: approvals.clone(),
        // A report reads a whole range: it gets a bound of its own, not a decision-path read's.
        reports: reports::Reports::new(
            db.clone().with_timeout(Duration::from_millis(config.report_timeout_ms)),
            ledger.clone(),
        ),
        audit,
        outbox,
        mcp: mcp::endpoint(admin.clone(), usdc.clone(), approvals.clone()),
    });
    let mut server = HttpServer::new(move || {
        App::new().app_data(state.clone()).wrap(from_fn(http::observe)).configure(http::routes)
    })
    .listen(listener)?;
    server = server.workers(http_workers(config.workers));
    Ok(Started { addr, admin, first_key, ledger, usdc, server: server.run() })
}

/// The key that signs audit checkpoints, if one is set.
fn checkpoint_signer(config: &Config) -> anyhow::Result<Option<CheckpointSigner>> {
    config
        .audit_signing_key
        .as_ref()
        .map(|key| {
            CheckpointSigner::from_hex(key.expose()).ok_or_else(|| {
                anyhow::anyhow!("SPENDGATE_AUDIT_SIGNING_KEY must be a secp256k1 private key, 64 hex digits")
            })
        })
        .transpose()
}

/// HTTP worker threads: as configured, or one per core less one (at least one), the core left for
/// the ledger's writer and, on SQLite, its syncing threads. Measured at 5,000 authorizations/s on
/// two cores: one worker instead of two took 4% less CPU per decision and 15% off its p50, the
/// workers no longer preempting the writer.
fn http_workers(configured: usize) -> usize {
    match configured {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1).max(1)),
        n => n,
    }
}

/// The processors' credentials; each endpoint whose credentials are not set says so once.
fn processors(config: &Config) -> anyhow::Result<http::processors::Processors> {
    let lithic =
        StandardWebhooks::new(config.lithic_webhook_secret.as_ref(), config.lithic_webhook_secret_previous.as_ref())
            .map_err(|e| anyhow::anyhow!("SPENDGATE_LITHIC_WEBHOOK_SECRET {e}"))?;
    let p = http::processors::Processors {
        stripe: HexSignature::new(
            config.stripe_webhook_secret.as_ref(),
            config.stripe_webhook_secret_previous.as_ref(),
        ),
        lithic,
        lithic_deadline: Duration::from_millis(config.lithic_deadline_ms),
        marqeta: BasicAuth::new(
            config.marqeta_username.as_ref(),
            config.marqeta_password.as_ref(),
            config.marqeta_password_previous.as_ref(),
        ),
    };
    if p.stripe.is_none() {
        tracing::info!("SPENDGATE_STRIPE_WEBHOOK_SECRET is not set: the Stripe endpoints answer 404");
    }
    if p.lithic.is_none() {
        tracing::info!("SPENDGATE_LITHIC_WEBHOOK_SECRET is not set: the Lithic endpoints answer 404");
    }
    if p.marqeta.is_none() {
        tracing::info!("SPENDGATE_MARQETA_USERNAME/PASSWORD are not set: the Marqeta JIT endpoint answers 404");
    }
    Ok(p)
}

/// Issuing at Stripe and Lithic, each on when its API key is set.
fn issuer(config: &Config) -> anyhow::Result<Issuer> {
    let stripe = config.stripe_api_key.clone().map(|api_key| StripeApi {
        api_key,
        base_url: config.stripe_api_url.clone(),
        cardholder: config.stripe_cardholder.clone().unwrap_or_default(),
    });
    let lithic =
        config.lithic_api_key.clone().map(|api_key| LithicApi { api_key, base_url: config.lithic_api_url.clone() });
    for (name, on) in [("Stripe", stripe.is_some()), ("Lithic", lithic.is_some())] {
        if on {
            tracing::info!("cards issued with processor {name} and no processor_card_id are created at {name}");
        }
    }
    let settings = IssuingSettings { stripe, lithic, timeout: Duration::from_millis(config.processor_timeout_ms) };
    Issuer::new(settings, fixtures::stripe_categories(), fixtures::catalog())
}

/// The USDC rail, on when a master key is set.
fn usdc(config: &Config, db: &Db, ledger: &Ledger) -> anyhow::Result<Usdc> {
    let master_key = match &config.master_key {
        Some(key) => {
            Some(MasterKey::from_base64(key.expose()).map_err(|e| anyhow::anyhow!("SPENDGATE_MASTER_KEY: {e}"))?)
        }
        None => {
            tracing::warn!(
                "SPENDGATE_MASTER_KEY is not set: the USDC rail is off (wallet and x402 endpoints answer 503 usdc_rail_disabled)"
            );
            None
        }
    };
    let settings = UsdcSettings {
        master_key,
        assets: parse_assets(&config.x402_assets).map_err(|e| anyhow::anyhow!("SPENDGATE_X402_ASSETS: {e}"))?,
        max_valid_seconds: config.x402_max_valid_seconds,
        timeout: Duration::from_millis(config.x402_timeout_ms),
        destinations: Destinations::parse(&config.x402_private_destinations)
            .map_err(|e| anyhow::anyhow!("SPENDGATE_X402_PRIVATE_DESTINATIONS: {e}"))?,
        max_response_bytes: config.x402_max_response_bytes,
        max_fetches: config.x402_max_fetches,
        max_fetches_per_agent: config.x402_max_fetches_per_agent,
        chain: chain_settings(config)?,
    };
    Usdc::new(settings, db.clone(), ledger.clone())
}

/// The networks whose wallets are read, when `SPENDGATE_CHAIN_RPC` names any.
fn chain_settings(config: &Config) -> anyhow::Result<Option<ChainSettings>> {
    let Some(spec) = &config.chain_rpc else { return Ok(None) };
    let rpc = parse_rpc(spec.expose()).map_err(|e| anyhow::anyhow!("SPENDGATE_CHAIN_RPC: {e}"))?;
    if rpc.is_empty() {
        return Ok(None);
    }
    for (network, url) in &rpc {
        tracing::info!(network, endpoint = %redact(url.as_str()), "wallets are read on the chain");
    }
    Ok(Some(ChainSettings {
        rpc,
        confirmations: config.chain_confirmations,
        poll: Duration::from_millis(config.chain_poll_ms),
        first_scan_blocks: config.chain_first_scan_blocks,
        blocks_per_query: config.chain_blocks_per_query,
        reconcile_every: Duration::from_secs(config.chain_reconcile_seconds),
        timeout: Duration::from_millis(config.chain_timeout_ms),
    }))
}

/// Approval links, Slack messages and Slack's buttons, each on when its setting is.
fn approvals(
    config: &Config,
    db: &Db,
    ledger: &Ledger,
    asked: Option<tokio::sync::mpsc::Receiver<String>>,
    approved: Option<tokio::sync::mpsc::Sender<String>>,
) -> anyhow::Result<Approvals> {
    if config.approval_secret.is_none() {
        tracing::info!("SPENDGATE_APPROVAL_SECRET is not set: approvals are decided through the API only");
    }
    if config.slack_webhook_url.is_none() {
        tracing::info!("SPENDGATE_SLACK_WEBHOOK_URL is not set: approval requests are not posted to Slack");
    }
    let settings = ApprovalSettings {
        public_url: config.public_url.clone(),
        links: config.approval_secret.as_ref().map(LinkSigner::new),
        slack_webhook_url: config.slack_webhook_url.clone(),
        slack_signature: config.slack_signing_secret.as_ref().map(SlackSignature::new),
        slack_timeout: Duration::from_millis(config.slack_timeout_ms),
        retry_base: Duration::from_millis(config.slack_retry_ms),
        max_attempts: 5,
        request_ttl: Duration::from_secs(config.approval_ttl_hours * 3_600),
    };
    Ok(Approvals::start(settings, db.clone(), ledger.clone(), asked, approved)?)
}

/// The hold expiry sweep and, when configured, the FX refresher.
fn spawn_background(config: &Config, ledger: &Ledger, rates: &ledger::Rates) {
    let url = |u: &String| Some(u.clone()).filter(|u| !u.is_empty());
    let sources = rates::Sources {
        ecb_url: url(&config.fx_url),
        extra_url: url(&config.fx_extra_url),
        every: Duration::from_secs(config.fx_refresh_minutes * 60),
    };
    let table = rates.read().unwrap_or_else(|e| e.into_inner()).clone();
    match &sources.ecb_url {
        Some(_) => tracing::info!(date = %table.date, "FX: the bundled ECB table until the first fetch"),
        None if config.fx_accept_bundled => {
            tracing::info!(date = %table.date, "FX: the bundled ECB table only (fx_url is empty), accepted however old")
        }
        None => tracing::warn!(date = %table.date,
            "FX: the bundled ECB table only (fx_url is empty); cross-currency authorizations decline stale_fx once it is older than fx_max_age_hours"),
    }
    if sources.ecb_url.is_some() || sources.extra_url.is_some() {
        actix_web::rt::spawn(rates::refresh_forever(sources, rates.clone()));
    }
    let ledger = ledger.clone();
    let max_age = jiff::SignedDuration::from_hours(config.hold_expiry_hours as i64);
    actix_web::rt::spawn(async move {
        loop {
            if let Err(e) = ledger.expire_holds(crate::clock::now() - max_age).await {
                tracing::warn!(error = %e, "hold expiry sweep failed; retrying in a minute");
            }
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
    });
}

/// The process-wide Prometheus recorder (installed once, shared by every server in the process).
fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5])
                .expect("static buckets are valid")
                .set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Full("spendgate_ledger_batch_size".into()),
                    &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0],
                )
                .expect("static buckets are valid")
                .build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder is installed, in which case ours just stays empty.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

#[cfg(test)]
mod tests {
    #[test]
    fn http_workers_leave_a_core_to_the_ledger_unless_configured() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(super::http_workers(0), (cores - 1).max(1));
        assert_eq!(super::http_workers(3), 3, "a configured count is kept");
    }
}
