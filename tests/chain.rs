//! Wallets read on a local chain (a hardhat node with a test USD token): deposits credited once
//! confirmed and once only, a re-orged deposit never, payments held to what the wallet holds on
//! the chain (an overdrawing one is never signed), and each wallet reconciled with the ledger. On
//! SQLite and PostgreSQL; deposits across a killed process and a rewound cursor, too.

mod common;
#[path = "common/x402_server.rs"]
mod x402_server;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::chain::{ChainRpc, LocalChain};
use common::process::{Server, serve};
use common::{Backend, MASTER_KEY, TEST_TOKEN, TestApp, fresh_storage, postgres_url, spawn_with};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use reqwest::StatusCode;
use serde_json::{Value, json};
use x402_server::X402Server;

/// Blocks on top of a deposit's before it is credited.
const CONFIRMATIONS: u64 = 2;

async fn spawn_on(chain: &LocalChain, backend: Backend) -> TestApp {
    let setting = chain.setting();
    spawn_with(backend, move |c| {
        c.chain_rpc = Some(spendgate::crypto::Secret::new(&setting));
        c.chain_confirmations = CONFIRMATIONS;
        c.chain_poll_ms = 100;
        c.chain_reconcile_seconds = 1;
    })
    .await
}

async fn wallet_of(app: &TestApp, agent: &str) -> String {
    let (status, wallet) = app.get(&format!("/v1/agents/{agent}/wallet")).await;
    assert_eq!(status, StatusCode::OK, "{wallet}");
    wallet["address"].as_str().unwrap().to_owned()
}

async fn funded(app: &TestApp, agent: &str) -> i64 {
    app.balance(agent).await["funded"].as_i64().unwrap()
}

