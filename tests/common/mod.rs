//! Test helpers: the real server on a random port with a fresh database, SQLite or PostgreSQL.
#![allow(dead_code)]

pub mod chain;
pub mod node;
pub mod process;
pub mod python;
pub mod slack;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use spendgate::config::Config;
use spendgate::crypto::Secret;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Where the test's data lives; removed when the app is dropped.
pub enum Storage {
    Sqlite(tempfile::TempDir),
    Postgres { admin_url: String, schema: String },
}

impl Drop for Storage {
    fn drop(&mut self) {
        if let Storage::Postgres { admin_url, schema } = self
            && let Ok(mut conn) = PgConnection::establish(admin_url)
        {
            let _ = conn.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"));
        }
    }
}

pub struct TestApp {
    pub base: String,
    pub owner_key: String,
    pub database_url: String,
    pub http: reqwest::Client,
    storage: Storage,
    pub ledger: spendgate::ledger::Ledger,
}

/// The PostgreSQL URL for tests. The tests that need it are ignored without it (see build.rs); a
/// test that only adds a PostgreSQL step does it when this is Some. In CI (CI set) it must be there.
pub fn postgres_url() -> Option<String> {
    match std::env::var("SPENDGATE_TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var_os("CI").is_some() => {
            panic!("CI is set but SPENDGATE_TEST_DATABASE_URL is not: the PostgreSQL tests must run in CI")
        }
        _ => None,
    }
}

/// A fresh database of `backend`: a temporary SQLite file, or a new PostgreSQL schema.
pub fn fresh_storage(backend: Backend) -> (String, Storage) {
    match backend {
        Backend::Sqlite => {
            let dir = tempfile::tempdir().expect("temp dir");
            let url = format!("sqlite://{}", dir.path().join("nested/dir/spendgate.db").display());
            (url, Storage::Sqlite(dir))
        }
        Backend::Postgres => {
            let admin_url = postgres_url().expect("checked by the caller");
            let schema = format!("sg_test_{}", hex::encode(rand::random::<[u8; 8]>()));
            let mut conn = PgConnection::establish(&admin_url)
                .unwrap_or_else(|e| panic!("cannot reach the test PostgreSQL at {admin_url}: {e}"));
            conn.batch_execute(&format!("CREATE SCHEMA {schema}")).expect("create schema");
            let sep = if admin_url.contains('?') { '&' } else { '?' };
            let url = format!("{admin_url}{sep}options=-csearch_path%3D{schema}");
            (url, Storage::Postgres { admin_url, schema })
        }
    }
}

pub const WEBHOOK_SECRET: &str = "whsec_test_0123456789abcdef";
pub const STRIPE_SECRET: &str = "whsec_stripe_test_0123456789abcdef";
/// `whsec_` + base64 of 32 bytes, as Lithic hands it out.
pub const LITHIC_SECRET: &str = "whsec_c3BlbmRnYXRlLWxpdGhpYy10ZXN0LXNlY3JldC0zMiE=";
pub const MARQETA_USER: &str = "marqeta_gateway";
pub const MARQETA_PASSWORD: &str = "Jit-Gateway-Pass-0123456789!";
/// Seals the test agents' wallet keys: 32 bytes, base64.
pub const MASTER_KEY: &str = "c3BlbmRnYXRlLXRlc3QtbWFzdGVyLWtleS0zMi1ieXQ=";
/// A test token on Base Sepolia's chain id, paid like USDC (6 decimals) once configured.
pub const TEST_TOKEN: &str = "0x5FbDB2315678afecb367f032d93F642f64180aa3";

