//! The USDC rail end to end: agents pay a local x402 server (v1 and v2) from their wallets through
//! the same policy core and ledger as card spend. On SQLite and PostgreSQL.

mod common;
#[path = "common/x402_server.rs"]
mod x402_server;

use std::rc::Rc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use common::{Backend, TEST_TOKEN, TestApp, spawn_with};
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use x402_server::X402Server;

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

impl Answer {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }
}

async fn post_keyed(app: &TestApp, path: &str, api_key: &str, idempotency: Option<&str>, body: Value) -> Answer {
    let mut request = app.http.post(format!("{}{path}", app.base)).bearer_auth(api_key).json(&body);
    if let Some(key) = idempotency {
        request = request.header("Idempotency-Key", key);
    }
    let response = request.send().await.expect("request sent");
    let (status, headers) = (response.status(), response.headers().clone());
    let text = response.text().await.unwrap();
    Answer { status, headers, body: serde_json::from_str(&text).unwrap_or(Value::String(text)) }
}

async fn fetch(app: &TestApp, agent: &str, key: &str, body: Value) -> Answer {
    post_keyed(app, &format!("/v1/agents/{agent}/x402/fetch"), &app.owner_key, Some(key), body).await
}

async fn wallet_address(app: &TestApp, agent: &str) -> String {
    let (status, wallet) = app.get(&format!("/v1/agents/{agent}/wallet")).await;
    assert_eq!(status, StatusCode::OK, "{wallet}");
    wallet["address"].as_str().unwrap().to_owned()
}

/// A funded agent (with its wallet) and the local x402 server.
async fn setup(app: &TestApp, balance: i64) -> (String, X402Server) {
    let agent = app.create_agent("payer").await;
    if balance > 0 {
        app.fund(&agent, balance).await;
    }
    (agent, X402Server::start(TEST_TOKEN).await)
}

async fn ledger_authorizations(app: &TestApp, agent: &str) -> Vec<Value> {
    let (status, page) = app.get(&format!("/v1/agents/{agent}/ledger")).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    page["data"].as_array().unwrap().iter().filter(|e| e["type"] == "authorization").cloned().collect()
}

