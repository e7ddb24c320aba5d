//! Backtests replay history faithfully: a generated history of 100,000 decisions over six weeks
//! (every rule type, captures, voids, expiries, refunds, people's approvals, processor decisions,
//! policy changes and freezes, made by the real writer with the clock moved between rounds) is
//! replayed under the rules it had and reproduces every decision; a draft that tightens a
//! velocity limit changes exactly the decisions an independent count says it must. Both backends.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use common::TestApp;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::StatusCode;
use serde_json::{Value, json};
use spendgate::domain::authorization::{AuthRequest, Merchant, NamedBy, Rail, Recipient};
use spendgate::domain::ids::{AgentId, CardId};
use spendgate::domain::ledger::Source;
use spendgate::ledger::{Authorize, Movement, Payer, Target, Verdict};

const MINUTE: i64 = 60_000;
const RECIPIENT: &str = "0x1111111111111111111111111111111111111111";

/// How many decisions the generated history holds (fewer with `SPENDGATE_BACKTEST_DECISIONS`).
fn decisions() -> usize {
    std::env::var("SPENDGATE_BACKTEST_DECISIONS").ok().and_then(|n| n.parse().ok()).unwrap_or(100_000)
}

/// The fleet the history is made of.
struct Fleet {
    /// Every rule type: agent limits (calendar day in New York, trace-scoped asking, USDC rolling),
    /// velocity, a threshold asking people, countries, x402 hosts and per-call; and cards with an
    /// MCC allow list and active hours, a merchant lock, a euro card, single-use cards.
    main: String,
    openai: String,
    aws: String,
    euro: String,
    single_use: Vec<String>,
    /// A processor decides some of its authorizations itself.
    stand_in: (String, String),
    /// One card under one velocity limit and nothing else: the draft that tightens it is checked
    /// against a count made here.
    burst: (String, String),
}

fn main_policy(hourly: i64) -> Value {
    json!({
        "per_transaction": 20_000,
        "limits": [
            {"id": "daily", "scope": "agent", "window": {"calendar": "day", "timezone": "America/New_York"},
             "amount": 150_000, "alert_at": [80]},
            {"id": "hourly", "scope": "card", "window": {"rolling": "1h"}, "count": hourly},
            {"id": "task", "scope": "trace", "window": {"rolling": "7d"}, "amount": 60_000, "on_exceed": "ask"},
            {"id": "saas", "scope": "agent", "window": {"calendar": "month", "timezone": "Europe/Berlin"},
             "amount": 400_000, "mcc_groups": ["saas", "cloud"]},
            {"id": "usdc", "scope": "agent", "window": {"rolling": "24h"}, "amount": 8_000, "rails": ["usdc"]}
        ],
        "countries": {"block": ["KP", "RU"]},
        "approval": {"above": 15_000},
        "x402": {"per_call": 500, "allow_hosts": ["api.example.com", "weather.data.dev"]}
    })
}

fn openai_policy(daily: i64) -> Value {
    json!({
        "mcc": {"allow": ["5734", "7372", "5817"]},
        "limits": [{"id": "daily", "scope": "card", "window": {"rolling": "24h"}, "amount": daily, "count": 60}],
        "active_hours": {"timezone": "UTC", "from": "05:00", "to": "23:30"}
    })
}

async fn agent(app: &TestApp, name: &str, policy: Value) -> String {
    let (status, agent) = app.post("/v1/agents", json!({"name": name, "policy": policy})).await;
    assert_eq!(status, StatusCode::CREATED, "{agent}");
    agent["id"].as_str().unwrap().to_owned()
}

async fn card(app: &TestApp, agent: &str, body: Value) -> String {
    app.issue_card(agent, body).await["id"].as_str().unwrap().to_owned()
}

