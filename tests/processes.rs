//! Invariants that need real processes: two servers sharing one PostgreSQL never exceed a limit
//! together, nodes started at once on it all come up, and a server killed with SIGKILL under load
//! loses no approval a client received.

mod common;
#[path = "common/x402_server.rs"]
mod x402_server;

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use common::process::{Server, serve};
use common::{Backend, MASTER_KEY, TEST_TOKEN, WEBHOOK_SECRET, fresh_storage, postgres_url, sign};
use serde_json::{Value, json};

const OWNER: &str = "sgk_process_test_owner_key_0123456789abcdef012345";

fn start(dir: &Path, database_url: &str) -> Server {
    serve(
        dir,
        &[],
        &[
            ("SPENDGATE_DATABASE_URL", database_url),
            ("SPENDGATE_BOOTSTRAP_ADMIN_KEY", OWNER),
            ("SPENDGATE_WEBHOOK_SECRET", WEBHOOK_SECRET),
        ],
    )
}

/// A server with the USDC rail on, paying with the local x402 server's test token.
fn start_usdc(dir: &Path, database_url: &str) -> Server {
    let assets = format!("eip155:84532={TEST_TOKEN}");
    serve(
        dir,
        &[],
        &[
            ("SPENDGATE_DATABASE_URL", database_url),
            ("SPENDGATE_BOOTSTRAP_ADMIN_KEY", OWNER),
            ("SPENDGATE_MASTER_KEY", MASTER_KEY),
            ("SPENDGATE_X402_ASSETS", &assets),
            // The local x402 server listens on loopback.
            ("SPENDGATE_X402_PRIVATE_DESTINATIONS", "127.0.0.1/32"),
        ],
    )
}

async fn admin(http: &reqwest::Client, base: &str, path: &str, body: Value) -> Value {
    let r = http.post(format!("{base}{path}")).bearer_auth(OWNER).json(&body).send().await.unwrap();
    assert!(r.status().is_success(), "{path}: {}", r.status());
    r.json().await.unwrap()
}

/// Every agent's audit chain verifies on the server at `base`.
async fn assert_chains_whole(http: &reqwest::Client, base: &str) {
    let v = admin(http, base, "/v1/audit/verify", json!({})).await;
    assert_eq!(v["verified"], true, "{v}");
}

async fn read(http: &reqwest::Client, base: &str, path: &str) -> Value {
    let r = http.get(format!("{base}{path}")).bearer_auth(OWNER).send().await.unwrap();
    assert!(r.status().is_success(), "{path}: {}", r.status());
    r.json().await.unwrap()
}

/// An agent funded with `fund` cents under `policy`, and one card. Returns (agent, card).
async fn setup(http: &reqwest::Client, base: &str, policy: Value, fund: i64) -> (String, String) {
    let agent = admin(http, base, "/v1/agents", json!({"name": "bot", "policy": policy})).await;
    let agent = agent["id"].as_str().unwrap().to_owned();
    let backing = json!({"id": format!("backing-{agent}"), "amount": fund, "currency": "USD"});
    admin(http, base, "/v1/treasury/deposits", backing).await;
    admin(http, base, &format!("/v1/agents/{agent}/fund"), json!({"id": "f", "amount": fund, "currency": "USD"})).await;
    let card = admin(http, base, &format!("/v1/agents/{agent}/cards"), json!({"label": "openai"})).await;
    (agent, card["id"].as_str().unwrap().to_owned())
}

async fn authorize(
    http: &reqwest::Client,
    base: &str,
    id: &str,
    card: &str,
    amount: i64,
) -> Result<Value, reqwest::Error> {
    let body = serde_json::to_vec(&json!({"id": id, "card_id": card, "amount": amount, "currency": "USD",
        "merchant": {"name": "OPENAI *API", "mcc": "5734"}}))
    .unwrap();
    let r = http
        .post(format!("{base}/v1/authorizations"))
        .header("Spendgate-Signature", sign("/v1/authorizations", &body))
        .body(body)
        .send()
        .await?;
    r.json().await
}