/// Waits until `done` holds, failing the test after 20 seconds.
async fn until<F: std::future::Future<Output = bool>>(what: &str, mut done: impl FnMut() -> F) {
    let start = Instant::now();
    while !done().await {
        assert!(start.elapsed() < Duration::from_secs(20), "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Long enough for the watcher (every 100 ms) to have read the chain several times.
async fn a_few_polls() {
    tokio::time::sleep(Duration::from_millis(700)).await;
}

async fn reconciliation(app: &TestApp, agent: &str) -> Value {
    let (status, page) = app.get(&format!("/v1/wallets/reconciliation?agent_id={agent}")).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let wallets = page["data"].as_array().unwrap();
    assert_eq!(wallets.len(), 1, "one wallet, one token on the one network read: {page}");
    wallets[0].clone()
}

/// The agent calls the x402 server's `/v2/paid` at `price` through spendgate.
async fn fetch(app: &TestApp, server: &X402Server, agent: &str, key: &str, price: u64) -> (StatusCode, Value) {
    let url = server.url(&format!("/v2/paid?price={price}"));
    let r = app
        .http
        .post(format!("{}/v1/agents/{agent}/x402/fetch", app.base))
        .bearer_auth(&app.owner_key)
        .header("Idempotency-Key", key)
        .json(&json!({"url": url}))
        .send()
        .await
        .unwrap();
    let status = r.status();
    (status, r.json::<Value>().await.unwrap_or(Value::Null))
}

async fn deposits_are_credited_once_confirmed_and_a_reorged_one_never(backend: Backend) {
    let chain = LocalChain::start();
    let app = spawn_on(&chain, backend).await;
    let agent = app.create_agent("depositor").await;
    let wallet = wallet_of(&app, &agent).await;

    // 12.345678 tokens: 1234 cents credited, the 0.005678 of dust stays on the chain only.
    let tx = chain.mint(&wallet, 12_345_678).await;
    a_few_polls().await;
    assert_eq!(funded(&app, &agent).await, 0, "not credited before {CONFIRMATIONS} blocks are on top of it");
    chain.mine(CONFIRMATIONS).await;
    until("the deposit is credited", || async { funded(&app, &agent).await == 1_234 }).await;
    a_few_polls().await;
    assert_eq!(funded(&app, &agent).await, 1_234, "credited once, however often the watcher reads it");
    assert_eq!(app.scalar("SELECT COUNT(*) AS value FROM chain_deposits"), 1);
    let read_to = app.scalar("SELECT block_number AS value FROM chain_cursors WHERE network = 'eip155:84532'");
    assert!(read_to >= 2, "the cursor moved past the deposit: {read_to}");
    let value = app.text(&format!("SELECT value AS value FROM chain_deposits WHERE tx_hash = '{tx}'"));
    assert_eq!(value, "12345678");

    // The treasury received it and funded the agent with it: no money from nowhere.
    let (_, journal) = app.get("/v1/treasury/transfers?currency=USD").await;
    let from_chain: Vec<&Value> =
        journal["data"].as_array().unwrap().iter().filter(|t| t["actor"] == "chain").collect();
    let kinds: Vec<&str> = from_chain.iter().map(|t| t["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["deposit", "fund"], "{journal}");
    assert!(from_chain.iter().all(|t| t["amount"]["amount"] == 1_234), "{journal}");
    assert_eq!(from_chain[0]["reference"], json!(tx));

    // A deposit in a block the chain then drops (a re-org) is never credited: it had too few
    // blocks on top of it when it was seen.
    let before = chain.snapshot().await;
    chain.mint(&wallet, 5_000_000).await;
    chain.mine(CONFIRMATIONS - 1).await;
    a_few_polls().await;
    chain.revert(before).await;
    chain.mine(CONFIRMATIONS + 3).await;
    a_few_polls().await;
    assert_eq!(funded(&app, &agent).await, 1_234, "the dropped deposit was never credited");
    assert_eq!(app.scalar("SELECT COUNT(*) AS value FROM chain_deposits"), 1);

    // The wallet holds what the ledger says: deposits credited, nothing paid.
    let reconciled = reconciliation(&app, &agent).await;
    assert_eq!(reconciled["status"], "balanced", "{reconciled}");
    assert_eq!((reconciled["onchain"].as_str(), reconciled["ledger"].as_str()), (Some("12345678"), Some("12345678")));
    assert_eq!(reconciled["deposits"], 1);

    // A deposit seen but not yet confirmed explains what the chain holds beyond the ledger.
    chain.mint(&wallet, 1_000_000).await;
    let reconciled = reconciliation(&app, &agent).await;
    assert_eq!(reconciled["status"], "balanced", "{reconciled}");
    assert_eq!(reconciled["uncredited"], "1000000", "{reconciled}");
    assert_eq!(reconciled["explained_by"][0]["kind"], "uncredited_deposit", "{reconciled}");

    // A deactivated agent's deposits are credited all the same, and its drain takes them back to
    // the treasury: nothing stays spendable, nothing is lost.
    let (status, d) = app.post(&format!("/v1/agents/{agent}/deactivate"), json!({"reason": "project over"})).await;
    assert_eq!(status, StatusCode::OK, "{d}");
    chain.mint(&wallet, 2_000_000).await;
    chain.mine(CONFIRMATIONS).await;
    until("both deposits are credited", || async { app.scalar("SELECT COUNT(*) AS value FROM chain_deposits") == 3 })
        .await;
    until("and drained", || async { app.balance(&agent).await["available"] == 0 }).await;
    let drained = app.scalar("SELECT COALESCE(SUM(amount), 0) AS value FROM treasury_transfers WHERE kind = 'drain'");
    assert_eq!(drained, 1_234 + 100 + 200, "what it had, and both deposits, went back");
    app.assert_chains_whole().await;
}

async fn a_payment_beyond_what_the_wallet_holds_on_the_chain_is_never_signed(backend: Backend) {
    let chain = LocalChain::start();
    let app = spawn_on(&chain, backend).await;
    let server = X402Server::start(TEST_TOKEN).await;
    let rpc: ChainRpc = chain.rpc.clone();
    server.seen.lock().unwrap().settle_on_chain = Some(Arc::new(move |header| {
        let rpc = rpc.clone();
        Box::pin(async move { rpc.settle(&header).await })
    }));
    let agent = app.create_agent("payer").await;
    let wallet = wallet_of(&app, &agent).await;
    // $100 in the ledger from the treasury, but only $12 in the wallet on the chain.
    app.fund(&agent, 10_000).await;
    chain.mint(&wallet, 12_000_000).await;
    chain.mine(CONFIRMATIONS).await;
    until("the deposit is credited", || async { funded(&app, &agent).await == 11_200 }).await;

    // $20: the policy allows it, the chain does not hold it. Declined, recorded, nothing signed.
    let (status, body) = fetch(&app, &server, &agent, "overdraw", 20_000_000).await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED, "{body}");
    assert_eq!(body["error"]["code"], "insufficient_onchain_funds", "{body}");
    assert!(server.payment_headers().is_empty(), "no payment left spendgate");
    assert_eq!(app.scalar("SELECT COUNT(*) AS value FROM x402_payments"), 0, "no payment was signed");
    let declined = app.scalar(
        "SELECT COUNT(*) AS value FROM authorizations WHERE reason = 'insufficient_onchain_funds' \
         AND rule = 'wallet.onchain_balance'",
    );
    assert_eq!(declined, 1, "the decline is recorded with its rule");
    assert_eq!(app.balance(&agent).await["held"], 0, "no hold stays behind");

    // A payment signed and not settled (the agent holds the header and has not sent it) counts:
    // $7 of the $12 is spoken for, so $6 more is beyond what is left.
    let agent_key = app.create_key("agent", Some(&agent)).await;
    let policy = json!({"x402": {"pay_to": [format!("eip155:84532:{}", x402_server::PAY_TO)]}});
    let (status, set) = app.put(&format!("/v1/agents/{agent}/policy"), policy).await;
    assert_eq!(status, StatusCode::OK, "{set}");
    let url = server.url("/v2/paid?price=7000000");
    let unpaid = app.http.get(&url).send().await.unwrap();
    let required = unpaid.headers()["payment-required"].to_str().unwrap().to_owned();
    let signed = app
        .http
        .post(format!("{}/v1/agents/{agent}/x402/authorize", app.base))
        .bearer_auth(&agent_key)
        .header("Idempotency-Key", "held-back")
        .json(&json!({"url": url, "payment_required": required}))
        .send()
        .await
        .unwrap();
    assert_eq!(signed.status(), StatusCode::OK);
    let (status, body) = fetch(&app, &server, &agent, "beyond-in-flight", 6_000_000).await;
    assert_eq!(body["error"]["code"], "insufficient_onchain_funds", "{status} {body}");
    let reconciled = reconciliation(&app, &agent).await;
    assert_eq!(reconciled["status"], "balanced", "signed is not yet moved: {reconciled}");
    assert_eq!(reconciled["in_flight"], "7000000", "{reconciled}");
    assert_eq!(reconciled["explained_by"][0]["kind"], "payment_in_flight", "{reconciled}");

    // $4 fits what is left: signed, settled on the chain by the facilitator, and then the wallet
    // holds exactly what the ledger says ($12 in, $4 out), the $7 still in flight.
    let (status, body) = fetch(&app, &server, &agent, "fits", 4_000_000).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(chain.balance(&wallet).await, alloy_primitives::U256::from(8_000_000u64));
    let reconciled = reconciliation(&app, &agent).await;
    assert_eq!(reconciled["status"], "balanced", "{reconciled}");
    assert_eq!((reconciled["onchain"].as_str(), reconciled["ledger"].as_str()), (Some("8000000"), Some("8000000")));

    // Money leaving the wallet behind spendgate's back, beyond what the payment in flight could
    // have taken, is a mismatch, raised as an alert.
    chain.transfer_as(&wallet, "0x000000000000000000000000000000000000dEaD", 8_000_000).await;
    let reconciled = reconciliation(&app, &agent).await;
    assert_eq!(reconciled["status"], "mismatch", "{reconciled}");
    assert_eq!(reconciled["difference"], "-8000000", "{reconciled}");
    until("the mismatch is raised", || async {
        let (_, events) = app.get(&format!("/v1/agents/{agent}/events")).await;
        events["data"].as_array().unwrap().iter().any(|e| e["kind"] == "wallet_mismatch")
    })
    .await;
    a_few_polls().await;
    a_few_polls().await;
    let raised = app.scalar("SELECT COUNT(*) AS value FROM events WHERE kind = 'wallet_mismatch'");
    assert_eq!(raised, 1, "raised once an hour, not at every reconciliation");

    // An agent key reads its own wallet's reconciliation, and neither the list nor another's.
    let own = format!("/v1/wallets/reconciliation?agent_id={agent}");
    let (status, _) = app.call(reqwest::Method::GET, &own, Some(&agent_key), None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = app.call(reqwest::Method::GET, "/v1/wallets/reconciliation", Some(&agent_key), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let other = app.create_agent("other").await;
    let theirs = format!("/v1/wallets/reconciliation?agent_id={other}");
    let (status, _) = app.call(reqwest::Method::GET, &theirs, Some(&agent_key), None).await;
    assert!(matches!(status, StatusCode::FORBIDDEN | StatusCode::NOT_FOUND), "{status}");

    // The chain out of reach: a payment is refused with nothing signed (fail closed).
    let signed_before = app.scalar("SELECT COUNT(*) AS value FROM x402_payments");
    drop(chain);
    let (status, body) = fetch(&app, &server, &agent, "unreachable", 1_000_000).await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::SERVICE_UNAVAILABLE, Some("chain_unavailable")));
    assert_eq!(app.scalar("SELECT COUNT(*) AS value FROM x402_payments"), signed_before, "nothing was signed");
    let (_, reconciled) = app.get(&own).await;
    assert_eq!(reconciled["data"][0]["status"], "unread", "{reconciled}");
    app.assert_chains_whole().await;
}

async fn a_reorg_deeper_than_the_confirmations_is_read_again_and_shows_as_a_mismatch(backend: Backend) {
    let chain = LocalChain::start();
    let app = spawn_on(&chain, backend).await;
    let agent = app.create_agent("depositor").await;
    let wallet = wallet_of(&app, &agent).await;
    let before = chain.snapshot().await;
    chain.mint(&wallet, 3_000_000).await;
    chain.mine(CONFIRMATIONS).await;
    until("the first deposit is credited", || async { funded(&app, &agent).await == 300 }).await;

    // The chain drops the credited deposit's block and puts another deposit at its height.
    chain.revert(before).await;
    chain.mint(&wallet, 4_000_000).await;
    chain.mine(CONFIRMATIONS + 1).await;
    until("the new fork's deposit is credited", || async { funded(&app, &agent).await == 700 }).await;
    assert_eq!(app.scalar("SELECT COUNT(*) AS value FROM chain_deposits"), 2);
    let reconciled = reconciliation(&app, &agent).await;
    assert_eq!(reconciled["status"], "mismatch", "{reconciled}");
    assert_eq!(
        (reconciled["onchain"].as_str(), reconciled["ledger"].as_str(), reconciled["difference"].as_str()),
        (Some("4000000"), Some("7000000"), Some("-3000000")),
        "the vanished deposit is what the chain lacks: {reconciled}"
    );
}

on_both_backends!(
    spawn: noop;
    deposits_are_credited_once_confirmed_and_a_reorged_one_never,
    a_reorg_deeper_than_the_confirmations_is_read_again_and_shows_as_a_mismatch,
    a_payment_beyond_what_the_wallet_holds_on_the_chain_is_never_signed,
);

/// The cases take the backend and start their own chain first.
async fn noop(backend: Backend) -> Backend {
    backend
}

/// A server process reading the chain, on `database_url`.
fn start(dir: &std::path::Path, database_url: &str, chain: &LocalChain) -> Server {
    serve(
        dir,
        &[],
        &[
            ("SPENDGATE_DATABASE_URL", database_url),
            ("SPENDGATE_BOOTSTRAP_ADMIN_KEY", OWNER),
            ("SPENDGATE_MASTER_KEY", MASTER_KEY),
            ("SPENDGATE_X402_ASSETS", &format!("eip155:84532={TEST_TOKEN}|Test USD|1")),
            ("SPENDGATE_CHAIN_RPC", &chain.setting()),
            ("SPENDGATE_CHAIN_CONFIRMATIONS", "2"),
            ("SPENDGATE_CHAIN_POLL_MS", "100"),
        ],
    )
}

const OWNER: &str = "sgk_owner_chain_test_0123456789abcdef0123456789";

fn execute(database_url: &str, sql: &str) {
    match database_url.strip_prefix("sqlite://") {
        Some(path) => SqliteConnection::establish(path).unwrap().batch_execute(sql).unwrap(),
        None => PgConnection::establish(database_url).unwrap().batch_execute(sql).unwrap(),
    }
}

#[derive(QueryableByName)]
struct Number {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    value: i64,
}

fn scalar(database_url: &str, sql: &str) -> i64 {
    let query = diesel::sql_query(sql);
    match database_url.strip_prefix("sqlite://") {
        Some(path) => query.get_result::<Number>(&mut SqliteConnection::establish(path).unwrap()).unwrap().value,
        None => query.get_result::<Number>(&mut PgConnection::establish(database_url).unwrap()).unwrap().value,
    }
}

async fn call(http: &reqwest::Client, base: &str, path: &str, body: Option<Value>) -> Value {
    let request = match body {
        Some(body) => http.post(format!("{base}{path}")).json(&body),
        None => http.get(format!("{base}{path}")),
    };
    let r = request.bearer_auth(OWNER).send().await.unwrap();
    assert!(r.status().is_success(), "{path}: {}", r.status());
    r.json().await.unwrap()
}

/// Thirty deposits; the server is killed (SIGKILL) as soon as it has credited the first, started
/// again, and later started once more with its cursor rewound to the chain's start: each deposit is
/// credited exactly once.
async fn deposits_are_credited_once_across_a_kill_and_a_rewound_cursor(backend: Backend) {
    let chain = LocalChain::start();
    let (url, _storage) = fresh_storage(backend);
    let dir = tempfile::tempdir().unwrap();
    let http = common::http_client();
    let mut server = start(dir.path(), &url, &chain);
    let agent = call(&http, &server.base, "/v1/agents", Some(json!({"name": "depositor"}))).await;
    let agent = agent["id"].as_str().unwrap().to_owned();
    let wallet = call(&http, &server.base, &format!("/v1/agents/{agent}/wallet"), None).await;
    let wallet = wallet["address"].as_str().unwrap().to_owned();
    server.child.kill().unwrap();
    server.child.wait().unwrap();

    for _ in 0..30 {
        chain.mint(&wallet, 1_000_000).await;
    }
    chain.mine(CONFIRMATIONS).await;
    server = start(dir.path(), &url, &chain);
    let credited = |base: String| {
        let http = http.clone();
        let agent = agent.clone();
        async move { call(&http, &base, &format!("/v1/agents/{agent}/balance"), None).await["funded"].as_i64() }
    };
    until("a first deposit is credited", || async { credited(server.base.clone()).await > Some(0) }).await;
    server.child.kill().unwrap();
    server.child.wait().unwrap();

    server = start(dir.path(), &url, &chain);
    until("every deposit is credited", || async { credited(server.base.clone()).await == Some(3_000) }).await;
    server.child.kill().unwrap();
    server.child.wait().unwrap();

    // As if every move of the cursor was lost: the whole chain is read again.
    let genesis = chain.call("eth_getBlockByNumber", json!(["0x0", false])).await.unwrap();
    let genesis = genesis["hash"].as_str().unwrap();
    execute(&url, &format!("UPDATE chain_cursors SET block_number = 0, block_hash = '{genesis}'"));
    server = start(dir.path(), &url, &chain);
    let confirmed = (chain.head().await - CONFIRMATIONS) as i64;
    until("the chain is read again", || async {
        scalar(&url, "SELECT COALESCE(MAX(block_number), -1) AS value FROM chain_cursors") >= confirmed
    })
    .await;
    assert_eq!(credited(server.base.clone()).await, Some(3_000), "each deposit credited exactly once");
    let treasury = call(&http, &server.base, "/v1/treasury/transfers?currency=USD&limit=500", None).await;
    let deposits = treasury["data"].as_array().unwrap().iter().filter(|t| t["kind"] == "deposit").count();
    assert_eq!(deposits, 30, "one treasury deposit per chain deposit");
    let verified = call(&http, &server.base, "/v1/audit/verify", Some(json!({}))).await;
    assert_eq!(verified["verified"], true, "{verified}");
    let reconciled = call(&http, &server.base, "/v1/wallets/reconciliation", None).await;
    assert_eq!(reconciled["data"][0]["status"], "balanced", "{reconciled}");
}

#[actix_web::test]
async fn deposits_across_a_kill_on_sqlite() {
    deposits_are_credited_once_across_a_kill_and_a_rewound_cursor(Backend::Sqlite).await;
}

#[actix_web::test]
#[cfg_attr(not(postgres_tests), ignore = "needs PostgreSQL: set SPENDGATE_TEST_DATABASE_URL")]
async fn deposits_across_a_kill_on_postgresql() {
    assert!(postgres_url().is_some(), "SPENDGATE_TEST_DATABASE_URL is not set");
    deposits_are_credited_once_across_a_kill_and_a_rewound_cursor(Backend::Postgres).await;
}
