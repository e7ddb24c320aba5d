//! The ledger export and spend reports, through the API: what they hold, who may read them, bad
//! input, a real CSV reader, and an export of a million lines in flat memory.

mod common;

use std::collections::HashMap;

use common::{Backend, TestApp};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use reqwest::StatusCode;
use serde_json::{Value, json};
use spendgate::reports::export::HEADER;

/// An agent with cards and a history: for agent `eng` (department eng), PR-4823 spent 12.50 at
/// openai, refunded 2.50, and holds 5.00 at github; PR-9 spent 3.00 at openai. Agent `research`
/// tried 200.00 at openai for PR-77 and was declined. Returns (eng agent, research agent).
async fn history(app: &TestApp) -> (String, String) {
    let agent_with = |name: &'static str| async move {
        let (status, agent) = app.post("/v1/agents", json!({"name": name, "department": name})).await;
        assert_eq!(status, StatusCode::CREATED, "{agent}");
        agent["id"].as_str().unwrap().to_owned()
    };
    let eng = agent_with("eng").await;
    let research = agent_with("research").await;
    let openai = app.issue_card(&eng, json!({"label": "openai"})).await["id"].as_str().unwrap().to_owned();
    let github = app.issue_card(&eng, json!({"label": "github"})).await["id"].as_str().unwrap().to_owned();
    let r_openai = app.issue_card(&research, json!({"label": "openai"})).await["id"].as_str().unwrap().to_owned();
    app.fund(&eng, 10_000).await;
    app.fund(&research, 10_000).await;
    let authorize = |id: &'static str, card: String, amount: i64, trace: &'static str| async move {
        let body = json!({"id": id, "card_id": card, "amount": amount, "currency": "USD", "trace_id": trace,
            "merchant": {"id": "m_1", "name": "OPENAI *API", "mcc": "5734", "country": "US"}});
        let (status, decision) = app.signed("/v1/authorizations", &body).await;
        assert_eq!(status, StatusCode::OK, "{decision}");
        decision
    };
    let first = authorize("a-1", openai.clone(), 12_50, "PR-4823").await;
    let first = first["authorization_id"].as_str().unwrap().to_owned();
    let (s, _) = app
        .signed(
            &format!("/v1/authorizations/{first}/capture"),
            &json!({"id": "c-1", "amount": 12_50, "currency": "USD"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = app.signed(&format!("/v1/authorizations/{first}/refund"), &json!({"id": "r-1", "amount": 2_50})).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(authorize("a-2", github, 5_00, "PR-4823").await["approved"], true);
    let third = authorize("a-3", openai, 3_00, "PR-9").await;
    let third = third["authorization_id"].as_str().unwrap().to_owned();
    let (s, _) = app
        .signed(
            &format!("/v1/authorizations/{third}/capture"),
            &json!({"id": "c-3", "amount": 3_00, "currency": "USD"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let declined = authorize("a-4", r_openai, 20_000, "PR-77").await;
    assert_eq!(declined["approved"], false, "{declined}");
    (eng, research)
}

/// GETs `path` with `key`: the status, the content type and the body as text.
async fn fetch(app: &TestApp, path: &str, key: &str) -> (StatusCode, String, String) {
    let response = app.http.get(format!("{}{path}", app.base)).bearer_auth(key).send().await.unwrap();
    let status = response.status();
    let kind = response.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    (status, kind, response.text().await.unwrap())
}

async fn count(app: &TestApp, query: &str) -> usize {
    let (status, _, csv) = fetch(app, &format!("/v1/ledger/export?{query}"), &app.owner_key).await;
    assert_eq!(status, StatusCode::OK, "{query}: {csv}");
    records(&csv).len()
}

/// The CSV's records as maps of column to value, read by a CSV reader (header checked).
fn records(csv: &str) -> Vec<HashMap<String, String>> {
    let mut reader = csv::Reader::from_reader(csv.as_bytes());
    let header: Vec<String> = reader.headers().unwrap().iter().map(str::to_owned).collect();
    assert_eq!(header, HEADER, "the documented columns, in order");
    reader.records().map(|r| header.iter().cloned().zip(r.unwrap().iter().map(str::to_owned)).collect()).collect()
}

async fn every_line_is_in_the_export_in_time_order_with_its_context(app: TestApp) {
    let (eng, research) = history(&app).await;
    let (status, kind, csv) = fetch(&app, "/v1/ledger/export", &app.owner_key).await;
    assert_eq!(status, StatusCode::OK, "{csv}");
    assert_eq!(kind, "text/csv; charset=utf-8");
    let rows = records(&csv);
    let kinds: Vec<(&str, &str)> = rows.iter().map(|r| (r["kind"].as_str(), r["status"].as_str())).collect();
    assert_eq!(
        kinds,
        [
            ("fund", ""),
            ("fund", ""),
            ("authorization", "posted"),
            ("post", "posted"),
            ("refund", "posted"),
            ("authorization", "pending"),
            ("authorization", "posted"),
            ("post", "posted"),
            ("authorization", "declined"),
        ]
    );
    let times: Vec<&str> = rows.iter().map(|r| r["time"].as_str()).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "oldest first: {times:?}");
    assert!(times.iter().all(|t| t.parse::<jiff::Timestamp>().is_ok() && t.ends_with('Z')), "RFC 3339 UTC: {times:?}");
    let refund = &rows[4];
    assert_eq!((refund["amount_minor"].as_str(), refund["amount"].as_str()), ("250", "2.50"));
    assert_eq!((refund["agent_id"].as_str(), refund["department"].as_str()), (eng.as_str(), "eng"));
    assert_eq!((refund["service"].as_str(), refund["trace_id"].as_str()), ("openai", "PR-4823"));
    assert_eq!((refund["merchant_name"].as_str(), refund["mcc"].as_str()), ("OPENAI *API", "5734"));
    assert_eq!((refund["processor"].as_str(), refund["processor_id"].as_str()), ("native", "r-1"));
    let declined = &rows[8];
    assert_eq!((declined["agent_id"].as_str(), declined["service"].as_str()), (research.as_str(), "openai"));
    assert_eq!(declined["decline_reason"], "insufficient_funds");
    assert_eq!((declined["amount"].as_str(), declined["currency"].as_str()), ("200.00", "USD"));
    assert_eq!((declined["processor_id"].as_str(), declined["rail"].as_str()), ("a-4", "card"));

    // JSON Lines, one trace: its authorizations and their transfers, no funding.
    let (status, kind, jsonl) = fetch(&app, "/v1/ledger/export?format=jsonl&trace=PR-4823", &app.owner_key).await;
    assert_eq!((status, kind.as_str()), (StatusCode::OK, "application/x-ndjson"));
    let lines: Vec<Value> = jsonl.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let kinds: Vec<&str> = lines.iter().map(|l| l["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["authorization", "post", "refund", "authorization"]);
    assert!(lines.iter().all(|l| l["trace_id"] == "PR-4823" && l["amount_minor"].is_i64()));

    // Each filter narrows.
    assert_eq!(count(&app, "department=research").await, 2, "funding and the decline");
    assert_eq!(count(&app, "service=github").await, 1);
    assert_eq!(count(&app, "status=declined").await, 1);
    assert_eq!(count(&app, "rail=usdc").await, 0);
    assert_eq!(count(&app, "merchant=OPENAI%20*API&status=posted").await, 5);
    assert_eq!(count(&app, "to=2000-01-01T00:00:00Z").await, 0);
    assert_eq!(count(&app, &format!("agent={eng}")).await, 7);
}

async fn the_spend_report_answers_per_trace_and_service(app: TestApp) {
    history(&app).await;
    let (status, report) = app.get("/v1/reports/spend?group_by=trace,service").await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["currency"], "USD");
    let rows: Vec<(Value, Value, i64, i64, i64, i64, i64)> = report["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            let t = &g["totals"];
            let n = |k: &str| t[k].as_i64().unwrap();
            (
                g["group"]["trace"].clone(),
                g["group"]["service"].clone(),
                n("posted"),
                n("held"),
                n("refunded"),
                n("spend"),
                n("declined"),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            (json!("PR-4823"), json!("openai"), 12_50, 0, 2_50, 10_00, 0),
            (json!("PR-4823"), json!("github"), 0, 5_00, 0, 5_00, 0),
            (json!("PR-9"), json!("openai"), 3_00, 0, 0, 3_00, 0),
            (json!("PR-77"), json!("openai"), 0, 0, 0, 0, 1),
        ]
    );
    assert_eq!(report["total"]["spend"], 18_00);
    assert_eq!(report["total"]["declined_amount"], 20_000);

    // The top trace, and the rest as one "other" group.
    let (_, top) = app.get("/v1/reports/spend?group_by=trace,service&top=1").await;
    let groups = top["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 3);
    let other = &groups[2];
    assert_eq!((other["other"].as_bool(), other["group"]["trace"].clone()), (Some(true), Value::Null));
    assert_eq!((other["totals"]["spend"].as_i64(), other["totals"]["declined"].as_i64()), (Some(3_00), Some(1)));

    // A series: one day, in a time zone, by department.
    let (status, series) = app.get("/v1/reports/spend?group_by=day,department&time_zone=Asia/Tokyo").await;
    assert_eq!(status, StatusCode::OK, "{series}");
    let today = jiff::Timestamp::now().to_zoned(jiff::tz::TimeZone::get("Asia/Tokyo").unwrap()).date().to_string();
    let groups = series["groups"].as_array().unwrap();
    assert!(groups.iter().all(|g| g["group"]["day"] == today), "{series}");
    assert_eq!(groups[0]["group"]["department"], "eng");

    // In another currency, at the rate the server holds, named in the answer.
    let (status, eur) = app.get("/v1/reports/spend?group_by=agent&currency=EUR").await;
    assert_eq!(status, StatusCode::OK, "{eur}");
    assert_eq!((eur["currency"].as_str(), eur["conversions"][0]["from"].as_str()), (Some("EUR"), Some("USD")));
    assert_ne!(eur["total"]["spend"], 18_00);
}

async fn an_agent_key_reads_only_its_own_and_bad_input_changes_nothing(app: TestApp) {
    let (eng, research) = history(&app).await;
    let key = app.create_key("agent", Some(&eng)).await;
    let (status, _, csv) = fetch(&app, "/v1/ledger/export", &key).await;
    assert_eq!(status, StatusCode::OK);
    assert!(records(&csv).iter().all(|r| r["agent_id"] == eng), "only its own agent's lines");
    let (status, _, body) = fetch(&app, &format!("/v1/ledger/export?agent={research}"), &key).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, _, body) = fetch(&app, "/v1/reports/spend?group_by=agent", &key).await;
    assert_eq!(status, StatusCode::OK);
    let report: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(report["groups"].as_array().unwrap().len(), 1);
    assert_eq!(report["groups"][0]["group"]["agent"], eng.as_str());
    let (status, _, _) = fetch(&app, &format!("/v1/reports/spend?group_by=agent&agent={research}"), &key).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let operator = app.create_key("operator", None).await;
    assert_eq!(fetch(&app, "/v1/ledger/export", &operator).await.0, StatusCode::OK);
    assert_eq!(fetch(&app, "/v1/ledger/export", "sgk_not_a_key").await.0, StatusCode::UNAUTHORIZED);

    for bad in [
        "/v1/ledger/export?format=xml",
        "/v1/ledger/export?status=approved",
        "/v1/ledger/export?rail=cash",
        "/v1/ledger/export?trase=PR-1",
        "/v1/ledger/export?agent=card_1",
        "/v1/ledger/export?from=yesterday",
        "/v1/ledger/export?from=2026-12-02T00:00:00Z&to=2026-12-01T00:00:00Z",
        "/v1/ledger/export?trace=",
        "/v1/reports/spend",
        "/v1/reports/spend?group_by=",
        "/v1/reports/spend?group_by=trace,trace",
        "/v1/reports/spend?group_by=day,week",
        "/v1/reports/spend?group_by=agent,trace,service,rail",
        "/v1/reports/spend?group_by=price",
        "/v1/reports/spend?group_by=day&time_zone=Mars/Olympus",
        "/v1/reports/spend?group_by=day&time_zone=../../../../etc/passwd",
        "/v1/reports/spend?group_by=day&time_zone=/etc/localtime",
        "/v1/reports/spend?group_by=agent&currency=XAU",
        "/v1/reports/spend?group_by=agent&top=0",
        "/v1/reports/spend?group_by=agent&top=-1",
        "/v1/reports/spend?group_by=agent&format=csv",
    ] {
        let (status, kind, body) = fetch(&app, bad, &app.owner_key).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert!(kind.starts_with("application/json"), "{bad}: {kind}");
        let error: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(error["error"]["code"], "validation_failed", "{bad}: {body}");
    }
}

on_both_backends!(
    every_line_is_in_the_export_in_time_order_with_its_context,
    the_spend_report_answers_per_trace_and_service,
    an_agent_key_reads_only_its_own_and_bad_input_changes_nothing,
);

/// A trace an agent chose that a spreadsheet would run as a formula arrives as text.
#[actix_web::test]
async fn a_formula_in_a_trace_reaches_the_csv_as_text() {
    let app = common::spawn(common::Backend::Sqlite).await;
    let agent = app.create_agent("bot").await;
    let card = app.issue_card(&agent, json!({"label": "openai"})).await["id"].as_str().unwrap().to_owned();
    app.fund(&agent, 10_00).await;
    let body = json!({"id": "x-1", "card_id": card, "amount": 1_00, "currency": "USD", "trace_id": "=HYPERLINK(\"http://evil\")",
        "merchant": {"name": "+SUM(1)", "mcc": "5734", "country": "US"}});
    assert_eq!(app.signed("/v1/authorizations", &body).await.0, StatusCode::OK);
    let (_, _, csv) = fetch(&app, "/v1/ledger/export?status=pending", &app.owner_key).await;
    let rows = records(&csv);
    assert_eq!(rows[0]["trace_id"], "'=HYPERLINK(\"http://evil\")");
    assert_eq!(rows[0]["merchant_name"], "'+SUM(1)");
    let (_, _, jsonl) = fetch(&app, "/v1/ledger/export?status=pending&format=jsonl", &app.owner_key).await;
    let line: Value = serde_json::from_str(jsonl.trim()).unwrap();
    assert_eq!(line["trace_id"], "=HYPERLINK(\"http://evil\")", "JSON Lines carry the value as it is");
}

/// Authorizations written behind the server's back for the tests at scale: every tenth declined,
/// the rest posted with their post transfer, over four services and a thousand traces. 530,000
/// make a million lines; `SPENDGATE_SCALE` sets another number (docs/performance.md).
fn authorizations() -> i64 {
    std::env::var("SPENDGATE_SCALE").ok().and_then(|n| n.parse().ok()).unwrap_or(530_000)
}

/// The SQL that writes the seeded ledger, authorization `i` made at `start` + `i` seconds (ms).
fn seed_sql(backend: Backend, agent: &str, cards: &[String], start: i64) -> String {
    let (numbers, counter, text) = match backend {
        Backend::Sqlite => (
            format!(
                "(WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < {}) SELECT i FROM n)",
                authorizations() - 1
            ),
            "printf('%016d', i)",
            "CAST(i % 1000 AS TEXT)",
        ),
        Backend::Postgres => (
            format!("(SELECT generate_series(0, {}) AS i)", authorizations() - 1),
            "lpad(i::text, 16, '0')",
            "(i % 1000)::text",
        ),
    };
    // An id as spendgate makes one: a ULID whose first ten characters are its time, here a second
    // per authorization, and then a counter.
    let time = format!("({start} + i * 1000)");
    let id = (0..10)
        .map(|k| {
            format!(
                "substr('0123456789abcdefghjkmnpqrstvwxyz', CAST((({time} >> {}) & 31) AS INTEGER) + 1, 1)",
                45 - 5 * k
            )
        })
        .chain([counter.to_owned()])
        .collect::<Vec<_>>()
        .join(" || ");
    let amount = "(100 + i % 900)";
    let declined = "i % 10 = 9";
    format!(
        "INSERT INTO authorizations (id, source, external_id, agent_id, card_id, rail, status, reason, rule, amount, \
         currency, cap_amount, cap_currency, card_amount, card_currency, fx_rate, fx_date, held, posted, counted, \
         counted_card, refunded, merchant_id, merchant_name, mcc, country, trace_id, seq, authorized_at, updated_at, \
         approval_id, fx_source) \
         SELECT 'auth_' || {id}, 'native', 'seed-' || {counter}, '{agent}', \
         CASE (i / 1000) % 4 WHEN 0 THEN '{c0}' WHEN 1 THEN '{c1}' WHEN 2 THEN '{c2}' ELSE '{c3}' END, 'card', \
         CASE WHEN {declined} THEN 'declined' ELSE 'posted' END, CASE WHEN {declined} THEN 'velocity_exceeded' END, \
         NULL, {amount}, 'USD', {amount}, 'USD', {amount}, 'USD', NULL, NULL, 0, \
         CASE WHEN {declined} THEN 0 ELSE {amount} END, CASE WHEN {declined} THEN 0 ELSE {amount} END, \
         CASE WHEN {declined} THEN 0 ELSE {amount} END, 0, 'm_1', 'OPENAI *API', '5734', 'US', 'PR-' || {text}, \
         i + 1000, {time}, {time}, NULL, NULL FROM {numbers} AS n; \
         INSERT INTO transfers (id, external_id, agent_id, authorization_id, card_id, trace_id, kind, amount, currency, \
         created_at) SELECT 'trf_' || substr(id, 6), 'cap-' || external_id, agent_id, id, card_id, trace_id, 'post', \
         posted, 'USD', authorized_at FROM authorizations WHERE status = 'posted' AND external_id LIKE 'seed-%';",
        c0 = cards[0],
        c1 = cards[1],
        c2 = cards[2],
        c3 = cards[3],
    )
}

/// The server as its own process (so that its memory is its own) on `backend`, seeded: with the
/// time of the first authorization.
async fn seeded(backend: Backend) -> (common::process::Server, common::Storage, Client, i64) {
    let (url, storage) = common::fresh_storage(backend);
    let dir = tempfile::tempdir().unwrap();
    let owner = format!("sgk_{}", hex::encode(rand::random::<[u8; 32]>()));
    let server = common::process::serve(
        dir.path(),
        &[],
        &[
            ("SPENDGATE_DATABASE_URL", url.as_str()),
            ("SPENDGATE_BOOTSTRAP_ADMIN_KEY", owner.as_str()),
            // Shorter than a report over the whole ledger takes in the debug build: reports have
            // a bound of their own (`report_timeout_ms`).
            ("SPENDGATE_DATABASE_TIMEOUT_MS", "1000"),
        ],
    );
    let client = Client { http: common::http_client(), base: server.base.clone(), key: owner };
    let agent =
        client.post("/v1/agents", json!({"name": "ci", "department": "eng"})).await["id"].as_str().unwrap().to_owned();
    let mut cards = Vec::new();
    for label in ["openai", "github", "anthropic", "aws"] {
        let card = client.post(&format!("/v1/agents/{agent}/cards"), json!({"label": label})).await;
        cards.push(card["id"].as_str().unwrap().to_owned());
    }
    let start = jiff::Timestamp::now().as_millisecond() - authorizations() * 1000;
    let sql = seed_sql(backend, &agent, &cards, start);
    match backend {
        Backend::Sqlite => {
            let path = url.strip_prefix("sqlite://").unwrap();
            let mut conn = SqliteConnection::establish(path).unwrap();
            conn.batch_execute(&format!("PRAGMA busy_timeout = 10000; BEGIN; {sql} COMMIT;")).unwrap();
        }
        Backend::Postgres => {
            let mut conn = PgConnection::establish(&url).unwrap();
            conn.batch_execute(&format!("BEGIN; {sql} COMMIT; ANALYZE;")).unwrap();
        }
    }
    drop(dir);
    // A connection per request from here on: a pooled connection left idle past the server's
    // keep-alive (during the seeding, or while another streamed the export) is closed by the
    // server, and the request that picks it up next fails.
    let http = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    let client = Client { http, ..client };
    (server, storage, client, start)
}

struct Client {
    http: reqwest::Client,
    base: String,
    key: String,
}

impl Client {
    async fn post(&self, path: &str, body: Value) -> Value {
        let response =
            self.http.post(format!("{}{path}", self.base)).bearer_auth(&self.key).json(&body).send().await.unwrap();
        assert!(response.status().is_success(), "{path}: {}", response.status());
        response.json().await.unwrap()
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        let response = self.http.get(format!("{}{path}", self.base)).bearer_auth(&self.key).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        response
    }
}

/// A figure of the process's memory from /proc (`VmRSS`, `VmHWM`), in MiB.
fn memory_mib(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<f64>().unwrap() / 1024.0
}

/// A million lines stream through in flat memory, and the report of the top traces by service
/// over them answers: on each backend, printed as figures (docs/performance.md).
async fn a_million_lines_export_in_flat_memory_and_report_in_time(backend: Backend) {
    let (server, _storage, client, start) = seeded(backend).await;
    let n = authorizations();
    // Every authorization and every post: the lines of the export.
    let expected = n + n * 9 / 10;
    let pid = server.child.id();
    // A small export first, so that what every export needs (connections, caches) is in place.
    let mut small = client.get("/v1/ledger/export?trace=PR-7").await;
    while small.chunk().await.unwrap().is_some() {}
    let before = memory_mib(pid, "VmHWM:");

    let started = std::time::Instant::now();
    let mut response = client.get("/v1/ledger/export").await;
    let (mut lines, mut bytes, mut tail) = (0i64, 0usize, Vec::new());
    while let Some(chunk) = response.chunk().await.unwrap() {
        lines += chunk.iter().filter(|b| **b == b'\n').count() as i64;
        bytes += chunk.len();
        tail = chunk.to_vec();
    }
    let seconds = started.elapsed().as_secs_f64();
    let peak = memory_mib(pid, "VmHWM:");
    // The header, and every seeded line (nothing was funded).
    assert_eq!(lines, 1 + expected, "every line once");
    let last = String::from_utf8_lossy(&tail);
    assert!(last.lines().last().unwrap().contains(",velocity_exceeded,"), "the newest line last: {last}");
    println!(
        "{backend:?}: export of {expected} lines ({:.0} MiB of CSV) in {seconds:.1} s ({:.0} lines/s); server peak RSS \
         {before:.1} MiB before, {peak:.1} MiB after",
        bytes as f64 / 1048576.0,
        expected as f64 / seconds,
    );
    assert!(peak - before < 48.0, "memory grew by {:.1} MiB for an export that streams", peak - before);

    let mut timings = Vec::new();
    let mut report = Value::Null;
    for _ in 0..3 {
        let started = std::time::Instant::now();
        report = client.get("/v1/reports/spend?group_by=trace,service&top=10").await.json().await.unwrap();
        timings.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    timings.sort_by(f64::total_cmp);
    println!(
        "{backend:?}: spend report by trace and service over {n} authorizations: median {:.0} ms of {timings:.0?}",
        timings[1]
    );
    let groups = report["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 10 * 4 + 1, "ten traces by four services, and the rest");
    // Trace k's amounts: 100 + i % 900 for i ≡ k (mod 1000), declines (i % 10 = 9) aside; the
    // expected sum is computed here the long way.
    let spend_of = |k: i64| (0..n).filter(|i| i % 1000 == k && i % 10 != 9).map(|i| 100 + i % 900).sum::<i64>();
    let best = (0..1000).max_by_key(|k| (spend_of(*k), -k)).unwrap();
    let first = &groups[0]["group"]["trace"];
    let first_total: i64 =
        groups.iter().filter(|g| &g["group"]["trace"] == first).map(|g| g["totals"]["spend"].as_i64().unwrap()).sum();
    assert_eq!(first_total, spend_of(best), "the top trace's spend, summed over its services");
    let total = &report["total"];
    assert_eq!(total["approved"].as_i64().unwrap() + total["declined"].as_i64().unwrap(), n);

    // The last tenth of the time: read through the ids' range, not the whole table.
    let from = jiff::Timestamp::from_millisecond(start + (n - n / 10) * 1000).unwrap();
    let path = format!("/v1/reports/spend?group_by=trace,service&top=10&from={from}");
    let mut timings = Vec::new();
    for _ in 0..3 {
        let started = std::time::Instant::now();
        report = client.get(&path).await.json().await.unwrap();
        timings.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    timings.sort_by(f64::total_cmp);
    println!("{backend:?}: the same over the last tenth of the time: median {:.0} ms of {timings:.0?}", timings[1]);
    let total = &report["total"];
    assert_eq!(total["approved"].as_i64().unwrap() + total["declined"].as_i64().unwrap(), n / 10);
}

#[actix_web::test]
async fn a_million_lines_on_sqlite() {
    a_million_lines_export_in_flat_memory_and_report_in_time(Backend::Sqlite).await;
}

#[actix_web::test]
#[cfg_attr(not(postgres_tests), ignore = "needs PostgreSQL: set SPENDGATE_TEST_DATABASE_URL")]
async fn a_million_lines_on_postgres() {
    a_million_lines_export_in_flat_memory_and_report_in_time(Backend::Postgres).await;
}

/// The export loads into DuckDB as it is: the documented columns, typed (integers, decimals, times,
/// an MCC kept as text), and the spend per trace adds up as the report says.
#[actix_web::test]
async fn duckdb_reads_the_csv_without_cleaning() {
    let app = common::spawn(Backend::Sqlite).await;
    history(&app).await;
    let (status, _, csv) = fetch(&app, "/v1/ledger/export", &app.owner_key).await;
    assert_eq!(status, StatusCode::OK);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ledger.csv");
    std::fs::write(&file, &csv).unwrap();
    let python = common::python::python_with(&["duckdb==1.1.3"]);
    let script = r#"
import duckdb, json, sys
rel = duckdb.read_csv(sys.argv[1])
spend = duckdb.sql("""SELECT trace_id, sum(CASE WHEN kind IN ('post', 'excess') THEN amount_minor
                       WHEN kind = 'refund' THEN -amount_minor ELSE 0 END)::BIGINT AS spend
                       FROM rel WHERE trace_id IS NOT NULL GROUP BY 1 ORDER BY 1""").fetchall()
print(json.dumps({"columns": rel.columns, "types": [str(t) for t in rel.types], "rows": len(rel.fetchall()),
                  "spend": spend}))
"#;
    let out = std::process::Command::new(python).arg("-c").arg(script).arg(&file).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let read: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(read["columns"], json!(HEADER));
    let type_of = |column: &str| read["types"][HEADER.iter().position(|h| *h == column).unwrap()].clone();
    assert_eq!(type_of("time"), "TIMESTAMP");
    assert_eq!(type_of("amount_minor"), "BIGINT");
    assert_eq!(type_of("amount"), "DOUBLE");
    assert_eq!(read["rows"], 9);
    assert_eq!(read["spend"], json!([["PR-4823", 10_00], ["PR-77", 0], ["PR-9", 3_00]]));
}