#[actix_web::test]
#[cfg_attr(not(postgres_tests), ignore = "needs PostgreSQL: set SPENDGATE_TEST_DATABASE_URL")]
async fn two_processes_sharing_postgresql_never_exceed_a_limit() {
    assert!(postgres_url().is_some(), "SPENDGATE_TEST_DATABASE_URL is not set");
    let (url, _storage) = fresh_storage(Backend::Postgres);
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (start(dir.path(), &url), start(dir.path(), &url));
    let http = common::http_client();
    let policy =
        json!({"limits": [{"id": "daily", "scope": "agent", "window": {"rolling": "24h"}, "amount": 250_000}]});
    // The cap falls half-way through, so that both processes approve some before either declines.
    let (agent, card) = setup(&http, &a.base, policy, 1_000_000).await;
    // One approval through each first, so that neither starts the burst cold (its caches, pool and
    // book still to load) and the other takes the whole cap before it decides anything.
    for (base, id) in [(&a.base, "warm-a"), (&b.base, "warm-b")] {
        let warm = authorize(&http, base, id, &card, 1_000).await.unwrap();
        assert_eq!(warm["approved"], true, "{warm}");
    }

    let bases = Arc::new([a.base.clone(), b.base.clone()]);
    let mut tasks = Vec::new();
    for i in 0..500 {
        let (http, bases, card) = (http.clone(), bases.clone(), card.clone());
        tasks.push(actix_web::rt::spawn(async move {
            authorize(&http, &bases[i % 2], &format!("two-{i}"), &card, 1_000).await.unwrap()
        }));
    }
    let mut approved_by = [0, 0];
    for (i, t) in tasks.into_iter().enumerate() {
        if t.await.unwrap()["approved"] == true {
            approved_by[i % 2] += 1;
        }
    }
    assert_eq!(approved_by[0] + approved_by[1], 248, "approved per process: {approved_by:?}");
    assert!(approved_by[0] > 0 && approved_by[1] > 0, "both processes decided: {approved_by:?}");
    let balance: Value = read(&http, &b.base, &format!("/v1/agents/{agent}/balance")).await;
    assert_eq!(balance["held"], 250_000, "{balance}");
    // Both processes appended to the agent's one chain, each under the row lock: one whole chain.
    assert_chains_whole(&http, &a.base).await;
}