async fn fleet(app: &TestApp) -> Fleet {
    let main = agent(app, "researcher", main_policy(12)).await;
    app.fund(&main, 200_000).await;
    let openai = card(app, &main, json!({"label": "openai", "policy": openai_policy(60_000)})).await;
    let aws_policy = json!({"merchant_lock": {"names": ["AWS*", "AMAZON WEB SERVICES*"]},
        "limits": [{"id": "weekly", "scope": "card", "window": {"calendar": "week"}, "amount": 120_000}]});
    let aws = card(app, &main, json!({"label": "aws", "policy": aws_policy})).await;
    let euro_policy =
        json!({"limits": [{"id": "monthly", "scope": "card", "window": {"calendar": "month"}, "amount": 90_000}]});
    let euro = card(app, &main, json!({"label": "hetzner", "currency": "EUR", "policy": euro_policy})).await;
    let mut single_use = Vec::new();
    for i in 0..3 {
        single_use.push(card(app, &main, json!({"label": format!("one-off {i}"), "single_use": true})).await);
    }
    let helper = agent(
        app,
        "stand-in",
        json!({"limits": [
        {"id": "daily", "scope": "agent", "window": {"rolling": "24h"}, "amount": 40_000}]}),
    )
    .await;
    app.fund(&helper, 10_000_000).await;
    let helper_card = card(app, &helper, json!({"label": "vendor"})).await;
    let burst = agent(app, "burst", json!({})).await;
    app.fund(&burst, 100_000_000).await;
    let burst_policy = json!({"limits": [{"id": "burst", "scope": "card", "window": {"rolling": "1h"}, "count": 10}]});
    let burst_card = card(app, &burst, json!({"label": "search", "policy": burst_policy})).await;
    Fleet { main, openai, aws, euro, single_use, stand_in: (helper, helper_card), burst: (burst, burst_card) }
}

fn merchant(name: &str, mcc: &str, country: &str) -> Merchant {
    Merchant { id: None, name: name.into(), mcc: Some(mcc.into()), country: Some(country.into()) }
}

fn card_request(amount: i64, currency: &str, merchant: Merchant, trace: Option<&str>) -> AuthRequest {
    AuthRequest {
        rail: Rail::Card,
        amount,
        currency: currency.into(),
        merchant,
        trace_id: trace.map(str::to_owned),
        max_amount: None,
        recipient: None,
    }
}

/// One random request of the fleet's traffic: who pays, what, and whether a processor decides it.
fn traffic(rng: &mut StdRng, f: &Fleet) -> (Payer, AuthRequest, Option<Verdict>) {
    let traces = [Some("PR-4823"), Some("PR-4824"), Some("INC-77"), None];
    let trace = traces[rng.random_range(0..traces.len())];
    let amount = |rng: &mut StdRng| {
        if rng.random_bool(0.04) { rng.random_range(14_000..26_000) } else { rng.random_range(100..6_000) }
    };
    let card_of = |id: &str| Payer::Card(CardId::parse(id).unwrap());
    let roll = rng.random_range(0..100);
    match roll {
        0..45 => {
            let mcc = if rng.random_bool(0.08) { "7995" } else { "5734" };
            let country = if rng.random_bool(0.03) { "KP" } else { "US" };
            let m = merchant("OPENAI *API", mcc, country);
            (card_of(&f.openai), card_request(amount(rng), "USD", m, trace), None)
        }
        45..62 => {
            let name = if rng.random_bool(0.1) { "GOOGLE *CLOUD" } else { "AWS EMEA" };
            (card_of(&f.aws), card_request(amount(rng), "USD", merchant(name, "7372", "IE"), trace), None)
        }
        62..70 => {
            let currency = if rng.random_bool(0.7) { "EUR" } else { "USD" };
            (card_of(&f.euro), card_request(amount(rng), currency, merchant("HETZNER", "7372", "DE"), trace), None)
        }
        70..72 => {
            let id = &f.single_use[rng.random_range(0..f.single_use.len())];
            (card_of(id), card_request(amount(rng), "USD", merchant("GITHUB", "5817", "US"), trace), None)
        }
        72..84 => {
            let host = match rng.random_range(0..20) {
                0 => "evil.example.net",
                1 => "weather.data.dev",
                _ => "api.example.com",
            };
            let named_by = if rng.random_bool(0.06) { NamedBy::Agent } else { NamedBy::Server };
            let request = AuthRequest {
                rail: Rail::Usdc,
                amount: rng.random_range(10..650),
                currency: "USD".into(),
                merchant: Merchant { id: None, name: host.into(), mcc: None, country: None },
                trace_id: trace.map(str::to_owned),
                max_amount: rng.random_bool(0.05).then_some(100),
                recipient: Some(Recipient::new("eip155:84532", RECIPIENT, named_by)),
            };
            (Payer::Wallet(AgentId::parse(&f.main).unwrap()), request, None)
        }
        84..94 => {
            let verdict = match rng.random_range(0..10) {
                0..2 => Some(Verdict::Approved),
                2 => Some(Verdict::Declined),
                _ => None,
            };
            let m = merchant("VENDOR", "5734", "US");
            (card_of(&f.stand_in.1), card_request(amount(rng), "USD", m, trace), verdict)
        }
        _ => {
            let m = merchant("SEARCH API", "5734", "US");
            (card_of(&f.burst.1), card_request(rng.random_range(100..400), "USD", m, None), None)
        }
    }
}