async fn pays_a_v2_api_and_answers_a_retry_without_paying_again(app: TestApp) {
    let (agent, server) = setup(&app, 1_000).await;
    let address = wallet_address(&app, &agent).await;
    let url = server.url("/v2/paid");
    let paid = fetch(&app, &agent, "call-1", json!({"url": url, "trace_id": "research-7"})).await;
    assert_eq!(paid.status, StatusCode::OK, "{}", paid.body);
    assert_eq!(paid.body["data"], "paid content");
    assert_eq!(paid.header("x-upstream"), "yes", "upstream headers pass through");
    assert_eq!(paid.header("spendgate-settlement"), "settled");
    assert_eq!(paid.header("spendgate-cost"), "25", "250000 atomic units = 25 cents");
    assert_eq!(paid.header("spendgate-remaining"), "975");
    let settled = server.settled();
    assert_eq!(settled.len(), 1);
    assert_eq!(settled[0].payer.to_checksum(None), address, "signed by the agent's wallet");
    assert_eq!(settled[0].value, alloy_primitives::U256::from(250_000), "exactly the price");

    let balance = app.balance(&agent).await;
    assert_eq!((balance["spent"].as_i64(), balance["held"].as_i64()), (Some(25), Some(0)), "{balance}");
    let auths = ledger_authorizations(&app, &agent).await;
    assert_eq!(auths.len(), 1);
    let a = &auths[0];
    assert_eq!(
        (a["rail"].as_str(), a["status"].as_str(), a["trace_id"].as_str()),
        (Some("usdc"), Some("posted"), Some("research-7"))
    );
    assert_eq!(a["merchant"]["id"], x402_server::PAY_TO);
    assert_eq!(a["x402"]["network"], "eip155:84532");
    assert_eq!(a["x402"]["asset"], server.token.to_checksum(None));
    assert_eq!(a["x402"]["pay_to"], x402_server::PAY_TO);
    assert_eq!(a["x402"]["transaction_hash"], json!(settled[0].transaction));
    // The export carries the payment's transaction beside the hold and its post.
    let (status, export) = app.get(&format!("/v1/ledger/export?format=jsonl&rail=usdc&agent={agent}")).await;
    assert_eq!(status, StatusCode::OK);
    let lines: Vec<Value> = export.as_str().unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let kinds: Vec<(&str, &str)> =
        lines.iter().map(|l| (l["kind"].as_str().unwrap(), l["transaction_hash"].as_str().unwrap())).collect();
    let hash = settled[0].transaction.to_string();
    assert_eq!(kinds, [("authorization", hash.as_str()), ("post", hash.as_str())]);
    assert_eq!((lines[0]["processor"].as_str(), lines[0]["amount"].as_str()), (Some("x402"), Some("0.25")));

    // The same key again: the first answer, no second payment, no second signature.
    let again = fetch(&app, &agent, "call-1", json!({"url": url, "trace_id": "research-7"})).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.body, paid.body);
    assert_eq!(again.header("spendgate-payment"), paid.header("spendgate-payment"));
    assert_eq!(server.payment_headers().len(), 1);
    assert_eq!(app.balance(&agent).await["spent"], 25);
    // The same key for another request is refused.
    let other = fetch(&app, &agent, "call-1", json!({"url": server.url("/v2/paid?price=10000")})).await;
    assert_eq!(
        (other.status, other.body["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("idempotency_conflict"))
    );
}

/// An MPP (`WWW-Authenticate: Payment`, evm charge) challenge: paid once by an EIP-3009
/// authorization bound to the challenge, recorded like an x402 payment, replayed not re-signed.
async fn pays_an_mpp_challenge_once_and_records_it(app: TestApp) {
    let (agent, server) = setup(&app, 1_000).await;
    let address = wallet_address(&app, &agent).await;
    let url = server.url("/mpp/evm?price=250000");
    let paid = fetch(&app, &agent, "mpp-1", json!({"url": url, "trace_id": "PR-9"})).await;
    assert_eq!(paid.status, StatusCode::OK, "{}", paid.body);
    assert_eq!((paid.body["data"].as_str(), paid.header("spendgate-settlement")), (Some("paid content"), "settled"));
    assert_eq!(paid.header("spendgate-cost"), "25");
    let settled = server.settled();
    assert_eq!(settled.len(), 1, "the server verified the challenge binding, the nonce and the signature");
    assert_eq!(
        (settled[0].payer.to_checksum(None), settled[0].value),
        (address.clone(), alloy_primitives::U256::from(250_000))
    );
    let credential: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(&server.payment_headers()[0]).unwrap(),
    )
    .unwrap();
    assert_eq!(
        (credential["challenge"]["method"].as_str(), credential["payload"]["type"].as_str()),
        (Some("evm"), Some("authorization"))
    );
    assert_eq!(credential["source"], format!("did:pkh:eip155:84532:{address}"));

    let payment = paid.header("spendgate-payment").to_owned();
    let (_, view) = app.get(&format!("/v1/agents/{agent}/x402/payments/{payment}")).await;
    assert_eq!((view["protocol"].as_str(), view["status"].as_str()), (Some("mpp"), Some("settled")), "{view}");
    assert!(view["x402_version"].is_null());
    assert_eq!(view["transaction_hash"], json!(settled[0].transaction));
    let auths = ledger_authorizations(&app, &agent).await;
    assert_eq!(auths.len(), 1);
    assert_eq!((auths[0]["status"].as_str(), auths[0]["trace_id"].as_str()), (Some("posted"), Some("PR-9")));
    assert_eq!(app.balance(&agent).await["spent"], 25);

    // The same key again: the first answer, nothing signed or sent again.
    let again = fetch(&app, &agent, "mpp-1", json!({"url": url, "trace_id": "PR-9"})).await;
    assert_eq!((again.status, again.header("spendgate-payment")), (StatusCode::OK, payment.as_str()));
    assert_eq!(server.payment_headers().len(), 1);

    // The same policy: past the per-call cap, nothing is signed.
    let policy = json!({"x402": {"per_call": 10}});
    assert_eq!(app.put(&format!("/v1/agents/{agent}/policy"), policy).await.0, StatusCode::OK);
    let capped = fetch(&app, &agent, "mpp-2", json!({"url": url})).await;
    assert_eq!(capped.body["error"]["code"], "per_call_exceeded", "{}", capped.body);
    assert_eq!(server.payment_headers().len(), 1);
    assert_eq!(app.put(&format!("/v1/agents/{agent}/policy"), json!({})).await.0, StatusCode::OK);

    // Offered both, spendgate pays x402 when it can, else MPP: one payment either way.
    let both = fetch(&app, &agent, "both-1", json!({"url": server.url("/both?price=10000")})).await;
    assert_eq!(both.status, StatusCode::OK, "{}", both.body);
    let (_, view) = app.get(&format!("/v1/agents/{agent}/x402/payments/{}", both.header("spendgate-payment"))).await;
    assert_eq!((view["protocol"].as_str(), view["x402_version"].as_i64()), (Some("x402"), Some(2)));
    let fallback = fetch(&app, &agent, "both-2", json!({"url": server.url("/both?price=10000&x402=unpayable")})).await;
    assert_eq!(fallback.status, StatusCode::OK, "{}", fallback.body);
    let (_, view) =
        app.get(&format!("/v1/agents/{agent}/x402/payments/{}", fallback.header("spendgate-payment"))).await;
    assert_eq!(view["protocol"], "mpp");
    assert_eq!(server.payment_headers().len(), 3, "one payment per call, never both protocols");
    assert_eq!(server.settled().len(), 3);
    assert_eq!(app.balance(&agent).await["spent"], 27);
}

/// Against mppx, the MPP reference SDK's server (its evm charge): paid by MPP where it offers only
/// MPP, and by x402 where it offers both; its own verification accepts each, once.
async fn pays_the_mpp_reference_servers_challenges(app: TestApp) {
    let (agent, server) = setup(&app, 1_000).await;
    let token = server.token.to_checksum(None);
    // Installed and started beside this test's server, which answers on this thread meanwhile.
    let mppx = actix_web::rt::task::spawn_blocking(move || {
        let env = [
            ("TOKEN", token.as_str()),
            ("PAY_TO", x402_server::PAY_TO),
            ("TOKEN_NAME", x402_server::TOKEN_NAME),
            ("TOKEN_VERSION", x402_server::TOKEN_VERSION),
        ];
        let home = common::node::node_with(&["mppx@0.11.0", "viem@2.54.0"]);
        common::node::start_script(&home, "tests/mpp/server.mjs", &env)
    })
    .await
    .expect("the reference server starts");
    let base = format!("http://127.0.0.1:{}", mppx.first["port"]);
    let mpp = fetch(&app, &agent, "ref-1", json!({"url": format!("{base}/mpp-only")})).await;
    let both = fetch(&app, &agent, "ref-2", json!({"url": format!("{base}/both")})).await;
    let settled = mppx.stop();
    for (paid, protocol) in [(&mpp, "mpp"), (&both, "x402")] {
        assert_eq!((paid.status, paid.body["data"].as_str()), (StatusCode::OK, Some("paid by mppx")), "{}", paid.body);
        assert_eq!(paid.header("spendgate-settlement"), "settled", "the receipt was read");
        let (_, view) =
            app.get(&format!("/v1/agents/{agent}/x402/payments/{}", paid.header("spendgate-payment"))).await;
        assert_eq!(view["protocol"], protocol, "{view}");
    }
    assert_eq!(settled.len(), 2, "{settled:?}");
    assert!(settled.iter().all(|s| s["settled"]["value"] == "250000" && s["settled"]["to"] == x402_server::PAY_TO));
    assert_eq!(app.balance(&agent).await["spent"], 50);
}

