//! Stripe Issuing, Lithic and Marqeta through the real HTTP server, in their own formats and
//! signature schemes: decisions, decline codes, refused callers, retries, and lifecycle sequences
//! that must leave the ledger and the limits exact. On SQLite and PostgreSQL.

mod common;
#[path = "common/processor_api.rs"]
mod processor_api;

use common::{Backend, LITHIC_SECRET, MARQETA_PASSWORD, MARQETA_USER, STRIPE_SECRET, TestApp, spawn_with};
use processor_api::{LITHIC_KEY, Mode, ProcessorApi, STRIPE_CARDHOLDER, STRIPE_KEY};
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use spendgate::crypto::Secret;
use spendgate::rails::card::signature::{BasicAuth, HexSignature, StandardWebhooks};

fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

async fn post_raw(app: &TestApp, path: &str, headers: &[(&str, String)], body: Vec<u8>) -> Reply {
    post_to(app, &app.base, path, headers, body).await
}

/// POSTs to the server at `base` (this app's, or another node's on the same database).
async fn post_to(app: &TestApp, base: &str, path: &str, headers: &[(&str, String)], body: Vec<u8>) -> Reply {
    let mut request = app.http.post(format!("{base}{path}")).header("Content-Type", "application/json");
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let response = request.body(body).send().await.expect("request sent");
    let (status, headers) = (response.status(), response.headers().clone());
    let text = response.text().await.unwrap();
    Reply { status, headers, body: serde_json::from_str(&text).unwrap_or(Value::String(text)) }
}

fn stripe_signature(body: &[u8], t: i64) -> String {
    HexSignature::new(Some(&Secret::new(STRIPE_SECRET)), None).unwrap().sign(body, t)
}

async fn stripe(app: &TestApp, path: &str, event: &Value) -> Reply {
    let body = serde_json::to_vec(event).unwrap();
    post_raw(app, path, &[("Stripe-Signature", stripe_signature(&body, now()))], body).await
}

async fn lithic(app: &TestApp, path: &str, payload: &Value) -> Reply {
    let body = serde_json::to_vec(payload).unwrap();
    let keys = StandardWebhooks::new(Some(&Secret::new(LITHIC_SECRET)), None).unwrap().unwrap();
    let id = format!("msg_{}", hex::encode(rand::random::<[u8; 8]>()));
    let t = now();
    let headers = [
        ("webhook-id", id.clone()),
        ("webhook-timestamp", t.to_string()),
        ("webhook-signature", keys.sign(&id, t, &body)),
    ];
    post_raw(app, path, &headers, body).await
}

async fn marqeta(app: &TestApp, message: &Value) -> Reply {
    let auth = BasicAuth::header(MARQETA_USER, MARQETA_PASSWORD);
    post_raw(app, "/webhooks/marqeta/jit", &[("Authorization", auth)], serde_json::to_vec(message).unwrap()).await
}

/// An agent with `policy`, funded, and one card registered at `processor` as `processor_card_id`.
async fn agent_with_card(
    app: &TestApp,
    policy: Value,
    fund: i64,
    processor: &str,
    processor_card_id: &str,
) -> (String, String) {
    let (status, agent) = app.post("/v1/agents", json!({"name": "bot", "policy": policy})).await;
    assert_eq!(status, StatusCode::CREATED, "{agent}");
    let agent = agent["id"].as_str().unwrap().to_owned();
    if fund > 0 {
        let currency = policy["currency"].as_str().unwrap_or("USD");
        let (s, t) = app
            .post(&format!("/v1/agents/{agent}/fund"), json!({"id": "fund-1", "amount": fund, "currency": currency}))
            .await;
        assert_eq!(s, StatusCode::CREATED, "{t}");
    }
    let body =
        json!({"label": "openai", "processor": processor, "processor_card_id": processor_card_id, "last4": "4242"});
    let card = app.issue_card(&agent, body).await;
    (agent, card["id"].as_str().unwrap().to_owned())
}

async fn balance(app: &TestApp, agent: &str) -> (i64, i64, i64, i64) {
    let b = app.balance(agent).await;
    let n = |k: &str| b[k].as_i64().unwrap();
    (n("held"), n("spent"), n("refunded"), n("available"))
}

async fn ledger_len(app: &TestApp, agent: &str) -> usize {
    let (status, page) = app.get(&format!("/v1/agents/{agent}/ledger")).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    page["data"].as_array().unwrap().len()
}

/// A byte-identical redelivery (same signature, within tolerance) landing on another node is
/// answered with the first decision there too, for every processor, and holds nothing twice.
#[actix_web::test]
#[cfg_attr(not(postgres_tests), ignore = "needs PostgreSQL: set SPENDGATE_TEST_DATABASE_URL")]
async fn a_redelivery_gets_the_first_decision_on_any_node() {
    assert!(common::postgres_url().is_some(), "SPENDGATE_TEST_DATABASE_URL is not set");
    let app = spawn_with(Backend::Postgres, |_| {}).await;
    let other = app.another_node().await;
    let (agent, _) = agent_with_card(&app, json!({}), 10_000, "stripe", "ic_two").await;
    let (lithic_agent, _) = agent_with_card(&app, json!({}), 10_000, "lithic", "card-two").await;
    let (marqeta_agent, _) = agent_with_card(&app, json!({}), 10_000, "marqeta", "mq-two").await;

    let event = stripe_event(
        "evt_two",
        "issuing_authorization.request",
        stripe_authorization("iauth_two", "ic_two", 700, "5734"),
    );
    let body = serde_json::to_vec(&event).unwrap();
    let headers = [("Stripe-Signature", stripe_signature(&body, now()))];
    let path = "/webhooks/stripe/authorizations";
    let first = post_raw(&app, path, &headers, body.clone()).await;
    let there = post_to(&app, &other, path, &headers, body.clone()).await;
    assert_eq!((first.status, first.body["approved"].as_bool()), (StatusCode::OK, Some(true)), "{}", first.body);
    assert_eq!((there.status, &there.body), (StatusCode::OK, &first.body));

    let body = serde_json::to_vec(&asa("tx-two", "card-two", 300, "5734", "USA")).unwrap();
    let keys = StandardWebhooks::new(Some(&Secret::new(LITHIC_SECRET)), None).unwrap().unwrap();
    let t = now();
    let headers = [
        ("webhook-id", "msg_two".to_owned()),
        ("webhook-timestamp", t.to_string()),
        ("webhook-signature", keys.sign("msg_two", t, &body)),
    ];
    let first = post_raw(&app, "/webhooks/lithic/asa", &headers, body.clone()).await;
    let there = post_to(&app, &other, "/webhooks/lithic/asa", &headers, body.clone()).await;
    assert_eq!(first.body["result"], "APPROVED", "{}", first.body);
    assert_eq!((there.status, &there.body), (StatusCode::OK, &first.body));

    let body = serde_json::to_vec(&jit("jit-two", "pgfs.authorization", "mq-two", "2.00", None)).unwrap();
    let headers = [("Authorization", BasicAuth::header(MARQETA_USER, MARQETA_PASSWORD))];
    let first = post_raw(&app, "/webhooks/marqeta/jit", &headers, body.clone()).await;
    let there = post_to(&app, &other, "/webhooks/marqeta/jit", &headers, body.clone()).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    assert_eq!((there.status, &there.body), (StatusCode::OK, &first.body));

    assert_eq!(balance(&app, &agent).await.0, 700, "held once");
    assert_eq!(balance(&app, &lithic_agent).await.0, 300, "held once");
    assert_eq!(balance(&app, &marqeta_agent).await.0, 200, "held once");
}