/// An approved authorization that movements may still follow.
struct Open {
    id: String,
    amount: i64,
    currency: String,
    burst: bool,
}

/// Makes the history: rounds of concurrent requests, each round later than the last, with
/// movements, funding, approvals, policy changes and freezes between them.
async fn generate(app: &TestApp, f: &Fleet, total: usize, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut open: Vec<Open> = Vec::new();
    let mut posted: Vec<(String, i64, String)> = Vec::new();
    let mut made = 0;
    let mut round = 0u64;
    while made < total {
        round += 1;
        let step = if round.is_multiple_of(240) { 2 * 24 * 60 } else { rng.random_range(1..30) };
        spendgate::clock::advance(step * MINUTE);
        let batch = (total - made).min(50);
        let requests: Vec<_> = (0..batch).map(|i| (i, traffic(&mut rng, f))).collect();
        let outcomes = common::join_all(requests.into_iter().map(|(i, (payer, request, verdict))| {
            let auth = Authorize {
                source: Source::Native,
                external_id: format!("gen-{seed}-{round}-{i}"),
                payer: payer.clone(),
                request: request.clone(),
                deferred: None,
                payment: None,
                onchain_short: false,
            };
            async move {
                let outcome = match verdict {
                    Some(v) => app.ledger.record(auth, v).await.expect("recorded").expect("a known card"),
                    None => app.ledger.authorize(auth).await,
                };
                (payer, request, outcome)
            }
        }))
        .await;
        made += batch;
        for (payer, request, outcome) in outcomes {
            let burst = payer == Payer::Card(CardId::parse(&f.burst.1).unwrap());
            if let (true, Some(id)) = (outcome.approved, outcome.authorization_id) {
                open.push(Open { id, amount: request.amount, currency: request.currency, burst });
            }
        }
        // What happens to the holds: most are captured (some for less, some for more), some
        // voided, some raised; a few captures are refunded later. The burst card's are captured.
        let settle = open.len().saturating_sub(rng.random_range(0..40));
        let settling: Vec<Open> = open.drain(..settle).collect();
        for hold in settling {
            let ext = format!("mv-{}", hold.id);
            let movement = match rng.random_range(0..20) {
                _ if hold.burst => Movement::Capture { amount: hold.amount, currency: hold.currency.clone() },
                0..2 => Movement::Reverse { amount: None, currency: None },
                2 => Movement::Adjust { amount: hold.amount + 500, currency: hold.currency.clone() },
                3 => Movement::Capture { amount: hold.amount / 2, currency: hold.currency.clone() },
                4 => Movement::Capture { amount: hold.amount + 300, currency: hold.currency.clone() },
                5 => continue,
                _ => Movement::Capture { amount: hold.amount, currency: hold.currency.clone() },
            };
            let captured = matches!(movement, Movement::Capture { .. });
            if app.ledger.movement(Target::Id(hold.id.clone()), &ext, movement).await.is_ok() && captured {
                posted.push((hold.id, hold.amount / 2, hold.currency));
            }
        }
        if round.is_multiple_of(7)
            && let Some((id, amount, currency)) = posted.pop()
        {
            let refund = Movement::Refund { amount: amount.max(1), currency: Some(currency) };
            let _ = app.ledger.movement(Target::Id(id.clone()), &format!("rf-{id}"), refund).await;
        }
        if round.is_multiple_of(60) {
            let body = json!({"id": format!("top-up-{round}"), "amount": 80_000, "currency": "USD"});
            let (s, b) = admin(app, reqwest::Method::POST, &format!("/v1/agents/{}/fund", f.main), Some(body)).await;
            assert_eq!(s, StatusCode::CREATED, "{b}");
        }
        if round.is_multiple_of(45) {
            approve_pending(app).await;
        }
        if round.is_multiple_of(150) {
            let (hourly, daily) = if round.is_multiple_of(300) { (12, 60_000) } else { (8, 35_000) };
            let path = format!("/v1/agents/{}/policy", f.main);
            let (s, b) = admin(app, reqwest::Method::PUT, &path, Some(main_policy(hourly))).await;
            assert_eq!(s, StatusCode::OK, "{b}");
            let path = format!("/v1/agents/{}/cards/{}/policy", f.main, f.openai);
            let (s, b) = admin(app, reqwest::Method::PUT, &path, Some(openai_policy(daily))).await;
            assert_eq!(s, StatusCode::OK, "{b}");
        }
        match round % 97 {
            0 => card_action(app, &f.main, &f.aws, "freeze").await,
            6 => card_action(app, &f.main, &f.aws, "unfreeze").await,
            _ => {}
        }
        match round % 400 {
            0 => agent_action(app, &f.main, "freeze").await,
            2 => agent_action(app, &f.main, "unfreeze").await,
            _ => {}
        }
        if round.is_multiple_of(120) {
            app.ledger.expire_holds(spendgate::clock::now() - jiff::SignedDuration::from_hours(72)).await.unwrap();
        }
    }
}