/// 500 authorizations at once, spread over three children of one parent whose cap is $500 (and
/// over every process given): exactly $500 is approved in all, the rest declined by the parent's
/// limit or a child's own; then a freeze of the parent stops every child at its next decision.
async fn children_share_their_parents_cap(bases: &[String]) {
    let http = common::http_client();
    let base = &bases[0];
    admin(&http, base, "/v1/treasury/deposits", json!({"id": "backing", "amount": 1_000_000, "currency": "USD"})).await;
    let budget = json!({"limits": [{"id": "budget", "scope": "agent", "window": "lifetime", "amount": 50_000}]});
    let parent = admin(&http, base, "/v1/agents", json!({"name": "orchestrator", "policy": budget})).await;
    let parent = parent["id"].as_str().unwrap().to_owned();
    let mut cards = Vec::new();
    let mut children = Vec::new();
    for own in [None, None, Some(10_000)] {
        let policy = own.map_or(
            json!({}),
            |cap| json!({"limits": [{"id": "own", "scope": "agent", "window": "lifetime", "amount": cap}]}),
        );
        let child =
            admin(&http, base, "/v1/agents", json!({"name": "worker", "policy": policy, "parent_id": parent})).await;
        assert_eq!(child["parent_id"], parent.as_str(), "{child}");
        let child = child["id"].as_str().unwrap().to_owned();
        admin(
            &http,
            base,
            &format!("/v1/agents/{child}/fund"),
            json!({"id": "f", "amount": 100_000, "currency": "USD"}),
        )
        .await;
        let card = admin(&http, base, &format!("/v1/agents/{child}/cards"), json!({"label": "api"})).await;
        cards.push(card["id"].as_str().unwrap().to_owned());
        children.push(child);
    }
    // One decision through each process first, so that none starts the burst cold.
    let mut approved = 0;
    for (i, base) in bases.iter().enumerate() {
        let warm = authorize(&http, base, &format!("warm-{i}"), &cards[i % 3], 200).await.unwrap();
        assert_eq!(warm["approved"], true, "{warm}");
        approved += 200;
    }
    let (bases, cards) = (Arc::new(bases.to_vec()), Arc::new(cards));
    let mut tasks = Vec::new();
    for i in 0..500 {
        let (http, bases, cards) = (http.clone(), bases.clone(), cards.clone());
        tasks.push(actix_web::rt::spawn(async move {
            authorize(&http, &bases[i % bases.len()], &format!("sub-{i}"), &cards[i % 3], 200).await.unwrap()
        }));
    }
    let mut rules = HashSet::new();
    for t in tasks {
        let d = t.await.unwrap();
        if d["approved"] == true {
            approved += 200;
        } else {
            assert_eq!(d["reason"], "limit_exceeded", "{d}");
            rules.insert(d["rule"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(approved, 50_000, "exactly the parent's cap");
    assert!(rules.contains("parent.limit.budget"), "{rules:?}");
    let mut held = 0;
    for (i, child) in children.iter().enumerate() {
        let b = read(&http, &bases[0], &format!("/v1/agents/{child}/balance")).await;
        held += b["held"].as_i64().unwrap();
        if i == 2 {
            assert!(b["held"].as_i64().unwrap() <= 10_000, "a child's own limit still holds: {b}");
        }
    }
    assert_eq!(held, 50_000);

    // The parent is frozen: every child declines at its next decision, on every process.
    admin(&http, &bases[0], &format!("/v1/agents/{parent}/freeze"), json!({"reason": "stop the run"})).await;
    for (i, card) in cards.iter().enumerate() {
        let d = authorize(&http, &bases[i % bases.len()], &format!("after-{i}"), card, 1).await.unwrap();
        assert_eq!((d["reason"].as_str(), d["rule"].as_str()), (Some("agent_frozen"), Some("parent.status")), "{d}");
    }
    assert_chains_whole(&http, &bases[0]).await;
}

#[actix_web::test]
async fn children_share_their_parents_cap_on_sqlite() {
    let (url, _storage) = fresh_storage(Backend::Sqlite);
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &url);
    children_share_their_parents_cap(std::slice::from_ref(&server.base)).await;
}

#[actix_web::test]
#[cfg_attr(not(postgres_tests), ignore = "needs PostgreSQL: set SPENDGATE_TEST_DATABASE_URL")]
async fn children_share_their_parents_cap_across_two_processes_on_postgresql() {
    assert!(postgres_url().is_some(), "SPENDGATE_TEST_DATABASE_URL is not set");
    let (url, _storage) = fresh_storage(Backend::Postgres);
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (start(dir.path(), &url), start(dir.path(), &url));
    children_share_their_parents_cap(&[a.base.clone(), b.base.clone()]).await;
}

/// Nodes started together on a new PostgreSQL database each find no key: one makes the first
/// owner key from `SPENDGATE_BOOTSTRAP_ADMIN_KEY` and the others use it, none fails to start.
#[actix_web::test]
#[cfg_attr(not(postgres_tests), ignore = "needs PostgreSQL: set SPENDGATE_TEST_DATABASE_URL")]
async fn nodes_starting_at_once_on_postgresql_share_one_first_key() {
    assert!(postgres_url().is_some(), "SPENDGATE_TEST_DATABASE_URL is not set");
    let http = common::http_client();
    // Several fresh databases: the window between the check and the insert is narrow (without
    // the lock, about one database in twenty-five failed a node).
    for _ in 0..8 {
        let (url, _storage) = fresh_storage(Backend::Postgres);
        let dir = tempfile::tempdir().unwrap();
        // Migrated first, as a deployment's migration step does, so that the nodes meet at the key.
        let migrated = std::process::Command::new(common::process::BIN)
            .arg("migrate")
            .env_clear()
            .env("SPENDGATE_DATABASE_URL", &url)
            .output()
            .unwrap();
        assert!(migrated.status.success(), "{}", String::from_utf8_lossy(&migrated.stderr));
        let servers: Vec<Server> = std::thread::scope(|s| {
            let starting: Vec<_> = (0..3).map(|_| s.spawn(|| start(dir.path(), &url))).collect();
            starting.into_iter().map(|t| t.join().expect("every node starts")).collect()
        });
        for server in &servers {
            let keys = read(&http, &server.base, "/v1/keys").await;
            assert_eq!(keys["data"].as_array().unwrap().len(), 1, "{keys}");
        }
    }
}

/// A PostgreSQL connection closed between two batches (a restarted server, a proxy's idle
/// timeout) costs no decision: the pool tests a connection before the writer uses it.
#[actix_web::test]
#[cfg_attr(not(postgres_tests), ignore = "needs PostgreSQL: set SPENDGATE_TEST_DATABASE_URL")]
async fn a_closed_postgresql_connection_costs_no_decision() {
    use diesel::connection::SimpleConnection;
    use diesel::{Connection, PgConnection};

    let admin_url = postgres_url().expect("SPENDGATE_TEST_DATABASE_URL is not set");
    let (url, _storage) = fresh_storage(Backend::Postgres);
    let name = format!("sg_kept_{}", rand::random::<u32>());
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &format!("{url}&application_name={name}"));
    let http = common::http_client();
    let (agent, card) = setup(&http, &server.base, json!({}), 1_000_000).await;
    let first = authorize(&http, &server.base, "kept-1", &card, 1_000).await.unwrap();
    assert_eq!(first["approved"], true, "{first}");

    let mut admin = PgConnection::establish(&admin_url).unwrap();
    admin
        .batch_execute(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = '{name}'"
        ))
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));

    let second = authorize(&http, &server.base, "kept-2", &card, 1_000).await.unwrap();
    assert_eq!(second["approved"], true, "{second}");
    let balance = read(&http, &server.base, &format!("/v1/agents/{agent}/balance")).await;
    assert_eq!(balance["held"], 2_000, "{balance}");
}