async fn pays_a_v1_api_with_x_payment(app: TestApp) {
    let (agent, server) = setup(&app, 1_000).await;
    let paid = fetch(&app, &agent, "v1-call", json!({"url": server.url("/v1/paid?price=10000")})).await;
    assert_eq!(paid.status, StatusCode::OK, "{}", paid.body);
    assert_eq!(paid.header("spendgate-settlement"), "settled");
    assert_eq!(paid.header("spendgate-cost"), "1");
    let header = &server.payment_headers()[0];
    let payload: Value = serde_json::from_slice(&BASE64.decode(header).unwrap()).unwrap();
    assert_eq!((payload["x402Version"].as_u64(), payload["network"].as_str()), (Some(1), Some("base-sepolia")));
    assert_eq!(app.balance(&agent).await["spent"], 1);
}

async fn policy_declines_sign_nothing(app: TestApp) {
    let (agent, server) = setup(&app, 1_000).await;
    // Allowed hosts name the port when the URL does: 127.0.0.1 alone does not match 127.0.0.1:<port>.
    let policy = json!({"x402": {"per_call": 30, "allow_hosts": ["127.0.0.1"]}});
    let (status, body) = app.put(&format!("/v1/agents/{agent}/policy"), policy).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let refused = fetch(&app, &agent, "host", json!({"url": server.url("/v2/paid")})).await;
    assert_eq!(refused.body["error"]["code"], "host_not_allowed", "{}", refused.body);
    let port = server.base.rsplit(':').next().unwrap().to_owned();
    let policy = json!({"x402": {"per_call": 30, "allow_hosts": [format!("127.0.0.1:{port}")]}});
    app.put(&format!("/v1/agents/{agent}/policy"), policy).await;

    let cases = [
        ("/v2/paid?price=400000", None, "per_call_exceeded", "agent.x402.per_call"),
        ("/v2/paid", Some(20), "per_call_exceeded", "request.max_amount"),
    ];
    for (i, (path, max, code, rule)) in cases.into_iter().enumerate() {
        let refused =
            fetch(&app, &agent, &format!("no-{i}"), json!({"url": server.url(path), "max_amount": max})).await;
        assert_eq!(refused.status, StatusCode::PAYMENT_REQUIRED, "{}", refused.body);
        assert_eq!(refused.body["error"]["code"], code);
        assert!(refused.body["error"]["message"].as_str().unwrap().contains(rule), "{}", refused.body);
    }
    // Frozen: nothing is paid.
    let (status, _) = app.post(&format!("/v1/agents/{agent}/freeze"), json!({"reason": "test"})).await;
    assert_eq!(status, StatusCode::OK);
    let refused = fetch(&app, &agent, "frozen", json!({"url": server.url("/v2/paid")})).await;
    assert_eq!(refused.body["error"]["code"], "agent_frozen", "{}", refused.body);

    assert!(server.payment_headers().is_empty(), "a declined payment is never signed or sent");
    // The host outside allow_hosts was never contacted; each other attempt read the price, no more.
    assert_eq!(server.unpaid(), 3);
    let balance = app.balance(&agent).await;
    assert_eq!((balance["held"].as_i64(), balance["spent"].as_i64()), (Some(0), Some(0)));
    let auths = ledger_authorizations(&app, &agent).await;
    assert_eq!(auths.len(), 3, "each declined payment is recorded as an attempt");
    assert!(auths.iter().all(|a| a["status"] == "declined" && a["rail"] == "usdc"));

    // Unfrozen and within the rules, it pays.
    app.post(&format!("/v1/agents/{agent}/unfreeze"), json!({"reason": "test"})).await;
    let paid = fetch(&app, &agent, "ok", json!({"url": server.url("/v2/paid")})).await;
    assert_eq!(paid.status, StatusCode::OK, "{}", paid.body);
    // Insufficient funds: 975 left, a $10 call.
    let policy = json!({});
    app.put(&format!("/v1/agents/{agent}/policy"), policy).await;
    let poor = fetch(&app, &agent, "poor", json!({"url": server.url("/v2/paid?price=10000000")})).await;
    assert_eq!(poor.body["error"]["code"], "insufficient_funds", "{}", poor.body);
    assert_eq!(server.payment_headers().len(), 1);
}

async fn an_unknown_settlement_keeps_the_hold_and_a_retry_resends_the_same_payment(app: TestApp) {
    let (agent, server) = setup(&app, 1_000).await;
    for (mode, key) in [("silent", "s-1"), ("slow", "w-1")] {
        let before = server.payment_headers().len();
        let url = server.url(&format!("/v2/{mode}"));
        let first = fetch(&app, &agent, key, json!({"url": url})).await;
        match mode {
            // The answer came, without a settlement header: passed on, marked unknown.
            "silent" => {
                assert_eq!(first.status, StatusCode::OK, "{}", first.body);
                assert_eq!(first.header("spendgate-settlement"), "unknown");
            }
            // No answer in time: a 502 that says the payment is unknown and how to retry.
            _ => {
                assert_eq!(first.status, StatusCode::BAD_GATEWAY, "{}", first.body);
                assert!(first.body["error"]["message"].as_str().unwrap().contains("Idempotency-Key"));
            }
        }
        let balance = app.balance(&agent).await;
        assert_eq!(balance["held"], 25, "the hold stays while the outcome is unknown: {balance}");

        let retry = fetch(&app, &agent, key, json!({"url": url})).await;
        assert_eq!(retry.status, StatusCode::OK, "{}", retry.body);
        assert_eq!(retry.header("spendgate-settlement"), "settled");
        let headers = server.payment_headers();
        assert_eq!(headers.len(), before + 2);
        assert_eq!(headers[before], headers[before + 1], "the retry re-sent the same signed payment");
    }
    let balance = app.balance(&agent).await;
    assert_eq!((balance["held"].as_i64(), balance["spent"].as_i64()), (Some(0), Some(50)), "{balance}");
    assert_eq!(server.settled().len(), 2);
}