/// An admin call of the generator, retried while the server answers 503 (storage busy: retry
/// shortly), as a client would; any other answer is returned.
async fn admin(app: &TestApp, method: reqwest::Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
    for attempt in 1..=10 {
        let answer = app.call(method.clone(), path, Some(&app.owner_key), body.clone()).await;
        if answer.0 != StatusCode::SERVICE_UNAVAILABLE {
            return answer;
        }
        eprintln!("{path}: 503, attempt {attempt}: {}", answer.1);
        tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
    }
    panic!("{path}: storage stayed unavailable");
}

async fn card_action(app: &TestApp, agent: &str, card: &str, action: &str) {
    let path = format!("/v1/agents/{agent}/cards/{card}/{action}");
    let (status, body) = admin(app, reqwest::Method::POST, &path, Some(json!({"reason": "generated history"}))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

async fn agent_action(app: &TestApp, agent: &str, action: &str) {
    let path = format!("/v1/agents/{agent}/{action}");
    let (status, body) = admin(app, reqwest::Method::POST, &path, Some(json!({"reason": "generated history"}))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// A person approves what waits for one.
async fn approve_pending(app: &TestApp) {
    let (status, page) = admin(app, reqwest::Method::GET, "/v1/approvals?status=pending&limit=50", None).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    for a in page["data"].as_array().unwrap() {
        let id = a["id"].as_str().unwrap();
        let (status, body) =
            admin(app, reqwest::Method::POST, &format!("/v1/approvals/{id}/approve"), Some(json!({}))).await;
        assert!(status == StatusCode::OK || status == StatusCode::CONFLICT, "{body}");
    }
}

/// Starts a backtest and waits for its report.
async fn backtest(app: &TestApp, spec: Value) -> Value {
    let (status, started) = app.post("/v1/backtests", spec).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{started}");
    let id = started["id"].as_str().unwrap();
    for _ in 0..1_200 {
        let (status, b) = app.get(&format!("/v1/backtests/{id}")).await;
        assert_eq!(status, StatusCode::OK, "{b}");
        match b["status"].as_str().unwrap() {
            "running" => tokio::time::sleep(Duration::from_millis(250)).await,
            "done" => return b,
            _ => panic!("the backtest ended without a report: {b}"),
        }
    }
    panic!("the backtest did not finish in five minutes");
}

fn stamp(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms).unwrap().to_string()
}

async fn replaying_recorded_rules_reproduces_every_decision(app: TestApp) {
    let f = fleet(&app).await;
    let total = decisions();
    let start = spendgate::clock::now().as_millisecond();
    generate(&app, &f, total, 4823).await;
    let end = spendgate::clock::now().as_millisecond() + 1;

    // The history holds what it must to prove anything: every rule type declined something,
    // people's approvals let some through, and money moved every way.
    let reasons: BTreeSet<String> = app
        .column("SELECT DISTINCT reason AS value FROM authorizations WHERE status = 'declined'")
        .into_iter()
        .collect();
    for expected in [
        "agent_frozen",
        "approval_required",
        "card_frozen",
        "card_used",
        "country_not_allowed",
        "host_not_allowed",
        "insufficient_funds",
        "limit_exceeded",
        "mcc_not_allowed",
        "merchant_not_allowed",
        "outside_active_hours",
        "per_call_exceeded",
        "per_transaction_exceeded",
        "processor_declined",
        "recipient_not_allowed",
        "velocity_exceeded",
    ] {
        assert!(reasons.contains(expected), "no {expected} in the generated history: {reasons:?}");
    }
    assert!(
        app.scalar("SELECT COUNT(*) FROM authorizations WHERE approval_id IS NOT NULL AND status <> 'declined'") > 0
    );
    for kind in ["post", "excess", "increase", "void", "expire", "refund"] {
        let n = app.scalar(&format!("SELECT COUNT(*) FROM transfers WHERE kind = '{kind}'"));
        assert!(n > 0, "no {kind} transfer in the generated history");
    }
    let recorded = app.scalar("SELECT COUNT(*) FROM authorizations");
    assert_eq!(recorded, total as i64);

    let targets = json!([f.main, f.stand_in.0, f.burst.0]);
    let done =
        backtest(&app, json!({"targets": targets, "policy": "recorded", "from": stamp(start), "to": stamp(end)})).await;
    let report = &done["report"];
    assert_eq!(report["decisions"], total as u64, "{}", summary(report));
    assert_eq!(report["changed"], 0, "the replay decided otherwise: {}", summary(report));
    let not_replayed: u64 = report["not_replayed"].as_object().unwrap().values().map(|v| v.as_u64().unwrap()).sum();
    assert_eq!(report["compared"].as_u64().unwrap() + not_replayed, total as u64);
    // Only what the processor decided itself is left out: every decision spendgate made is compared.
    assert_eq!(report["not_replayed"].as_object().unwrap().keys().collect::<Vec<_>>(), ["processor_decided"]);
    let processor = app.scalar("SELECT COUNT(*) FROM authorizations WHERE rule = 'processor'");
    assert_eq!(report["not_replayed"]["processor_decided"], processor);
    assert_eq!(done["replayed"], total as i64);
    assert!(!report["peaks"].as_array().unwrap().is_empty());

    // A draft that tightens the burst card's velocity limit from 10 to 4 an hour changes exactly
    // the decisions a count of its own approvals says it must, and nothing else.
    let tighter = json!({"limits": [{"id": "burst", "scope": "card", "window": {"rolling": "1h"}, "count": 4}]});
    let from = start + (end - start) / 3;
    let done =
        backtest(&app, json!({"targets": [f.burst.1], "policy": tighter, "from": stamp(from), "to": stamp(end)})).await;
    let report = &done["report"];
    let expected = expected_burst_changes(&app, &f.burst.1, from, end);
    let listed: HashMap<String, (bool, bool)> = report["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let id = c["authorization_id"].as_str().unwrap().to_owned();
            (id, (c["recorded"]["approved"].as_bool().unwrap(), c["replayed"]["approved"].as_bool().unwrap()))
        })
        .collect();
    assert!(!expected.is_empty(), "the draft must change something");
    assert_eq!(report["changed"], expected.len() as u64);
    assert_eq!(listed.len(), expected.len().min(1_000));
    for (id, change) in &listed {
        assert_eq!(expected.get(id), Some(change), "{id}");
    }
    let declined = expected.values().filter(|(was, now)| *was && !now).count() as u64;
    assert_eq!(report["newly_declined"]["count"], declined);
    if declined > 0 {
        assert_eq!(report["by_reason"][0]["key"], "velocity_exceeded card.limit.burst");
        assert_eq!(report["by_service"][0]["key"], "search");
    }
    let burst_decisions = app.scalar(&format!(
        "SELECT COUNT(*) FROM authorizations WHERE card_id = '{}' AND authorized_at >= {from} AND authorized_at < {end}",
        f.burst.1
    ));
    assert_eq!(report["decisions"], burst_decisions);
}

/// The burst card's decisions the tighter draft changes, counted here: its history runs again
/// with a count of the approvals of the last hour (the card has no other rule, and its agent
/// none, so nothing else can change).
fn expected_burst_changes(app: &TestApp, card: &str, from: i64, to: i64) -> HashMap<String, (bool, bool)> {
    let rows = app.column(&format!(
        "SELECT id || ' ' || authorized_at || ' ' || status AS value FROM authorizations WHERE card_id = '{card}' ORDER BY id"
    ));
    let mut approved_at: Vec<i64> = Vec::new();
    let mut changes = HashMap::new();
    for line in &rows {
        let mut parts = line.split(' ');
        let (id, at, status) = (parts.next().unwrap(), parts.next().unwrap(), parts.next().unwrap());
        let at: i64 = at.parse().unwrap();
        let was = status != "declined";
        let now = if (from..to).contains(&at) {
            approved_at.iter().filter(|t| **t >= at - 60 * MINUTE).count() < 4
        } else {
            was
        };
        if now {
            approved_at.push(at);
        }
        if now != was {
            changes.insert(id.to_owned(), (was, now));
        }
    }
    changes
}

fn summary(report: &Value) -> String {
    let mut r = report.clone();
    if let Some(changes) = r["changes"].as_array_mut() {
        changes.truncate(5);
    }
    if let Some(list) = r["unreplayed"].as_array_mut() {
        list.truncate(5);
    }
    r.to_string()
}

/// The bundled exchange rates are taken however old: the history's clock runs weeks ahead.
async fn spawn(backend: common::Backend) -> TestApp {
    common::spawn_with(backend, |c| c.fx_accept_bundled = true).await
}

on_both_backends!(spawn: spawn; replaying_recorded_rules_reproduces_every_decision);