pub fn test_config(database_url: &str, owner_key: &str) -> Config {
    Config {
        listen: "127.0.0.1:0".into(),
        database_url: database_url.to_owned(),
        database_pool_size: 4,
        workers: 1,
        bootstrap_admin_key: Some(Secret::new(owner_key)),
        webhook_secret: Some(Secret::new(WEBHOOK_SECRET)),
        stripe_webhook_secret: Some(Secret::new(STRIPE_SECRET)),
        lithic_webhook_secret: Some(Secret::new(LITHIC_SECRET)),
        marqeta_username: Some(Secret::new(MARQETA_USER)),
        marqeta_password: Some(Secret::new(MARQETA_PASSWORD)),
        master_key: Some(Secret::new(MASTER_KEY)),
        // The test token's EIP-712 domain is the local x402 server's (MPP challenges name none).
        x402_assets: format!("eip155:84532={TEST_TOKEN}|Test USD|1"),
        x402_timeout_ms: 2_000,
        // The local x402 servers listen on loopback, which the fetch proxy otherwise refuses.
        x402_private_destinations: "127.0.0.1/32".into(),
        // No traffic beyond this machine: the bundled rates, unless a test serves its own.
        fx_url: String::new(),
        ..Config::default()
    }
}

pub async fn spawn(backend: Backend) -> TestApp {
    spawn_with(backend, |_| {}).await
}

/// A server on a fresh database, with `adjust` applied to its configuration.
pub async fn spawn_with(backend: Backend, adjust: impl FnOnce(&mut Config)) -> TestApp {
    let (database_url, storage) = fresh_storage(backend);
    let owner_key = format!("sgk_{}", hex::encode(rand::random::<[u8; 32]>()));
    let mut config = test_config(&database_url, &owner_key);
    adjust(&mut config);
    let started = spendgate::start(&config).await.expect("server starts");
    let base = format!("http://{}", started.addr);
    let ledger = started.ledger.clone();
    actix_web::rt::spawn(started.server);
    let app = TestApp { base, owner_key, database_url, http: http_client(), storage, ledger };
    back_treasuries(&app.http, &app.base, &app.owner_key).await;
    app
}

/// The currencies whose treasuries the test world backs, so that agents in them can be funded.
/// A test of the treasury itself uses another (CHF).
pub const BACKED: [&str; 4] = ["USD", "EUR", "GBP", "JPY"];

/// Records a large deposit behind each of the `BACKED` treasuries (idempotent).
pub async fn back_treasuries(http: &reqwest::Client, base: &str, owner_key: &str) {
    for currency in BACKED {
        let body = serde_json::json!({"id": "test-backing", "amount": 100_000_000_000_000_i64, "currency": currency});
        let response =
            http.post(format!("{base}/v1/treasury/deposits")).bearer_auth(owner_key).json(&body).send().await.unwrap();
        assert!(response.status().is_success(), "the test treasury: {}", response.text().await.unwrap());
    }
}

/// An HTTP client for the tests (TLS by ring, as in spendgate itself).
pub fn http_client() -> reqwest::Client {
    spendgate::install_tls();
    reqwest::Client::new()
}

/// `Spendgate-Signature` (v2) for `body` POSTed to `path`, made now with the test secret.
pub fn sign(path: &str, body: &[u8]) -> String {
    use spendgate::rails::card::signature::{HexSignature, Route};
    let keys = HexSignature::new(Some(&Secret::new(WEBHOOK_SECRET)), None).unwrap();
    keys.sign_route(Route { method: "POST", path }, body, jiff::Timestamp::now().as_second())
}