async fn a_failed_settlement_voids_the_hold(app: TestApp) {
    let (agent, server) = setup(&app, 1_000).await;
    let failed = fetch(&app, &agent, "r-1", json!({"url": server.url("/v2/reject")})).await;
    assert_eq!(failed.status, StatusCode::PAYMENT_REQUIRED, "the upstream answer is passed on");
    assert_eq!(failed.header("spendgate-settlement"), "failed");
    assert_eq!(failed.header("spendgate-cost"), "0");
    let balance = app.balance(&agent).await;
    assert_eq!(
        (balance["held"].as_i64(), balance["spent"].as_i64(), balance["available"].as_i64()),
        (Some(0), Some(0), Some(1_000))
    );
    let auths = ledger_authorizations(&app, &agent).await;
    assert_eq!((auths[0]["status"].as_str(), auths[0]["x402"]["status"].as_str()), (Some("voided"), Some("failed")));
    // A retry replays the failure; it does not sign again.
    let again = fetch(&app, &agent, "r-1", json!({"url": server.url("/v2/reject")})).await;
    assert_eq!(again.header("spendgate-settlement"), "failed");
    assert_eq!(server.payment_headers().len(), 1);
}

async fn one_agent_limit_spans_card_and_usdc_spend(app: TestApp) {
    let (agent, server) = setup(&app, 10_000).await;
    let policy = json!({"limits": [{"id": "daily", "scope": "agent", "window": {"rolling": "24h"}, "amount": 100}]});
    let (status, body) = app.put(&format!("/v1/agents/{agent}/policy"), policy).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let card = app.issue_card(&agent, json!({"label": "openai"})).await;
    let card = card["id"].as_str().unwrap();
    assert_eq!(app.authorize("card-1", card, 60).await["approved"], true);
    // 60 on the card + 25 in USDC fits; another 25 does not.
    let paid = fetch(&app, &agent, "u-1", json!({"url": server.url("/v2/paid")})).await;
    assert_eq!(paid.status, StatusCode::OK, "{}", paid.body);
    let refused = fetch(&app, &agent, "u-2", json!({"url": server.url("/v2/paid")})).await;
    assert_eq!(refused.body["error"]["code"], "limit_exceeded", "{}", refused.body);
    // And the USDC spend counts against the card's next authorization.
    let card_decision = app.authorize("card-2", card, 20).await;
    assert_eq!(
        (card_decision["approved"].as_bool(), card_decision["reason"].as_str()),
        (Some(false), Some("limit_exceeded"))
    );
    assert_eq!(app.authorize("card-3", card, 15).await["approved"], true);
    assert_eq!(server.settled().len(), 1);
}

async fn concurrent_payments_never_exceed_the_balance_and_one_key_signs_once(app: TestApp) {
    let (agent, server) = setup(&app, 100).await;
    let app = Rc::new(app);
    let url = server.url("/v2/paid");
    // Ten concurrent payments with their own keys: the balance pays four.
    let calls: Vec<_> = (0..10)
        .map(|i| {
            let (app, agent, url) = (app.clone(), agent.clone(), url.clone());
            actix_web::rt::spawn(async move { fetch(&app, &agent, &format!("c-{i}"), json!({"url": url})).await })
        })
        .collect();
    let mut statuses = Vec::new();
    for call in calls {
        statuses.push(call.await.unwrap().status);
    }
    let paid = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    assert_eq!(paid, 4, "100 cents pay four 25-cent calls: {statuses:?}");
    assert_eq!(server.settled().len(), 4);
    assert_eq!(app.balance(&agent).await["available"], 0);

    // Eight concurrent requests with one key: one payment, one signature.
    app.fund(&agent, 100).await;
    let same: Vec<_> = (0..8)
        .map(|_| {
            let (app, agent, url) = (app.clone(), agent.clone(), url.clone());
            actix_web::rt::spawn(async move { fetch(&app, &agent, "same-key", json!({"url": url})).await })
        })
        .collect();
    for call in same {
        let answer = call.await.unwrap();
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    }
    assert_eq!(server.settled().len(), 5);
    assert_eq!(server.payment_headers().len(), 5);
    assert_eq!(app.balance(&agent).await["spent"], 125);
}