// ---------------------------------------------------------------- Stripe

fn stripe_authorization(id: &str, card: &str, amount: i64, mcc: &str) -> Value {
    json!({"id": id, "object": "issuing.authorization", "amount": 0, "currency": "usd", "approved": false,
        "status": "pending", "card": {"id": card, "object": "issuing.card", "last4": "4242", "status": "active"},
        "merchant_amount": 0, "merchant_currency": "usd",
        "merchant_data": {"category": "computer_software_stores", "category_code": mcc, "name": "OPENAI *API",
            "network_id": "OPENAI0001", "city": "San Francisco", "country": "US"},
        "pending_request": {"amount": amount, "currency": "usd", "merchant_amount": amount, "merchant_currency": "usd",
            "is_amount_controllable": false, "network_risk_score": null, "amount_details": {"atm_fee": null, "cashback_amount": null}},
        "request_history": [], "transactions": [], "metadata": {}})
}

fn stripe_event(id: &str, kind: &str, object: Value) -> Value {
    json!({"id": id, "object": "event", "api_version": "2025-03-31.basil", "created": now(), "type": kind,
        "livemode": false, "pending_webhooks": 1, "request": {"id": null, "idempotency_key": null}, "data": {"object": object}})
}

async fn stripe_ask(app: &TestApp, iauth: &str, card: &str, amount: i64, mcc: &str) -> Reply {
    let event = stripe_event(
        &format!("evt_{iauth}"),
        "issuing_authorization.request",
        stripe_authorization(iauth, card, amount, mcc),
    );
    stripe(app, "/webhooks/stripe/authorizations", &event).await
}

/// The authorization as Stripe reports it after the decision.
fn stripe_decided(iauth: &str, card: &str, amount: i64, approved: bool, status: &str) -> Value {
    let mut a = stripe_authorization(iauth, card, amount, "5734");
    a["amount"] = json!(if approved { amount } else { 0 });
    a["approved"] = json!(approved);
    a["status"] = json!(status);
    a["pending_request"] = Value::Null;
    a["request_history"] =
        json!([{"amount": amount, "currency": "usd", "approved": approved, "reason": "webhook_timeout"}]);
    a
}

fn stripe_transaction(id: &str, card: &str, authorization: Option<&str>, kind: &str, amount: i64) -> Value {
    json!({"id": id, "object": "issuing.transaction", "amount": amount, "currency": "usd", "type": kind,
        "authorization": authorization, "card": card, "merchant_amount": amount, "merchant_currency": "usd",
        "merchant_data": {"category_code": "5734", "name": "OPENAI *API", "network_id": "OPENAI0001", "country": "US"}})
}

async fn stripe_decides_in_its_own_format(app: TestApp) {
    let policy = json!({"mcc": {"block": ["7995"]},
        "limits": [{"id": "daily", "scope": "agent", "window": {"rolling": "24h"}, "amount": 5_000}]});
    let (agent, _) = agent_with_card(&app, policy, 100_000, "stripe", "ic_live_1").await;

    let r = stripe_ask(&app, "iauth_1", "ic_live_1", 2_000, "5734").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.headers.get("Stripe-Version").unwrap(), "2025-03-31.basil");
    assert_eq!(r.body["approved"], true, "{}", r.body);
    let auth_id = r.body["metadata"]["spendgate_authorization_id"].as_str().unwrap().to_owned();
    assert!(auth_id.starts_with("auth_"));

    // Delivered again (signed anew): the first answer, held once.
    let again = stripe_ask(&app, "iauth_1", "ic_live_1", 2_000, "5734").await;
    assert_eq!(again.body["metadata"]["spendgate_authorization_id"], auth_id.as_str());
    assert_eq!(balance(&app, &agent).await.0, 2_000);

    let over = stripe_ask(&app, "iauth_2", "ic_live_1", 3_500, "5734").await;
    assert_eq!(
        (over.body["approved"].as_bool(), over.body["metadata"]["spendgate_reason"].as_str()),
        (Some(false), Some("limit_exceeded"))
    );
    assert_eq!(over.body["metadata"]["spendgate_rule"], "agent.limit.daily");
    let blocked = stripe_ask(&app, "iauth_3", "ic_live_1", 100, "7995").await;
    assert_eq!(blocked.body["metadata"]["spendgate_reason"], "mcc_not_allowed");
    let unknown = stripe_ask(&app, "iauth_4", "ic_unknown", 100, "5734").await;
    assert_eq!((unknown.status, unknown.body["approved"].as_bool()), (StatusCode::OK, Some(false)));
    assert_eq!(unknown.body["metadata"]["spendgate_reason"], "unknown_card");
    assert_eq!(balance(&app, &agent).await.0, 2_000, "declines hold nothing");

    // A purchase in euros: Stripe asks in the card's currency (its network's conversion), so no
    // rate table is needed, even the stale bundled one.
    let mut abroad = stripe_authorization("iauth_eu", "ic_live_1", 1_100, "5734");
    abroad["merchant_data"]["country"] = json!("DE");
    abroad["pending_request"]["merchant_amount"] = json!(1_000);
    abroad["pending_request"]["merchant_currency"] = json!("eur");
    let r = stripe(
        &app,
        "/webhooks/stripe/authorizations",
        &stripe_event("evt_eu", "issuing_authorization.request", abroad),
    )
    .await;
    assert_eq!(r.body["approved"], true, "{}", r.body);
    assert_eq!(balance(&app, &agent).await.0, 3_100, "held in the card's currency as Stripe converted it");

    // A dry run through Stripe's own endpoint: spendgate's decision, not Stripe's format, and no hold.
    let event = stripe_event(
        "evt_dry",
        "issuing_authorization.request",
        stripe_authorization("iauth_dry", "ic_live_1", 1_000, "5734"),
    );
    let body = serde_json::to_vec(&event).unwrap();
    let headers = [("Stripe-Signature", stripe_signature(&body, now())), ("Spendgate-Dry-Run", "true".to_owned())];
    let dry = post_raw(&app, "/webhooks/stripe/authorizations", &headers, body).await;
    assert_eq!(
        (dry.body["approved"].as_bool(), dry.body["dry_run"].as_bool()),
        (Some(true), Some(true)),
        "{}",
        dry.body
    );
    assert!(dry.body.get("metadata").is_none(), "never an answer Stripe could act on: {}", dry.body);
    assert_eq!(balance(&app, &agent).await.0, 3_100, "a dry run holds nothing");
}