async fn sigkill_under_load(backend: Backend) {
    let (url, _storage) = fresh_storage(backend);
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(dir.path(), &url);
    let http = common::http_client();
    let (agent, card) = setup(&http, &server.base, json!({}), 1_000_000_000).await;

    // 16 clients authorize as fast as they can; the server is killed once 200 approvals are in.
    let approvals = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut clients = Vec::new();
    for c in 0..16 {
        let (http, base, card, approvals) = (http.clone(), server.base.clone(), card.clone(), approvals.clone());
        clients.push(actix_web::rt::spawn(async move {
            for i in 0.. {
                match authorize(&http, &base, &format!("k-{c}-{i}"), &card, 100).await {
                    Ok(d) if d["approved"] == true => {
                        approvals.lock().unwrap().push(d["authorization_id"].as_str().unwrap().to_owned())
                    }
                    Ok(d) => panic!("unexpected decline {d}"),
                    Err(_) => return, // the server is gone
                }
            }
        }));
    }
    while approvals.lock().unwrap().len() < 200 {
        actix_web::rt::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    server.child.kill().unwrap(); // SIGKILL
    server.child.wait().unwrap();
    for c in clients {
        c.await.unwrap();
    }
    let seen: HashSet<String> = approvals.lock().unwrap().iter().cloned().collect();

    let again = start(dir.path(), &url);
    let mut stored = HashSet::new();
    let mut cursor = String::new();
    loop {
        let page: Value = read(&http, &again.base, &format!("/v1/agents/{agent}/ledger?limit=500{cursor}")).await;
        for e in page["data"].as_array().unwrap() {
            if e["type"] == "authorization" && e["status"] == "pending" {
                stored.insert(e["id"].as_str().unwrap().to_owned());
            }
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => break,
        }
    }
    let lost: Vec<&String> = seen.difference(&stored).collect();
    assert!(
        lost.is_empty(),
        "{} of {} approvals the clients saw are not holds after restart: {lost:?}",
        lost.len(),
        seen.len()
    );
    let balance: Value = read(&http, &again.base, &format!("/v1/agents/{agent}/balance")).await;
    assert_eq!(
        balance["held"].as_i64(),
        Some(100 * stored.len() as i64),
        "the balance agrees with the holds: {balance}"
    );

    // The restarted process's book, loaded from the rows, counts every hold made before the kill:
    // a limit with room for one more authorization lets exactly one through.
    let room = json!({"limits": [{"id": "daily", "scope": "agent", "window": {"rolling": "24h"},
        "amount": 100 * stored.len() as i64 + 100}]});
    let put = http
        .put(format!("{}/v1/agents/{agent}/policy", again.base))
        .bearer_auth(OWNER)
        .json(&room)
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success(), "policy: {}", put.status());
    let last = authorize(&http, &again.base, "after-restart-1", &card, 100).await.unwrap();
    assert_eq!(last["approved"], true, "{last}");
    let over = authorize(&http, &again.base, "after-restart-2", &card, 100).await.unwrap();
    assert_eq!((&over["approved"], &over["reason"]), (&json!(false), &json!("limit_exceeded")), "{over}");
    // Whatever the kill cut short was rolled back whole: every record kept is linked.
    assert_chains_whole(&http, &again.base).await;
}

