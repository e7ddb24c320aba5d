//! Events out, on both backends: deliveries signed in the Standard Webhooks format and verified by
//! its official library (PyPI `standardwebhooks`), an endpoint that is down retried under the same
//! event id until it answers, endpoint URLs held to the fetch proxy's destination rules, and no
//! event lost when the server is killed with SIGKILL.

mod common;

use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use common::{Backend, TestApp};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// What an endpoint received: the three headers and the body, as sent.
#[derive(Debug, Clone, serde::Serialize)]
struct Received {
    id: String,
    timestamp: String,
    signature: String,
    body: String,
}

/// A local endpoint that records every request and answers with the status it is set to.
struct Receiver {
    url: String,
    got: Arc<Mutex<Vec<Received>>>,
    answer: Arc<AtomicU16>,
    /// How long it takes to answer, in milliseconds.
    delay: Arc<AtomicU64>,
}

impl Receiver {
    async fn start() -> Receiver {
        let got = Arc::new(Mutex::new(Vec::new()));
        let answer = Arc::new(AtomicU16::new(200));
        let delay = Arc::new(AtomicU64::new(0));
        let (g, a, d) = (got.clone(), answer.clone(), delay.clone());
        let server = HttpServer::new(move || {
            let (g, a, d) = (g.clone(), a.clone(), d.clone());
            App::new().default_service(web::to(move |req: HttpRequest, body: web::Bytes| {
                let (g, a, d) = (g.clone(), a.clone(), d.clone());
                async move {
                    actix_web::rt::time::sleep(Duration::from_millis(d.load(Ordering::SeqCst))).await;
                    let h = |n: &str| req.headers().get(n).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
                    g.lock().unwrap().push(Received {
                        id: h("webhook-id"),
                        timestamp: h("webhook-timestamp"),
                        signature: h("webhook-signature"),
                        body: String::from_utf8_lossy(&body).into_owned(),
                    });
                    HttpResponse::build(actix_web::http::StatusCode::from_u16(a.load(Ordering::SeqCst)).unwrap())
                        .finish()
                }
            }))
        })
        .workers(2)
        .bind("127.0.0.1:0")
        .unwrap();
        let addr = server.addrs()[0];
        actix_web::rt::spawn(server.run());
        Receiver { url: format!("http://{addr}/hooks"), got, answer, delay }
    }

    fn received(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }

    /// Waits until `done` holds for what arrived (at most 20 s).
    async fn until(&self, what: &str, done: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let start = Instant::now();
        loop {
            let got = self.received();
            if done(&got) {
                return got;
            }
            assert!(start.elapsed() < Duration::from_secs(20), "waited for {what}; got {got:#?}");
            actix_web::rt::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn kinds(got: &[Received]) -> Vec<String> {
    let mut kinds: Vec<String> = got
        .iter()
        .map(|r| serde_json::from_str::<Value>(&r.body).unwrap()["type"].as_str().unwrap().to_owned())
        .collect();
    kinds.sort();
    kinds.dedup();
    kinds
}

async fn app_with_local_endpoints(backend: Backend) -> TestApp {
    common::spawn_with(backend, |c| {
        // The receiver is on loopback, which endpoints may not be at unless allowed.
        c.webhook_private_destinations = "127.0.0.1/32".into();
        c.webhook_retry_ms = 100;
    })
    .await
}

async fn subscribe(app: &TestApp, url: &str, events: &[&str]) -> Value {
    let (s, endpoint) = app.post("/v1/webhook-endpoints", json!({"url": url, "events": events})).await;
    assert_eq!(s, StatusCode::CREATED, "{endpoint}");
    endpoint
}

async fn agent_with_card(app: &TestApp) -> (String, String) {
    let agent = app.create_agent("hooked").await;
    let card = app.issue_card(&agent, json!({"label": "openai"})).await["id"].as_str().unwrap().to_owned();
    app.fund(&agent, 10_000).await;
    (agent, card)
}

/// Verifies every delivery with the official library, and a changed body with it too.
fn verified_by_the_official_library(secret: &str, got: &[Received]) -> Value {
    let python = common::python::python_with(&["standardwebhooks==1.3.0"]);
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), serde_json::to_vec(got).unwrap()).unwrap();
    let script = r#"
import json, sys
from standardwebhooks.webhooks import Webhook
hook = Webhook(sys.argv[1])
got = json.load(open(sys.argv[2]))
headers = lambda g: {"webhook-id": g["id"], "webhook-timestamp": g["timestamp"], "webhook-signature": g["signature"]}
types = [hook.verify(g["body"], headers(g))["type"] for g in got]
try:
    hook.verify(got[0]["body"].replace("hooked", "HOOKED").replace("agt_", "agt-"), headers(got[0]))
    changed = "accepted"
except Exception:
    changed = "refused"
print(json.dumps({"types": types, "changed": changed}))
"#;
    let out = std::process::Command::new(python).arg("-c").arg(script).arg(secret).arg(file.path()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

async fn deliveries_are_signed_and_the_official_library_verifies_them(app: TestApp) {
    let receiver = Receiver::start().await;
    let events = ["audit.checkpoint", "authorization.approved", "authorization.declined", "card.frozen"];
    let endpoint = subscribe(&app, &receiver.url, &events).await;
    let secret = endpoint["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"));
    let (_, listed) = app.get("/v1/webhook-endpoints").await;
    assert_eq!(listed[0]["id"], endpoint["id"]);
    assert!(listed[0].get("secret").is_none(), "the secret is shown once: {listed}");

    let (agent, card) = agent_with_card(&app).await;
    let approved = app.authorize("w-1", &card, 2_500).await;
    let declined = app.authorize("w-2", &card, 50_000).await;
    assert_eq!((approved["approved"].as_bool(), declined["approved"].as_bool()), (Some(true), Some(false)));
    let (s, _) = app.post(&format!("/v1/agents/{agent}/cards/{card}/freeze"), json!({"reason": "hooks"})).await;
    assert_eq!(s, StatusCode::OK);
    let (s, checkpoint) = app.post("/v1/audit/checkpoints", json!({})).await;
    assert_eq!(s, StatusCode::CREATED);

    let got = receiver.until("four events", |g| kinds(g).len() == 4).await;
    assert_eq!(kinds(&got), events);
    let body = |t: &str| -> Value {
        got.iter().map(|r| serde_json::from_str::<Value>(&r.body).unwrap()).find(|b| b["type"] == t).unwrap()
    };
    let ok = body("authorization.approved");
    assert_eq!(ok["id"], format!("{}.approved", approved["authorization_id"].as_str().unwrap()));
    assert_eq!(
        (ok["data"]["agent_id"].as_str(), ok["data"]["amount"]["amount"].as_i64()),
        (Some(agent.as_str()), Some(2_500))
    );
    assert_eq!(body("authorization.declined")["data"]["reason"], "insufficient_funds");
    assert_eq!(body("card.frozen")["data"]["reason"], "hooks");
    assert_eq!(body("audit.checkpoint")["data"], checkpoint, "the checkpoint, to keep elsewhere");
    for r in &got {
        assert_eq!(r.id, serde_json::from_str::<Value>(&r.body).unwrap()["id"], "webhook-id is the event's id");
    }

    let checked = verified_by_the_official_library(&secret, &got);
    assert_eq!(checked["types"].as_array().unwrap().len(), got.len(), "{checked}");
    assert_eq!(checked["changed"], "refused", "a changed body does not verify");

    // Nothing more arrives for what was already delivered.
    actix_web::rt::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(receiver.received().len(), got.len(), "each event once when the endpoint answers 2xx");
    let (_, deliveries) =
        app.get(&format!("/v1/webhook-endpoints/{}/deliveries", endpoint["id"].as_str().unwrap())).await;
    assert!(
        deliveries.as_array().unwrap().iter().all(|d| d["status"] == "delivered" && d["attempts"] == 1),
        "{deliveries}"
    );
}

async fn an_endpoint_that_is_down_gets_the_same_event_when_it_is_back(app: TestApp) {
    let receiver = Receiver::start().await;
    let endpoint = subscribe(&app, &receiver.url, &["authorization.approved"]).await;
    let (_, card) = agent_with_card(&app).await;
    // An endpoint that takes 3 s to answer holds up no decision.
    receiver.delay.store(3_000, Ordering::SeqCst);
    for i in 0..10 {
        let started = Instant::now();
        app.authorize(&format!("slow-{i}"), &card, 100).await;
        assert!(started.elapsed() < Duration::from_millis(1_000), "a decision waited {:?}", started.elapsed());
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    }
    receiver.until("the slow deliveries", |g| g.len() >= 10).await;
    receiver.delay.store(0, Ordering::SeqCst);
    receiver.got.lock().unwrap().clear();

    receiver.answer.store(503, Ordering::SeqCst);
    app.authorize("down-1", &card, 100).await;
    let failed = receiver.until("three failed attempts", |g| g.len() >= 3).await;
    let id = failed[0].id.clone();
    assert!(failed.iter().all(|r| r.id == id), "every attempt carries the one event id: {failed:#?}");
    let path = format!("/v1/webhook-endpoints/{}/deliveries", endpoint["id"].as_str().unwrap());
    let (_, pending) = app.get(&path).await;
    assert_eq!(
        (pending[0]["status"].as_str(), pending[0]["last_error"].as_str()),
        (Some("pending"), Some("the endpoint answered 503"))
    );

    receiver.answer.store(200, Ordering::SeqCst);
    let start = Instant::now();
    loop {
        let (_, now) = app.get(&path).await;
        if now[0]["status"] == "delivered" {
            assert!(now[0]["attempts"].as_i64().unwrap() >= 4, "{now}");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "never delivered: {now}");
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(receiver.received().last().unwrap().id, id);
}

/// A limit that asks: the decline that asked is `approval.requested` (under the approval's id), the
/// person's answer `approval.decided`.
async fn approvals_asked_and_decided_are_events(app: TestApp) {
    let receiver = Receiver::start().await;
    subscribe(&app, &receiver.url, &["approval.requested", "approval.decided"]).await;
    let agent = app.create_agent("asker").await;
    app.fund(&agent, 100_000).await;
    let policy = json!({"limits": [{"id": "daily", "scope": "card", "window": {"calendar": "day", "timezone": "UTC"},
        "amount": 1_000, "on_exceed": "ask"}]});
    let card =
        app.issue_card(&agent, json!({"label": "openai", "policy": policy})).await["id"].as_str().unwrap().to_owned();
    let asked = app.authorize("ask-1", &card, 1_500).await;
    let approval = asked["approval_id"].as_str().expect("the decline asked").to_owned();
    let (s, body) = app.post(&format!("/v1/approvals/{approval}/approve"), json!({})).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let got = receiver.until("both", |g| kinds(g).len() == 2).await;
    let bodies: Vec<Value> = got.iter().map(|r| serde_json::from_str(&r.body).unwrap()).collect();
    let requested = bodies.iter().find(|b| b["type"] == "approval.requested").unwrap();
    assert_eq!(
        (requested["id"].as_str(), requested["data"]["authorization"]["rule"].as_str()),
        (Some(approval.as_str()), Some("card.limit.daily"))
    );
    let decided = bodies.iter().find(|b| b["type"] == "approval.decided").unwrap();
    assert_eq!(
        (decided["data"]["kind"].as_str(), decided["data"]["data"]["approval_id"].as_str()),
        (Some("approval_granted"), Some(approval.as_str()))
    );
    // A mandate the agent asks for is requested the same way.
    let key = app.create_key("agent", Some(&agent)).await;
    let ask = json!({"purpose": "the nightly eval", "amount": 2_000});
    let (s, mandate) = app.call(reqwest::Method::POST, "/v1/agents/me/mandates", Some(&key), Some(ask)).await;
    assert_eq!(s, StatusCode::CREATED, "{mandate}");
    let got = receiver.until("the mandate", |g| g.len() == 3).await;
    let mandate_id = mandate["id"].as_str().unwrap();
    let asked = got.iter().map(|r| serde_json::from_str::<Value>(&r.body).unwrap()).find(|b| b["id"] == mandate_id);
    let asked = asked.expect("the mandate's request reached the endpoint");
    assert_eq!(
        (asked["type"].as_str(), asked["data"]["mandate"]["purpose"].as_str()),
        (Some("approval.requested"), Some("the nightly eval"))
    );
}

/// A limit with alert thresholds: each is announced once per window, with what it cost and where,
/// however often a void lets the window cross it again.
async fn a_limit_past_an_alert_threshold_is_announced_once_per_window(app: TestApp) {
    let receiver = Receiver::start().await;
    subscribe(&app, &receiver.url, &["limit.threshold_crossed"]).await;
    let agent = app.create_agent("alerted").await;
    app.fund(&agent, 100_000).await;
    let (s, _) = app
        .put(
            &format!("/v1/agents/{agent}/policy"),
            json!({"limits": [{"id": "daily", "scope": "agent", "window": {"calendar": "day", "timezone": "UTC"},
                "amount": 1_000, "alert_at": [50, 100]}]}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let card = app.issue_card(&agent, json!({"label": "openai"})).await["id"].as_str().unwrap().to_owned();
    let first = app.authorize("t-1", &card, 600).await;
    app.authorize("t-2", &card, 300).await;
    app.authorize("t-3", &card, 100).await;
    let got = receiver.until("two alerts", |g| g.len() >= 2).await;
    // Deliveries go out side by side: in no particular order.
    let mut alerts: Vec<Value> =
        got.iter().map(|r| serde_json::from_str::<Value>(&r.body).unwrap()["data"].clone()).collect();
    alerts.sort_by_key(|a| a["alert"]["percent"].as_i64());
    let percents: Vec<i64> = alerts.iter().map(|a| a["alert"]["percent"].as_i64().unwrap()).collect();
    assert_eq!(percents, [50, 100]);
    let half = &alerts[0];
    assert_eq!(half["agent_id"], agent.as_str());
    assert_eq!(
        (half["alert"]["rule"].as_str(), half["alert"]["service"].as_str()),
        (Some("agent.limit.daily"), Some("openai"))
    );
    assert_eq!(
        (half["alert"]["used"]["amount"].as_i64(), half["alert"]["cap"]["amount"].as_i64()),
        (Some(600), Some(1_000))
    );
    assert_eq!(half["alert"]["authorization_id"], first["authorization_id"]);
    let (_, trail) = app.get(&format!("/v1/agents/{agent}/events")).await;
    let in_trail = trail["data"].as_array().unwrap().iter().filter(|e| e["kind"] == "limit_threshold_crossed").count();
    assert_eq!(in_trail, 2, "the trail records each crossing");

    // A void frees the window, the next authorization crosses 100% again: in the trail, not twice
    // to the endpoint.
    let id = first["authorization_id"].as_str().unwrap();
    let (s, _) = app.signed(&format!("/v1/authorizations/{id}/reverse"), &json!({"id": "rev-t"})).await;
    assert_eq!(s, StatusCode::OK);
    app.authorize("t-4", &card, 600).await;
    actix_web::rt::time::sleep(Duration::from_millis(800)).await;
    let (_, trail) = app.get(&format!("/v1/agents/{agent}/events")).await;
    let in_trail = trail["data"].as_array().unwrap().iter().filter(|e| e["kind"] == "limit_threshold_crossed").count();
    assert_eq!(in_trail, 4, "50% and 100% were crossed again");
    assert_eq!(receiver.received().len(), 2, "once per window: {:#?}", receiver.received());
}

fn bodies(got: &[Received]) -> Vec<Value> {
    got.iter().map(|r| serde_json::from_str(&r.body).unwrap()).collect()
}

fn trail_count(trail: &Value, kind: &str) -> usize {
    trail["data"].as_array().unwrap().iter().filter(|e| e["kind"] == kind).count()
}

/// An agent's available balance falling below its policy's threshold is announced once each time
/// it falls, to a webhook and, as a message, to a Slack endpoint (whose URL the API then hides).
async fn a_balance_falling_below_its_threshold_is_announced_once_per_fall(app: TestApp) {
    let hooks = Receiver::start().await;
    let slack = Receiver::start().await;
    subscribe(&app, &hooks.url, &["balance.low"]).await;
    let slack_url = format!("{}/services/T000/B000/secret-token", slack.url);
    let (s, made) = app
        .post(
            "/v1/webhook-endpoints",
            json!({"url": slack_url, "format": "slack", "events": ["balance.low", "spend.anomaly"]}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{made}");
    assert!(made.get("secret").is_none(), "a Slack endpoint signs nothing: {made}");
    let listed = app.get("/v1/webhook-endpoints").await.1.to_string();
    assert!(!listed.contains("secret-token") && listed.contains("\"format\":\"slack\""), "{listed}");
    let (s, e) = app
        .post(
            "/v1/webhook-endpoints",
            json!({"url": slack.url, "format": "slack", "events": ["authorization.approved"]}),
        )
        .await;
    assert_eq!((s, e["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("validation_failed")), "{e}");

    let agent = app.create_agent("thrifty").await;
    let (s, _) = app.put(&format!("/v1/agents/{agent}/policy"), json!({"alerts": {"balance_below": 5_000}})).await;
    assert_eq!(s, StatusCode::OK);
    let card = app.issue_card(&agent, json!({"label": "openai"})).await["id"].as_str().unwrap().to_owned();
    let (s, e) =
        app.put(&format!("/v1/agents/{agent}/cards/{card}/policy"), json!({"alerts": {"balance_below": 1}})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "a card's policy has no alerts: {e}");
    app.fund(&agent, 10_000).await;
    app.authorize("b-1", &card, 3_000).await; // 7,000 left
    let crossing = app.authorize("b-2", &card, 2_500).await; // 4,500: below
    app.authorize("b-3", &card, 1_000).await; // 3,500: still below, no new fall
    app.fund(&agent, 5_000).await; // 8,500
    app.authorize("b-4", &card, 4_000).await; // 4,500: a second fall

    let got = hooks.until("two balance alerts", |g| g.len() >= 2).await;
    let alerts: Vec<Value> = bodies(&got).into_iter().map(|b| b["data"]["alert"].clone()).collect();
    for alert in &alerts {
        assert_eq!(
            (alert["available"]["amount"].as_i64(), alert["threshold"]["amount"].as_i64()),
            (Some(4_500), Some(5_000))
        );
        assert_eq!((alert["service"].as_str(), alert["agent_name"].as_str()), (Some("openai"), Some("thrifty")));
    }
    assert!(alerts.iter().any(|a| a["authorization_id"] == crossing["authorization_id"]), "{alerts:#?}");
    let messages = slack.until("two Slack messages", |g| g.len() >= 2).await;
    for m in &messages {
        assert!(m.signature.is_empty(), "Slack gets no Standard Webhooks headers");
        let message: Value = serde_json::from_str(&m.body).unwrap();
        assert_eq!(message["text"], ":small_red_triangle_down: thrifty's balance is 45.00 USD", "{message}");
        assert!(message["blocks"].to_string().contains("45.00 USD available, below 50.00 USD"), "{message}");
    }
    actix_web::rt::time::sleep(Duration::from_millis(800)).await;
    assert_eq!((hooks.received().len(), slack.received().len()), (2, 2), "once per fall");
    let (_, trail) = app.get(&format!("/v1/agents/{agent}/events")).await;
    assert_eq!(trail_count(&trail, "balance_low"), 2);
    app.assert_chains_whole().await;
}

async fn app_checking_spend_rates(backend: Backend) -> TestApp {
    common::spawn_with(backend, |c| {
        c.webhook_private_destinations = "127.0.0.1/32".into();
        c.webhook_retry_ms = 100;
        c.spend_rate_check_seconds = 1;
    })
    .await
}

/// An hour that spends more than the policy's multiple of the agent's own hourly average is an
/// anomaly, announced once an hour with the services and traces the money went to; an hour at or
/// under it is not.
async fn an_hour_far_above_the_agents_own_average_is_an_anomaly(app: TestApp) {
    let receiver = Receiver::start().await;
    subscribe(&app, &receiver.url, &["spend.anomaly"]).await;
    let agent = app.create_agent("steady").await;
    app.fund(&agent, 100_000).await;
    let card = app.issue_card(&agent, json!({"label": "openai"})).await["id"].as_str().unwrap().to_owned();
    // Two days of history at 100 an hour: 4,800 spent, moved back ten hours; the agent three days old.
    app.authorize("h-1", &card, 4_800).await;
    app.execute_elsewhere(&format!(
        "UPDATE authorizations SET authorized_at = authorized_at - 36000000 WHERE agent_id = '{agent}';
         UPDATE agents SET created_at = created_at - 259200000 WHERE id = '{agent}';"
    ));
    let rule = json!({"alerts": {"spend_rate": {"multiple": 3, "baseline": "2d", "min_amount": 100}}});
    let (s, _) = app.put(&format!("/v1/agents/{agent}/policy"), rule).await;
    assert_eq!(s, StatusCode::OK);

    app.authorize("h-2", &card, 300).await; // three times the average: not over it
    actix_web::rt::time::sleep(Duration::from_millis(2_500)).await;
    let (_, trail) = app.get(&format!("/v1/agents/{agent}/events")).await;
    assert_eq!(trail_count(&trail, "spend_anomaly"), 0, "at the multiple is not over it");

    let body = json!({"id": "h-3", "card_id": card, "amount": 50, "currency": "USD", "trace_id": "run-9",
        "merchant": {"id": "m_openai", "name": "OPENAI *API", "mcc": "5734", "country": "US"}});
    assert_eq!(app.signed("/v1/authorizations", &body).await.0, StatusCode::OK);
    let got = receiver.until("an anomaly", |g| !g.is_empty()).await;
    let alert = bodies(&got)[0]["data"]["alert"].clone();
    assert_eq!(alert["last_hour"], json!({"amount": 350, "currency": "USD"}), "{alert}");
    assert_eq!(alert["hourly_baseline"], json!({"amount": 100, "currency": "USD"}), "{alert}");
    assert_eq!(alert["top_services"], json!([{"service": "openai", "spend": {"amount": 350, "currency": "USD"}}]));
    assert_eq!(
        alert["top_traces"],
        json!([{"trace_id": null, "spend": {"amount": 300, "currency": "USD"}},
               {"trace_id": "run-9", "spend": {"amount": 50, "currency": "USD"}}])
    );

    // Still anomalous a few checks later: announced once in the hour.
    app.authorize("h-4", &card, 500).await;
    actix_web::rt::time::sleep(Duration::from_millis(2_500)).await;
    let (_, trail) = app.get(&format!("/v1/agents/{agent}/events")).await;
    assert_eq!(trail_count(&trail, "spend_anomaly"), 1);
    assert_eq!(receiver.received().len(), 1);
}

async fn endpoints_are_held_to_the_destination_rules(app: TestApp) {
    for (url, code) in [
        ("http://10.0.0.7/hooks", "destination_forbidden"),
        ("http://169.254.169.254/latest/meta-data", "destination_forbidden"),
        ("http://[::1]:8080/hooks", "destination_forbidden"),
        ("http://127.0.0.1:9/hooks", "destination_forbidden"),
        ("ftp://example.com/hooks", "validation_failed"),
        ("https://user:pass@example.com/hooks", "validation_failed"),
        ("not a url", "validation_failed"),
    ] {
        let (s, e) = app.post("/v1/webhook-endpoints", json!({"url": url, "events": ["card.frozen"]})).await;
        assert!(s.is_client_error(), "{url}: {s} {e}");
        assert_eq!(e["error"]["code"], code, "{url}: {e}");
    }
    let long = format!("https://example.com/{}", "a".repeat(3_000));
    let (s, _) = app.post("/v1/webhook-endpoints", json!({"url": long, "events": ["card.frozen"]})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    for events in [json!([]), json!(["card.melted"])] {
        let (s, e) = app.post("/v1/webhook-endpoints", json!({"url": "https://example.com/h", "events": events})).await;
        assert_eq!((s, e["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("validation_failed")), "{e}");
    }
    let agent = app.create_agent("a").await;
    let agent_key = app.create_key("agent", Some(&agent)).await;
    let body = json!({"url": "https://example.com/h", "events": ["card.frozen"]});
    let (s, _) = app.call(Method::POST, "/v1/webhook-endpoints", Some(&agent_key), Some(body)).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = app.call(Method::GET, "/v1/webhook-endpoints", Some(&agent_key), None).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "an agent key sees no endpoint");
    let (s, e) = app.call(Method::DELETE, "/v1/webhook-endpoints/whe_nope", Some(&app.owner_key), None).await;
    assert_eq!((s, e["error"]["code"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")));
    let (s, _) = app.get("/v1/webhook-endpoints/whe_nope/deliveries").await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // A deleted endpoint is no longer listed, and deleting it again is a 404.
    let (_, made) =
        app.post("/v1/webhook-endpoints", json!({"url": "https://example.com/h", "events": ["card.frozen"]})).await;
    // The first endpoint gets only what happens after it: the outbox starts at each chain's head
    // instead of reading every chain from its start.
    let head = app.scalar(&format!("SELECT chain_length FROM agents WHERE id = '{agent}'"));
    assert!(head > 0);
    assert_eq!(app.scalar(&format!("SELECT n FROM webhook_cursors WHERE agent_id = '{agent}'")), head);
    let path = format!("/v1/webhook-endpoints/{}", made["id"].as_str().unwrap());
    let (s, _) = app.call(Method::DELETE, &path, Some(&app.owner_key), None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_eq!(app.get("/v1/webhook-endpoints").await.1, json!([]));
    let (s, _) = app.call(Method::DELETE, &path, Some(&app.owner_key), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

on_both_backends!(
    spawn: app_with_local_endpoints;
    deliveries_are_signed_and_the_official_library_verifies_them,
    an_endpoint_that_is_down_gets_the_same_event_when_it_is_back,
    a_limit_past_an_alert_threshold_is_announced_once_per_window,
    approvals_asked_and_decided_are_events,
    a_balance_falling_below_its_threshold_is_announced_once_per_fall,
);
on_both_backends!(spawn: app_checking_spend_rates; an_hour_far_above_the_agents_own_average_is_an_anomaly,);
on_both_backends!(endpoints_are_held_to_the_destination_rules);

const OWNER: &str = "sgk_webhook_test_owner_key_0123456789abcdef0123";

/// An owner's POST to a server process.
async fn post(http: &reqwest::Client, base: &str, path: &str, body: Value) -> Value {
    let r = http.post(format!("{base}{path}")).bearer_auth(OWNER).json(&body).send().await.unwrap();
    assert!(r.status().is_success(), "{path}: {}", r.status());
    r.json().await.unwrap()
}

/// The server killed with SIGKILL while its endpoint is down and authorizations keep coming: after
/// a restart every approval that was answered reaches the endpoint.
#[actix_web::test]
async fn no_event_is_lost_across_sigkill() {
    let receiver = Receiver::start().await;
    receiver.answer.store(503, Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("SPENDGATE_BOOTSTRAP_ADMIN_KEY", OWNER),
        ("SPENDGATE_WEBHOOK_SECRET", common::WEBHOOK_SECRET),
        ("SPENDGATE_WEBHOOK_PRIVATE_DESTINATIONS", "127.0.0.1/32"),
        ("SPENDGATE_WEBHOOK_RETRY_MS", "100"),
        // An attempt cut off by the kill is taken up again once its lease (timeout + 5 s) ends.
        ("SPENDGATE_WEBHOOK_TIMEOUT_MS", "2000"),
    ];
    let mut server = common::process::serve(dir.path(), &[], &env);
    let (http, base) = (common::http_client(), server.base.clone());
    post(&http, &base, "/v1/webhook-endpoints", json!({"url": receiver.url, "events": ["authorization.approved"]}))
        .await;
    let agent = post(&http, &base, "/v1/agents", json!({"name": "killed"})).await["id"].as_str().unwrap().to_owned();
    let card = post(&http, &base, &format!("/v1/agents/{agent}/cards"), json!({"label": "svc"})).await;
    post(&http, &base, "/v1/treasury/deposits", json!({"id": "d", "amount": 1_000_000, "currency": "USD"})).await;
    post(&http, &base, &format!("/v1/agents/{agent}/fund"), json!({"id": "f", "amount": 1_000_000, "currency": "USD"}))
        .await;

    let mut approved = Vec::new();
    for i in 0..40 {
        let body = json!({"id": format!("k-{i}"), "card_id": card["id"], "amount": 100, "currency": "USD",
            "merchant": {"id": "m", "name": "M", "mcc": "5734", "country": "US"}});
        let bytes = serde_json::to_vec(&body).unwrap();
        let decision: Value = http
            .post(format!("{base}/v1/authorizations"))
            .header("Spendgate-Signature", common::sign("/v1/authorizations", &bytes))
            .header("Content-Type", "application/json")
            .body(bytes)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(decision["approved"], true, "{decision}");
        approved.push(format!("{}.approved", decision["authorization_id"].as_str().unwrap()));
    }
    server.child.kill().unwrap(); // SIGKILL
    server.child.wait().unwrap();

    receiver.answer.store(200, Ordering::SeqCst);
    let _again = common::process::serve(dir.path(), &[], &env);
    let got = receiver
        .until("every approval", |g| {
            let ids: std::collections::HashSet<&str> = g.iter().map(|r| r.id.as_str()).collect();
            approved.iter().all(|id| ids.contains(id.as_str()))
        })
        .await;
    assert!(got.len() >= approved.len());
}