async fn stripe_refuses_what_it_did_not_sign(app: TestApp) {
    let (agent, _) = agent_with_card(&app, json!({}), 10_000, "stripe", "ic_sec").await;
    let event = stripe_event(
        "evt_sec",
        "issuing_authorization.request",
        stripe_authorization("iauth_sec", "ic_sec", 500, "5734"),
    );
    let body = serde_json::to_vec(&event).unwrap();
    let path = "/webhooks/stripe/authorizations";
    let forged =
        HexSignature::new(Some(&Secret::new("whsec_someone_else_0123456789")), None).unwrap().sign(&body, now());
    for headers in [
        vec![],
        vec![("Stripe-Signature", forged)],
        vec![("Stripe-Signature", stripe_signature(&body, now() - 301))],
        vec![("Stripe-Signature", stripe_signature(b"{}", now()))],
    ] {
        let r = post_raw(&app, path, &headers, body.clone()).await;
        assert_eq!((r.status, r.body["error"]["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("invalid_signature")));
    }
    // The same request delivered again, byte for byte (a proxy's retry after a lost answer, or a
    // captured copy), is answered with the first decision and changes nothing.
    let signature = stripe_signature(&body, now());
    let first = post_raw(&app, path, &[("Stripe-Signature", signature.clone())], body.clone()).await;
    assert_eq!(first.body["approved"], true, "{}", first.body);
    let again = post_raw(&app, path, &[("Stripe-Signature", signature)], body.clone()).await;
    assert_eq!((again.status, &again.body), (StatusCode::OK, &first.body));
    assert_eq!(ledger_len(&app, &agent).await, 2, "the funding and one authorization: nothing from refused calls");
    assert_eq!(balance(&app, &agent).await.0, 500, "held once");

    let garbage = b"{not json".to_vec();
    let r = post_raw(&app, path, &[("Stripe-Signature", stripe_signature(&garbage, now()))], garbage).await;
    assert_eq!((r.status, r.body["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_json")));
    let huge = vec![b' '; 300 * 1024];
    let r = post_raw(&app, path, &[("Stripe-Signature", stripe_signature(&huge, now()))], huge).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    let r =
        stripe(&app, "/webhooks/stripe", &stripe_event("evt_other", "customer.created", json!({"id": "cus_1"}))).await;
    assert_eq!((r.status, r.body["applied"].as_i64()), (StatusCode::OK, Some(0)), "unknown types are acknowledged");
    // The official library's vector, re-signed now: accepted unmodified (its card is unknown here).
    let vector: Value = serde_json::from_str(include_str!("vectors/stripe_signature.json")).unwrap();
    let payload = vector["payload"].as_str().unwrap().as_bytes().to_vec();
    let r = post_raw(&app, path, &[("Stripe-Signature", stripe_signature(&payload, now()))], payload).await;
    assert_eq!((r.status, r.body["metadata"]["spendgate_reason"].as_str()), (StatusCode::OK, Some("unknown_card")));
    assert_eq!(ledger_len(&app, &agent).await, 2);
}

async fn stripe_lifecycle_leaves_the_ledger_exact(app: TestApp) {
    let policy = json!({"limits": [{"id": "daily", "scope": "agent", "window": {"rolling": "24h"}, "amount": 5_000}]});
    let (agent, _) = agent_with_card(&app, policy, 100_000, "stripe", "ic_life").await;
    let event = |id: &str, kind: &str, object: Value| stripe_event(id, kind, object);

    // authorization → partial capture → refund, each delivered twice
    assert_eq!(stripe_ask(&app, "iauth_a", "ic_life", 2_000, "5734").await.body["approved"], true);
    let capture = event(
        "evt_cap",
        "issuing_transaction.created",
        stripe_transaction("ipi_cap", "ic_life", Some("iauth_a"), "capture", -1_500),
    );
    for _ in 0..2 {
        let r = stripe(&app, "/webhooks/stripe", &capture).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    }
    assert_eq!(balance(&app, &agent).await, (0, 1_500, 0, 98_500));
    let refund = event(
        "evt_ref",
        "issuing_transaction.created",
        stripe_transaction("ipi_ref", "ic_life", Some("iauth_a"), "refund", 500),
    );
    stripe(&app, "/webhooks/stripe", &refund).await;
    stripe(&app, "/webhooks/stripe", &refund).await;
    assert_eq!(balance(&app, &agent).await, (0, 1_500, 500, 99_000));

    // authorization → reversal frees the window: 3,500 fits again only because of it
    assert_eq!(stripe_ask(&app, "iauth_b", "ic_life", 3_500, "5734").await.body["approved"], true);
    assert_eq!(stripe_ask(&app, "iauth_c", "ic_life", 100, "5734").await.body["approved"], false);
    let reversed = event(
        "evt_rev",
        "issuing_authorization.updated",
        stripe_decided("iauth_b", "ic_life", 3_500, true, "reversed"),
    );
    stripe(&app, "/webhooks/stripe", &reversed).await;
    stripe(&app, "/webhooks/stripe", &reversed).await;
    assert_eq!(balance(&app, &agent).await.0, 0);
    assert_eq!(stripe_ask(&app, "iauth_d", "ic_life", 3_000, "5734").await.body["approved"], true);

    // authorization → expiry
    let expired =
        event("evt_exp", "issuing_authorization.updated", stripe_decided("iauth_d", "ic_life", 3_000, true, "expired"));
    stripe(&app, "/webhooks/stripe", &expired).await;
    assert_eq!(balance(&app, &agent).await, (0, 1_500, 500, 99_000));

    // a force post: captured with no authorization; it counts against the limit
    let force = event(
        "evt_force",
        "issuing_transaction.created",
        stripe_transaction("ipi_force", "ic_life", None, "capture", -700),
    );
    stripe(&app, "/webhooks/stripe", &force).await;
    stripe(&app, "/webhooks/stripe", &force).await;
    assert_eq!(balance(&app, &agent).await, (0, 2_200, 500, 98_300));

    // Stripe approved on its own (a stand-in on timeout): recorded as a hold; then it declined one spendgate approved.
    let stand_in =
        event("evt_si", "issuing_authorization.created", stripe_decided("iauth_si", "ic_life", 400, true, "pending"));
    stripe(&app, "/webhooks/stripe", &stand_in).await;
    assert_eq!(balance(&app, &agent).await.0, 400);
    assert_eq!(stripe_ask(&app, "iauth_e", "ic_life", 300, "5734").await.body["approved"], true);
    let declined =
        event("evt_de", "issuing_authorization.created", stripe_decided("iauth_e", "ic_life", 300, false, "closed"));
    stripe(&app, "/webhooks/stripe", &declined).await;
    assert_eq!(balance(&app, &agent).await.0, 400, "the hold Stripe declined is gone");
    // The window holds 1,500 + 700 (posted) + 400 (held) = 2,600 of 5,000.
    assert_eq!(stripe_ask(&app, "iauth_f", "ic_life", 2_401, "5734").await.body["approved"], false);
    assert_eq!(stripe_ask(&app, "iauth_g", "ic_life", 2_400, "5734").await.body["approved"], true);

    // Stripe raised a hold it approved (an incremental authorization): recorded, and counted.
    let raised =
        event("evt_inc", "issuing_authorization.updated", stripe_decided("iauth_g", "ic_life", 2_900, true, "pending"));
    for _ in 0..2 {
        let r = stripe(&app, "/webhooks/stripe", &raised).await;
        assert_eq!((r.status, r.body["skipped"].as_array().map(Vec::len)), (StatusCode::OK, Some(0)), "{}", r.body);
        assert_eq!(balance(&app, &agent).await.0, 400 + 2_900);
    }
    let (_, ledger) = app.get(&format!("/v1/agents/{agent}/ledger")).await;
    let increases: Vec<&Value> =
        ledger["data"].as_array().unwrap().iter().filter(|e| e["kind"] == "increase").collect();
    assert_eq!(increases.len(), 1, "{ledger}");
    assert_eq!(increases[0]["amount"]["amount"], 500);
    // The window now holds more than its cap (a processor's fact): the next request is declined.
    assert_eq!(stripe_ask(&app, "iauth_h", "ic_life", 1, "5734").await.body["approved"], false);
    let (_, events) = app.get(&format!("/v1/agents/{agent}/events")).await;
    assert!(events["data"].as_array().unwrap().iter().any(|e| e["kind"] == "authorization_overridden"), "{events}");
    // Overrides rewrite a decision's row: each write is its own link.
    app.assert_chains_whole().await;
}

// ---------------------------------------------------------------- Lithic

fn asa(token: &str, card: &str, amount: i64, mcc: &str, country: &str) -> Value {
    json!({"event_type": "card_authorization.approval_request", "token": token, "status": "AUTHORIZATION",
        "card": {"token": card, "last_four": "4242", "state": "OPEN", "type": "VIRTUAL"},
        "amounts": {"cardholder": {"amount": amount, "conversion_rate": "1.000000", "currency": "USD"},
            "merchant": {"amount": amount, "currency": "USD"}, "hold": {"amount": amount, "currency": "USD"}},
        "amount": amount, "merchant_amount": amount, "merchant_currency": "USD",
        "merchant": {"acceptor_id": "174030075991", "descriptor": "OPENAI *API", "mcc": mcc, "country": country,
            "city": "SAN FRANCISCO", "state": "CA"}})
}

fn lithic_transaction(token: &str, card: &str, events: Value) -> Value {
    json!({"event_type": "card_transaction.updated", "token": token, "card_token": card, "status": "PENDING",
        "merchant": {"acceptor_id": "174030075991", "descriptor": "OPENAI *API", "mcc": "5734", "country": "USA"},
        "events": events})
}

fn lithic_event(token: &str, kind: &str, amount: i64, currency: &str) -> Value {
    json!({"token": token, "type": kind, "result": "APPROVED", "amount": amount,
        "amounts": {"cardholder": {"amount": amount, "conversion_rate": "1.0", "currency": currency}}})
}

async fn lithic_answers_asa_with_its_codes(app: TestApp) {
    let policy = json!({"mcc": {"block": ["7995"]}, "countries": {"block": ["RU"]},
        "limits": [{"id": "daily", "scope": "agent", "window": {"rolling": "24h"}, "amount": 5_000}]});
    let (agent, card) = agent_with_card(&app, policy, 4_000, "lithic", "card-tok-1").await;
    let path = "/webhooks/lithic/asa";
    let r = lithic(&app, path, &asa("tx-1", "card-tok-1", 1_000, "5734", "USA")).await;
    assert_eq!((r.status, r.body.clone()), (StatusCode::OK, json!({"token": "tx-1", "result": "APPROVED"})));
    let retry = lithic(&app, path, &asa("tx-1", "card-tok-1", 1_000, "5734", "USA")).await;
    assert_eq!(retry.body["result"], "APPROVED");
    assert_eq!(balance(&app, &agent).await.0, 1_000, "a retry holds nothing more");

    let code = |token: &'static str, amount: i64, mcc: &'static str, country: &'static str| {
        let app = &app;
        async move { lithic(app, path, &asa(token, "card-tok-1", amount, mcc, country)).await.body["result"].clone() }
    };
    assert_eq!(code("tx-2", 100, "7995", "USA").await, "UNAUTHORIZED_MERCHANT");
    assert_eq!(code("tx-3", 100, "5734", "RUS").await, "UNAUTHORIZED_MERCHANT", "alpha-3 RUS is the blocked RU");
    assert_eq!(code("tx-4", 4_500, "5734", "USA").await, "VELOCITY_EXCEEDED");
    assert_eq!(code("tx-5", 3_500, "5734", "USA").await, "INSUFFICIENT_FUNDS");
    let (s, _) = app.post(&format!("/v1/agents/{agent}/cards/{card}/freeze"), json!({"reason": "test"})).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(code("tx-6", 100, "5734", "USA").await, "CARD_PAUSED");
    // Unknown card; and the deprecated flat fields when `amounts` is absent.
    let r = lithic(&app, path, &asa("tx-7", "card-unknown", 100, "5734", "USA")).await;
    assert_eq!(r.body["result"], "CARD_PAUSED");
    let (s, _) = app.post(&format!("/v1/agents/{agent}/cards/{card}/unfreeze"), json!({"reason": "test over"})).await;
    assert_eq!(s, StatusCode::OK);
    let mut flat = asa("tx-8", "card-tok-1", 700, "5734", "USA");
    flat.as_object_mut().unwrap().remove("amounts");
    assert_eq!(lithic(&app, path, &flat).await.body["result"], "APPROVED");
    assert_eq!(balance(&app, &agent).await.0, 1_700);

    // Refused: no signature, a wrong one, a stale one, a replay.
    let body = serde_json::to_vec(&asa("tx-9", "card-tok-1", 100, "5734", "USA")).unwrap();
    let keys = StandardWebhooks::new(Some(&Secret::new(LITHIC_SECRET)), None).unwrap().unwrap();
    let (id, t) = ("msg_fixed", now());
    let good = [
        ("webhook-id", id.to_owned()),
        ("webhook-timestamp", t.to_string()),
        ("webhook-signature", keys.sign(id, t, &body)),
    ];
    let stale = [
        ("webhook-id", id.to_owned()),
        ("webhook-timestamp", (t - 400).to_string()),
        ("webhook-signature", keys.sign(id, t - 400, &body)),
    ];
    let wrong =
        [("webhook-id", id.to_owned()), ("webhook-timestamp", t.to_string()), ("webhook-signature", "v1,".to_owned())];
    for headers in [&[][..], &stale[..], &wrong[..]] {
        assert_eq!(post_raw(&app, path, headers, body.clone()).await.status, StatusCode::UNAUTHORIZED);
    }
    let first = post_raw(&app, path, &good, body.clone()).await;
    assert_eq!(first.body["result"], "APPROVED");
    let again = post_raw(&app, path, &good, body.clone()).await;
    assert_eq!((again.status, &again.body), (StatusCode::OK, &first.body), "a redelivery gets the first answer");
    assert_eq!(balance(&app, &agent).await.0, 1_800, "held once");
    // The official library's payload, unmodified, re-signed now: parsed (no card in it: declined).
    let vector: Value = serde_json::from_str(include_str!("vectors/lithic_standard_webhooks.json")).unwrap();
    let payload: Value = serde_json::from_str(vector["payload"].as_str().unwrap()).unwrap();
    let r = lithic(&app, path, &payload).await;
    assert_eq!((r.status, r.body["result"].as_str()), (StatusCode::OK, Some("CARD_PAUSED")), "{}", r.body);
}

async fn lithic_lifecycle_leaves_the_ledger_exact(app: TestApp) {
    let (agent, _) = agent_with_card(&app, json!({}), 100_000, "lithic", "card-life").await;
    let asa_path = "/webhooks/lithic/asa";
    let events = "/webhooks/lithic";
    assert_eq!(
        lithic(&app, asa_path, &asa("tx-a", "card-life", 2_000, "5734", "USA")).await.body["result"],
        "APPROVED"
    );
    // authorization → partial clearing → return; each update repeats the earlier events
    let auth = lithic_event("ev-a1", "AUTHORIZATION", 2_000, "USD");
    let clearing = lithic_event("ev-a2", "CLEARING", 1_500, "USD");
    let ret = lithic_event("ev-a3", "RETURN", 500, "USD");
    let r = lithic(&app, events, &lithic_transaction("tx-a", "card-life", json!([auth, clearing]))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(balance(&app, &agent).await, (0, 1_500, 0, 98_500));
    for _ in 0..2 {
        lithic(&app, events, &lithic_transaction("tx-a", "card-life", json!([auth, clearing, ret]))).await;
    }
    assert_eq!(balance(&app, &agent).await, (0, 1_500, 500, 99_000));
    // authorization → partial reversal → expiry of the rest
    lithic(&app, asa_path, &asa("tx-b", "card-life", 3_000, "5734", "USA")).await;
    let rev = lithic_event("ev-b2", "AUTHORIZATION_REVERSAL", 1_000, "USD");
    lithic(
        &app,
        events,
        &lithic_transaction("tx-b", "card-life", json!([lithic_event("ev-b1", "AUTHORIZATION", 3_000, "USD"), rev])),
    )
    .await;
    assert_eq!(balance(&app, &agent).await.0, 2_000);
    let exp = lithic_event("ev-b3", "AUTHORIZATION_EXPIRY", 2_000, "USD");
    lithic(&app, events, &lithic_transaction("tx-b", "card-life", json!([rev, exp]))).await;
    assert_eq!(balance(&app, &agent).await, (0, 1_500, 500, 99_000));
    // advice: Lithic approved without asking (a stand-in), then the amount changed
    let advice = lithic_event("ev-c1", "AUTHORIZATION_ADVICE", 800, "USD");
    lithic(&app, events, &lithic_transaction("tx-c", "card-life", json!([advice]))).await;
    assert_eq!(balance(&app, &agent).await.0, 800);
    let advice2 = lithic_event("ev-c2", "AUTHORIZATION_ADVICE", 600, "USD");
    for _ in 0..2 {
        // Delivered again after the later change, the first advice must not set the hold back.
        let r = lithic(&app, events, &lithic_transaction("tx-c", "card-life", json!([advice, advice2]))).await;
        assert_eq!(balance(&app, &agent).await.0, 600, "{}", r.body);
    }
    // an advice for more: the hold grows to it, once however often it is delivered
    let advice3 = lithic_event("ev-c3", "AUTHORIZATION_ADVICE", 900, "USD");
    for _ in 0..2 {
        let r = lithic(&app, events, &lithic_transaction("tx-c", "card-life", json!([advice, advice2, advice3]))).await;
        assert_eq!(balance(&app, &agent).await.0, 900, "{}", r.body);
    }
    // a force post: a clearing with no authorization at all
    lithic(
        &app,
        events,
        &lithic_transaction("tx-d", "card-life", json!([lithic_event("ev-d1", "CLEARING", 250, "USD")])),
    )
    .await;
    assert_eq!(balance(&app, &agent).await, (900, 1_750, 500, 97_850));
    // other event types are acknowledged and change nothing
    let r = lithic(&app, events, &json!({"event_type": "card.created", "token": "c"})).await;
    assert_eq!((r.status, r.body["applied"].as_i64()), (StatusCode::OK, Some(0)));
}

async fn a_capture_in_another_currency_converts_at_the_authorizations_rate(app: TestApp) {
    // The agent counts in EUR; the card and its captures are in USD.
    let (agent, _) = agent_with_card(&app, json!({"currency": "EUR"}), 100_000, "lithic", "card-fx").await;
    assert_eq!(
        lithic(&app, "/webhooks/lithic/asa", &asa("tx-fx", "card-fx", 1_100, "5734", "USA")).await.body["result"],
        "APPROVED"
    );
    let (_, page) = app.get(&format!("/v1/agents/{agent}/ledger")).await;
    let auth = page["data"].as_array().unwrap().iter().find(|e| e["type"] == "authorization").cloned();
    let held = auth.as_ref().and_then(|a| a["cap"]["amount"].as_i64()).unwrap_or_else(|| panic!("{page}"));
    assert!(held > 0 && held != 1_100, "converted to EUR: {page}");
    assert_eq!(balance(&app, &agent).await.0, held);
    let clearing = lithic_event("ev-fx", "CLEARING", 1_000, "USD");
    lithic(&app, "/webhooks/lithic", &lithic_transaction("tx-fx", "card-fx", json!([clearing]))).await;
    let expected = (1_000 * held + 1_099) / 1_100; // rounded up, at the authorization's own rate
    assert_eq!(balance(&app, &agent).await, (0, expected, 0, 100_000 - expected));
}

// ---------------------------------------------------------------- Marqeta

fn jit(token: &str, method: &str, card: &str, amount: &str, original: Option<&str>) -> Value {
    let mut funding = json!({"token": token, "method": method, "user_token": "user-1", "acting_user_token": "user-1",
        "amount": amount, "memo": "spendgate test"});
    if let Some(o) = original {
        funding["original_jit_funding_token"] = json!(o);
    }
    json!({"type": "authorization", "state": "PENDING", "token": format!("txn-{token}"), "user_token": "user-1",
        "card_token": card, "currency_code": "USD", "amount": amount,
        "gpa_order": {"token": format!("gpa-{token}"), "amount": amount, "currency_code": "USD", "jit_funding": funding},
        "card_acceptor": {"mid": "000000091234", "mcc": "5734", "name": "OPENAI *API", "country_code": "USA"}})
}

async fn marqeta_jit_funding_decides_and_follows_the_lifecycle(app: TestApp) {
    let policy = json!({"limits": [{"id": "daily", "scope": "agent", "window": {"rolling": "24h"}, "amount": 5_000}]});
    let (agent, _) = agent_with_card(&app, policy, 100_000, "marqeta", "mq-card-1").await;
    let r = marqeta(&app, &jit("jf-1", "pgfs.authorization", "mq-card-1", "20.00", None)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["jit_funding"]["token"], "jf-1");
    assert_eq!(r.body["jit_funding"]["amount"], "20.00", "echoed as received");
    assert!(r.body["jit_funding"]["decline_reason"].is_null());
    assert_eq!(balance(&app, &agent).await.0, 2_000);
    // An amount past decimal arithmetic's range once panicked the handler (an empty reply): now a 400.
    for huge in [json!(7.93e26), json!("793000000000000000000000000.00")] {
        let mut message = jit("jf-huge", "pgfs.authorization", "mq-card-1", "1.00", None);
        message["gpa_order"]["jit_funding"]["amount"] = huge.clone();
        let r = marqeta(&app, &message).await;
        assert_eq!(
            (r.status, r.body["error"]["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some("validation_failed")),
            "{huge}: {}",
            r.body
        );
    }
    assert_eq!(balance(&app, &agent).await.0, 2_000);

    let over = marqeta(&app, &jit("jf-2", "pgfs.authorization", "mq-card-1", "35.00", None)).await;
    assert_eq!(over.status, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(over.body["jit_funding"]["decline_reason"], "AMOUNT_LIMIT_EXCEEDED");
    assert_eq!(over.body["jit_funding"]["token"], "jf-2");
    let unknown = marqeta(&app, &jit("jf-3", "pgfs.authorization", "mq-nope", "1.00", None)).await;
    assert_eq!(
        (unknown.status, unknown.body["jit_funding"]["decline_reason"].as_str()),
        (StatusCode::PAYMENT_REQUIRED, Some("INVALID_CARD"))
    );

    // clearing (partial) → refund, each twice
    for _ in 0..2 {
        let r = marqeta(&app, &jit("jf-1c", "pgfs.authorization.clearing", "mq-card-1", "15.00", Some("jf-1"))).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        marqeta(&app, &jit("jf-1r", "pgfs.refund", "mq-card-1", "5.00", Some("jf-1"))).await;
    }
    assert_eq!(balance(&app, &agent).await, (0, 1_500, 500, 99_000));
    // authorization → reversal
    marqeta(&app, &jit("jf-4", "pgfs.authorization", "mq-card-1", "30.00", None)).await;
    marqeta(&app, &jit("jf-4v", "pgfs.authorization.reversal", "mq-card-1", "30.00", Some("jf-4"))).await;
    assert_eq!(balance(&app, &agent).await.0, 0);
    // a force post: a clearing with no original authorization
    marqeta(&app, &jit("jf-5", "pgfs.authorization.clearing", "mq-card-1", "2.50", None)).await;
    assert_eq!(balance(&app, &agent).await, (0, 1_750, 500, 98_750));

    // Credentials: none, wrong, and malformed bodies.
    let body = serde_json::to_vec(&jit("jf-6", "pgfs.authorization", "mq-card-1", "1.00", None)).unwrap();
    for auth in [None, Some(BasicAuth::header(MARQETA_USER, "wrong-password-0123456789")), Some("Basic".to_owned())] {
        let headers: Vec<(&str, String)> = auth.into_iter().map(|a| ("Authorization", a)).collect();
        assert_eq!(
            post_raw(&app, "/webhooks/marqeta/jit", &headers, body.clone()).await.status,
            StatusCode::UNAUTHORIZED
        );
    }
    let auth = [("Authorization", BasicAuth::header(MARQETA_USER, MARQETA_PASSWORD))];
    let r = post_raw(&app, "/webhooks/marqeta/jit", &auth, b"[1,".to_vec()).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = post_raw(&app, "/webhooks/marqeta/jit", &auth, br#"{"card_token": "mq-card-1"}"#.to_vec()).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "no jit_funding");
    let r = marqeta(&app, &jit("jf-7", "pgfs.authorization", "mq-card-1", "1.005", None)).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "finer than a cent");
    assert_eq!(balance(&app, &agent).await, (0, 1_750, 500, 98_750));
}

async fn unconfigured_processors_answer_404(app: TestApp) {
    drop(app);
    let app = common::spawn_with(common::Backend::Sqlite, |c| {
        c.stripe_webhook_secret = None;
        c.lithic_webhook_secret = None;
        c.marqeta_username = None;
        c.marqeta_password = None;
    })
    .await;
    for path in [
        "/webhooks/stripe/authorizations",
        "/webhooks/stripe",
        "/webhooks/lithic/asa",
        "/webhooks/lithic",
        "/webhooks/marqeta/jit",
    ] {
        let r = post_raw(&app, path, &[], b"{}".to_vec()).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}");
    }
}

on_both_backends!(
    stripe_decides_in_its_own_format,
    stripe_refuses_what_it_did_not_sign,
    stripe_lifecycle_leaves_the_ledger_exact,
    lithic_answers_asa_with_its_codes,
    lithic_lifecycle_leaves_the_ledger_exact,
    marqeta_jit_funding_decides_and_follows_the_lifecycle,
);

/// The built-in rate table is older than the default 4-day limit: these tests accept its age.
async fn with_aged_rates(backend: common::Backend) -> TestApp {
    common::spawn_with(backend, |c| c.fx_max_age_hours = 1_000_000).await
}

#[actix_web::test]
async fn a_capture_in_another_currency_sqlite() {
    a_capture_in_another_currency_converts_at_the_authorizations_rate(with_aged_rates(common::Backend::Sqlite).await)
        .await;
}

#[actix_web::test]
async fn a_capture_in_another_currency_postgres() {
    if common::postgres_url().is_some() {
        a_capture_in_another_currency_converts_at_the_authorizations_rate(
            with_aged_rates(common::Backend::Postgres).await,
        )
        .await;
    }
}

#[actix_web::test]
async fn processors_without_credentials_answer_404() {
    unconfigured_processors_answer_404(common::spawn(common::Backend::Sqlite).await).await;
}

// ---------------------------------------------------------------- Issuing at the processor

/// The app with Stripe's and Lithic's issuing APIs at the local stand-in.
async fn issuing_app(backend: Backend, api: &ProcessorApi) -> TestApp {
    let base = api.base.clone();
    spawn_with(backend, move |c| {
        c.stripe_api_key = Some(Secret::new(STRIPE_KEY));
        c.stripe_api_url = base.clone();
        c.stripe_cardholder = Some(STRIPE_CARDHOLDER.into());
        c.lithic_api_key = Some(Secret::new(LITHIC_KEY));
        c.lithic_api_url = base;
    })
    .await
}

macro_rules! with_processor_api {
    ($($case:ident),* $(,)?) => {
        $(
            mod $case {
                use super::*;

                #[actix_web::test]
                async fn sqlite() {
                    let api = ProcessorApi::start().await;
                    super::$case(issuing_app(Backend::Sqlite, &api).await, api).await;
                }

                #[actix_web::test]
                #[cfg_attr(not(postgres_tests), ignore = "needs PostgreSQL: set SPENDGATE_TEST_DATABASE_URL")]
                async fn postgres() {
                    assert!(common::postgres_url().is_some(), "SPENDGATE_TEST_DATABASE_URL is not set");
                    let api = ProcessorApi::start().await;
                    super::$case(issuing_app(Backend::Postgres, &api).await, api).await;
                }
            }
        )*
    };
}

with_processor_api!(
    cards_issued_at_stripe_mirror_their_rules_and_follow_every_change,
    cards_issued_at_lithic_carry_their_limit_and_state,
    a_processor_that_refuses_or_fails_leaves_no_card,
);

async fn card_post(app: &TestApp, agent: &str, card: &str, action: &str) {
    let (status, body) =
        app.post(&format!("/v1/agents/{agent}/cards/{card}/{action}"), json!({"reason": "test"})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

async fn cards_issued_at_stripe_mirror_their_rules_and_follow_every_change(app: TestApp, api: ProcessorApi) {
    let agent = app.create_agent("stripe-issued").await;
    app.fund(&agent, 100_000).await;
    let card = app
        .issue_card(
            &agent,
            json!({"label": "openai", "processor": "stripe",
            "policy": {"mcc": {"allow": ["5734"]}, "countries": {"allow": ["US"]}, "per_transaction": 2_500}}),
        )
        .await;
    let (card_id, stripe_id) = (card["id"].as_str().unwrap(), card["processor_card_id"].as_str().unwrap().to_owned());
    assert!(stripe_id.starts_with("ic_1Test"), "{card}");
    assert_eq!(
        (card["last4"].as_str(), card["exp_month"].as_i64(), card["exp_year"].as_i64()),
        (Some("0005"), Some(8), Some(2029)),
        "Stripe's card, as Stripe made it"
    );
    assert_eq!((card["processor_managed"].as_bool(), &card["number"]), (Some(true), &Value::Null));
    let seen = api.seen();
    assert_eq!(seen.len(), 1);
    let created = &seen[0];
    assert_eq!((created.method.as_str(), created.path.as_str()), ("POST", "/v1/issuing/cards"));
    assert_eq!(created.field("cardholder"), Some(STRIPE_CARDHOLDER));
    assert_eq!((created.field("currency"), created.field("type")), (Some("usd"), Some("virtual")));
    assert_eq!(created.field("spending_controls[allowed_categories][0]"), Some("computer_software_stores"));
    assert_eq!(created.field("spending_controls[allowed_merchant_countries][0]"), Some("US"));
    assert_eq!(created.field("spending_controls[spending_limits][0][amount]"), Some("2500"));
    assert_eq!(created.field("spending_controls[spending_limits][0][interval]"), Some("per_authorization"));
    assert_eq!(created.field("metadata[spendgate_card_id]"), Some(card_id));
    assert_eq!(created.header("idempotency-key"), card_id, "one card per issue, whatever the retries");
    assert!(!created.header("stripe-version").is_empty());

    // Stripe's questions about its new card are decided by the card's rules here.
    assert_eq!(stripe_ask(&app, "iauth_new_1", &stripe_id, 2_000, "5734").await.body["approved"], true);
    assert_eq!(stripe_ask(&app, "iauth_new_2", &stripe_id, 3_000, "5734").await.body["approved"], false);

    // Every change here follows at Stripe.
    let update = format!("/v1/issuing/cards/{stripe_id}");
    card_post(&app, &agent, card_id, "freeze").await;
    let last = api.seen().pop().unwrap();
    assert_eq!((last.path.as_str(), last.field("status")), (update.as_str(), Some("inactive")));
    assert_eq!(last.field("spending_controls[allowed_categories][0]"), Some("computer_software_stores"));
    let (status, body) = app.put(&format!("/v1/agents/{agent}/cards/{card_id}/policy"), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let last = api.seen().pop().unwrap();
    assert_eq!(last.field("status"), Some("inactive"), "still frozen");
    assert_eq!(last.field("spending_controls[allowed_categories]"), Some(""), "a wider policy clears the mirror");
    assert_eq!(last.field("spending_controls[spending_limits]"), Some(""));
    card_post(&app, &agent, card_id, "unfreeze").await;
    assert_eq!(api.seen().pop().unwrap().field("status"), Some("active"));
    card_post(&app, &agent, card_id, "close").await;
    let last = api.seen().pop().unwrap();
    assert_eq!((last.field("status"), last.form.len()), (Some("canceled"), 1));

    // A registered card (made at Stripe by someone else) is never changed there.
    let before = api.seen().len();
    let registered = app
        .issue_card(
            &agent,
            json!({"label": "aws", "processor": "stripe", "processor_card_id": "ic_theirs", "last4": "1111"}),
        )
        .await;
    assert_eq!(registered["processor_managed"], false);
    card_post(&app, &agent, registered["id"].as_str().unwrap(), "freeze").await;
    assert_eq!(api.seen().len(), before, "nothing sent for a registered card");
}

async fn cards_issued_at_lithic_carry_their_limit_and_state(app: TestApp, api: ProcessorApi) {
    let agent = app.create_agent("lithic-issued").await;
    let card = app
        .issue_card(
            &agent,
            json!({"label": "anthropic", "processor": "lithic", "single_use": true,
            "policy": {"per_transaction": 1_500}}),
        )
        .await;
    let token = card["processor_card_id"].as_str().unwrap().to_owned();
    assert_eq!(
        (card["last4"].as_str(), card["exp_month"].as_i64(), card["exp_year"].as_i64()),
        (Some("4142"), Some(6), Some(2030))
    );
    let created = &api.seen()[0];
    assert_eq!((created.method.as_str(), created.path.as_str()), ("POST", "/v1/cards"));
    assert_eq!(created.header("authorization"), LITHIC_KEY, "Lithic takes the bare key");
    assert_eq!(
        created.json,
        json!({"type": "SINGLE_USE", "memo": "anthropic", "state": "OPEN", "spend_limit": 1_500,
            "spend_limit_duration": "TRANSACTION"})
    );
    let card_id = card["id"].as_str().unwrap();
    card_post(&app, &agent, card_id, "freeze").await;
    let last = api.seen().pop().unwrap();
    assert_eq!((last.method.as_str(), last.path.clone()), ("PATCH", format!("/v1/cards/{token}")));
    assert_eq!(last.json, json!({"state": "PAUSED", "spend_limit": 1_500, "spend_limit_duration": "TRANSACTION"}));
    let (status, _) = app.put(&format!("/v1/agents/{agent}/cards/{card_id}/policy"), json!({})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(api.seen().pop().unwrap().json["spend_limit"], 0, "0 removes Lithic's limit");
    card_post(&app, &agent, card_id, "close").await;
    assert_eq!(api.seen().pop().unwrap().json, json!({"state": "CLOSED"}));

    // Lithic issues USD cards only: refused before anything is sent.
    let before = api.seen().len();
    let (status, body) = app
        .post(&format!("/v1/agents/{agent}/cards"), json!({"label": "eu", "processor": "lithic", "currency": "EUR"}))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("processor_currency_unsupported"))
    );
    assert_eq!(api.seen().len(), before);
}

async fn a_processor_that_refuses_or_fails_leaves_no_card(app: TestApp, api: ProcessorApi) {
    let agent = app.create_agent("unlucky").await;
    api.set_mode(Mode::Refuse);
    let (status, body) =
        app.post(&format!("/v1/agents/{agent}/cards"), json!({"label": "x", "processor": "stripe"})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("processor_refused")));
    assert!(
        body["error"]["message"].as_str().unwrap().contains("not eligible"),
        "Stripe's reason is passed on: {body}"
    );
    api.set_mode(Mode::Down);
    let (status, body) =
        app.post(&format!("/v1/agents/{agent}/cards"), json!({"label": "x", "processor": "lithic"})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::BAD_GATEWAY, Some("upstream_failed")));
    let (_, listed) = app.get(&format!("/v1/agents/{agent}/cards")).await;
    assert_eq!(listed["data"], json!([]), "nothing is recorded for a card the processor did not make");
    let (status, _) =
        app.post("/v1/agents/agt_01JZZZZZZZZZZZZZZZZZZZZZZZ/cards", json!({"label": "x", "processor": "stripe"})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(api.seen().len(), 2, "an unknown agent's card is not made at Stripe");

    // A change that cannot reach the processor still holds here, and the trail says so.
    api.set_mode(Mode::Normal);
    let card = app.issue_card(&agent, json!({"label": "y", "processor": "stripe"})).await;
    let card_id = card["id"].as_str().unwrap();
    api.set_mode(Mode::Down);
    card_post(&app, &agent, card_id, "freeze").await;
    let (_, events) = app.get(&format!("/v1/agents/{agent}/cards/{card_id}/events")).await;
    let kinds: Vec<&str> = events["data"].as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert!(kinds.contains(&"frozen") && kinds.contains(&"processor_sync_failed"), "{kinds:?}");
    let (_, after) = app.get(&format!("/v1/agents/{agent}/cards/{card_id}")).await;
    assert_eq!(after["status"], "frozen");
}

#[actix_web::test]
async fn without_an_api_key_a_processor_card_must_be_registered() {
    let app = common::spawn(Backend::Sqlite).await;
    let agent = app.create_agent("no keys").await;
    let (status, body) =
        app.post(&format!("/v1/agents/{agent}/cards"), json!({"label": "x", "processor": "stripe"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["error"]["message"].as_str().unwrap().contains("SPENDGATE_STRIPE_API_KEY"), "{body}");
}