#[actix_web::test]
async fn sigkill_under_load_loses_no_approval_on_sqlite() {
    sigkill_under_load(Backend::Sqlite).await;
}

#[actix_web::test]
async fn sigkill_under_load_loses_no_approval_on_postgresql() {
    if postgres_url().is_some() {
        sigkill_under_load(Backend::Postgres).await;
    }
}

/// A person approved a payment that waited, and the server died before paying it: the server
/// that comes up next pays it, once.
#[actix_web::test]
async fn an_approved_payment_left_by_a_killed_server_is_paid_after_restart() {
    let (url, _storage) = fresh_storage(Backend::Sqlite);
    let dir = tempfile::tempdir().unwrap();
    let mut server = start_usdc(dir.path(), &url);
    let http = common::http_client();
    let upstream = x402_server::X402Server::start(TEST_TOKEN).await;
    let policy = json!({"limits": [{"id": "usdc", "scope": "agent", "window": {"rolling": "24h"},
        "amount": 20, "rails": ["usdc"], "on_exceed": "ask"}]});
    let (agent, _) = setup(&http, &server.base, policy, 1_000).await;
    admin(&http, &server.base, &format!("/v1/agents/{agent}/wallet"), json!({})).await;
    let waiting = http
        .post(format!("{}/v1/agents/{agent}/x402/fetch", server.base))
        .bearer_auth(OWNER)
        .header("Idempotency-Key", "crash-1")
        .json(&json!({"url": upstream.url("/v2/paid")}))
        .send()
        .await
        .unwrap();
    assert_eq!(waiting.status(), reqwest::StatusCode::ACCEPTED);
    let waiting: Value = waiting.json().await.unwrap();
    let approval = waiting["approval_id"].as_str().unwrap().to_owned();

    server.child.kill().unwrap(); // SIGKILL
    server.child.wait().unwrap();
    // What the dead server had done: recorded the approval (two minutes ago) and paid nothing.
    let db = spendgate::store::Db::connect(&url, 1).unwrap();
    let now = jiff::Timestamp::now().as_millisecond();
    let id = approval.clone();
    let decided = db
        .write(move |conn| {
            spendgate::store::approvals::decide(conn, &id, "approved", "link", Some(now + 3_600_000), now - 120_000)
        })
        .await
        .unwrap();
    assert!(decided);
    drop(db);
    assert!(upstream.payment_headers().is_empty());

    let again = start_usdc(dir.path(), &url);
    let status_url = format!("{}{}", again.base, waiting["status_url"].as_str().unwrap());
    let mut answer = None;
    for _ in 0..200 {
        let r = http.get(&status_url).bearer_auth(OWNER).send().await.unwrap();
        if r.status() != reqwest::StatusCode::ACCEPTED {
            answer = Some((r.status(), r.json::<Value>().await.unwrap()));
            break;
        }
        actix_web::rt::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (status, body) = answer.expect("the restarted server pays the approved fetch");
    assert_eq!((status, body["data"].as_str()), (reqwest::StatusCode::OK, Some("paid content")), "{body}");
    assert_eq!(upstream.payment_headers().len(), 1, "paid once");
    let balance = read(&http, &again.base, &format!("/v1/agents/{agent}/balance")).await;
    assert_eq!(balance["spent"], 25, "{balance}");
}

/// Agents signing x402 payments as fast as they can, and the server killed with SIGKILL: after a
/// restart every payment a client was handed is stored with its hold, and no hold is without its
/// signed payment (the two are one commit), so nothing can be paid twice or without a hold.
#[actix_web::test]
async fn sigkill_while_signing_x402_payments_leaves_every_payment_with_its_hold() {
    let (url, _storage) = fresh_storage(Backend::Sqlite);
    let dir = tempfile::tempdir().unwrap();
    let mut server = start_usdc(dir.path(), &url);
    let http = common::http_client();
    // The agent hands in the requirements itself, so the policy must list their recipient.
    let policy = json!({"x402": {"pay_to": [format!("eip155:84532:{}", x402_server::PAY_TO)]}});
    let (agent, _) = setup(&http, &server.base, policy, 1_000_000_000).await;
    admin(&http, &server.base, &format!("/v1/agents/{agent}/wallet"), json!({})).await;
    let required = json!({"x402Version": 2, "resource": {"url": "https://api.example.com/x"},
        "accepts": [{"scheme": "exact", "network": "eip155:84532", "amount": "10000", "asset": TEST_TOKEN,
            "payTo": x402_server::PAY_TO, "maxTimeoutSeconds": 60,
            "extra": {"name": x402_server::TOKEN_NAME, "version": x402_server::TOKEN_VERSION}}]});
    let body = json!({"url": "https://api.example.com/x", "payment_required": required});

    let handed = Arc::new(std::sync::Mutex::new(Vec::<(String, String)>::new()));
    let mut clients = Vec::new();
    for c in 0..8 {
        let (http, base, agent, body, handed) =
            (http.clone(), server.base.clone(), agent.clone(), body.clone(), handed.clone());
        clients.push(actix_web::rt::spawn(async move {
            for i in 0.. {
                let sent = http
                    .post(format!("{base}/v1/agents/{agent}/x402/authorize"))
                    .bearer_auth(OWNER)
                    .header("Idempotency-Key", format!("k-{c}-{i}"))
                    .json(&body)
                    .send()
                    .await;
                let Ok(response) = sent else { return }; // the server is gone
                let Ok(answer) = response.json::<Value>().await else { return };
                let payment = &answer["payment"];
                assert!(payment["id"].is_string(), "{answer}");
                let id = payment["id"].as_str().unwrap().to_owned();
                handed.lock().unwrap().push((id, payment["authorization_id"].as_str().unwrap().to_owned()));
            }
        }));
    }
    while handed.lock().unwrap().len() < 100 {
        // A client that stopped while the server runs failed its assertion: say so, do not wait forever.
        if let Some(done) = clients.iter_mut().find(|c| c.is_finished()) {
            done.await.unwrap();
            panic!("a client stopped before the server was killed");
        }
        actix_web::rt::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    server.child.kill().unwrap(); // SIGKILL
    server.child.wait().unwrap();
    for c in clients {
        c.await.unwrap();
    }

    let again = start_usdc(dir.path(), &url);
    let handed = handed.lock().unwrap().clone();
    for (payment, hold) in &handed {
        let stored = read(&http, &again.base, &format!("/v1/agents/{agent}/x402/payments/{payment}")).await;
        assert_eq!(
            (stored["status"].as_str(), stored["authorization_id"].as_str()),
            (Some("signed"), Some(hold.as_str()))
        );
    }
    // Every hold on the wallet is a stored payment's, and the balance agrees with them.
    let mut holds = 0;
    let mut cursor = String::new();
    loop {
        let page = read(&http, &again.base, &format!("/v1/agents/{agent}/ledger?limit=500{cursor}")).await;
        for e in page["data"].as_array().unwrap() {
            if e["type"] == "authorization" && e["status"] == "pending" {
                holds += 1;
                assert!(e["x402"]["payment_id"].is_string(), "a hold without its payment: {e}");
            }
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => break,
        }
    }
    assert!(holds >= handed.len(), "{holds} holds, {} payments handed out", handed.len());
    let balance = read(&http, &again.base, &format!("/v1/agents/{agent}/balance")).await;
    assert_eq!(balance["held"].as_i64(), Some(holds as i64), "one cent held per payment: {balance}");
}