impl TestApp {
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request sent");
        let status = response.status();
        let text = response.text().await.expect("body");
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value)
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, Some(&self.owner_key), None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(&self.owner_key), Some(body)).await
    }

    pub async fn put(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::PUT, path, Some(&self.owner_key), Some(body)).await
    }

    pub async fn create_agent(&self, name: &str) -> String {
        let (status, agent) = self.post("/v1/agents", serde_json::json!({ "name": name })).await;
        assert_eq!(status, StatusCode::CREATED, "{agent}");
        agent["id"].as_str().expect("agent id").to_owned()
    }

    pub async fn issue_card(&self, agent: &str, body: Value) -> Value {
        let (status, card) = self.post(&format!("/v1/agents/{agent}/cards"), body).await;
        assert_eq!(status, StatusCode::CREATED, "{card}");
        card
    }

    pub async fn create_key(&self, role: &str, agent: Option<&str>) -> String {
        let (status, key) = self.post("/v1/keys", serde_json::json!({ "role": role, "agent_id": agent })).await;
        assert_eq!(status, StatusCode::CREATED, "{key}");
        key["key"].as_str().expect("secret").to_owned()
    }

    /// Another server on the same database, as a second node would be: its base URL.
    pub async fn another_node(&self) -> String {
        let started = spendgate::start(&test_config(&self.database_url, &self.owner_key)).await.expect("node starts");
        let base = format!("http://{}", started.addr);
        actix_web::rt::spawn(started.server);
        base
    }

    /// POSTs a signed native webhook body.
    pub async fn signed(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        let bytes = serde_json::to_vec(body).unwrap();
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .header("Spendgate-Signature", sign(path, &bytes))
            .header("Content-Type", "application/json")
            .body(bytes)
            .send()
            .await
            .expect("request sent");
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// A native authorization of `amount` USD cents at an OpenAI-like merchant.
    pub async fn authorize(&self, id: &str, card: &str, amount: i64) -> Value {
        let body = serde_json::json!({"id": id, "card_id": card, "amount": amount, "currency": "USD",
            "merchant": {"id": "m_openai", "name": "OPENAI *API", "mcc": "5734", "country": "US"}});
        let (status, decision) = self.signed("/v1/authorizations", &body).await;
        assert_eq!(status, StatusCode::OK, "{decision}");
        decision
    }

    pub async fn fund(&self, agent: &str, amount: i64) {
        let id = format!("fund-{}", hex::encode(rand::random::<[u8; 8]>()));
        let (status, t) = self
            .post(
                &format!("/v1/agents/{agent}/fund"),
                serde_json::json!({"id": id, "amount": amount, "currency": "USD"}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{t}");
    }

    pub async fn balance(&self, agent: &str) -> Value {
        let (status, b) = self.get(&format!("/v1/agents/{agent}/balance")).await;
        assert_eq!(status, StatusCode::OK, "{b}");
        b
    }

    /// Runs `sql` on the database from outside the server, as another process sharing it would.
    pub fn execute_elsewhere(&self, sql: &str) {
        match &self.storage {
            Storage::Sqlite(dir) => {
                let path = dir.path().join("nested/dir/spendgate.db");
                let mut conn = SqliteConnection::establish(path.to_str().unwrap()).expect("connect");
                conn.batch_execute(&format!("PRAGMA busy_timeout = 5000; {sql}")).expect("execute");
            }
            Storage::Postgres { .. } => {
                PgConnection::establish(&self.database_url).expect("connect").batch_execute(sql).expect("execute")
            }
        }
    }

    /// Every agent's audit chain verifies: whatever a test did, each record is linked as written.
    pub async fn assert_chains_whole(&self) {
        let (status, v) = self.post("/v1/audit/verify", serde_json::json!({})).await;
        assert_eq!(status, StatusCode::OK, "{v}");
        assert_eq!(v["verified"], true, "{v}");
    }

    /// The one value `sql` selects, as text, read from outside the server.
    pub fn text(&self, sql: &str) -> String {
        #[derive(QueryableByName)]
        struct One {
            #[diesel(sql_type = diesel::sql_types::Text)]
            value: String,
        }
        let query = diesel::sql_query(format!("SELECT CAST(({sql}) AS TEXT) AS value"));
        let one: One = match &self.storage {
            Storage::Sqlite(dir) => {
                let path = dir.path().join("nested/dir/spendgate.db");
                query.get_result(&mut SqliteConnection::establish(path.to_str().unwrap()).expect("connect"))
            }
            Storage::Postgres { .. } => {
                query.get_result(&mut PgConnection::establish(&self.database_url).expect("connect"))
            }
        }
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
        one.value
    }

    /// Every row of `sql`, which selects one text column named `value`, read from outside the server.
    pub fn column(&self, sql: &str) -> Vec<String> {
        #[derive(QueryableByName)]
        struct Row {
            #[diesel(sql_type = diesel::sql_types::Text)]
            value: String,
        }
        let query = diesel::sql_query(sql);
        let rows: Vec<Row> = match &self.storage {
            Storage::Sqlite(dir) => {
                let path = dir.path().join("nested/dir/spendgate.db");
                query.load(&mut SqliteConnection::establish(path.to_str().unwrap()).expect("connect"))
            }
            Storage::Postgres { .. } => query.load(&mut PgConnection::establish(&self.database_url).expect("connect")),
        }
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
        rows.into_iter().map(|r| r.value).collect()
    }

    /// The one number `sql` selects.
    pub fn scalar(&self, sql: &str) -> i64 {
        self.text(sql).parse().expect("a number")
    }

    /// Everything the database holds, as text: to prove what is *not* stored.
    pub fn stored_text(&self) -> String {
        match &self.storage {
            Storage::Sqlite(dir) => {
                let mut all = Vec::new();
                for name in ["spendgate.db", "spendgate.db-wal"] {
                    if let Ok(bytes) = std::fs::read(dir.path().join("nested/dir").join(name)) {
                        all.extend(bytes);
                    }
                }
                String::from_utf8_lossy(&all).into_owned()
            }
            Storage::Postgres { .. } => {
                #[derive(QueryableByName)]
                struct Row {
                    #[diesel(sql_type = diesel::sql_types::Text)]
                    row: String,
                }
                let mut conn = PgConnection::establish(&self.database_url).expect("connect");
                let mut out = String::new();
                for table in ["agents", "cards", "events", "api_keys", "wallets", "x402_payments"] {
                    let rows: Vec<Row> =
                        diesel::sql_query(format!("SELECT row_to_json(t)::text AS row FROM {table} t"))
                            .load(&mut conn)
                            .expect("dump");
                    rows.into_iter().for_each(|r| out.push_str(&r.row));
                }
                out
            }
        }
    }
}

/// Runs each listed test case against SQLite, and against PostgreSQL when it is configured; on a
/// server from `common::spawn`, or from the function named first (`spawn: my_spawn;`, as the test
/// file's root names it).
#[macro_export]
macro_rules! on_both_backends {
    (spawn: $spawn:path; $($case:ident),* $(,)?) => {
        $(
            mod $case {
                use super::*;
                use super::common::{postgres_url, Backend};

                #[actix_web::test]
                async fn sqlite() {
                    super::$case($spawn(Backend::Sqlite).await).await;
                }

                #[actix_web::test]
                #[cfg_attr(not(postgres_tests), ignore = "needs PostgreSQL: set SPENDGATE_TEST_DATABASE_URL")]
                async fn postgres() {
                    assert!(postgres_url().is_some(), "SPENDGATE_TEST_DATABASE_URL is not set");
                    super::$case($spawn(Backend::Postgres).await).await;
                }
            }
        )*
    };
    ($($case:ident),* $(,)?) => {
        on_both_backends!(spawn: common::spawn; $($case),*);
    };
}

/// Runs the futures concurrently on this task and returns their outputs in order.
pub async fn join_all<F: std::future::Future>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let mut set = Vec::new();
    for f in futures {
        set.push(Box::pin(f));
    }
    let mut outputs: Vec<Option<F::Output>> = set.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in set.iter_mut().enumerate() {
            if outputs[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => outputs[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending { std::task::Poll::Pending } else { std::task::Poll::Ready(()) }
    })
    .await;
    outputs.into_iter().map(|o| o.expect("ready")).collect()
}
