//! spendgate: virtual cards and spending rules for AI agents.
//!
//! Layers, each depending only on those below it:
//! `http` (actix-web) → `admin` (operations) → `store` (diesel) → `domain` (plain types and rules).

pub mod admin;
pub mod cli;
pub mod config;
pub mod demo;
pub mod domain;
pub mod error;
pub mod fixtures;
pub mod policy;
pub mod http;
pub mod store;

use std::net::SocketAddr;
use std::sync::OnceLock;

use actix_web::middleware::from_fn;
use actix_web::{App, HttpServer, web};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::admin::Admin;
use crate::admin::keys::FirstKey;
use crate::config::Config;
use crate::store::Db;

/// A server that is listening; await `server` to run it until shutdown.
pub struct Started {
    pub addr: SocketAddr,
    pub admin: Admin,
    pub first_key: FirstKey,
    pub server: actix_web::dev::Server,
}

/// Opens and migrates the database, makes the first key if none exists, and binds the listener.
pub async fn start(config: &Config) -> anyhow::Result<Started> {
    let catalog = fixtures::catalog();
    let db = Db::connect(&config.database_url, config.database_pool_size)?;
    db.migrate().await?;
    let admin = Admin::new(db.clone(), catalog, config.simulator_bin.clone());
    let first_key = admin.ensure_first_key(config.bootstrap_admin_key.as_ref().map(|k| k.expose())).await?;

    let listener = std::net::TcpListener::bind(&config.listen)
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
    let addr = listener.local_addr()?;
    let state = web::Data::new(http::AppState { admin: admin.clone(), db, metrics: metrics_handle() });
    let mut server = HttpServer::new(move || {
        App::new().app_data(state.clone()).wrap(from_fn(http::observe)).configure(http::routes)
    })
    .listen(listener)?;
    if config.workers > 0 {
        server = server.workers(config.workers);
    }
    Ok(Started { addr, admin, first_key, server: server.run() })
}

/// The process-wide Prometheus recorder (installed once, shared by every server in the process).
fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5])
                .expect("static buckets are valid")
                .build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder is installed, in which case ours just stays empty.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}