async fn agents_that_make_the_call_themselves(app: TestApp) {
    let (agent, server) = setup(&app, 1_000).await;
    let agent_key = app.create_key("agent", Some(&agent)).await;
    // The agent calls the API, gets a 402, and asks spendgate for the payment header.
    let url = server.url("/v2/paid");
    let unpaid = app.http.get(&url).send().await.unwrap();
    assert_eq!(unpaid.status(), StatusCode::PAYMENT_REQUIRED);
    let required = unpaid.headers()["payment-required"].to_str().unwrap().to_owned();
    let path = format!("/v1/agents/{agent}/x402/authorize");
    let body = json!({"url": url, "payment_required": required});
    // Requirements an agent hands in name whoever it likes: without a policy listing the
    // recipient, nothing is signed.
    let unlisted = post_keyed(&app, &path, &agent_key, Some("self-0"), body.clone()).await;
    assert_eq!(
        (unlisted.status, unlisted.body["error"]["code"].as_str()),
        (StatusCode::PAYMENT_REQUIRED, Some("recipient_not_allowed")),
        "{}",
        unlisted.body
    );
    assert!(unlisted.body["error"]["message"].as_str().unwrap().contains("request.pay_to"), "{}", unlisted.body);
    let policy = json!({"x402": {"pay_to": [format!("eip155:84532:{}", x402_server::PAY_TO)]}});
    let (status, set) = app.put(&format!("/v1/agents/{agent}/policy"), policy).await;
    assert_eq!(status, StatusCode::OK, "{set}");
    // The agent swaps in its own address, on an allowed host: refused, nothing signed.
    let mut doc: Value = serde_json::from_slice(&BASE64.decode(&required).unwrap()).unwrap();
    doc["accepts"][0]["payTo"] = json!("0x000000000000000000000000000000000000dEaD");
    let swapped = json!({"url": url, "payment_required": BASE64.encode(doc.to_string())});
    let refused = post_keyed(&app, &path, &agent_key, Some("self-x"), swapped).await;
    assert_eq!(
        (refused.status, refused.body["error"]["code"].as_str()),
        (StatusCode::PAYMENT_REQUIRED, Some("recipient_not_allowed")),
        "{}",
        refused.body
    );
    assert!(refused.body.get("value").is_none());
    let declined = ledger_authorizations(&app, &agent).await;
    assert_eq!(declined.len(), 2, "both attempts are recorded");
    assert!(declined.iter().all(|a| a["status"] == "declined" && a["reason"] == "recipient_not_allowed"));

    let authorized = post_keyed(&app, &path, &agent_key, Some("self-1"), body.clone()).await;
    assert_eq!(authorized.status, StatusCode::OK, "{}", authorized.body);
    assert_eq!(authorized.body["header"], "PAYMENT-SIGNATURE");
    assert_eq!(authorized.body["cost"]["amount"], 25);
    // Idempotent: the same header again, not a second signature.
    let again = post_keyed(&app, &path, &agent_key, Some("self-1"), body).await;
    assert_eq!(again.body["value"], authorized.body["value"]);

    let paid = app
        .http
        .get(&url)
        .header("PAYMENT-SIGNATURE", authorized.body["value"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(paid.status(), StatusCode::OK);
    let receipt = paid.headers()["payment-response"].to_str().unwrap().to_owned();
    let payment = authorized.body["payment"]["id"].as_str().unwrap();
    assert_eq!(app.balance(&agent).await["held"], 25, "held until the settlement is reported");

    // An agent may not free its own budget by reporting a failure.
    let report = format!("/v1/agents/{agent}/x402/payments/{payment}/settlement");
    let fake = BASE64.encode(json!({"success": false, "errorReason": "x", "transaction": ""}).to_string());
    let refused = post_keyed(&app, &report, &agent_key, None, json!({"payment_response": fake})).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", refused.body);
    let reported = post_keyed(&app, &report, &agent_key, None, json!({"payment_response": receipt})).await;
    assert_eq!(reported.status, StatusCode::OK, "{}", reported.body);
    assert_eq!(reported.body["status"], "settled");
    assert_eq!(reported.body["transaction_hash"], json!(server.settled()[0].transaction));
    let balance = app.balance(&agent).await;
    assert_eq!((balance["held"].as_i64(), balance["spent"].as_i64()), (Some(0), Some(25)));
    let bad = post_keyed(&app, &report, &agent_key, None, json!({"payment_response": "nope"})).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
}

async fn wallets_are_sealed_exported_by_owners_only_and_scoped(app: TestApp) {
    let (agent, server) = setup(&app, 1_000).await;
    let other = app.create_agent("other").await;
    let address = wallet_address(&app, &agent).await;
    // Creating again returns the same wallet.
    let (status, wallet) = app.post(&format!("/v1/agents/{agent}/wallet"), json!({})).await;
    assert_eq!((status, wallet["address"].as_str()), (StatusCode::OK, Some(address.as_str())));

    let manager = app.create_key("manager", None).await;
    let export = format!("/v1/agents/{agent}/wallet/export");
    let denied = post_keyed(&app, &export, &manager, None, json!({})).await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    let exported = post_keyed(&app, &export, &app.owner_key, None, json!({})).await;
    assert_eq!(exported.status, StatusCode::OK, "{}", exported.body);
    assert_eq!(exported.header("cache-control"), "no-store");
    let secret = exported.body["private_key"].as_str().unwrap().trim_start_matches("0x").to_owned();
    let key = spendgate::rails::usdc::wallet::Wallet::from_secret(&hex::decode(&secret).unwrap()).unwrap();
    assert_eq!(key.address().to_checksum(None), address);
    assert!(!app.stored_text().contains(&secret), "the wallet key is stored sealed, never in plaintext");
    let (_, events) = app.get(&format!("/v1/agents/{agent}/events")).await;
    assert!(events["data"].as_array().unwrap().iter().any(|e| e["kind"] == "wallet_exported"), "{events}");

    // An agent key pays for its own agent only; an operator key does not pay.
    let agent_key = app.create_key("agent", Some(&agent)).await;
    let operator = app.create_key("operator", None).await;
    let url = json!({"url": server.url("/v2/paid")});
    let theirs = post_keyed(&app, &format!("/v1/agents/{other}/x402/fetch"), &agent_key, Some("k"), url.clone()).await;
    assert_eq!(theirs.status, StatusCode::FORBIDDEN);
    let op = post_keyed(&app, &format!("/v1/agents/{agent}/x402/fetch"), &operator, Some("k"), url.clone()).await;
    assert_eq!(op.status, StatusCode::FORBIDDEN);
    let mine = post_keyed(&app, &format!("/v1/agents/{agent}/x402/fetch"), &agent_key, Some("k"), url).await;
    assert_eq!(mine.status, StatusCode::OK, "{}", mine.body);
    assert_eq!(server.settled()[0].payer.to_checksum(None), address);
}

async fn other_answers_and_bad_input(app: TestApp) {
    let (agent, server) = setup(&app, 1_000).await;
    let free = fetch(&app, &agent, "f", json!({"url": server.url("/free")})).await;
    assert_eq!((free.status, free.body.as_str()), (StatusCode::OK, Some("free content")));
    assert_eq!(free.header("spendgate-cost"), "", "nothing paid, no cost header");
    let odd = fetch(&app, &agent, "o", json!({"url": server.url("/odd402")})).await;
    assert_eq!(
        (odd.status, odd.body.as_str()),
        (StatusCode::PAYMENT_REQUIRED, Some("pay me somehow")),
        "returned as is"
    );
    let mpp = fetch(&app, &agent, "m", json!({"url": server.url("/mpp")})).await;
    assert_eq!(
        (mpp.status, mpp.body["error"]["code"].as_str()),
        (StatusCode::PAYMENT_REQUIRED, Some("unsupported_payment_protocol"))
    );

    let path = format!("/v1/agents/{agent}/x402/fetch");
    let no_key = post_keyed(&app, &path, &app.owner_key, None, json!({"url": server.url("/v2/paid")})).await;
    assert_eq!(no_key.status, StatusCode::BAD_REQUEST, "{}", no_key.body);
    for bad in [
        json!({"url": "ftp://example.com/x"}),
        json!({"url": "not a url"}),
        json!({"url": server.url("/v2/paid"), "method": "TRACE"}),
        json!({"url": server.url("/v2/paid"), "headers": {"PAYMENT-SIGNATURE": "x"}}),
        json!({"url": server.url("/v2/paid"), "max_amount": -1}),
        json!({"url": server.url("/v2/paid"), "surprise": true}),
    ] {
        let refused = fetch(&app, &agent, "bad", bad.clone()).await;
        assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{bad} → {}", refused.body);
    }
    let unknown = fetch(&app, "agt_01jd8r6w3kq2v5x7y9z0abcdef", "u", json!({"url": server.url("/v2/paid")})).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert!(server.payment_headers().is_empty());
    assert_eq!(app.balance(&agent).await["held"], 0);
}

on_both_backends!(
    pays_a_v2_api_and_answers_a_retry_without_paying_again,
    pays_a_v1_api_with_x_payment,
    policy_declines_sign_nothing,
    pays_an_mpp_challenge_once_and_records_it,
    pays_the_mpp_reference_servers_challenges,
    an_unknown_settlement_keeps_the_hold_and_a_retry_resends_the_same_payment,
    a_failed_settlement_voids_the_hold,
    one_agent_limit_spans_card_and_usdc_spend,
    concurrent_payments_never_exceed_the_balance_and_one_key_signs_once,
    agents_that_make_the_call_themselves,
    wallets_are_sealed_exported_by_owners_only_and_scoped,
    other_answers_and_bad_input,
    a_payment_that_needs_approval_waits_and_is_paid_once_approved,
    a_denied_or_no_longer_allowed_payment_is_never_signed,
    allow_hosts_governs_contact,
);

async fn get_answer(app: &TestApp, path: &str) -> Answer {
    let response = app.http.get(format!("{}{path}", app.base)).bearer_auth(&app.owner_key).send().await.unwrap();
    let (status, headers) = (response.status(), response.headers().clone());
    let text = response.text().await.unwrap();
    Answer { status, headers, body: serde_json::from_str(&text).unwrap_or(Value::String(text)) }
}

/// The status URL's answer once it no longer says 202 (spendgate pays in the background).
async fn outcome_of(app: &TestApp, status_url: &str) -> Answer {
    for _ in 0..200 {
        let answer = get_answer(app, status_url).await;
        if answer.status != StatusCode::ACCEPTED {
            return answer;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!("{status_url} still says 202 after 5 s");
}

/// A fetch that asks for approval: its 202 answer's approval id and status URL.
async fn fetch_waiting(app: &TestApp, agent: &str, key: &str, body: Value) -> (String, String) {
    let waiting = fetch(app, agent, key, body).await;
    assert_eq!(waiting.status, StatusCode::ACCEPTED, "{}", waiting.body);
    assert_eq!(waiting.body["status"], "pending");
    let id = waiting.body["approval_id"].as_str().expect("names its approval").to_owned();
    let status_url = waiting.body["status_url"].as_str().unwrap().to_owned();
    assert_eq!(status_url, format!("/v1/agents/{agent}/x402/approvals/{id}"));
    assert_eq!(waiting.header("location"), status_url);
    (id, status_url)
}

async fn ask_above_20_cents(app: &TestApp, agent: &str) {
    let policy = json!({"limits": [{"id": "daily_usdc", "scope": "agent", "window": {"rolling": "24h"},
        "amount": 20, "rails": ["usdc"], "on_exceed": "ask"}]});
    let (status, body) = app.put(&format!("/v1/agents/{agent}/policy"), policy).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

async fn a_payment_that_needs_approval_waits_and_is_paid_once_approved(app: TestApp) {
    let (agent, server) = setup(&app, 1_000).await;
    ask_above_20_cents(&app, &agent).await;
    let url = server.url("/v2/paid");
    let body = json!({"url": url, "headers": {"Authorization": "Bearer upstream-secret-7"}, "trace_id": "pr-9"});
    let (id, status_url) = fetch_waiting(&app, &agent, "ask-1", body.clone()).await;
    assert!(server.payment_headers().is_empty(), "nothing is signed before a person approves");
    assert!(!app.stored_text().contains("upstream-secret-7"), "the waiting fetch is sealed at rest");

    // Before anyone decides, a retry with the same key is the same wait, not a second request.
    let again = fetch(&app, &agent, "ask-1", body.clone()).await;
    assert_eq!((again.status, again.body["approval_id"].as_str()), (StatusCode::ACCEPTED, Some(id.as_str())));
    let (_, pending) = app.get("/v1/approvals?status=pending").await;
    assert_eq!(pending["data"].as_array().unwrap().len(), 1, "{pending}");
    let (status, a) = app.get(&format!("/v1/approvals/{id}")).await;
    assert_eq!(
        (status, a["rail"].clone(), a["rule"].clone()),
        (StatusCode::OK, json!("usdc"), json!("agent.limit.daily_usdc"))
    );
    let waiting = get_answer(&app, &status_url).await;
    assert_eq!((waiting.status, waiting.body["status"].as_str()), (StatusCode::ACCEPTED, Some("pending")));

    let (status, _) = app.post(&format!("/v1/approvals/{id}/approve"), json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let paid = outcome_of(&app, &status_url).await;
    assert_eq!(paid.status, StatusCode::OK, "{}", paid.body);
    assert_eq!(paid.body["data"], "paid content");
    assert_eq!(paid.header("spendgate-settlement"), "settled");
    assert_eq!(paid.header("spendgate-cost"), "25");
    assert_eq!(server.payment_headers().len(), 1, "paid once, after the approval");
    assert_eq!(app.balance(&agent).await["spent"], 25);
    let posted: Vec<Value> =
        ledger_authorizations(&app, &agent).await.into_iter().filter(|a| a["status"] == "posted").collect();
    assert_eq!(posted.len(), 1);
    assert_eq!((posted[0]["trace_id"].as_str(), posted[0]["approval_id"].as_str()), (Some("pr-9"), Some(id.as_str())));

    // The agent's retry of the same key gets the same answer and pays nothing more.
    let retried = fetch(&app, &agent, "ask-1", body).await;
    assert_eq!((retried.status, &retried.body), (StatusCode::OK, &paid.body));
    assert_eq!(retried.header("spendgate-payment"), paid.header("spendgate-payment"));
    assert_eq!(server.payment_headers().len(), 1);
    // The raise covered one payment: the next one asks again.
    let (next, _) = fetch_waiting(&app, &agent, "ask-2", json!({"url": url})).await;
    assert_ne!(next, id);
    assert_eq!(server.payment_headers().len(), 1);
}

async fn a_denied_or_no_longer_allowed_payment_is_never_signed(app: TestApp) {
    let (agent, server) = setup(&app, 1_000).await;
    ask_above_20_cents(&app, &agent).await;
    let url = server.url("/v2/paid");
    let (id, status_url) = fetch_waiting(&app, &agent, "deny-1", json!({"url": url})).await;
    let (status, _) = app.post(&format!("/v1/approvals/{id}/deny"), json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let denied = get_answer(&app, &status_url).await;
    assert_eq!(
        (denied.status, denied.body["error"]["code"].as_str()),
        (StatusCode::PAYMENT_REQUIRED, Some("approval_denied"))
    );
    let retried = fetch(&app, &agent, "deny-1", json!({"url": url})).await;
    assert_eq!(retried.body["error"]["code"], "approval_denied", "a retry of a denied fetch is refused");

    // Approved, but the agent was frozen meanwhile: the payment made after the approval is decided
    // by the policy core again, and declined.
    let (id, status_url) = fetch_waiting(&app, &agent, "deny-2", json!({"url": url})).await;
    let (status, _) = app.post(&format!("/v1/agents/{agent}/freeze"), json!({"reason": "review"})).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = app.post(&format!("/v1/approvals/{id}/approve"), json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let frozen = outcome_of(&app, &status_url).await;
    assert_eq!(
        (frozen.status, frozen.body["error"]["code"].as_str()),
        (StatusCode::PAYMENT_REQUIRED, Some("agent_frozen"))
    );

    assert!(server.payment_headers().is_empty(), "nothing was ever signed");
    let balance = app.balance(&agent).await;
    assert_eq!((balance["held"].as_i64(), balance["spent"].as_i64()), (Some(0), Some(0)), "{balance}");
    let unknown = get_answer(&app, &format!("/v1/agents/{agent}/x402/approvals/apr_01JZZZZZZZZZZZZZZZZZZZZZZZ")).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
}

#[actix_web::test]
async fn without_a_master_key_the_usdc_rail_is_off() {
    let app = spawn_with(Backend::Sqlite, |c| c.master_key = None).await;
    let agent = app.create_agent("no wallet").await;
    let (status, body) = app.post(&format!("/v1/agents/{agent}/wallet"), json!({})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::SERVICE_UNAVAILABLE, Some("usdc_rail_disabled")));
    let paid = fetch(&app, &agent, "k", json!({"url": "http://127.0.0.1:9/x"})).await;
    assert_eq!(paid.status, StatusCode::SERVICE_UNAVAILABLE);
}

/// The fetch proxy is no way into the operator's network: with only the x402 server's own
/// `host:port` allowed, spendgate's own port in every spelling, a name that resolves to loopback,
/// cloud metadata and private ranges are refused before anything is sent.
#[actix_web::test]
async fn the_fetch_proxy_contacts_no_internal_address() {
    let server = X402Server::start(TEST_TOKEN).await;
    let port = server.base.rsplit(':').next().unwrap().to_owned();
    let app = spawn_with(Backend::Sqlite, |c| c.x402_private_destinations = format!("127.0.0.1:{port}")).await;
    let agent = app.create_agent("prober").await;
    app.fund(&agent, 1_000).await;
    let own = app.base.rsplit(':').next().unwrap().to_owned();
    let targets = [
        format!("{}/metrics", app.base),
        format!("http://2130706433:{own}/metrics"),
        format!("http://127.1:{own}/metrics"),
        format!("http://0x7f.0.0.1:{own}/metrics"),
        format!("http://0177.0.0.1:{own}/metrics"),
        format!("http://127.0.0.1.:{own}/metrics"),
        format!("http://[::1]:{own}/metrics"),
        format!("http://[::ffff:127.0.0.1]:{own}/metrics"),
        format!("http://0:{own}/metrics"),
        // A name resolving to loopback is refused even on the allowed server's port.
        format!("http://localhost:{port}/free"),
        format!("http://127.0.0.2:{port}/free"),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        "http://10.0.0.1/".to_owned(),
        "http://[fd00::1]/".to_owned(),
    ];
    for (i, url) in targets.iter().enumerate() {
        let refused = fetch(&app, &agent, &format!("probe-{i}"), json!({"url": url})).await;
        assert_eq!(
            (refused.status, refused.body["error"]["code"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("destination_forbidden")),
            "{url}: {}",
            refused.body
        );
    }
    assert_eq!(server.requests(), 0, "nothing was sent");

    // The allowed destination works, and the upstream's cookies stay off spendgate's origin.
    let free = fetch(&app, &agent, "free", json!({"url": server.url("/free")})).await;
    assert_eq!((free.status, free.header("x-upstream")), (StatusCode::OK, "yes"), "{}", free.body);
    assert!(free.headers.get("set-cookie").is_none(), "{:?}", free.headers);
    let paid = fetch(&app, &agent, "paid", json!({"url": server.url("/v2/paid")})).await;
    assert_eq!(paid.status, StatusCode::OK, "{}", paid.body);
    assert!(paid.headers.get("set-cookie").is_none());
}

/// The policy's allowed hosts decide whom the fetch contacts, not only whom it pays.
async fn allow_hosts_governs_contact(app: TestApp) {
    let (agent, server) = setup(&app, 1_000).await;
    let policy = json!({"x402": {"allow_hosts": ["api.example.com"]}});
    let (status, body) = app.put(&format!("/v1/agents/{agent}/policy"), policy).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for path in ["/free", "/v2/paid"] {
        let refused = fetch(&app, &agent, path, json!({"url": server.url(path)})).await;
        assert_eq!(
            (refused.status, refused.body["error"]["code"].as_str()),
            (StatusCode::PAYMENT_REQUIRED, Some("host_not_allowed")),
            "{}",
            refused.body
        );
    }
    assert_eq!(server.requests(), 0, "a host outside allow_hosts is never contacted");
}

/// An answer over the size limit is not passed on, and what it paid is recorded once: a retry
/// pays nothing again.
#[actix_web::test]
async fn an_oversized_answer_is_refused_and_never_paid_twice() {
    let app = spawn_with(Backend::Sqlite, |c| c.x402_max_response_bytes = 4_096).await;
    let (agent, server) = setup(&app, 1_000).await;
    let url = server.url("/v2/paid?pad=20000");
    let big = fetch(&app, &agent, "big", json!({"url": url})).await;
    assert_eq!(
        (big.status, big.body["error"]["code"].as_str()),
        (StatusCode::BAD_GATEWAY, Some("upstream_too_large")),
        "{}",
        big.body
    );
    assert_eq!(server.settled().len(), 1);
    let balance = app.balance(&agent).await;
    assert_eq!((balance["spent"].as_i64(), balance["held"].as_i64()), (Some(25), Some(0)), "settled: {balance}");
    let again = fetch(&app, &agent, "big", json!({"url": url})).await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{}", again.body);
    assert_eq!(server.payment_headers().len(), 1, "not sent again");
    assert_eq!(app.balance(&agent).await["spent"], 25);
}

/// Fetches in flight are bounded per agent and in all; beyond the bound, 429 at once.
#[actix_web::test]
async fn fetches_in_flight_are_bounded() {
    let app = spawn_with(Backend::Sqlite, |c| {
        c.x402_max_fetches = 2;
        c.x402_max_fetches_per_agent = 1;
    })
    .await;
    let (a, server) = setup(&app, 0).await;
    let (b, c) = (app.create_agent("b").await, app.create_agent("c").await);
    let slow = json!({"url": server.url("/free?wait_ms=1500")});
    let quick = json!({"url": server.url("/free")});
    let (first, same_agent, other_agent, third_agent) = tokio::join!(
        fetch(&app, &a, "a-1", slow.clone()),
        async {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            fetch(&app, &a, "a-2", quick.clone()).await
        },
        async {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            fetch(&app, &b, "b-1", slow.clone()).await
        },
        async {
            tokio::time::sleep(std::time::Duration::from_millis(600)).await;
            fetch(&app, &c, "c-1", quick.clone()).await
        },
    );
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(other_agent.status, StatusCode::OK);
    for (name, refused) in [("same agent", same_agent), ("third agent, total reached", third_agent)] {
        assert_eq!(
            (refused.status, refused.body["error"]["code"].as_str(), refused.header("retry-after")),
            (StatusCode::TOO_MANY_REQUESTS, Some("too_many_fetches"), "1"),
            "{name}: {}",
            refused.body
        );
    }
    // Slots are given back.
    assert_eq!(fetch(&app, &a, "a-3", quick).await.status, StatusCode::OK);
}
