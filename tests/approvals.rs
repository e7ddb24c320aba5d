//! Human approvals end to end: the decline that asks, the Slack message, the signed links and
//! the page, Slack's buttons, the API, and the allowance the next decision sees.

mod common;

use common::slack::SlackReceiver;
use common::{Backend, TestApp, postgres_url, spawn_with};
use reqwest::StatusCode;
use serde_json::{Value, json};
use spendgate::approvals::link::LinkSigner;
use spendgate::approvals::slack::SlackSignature;
use spendgate::crypto::Secret;
use spendgate::domain::approval::ApprovalAction;

const APPROVAL_SECRET: &str = "approval-link-secret-for-tests-0123";
const SIGNING_SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";
const PUBLIC_URL: &str = "https://spendgate.example.com";

/// Runs each case on SQLite, and on PostgreSQL when it is configured.
macro_rules! on_both_backends {
    ($($case:ident),* $(,)?) => {
        $(
            mod $case {
                use super::*;

                #[actix_web::test]
                async fn sqlite() {
                    super::$case(Backend::Sqlite).await;
                }

                #[actix_web::test]
                #[cfg_attr(not(postgres_tests), ignore = "needs PostgreSQL: set SPENDGATE_TEST_DATABASE_URL")]
                async fn postgres() {
                    assert!(postgres_url().is_some(), "SPENDGATE_TEST_DATABASE_URL is not set");
                    super::$case(Backend::Postgres).await;
                }
            }
        )*
    };
}

on_both_backends!(
    a_limit_that_asks_is_approved_through_the_link_once,
    links_refuse_forged_expired_used_and_crossed_tokens,
    a_threshold_approval_lets_one_authorization_through,
    denial_keeps_the_agent_declined,
    slack_buttons_decide_and_update_the_message,
    a_slack_outage_is_retried_and_never_delays_a_decision,
    the_api_lists_and_decides_for_managers_only,
);

async fn spawn(backend: Backend, slack: &SlackReceiver) -> TestApp {
    let url = slack.webhook_url();
    spawn_with(backend, move |c| {
        c.public_url = PUBLIC_URL.into();
        c.approval_secret = Some(Secret::new(APPROVAL_SECRET));
        c.slack_webhook_url = Some(Secret::new(url));
        c.slack_signing_secret = Some(Secret::new(SIGNING_SECRET));
        c.slack_retry_ms = 20;
        c.slack_timeout_ms = 1_000;
    })
    .await
}

/// An agent with $1,000 and a card whose daily limit of $10 asks a person when crossed.
async fn agent_with_card(app: &TestApp, policy: Value) -> (String, String) {
    let agent = app.create_agent("coder").await;
    app.fund(&agent, 100_000).await;
    let card = app.issue_card(&agent, json!({"label": "openai", "policy": policy})).await;
    (agent, card["id"].as_str().unwrap().to_owned())
}

fn daily_ask() -> Value {
    json!({"limits": [{"id": "daily", "scope": "card", "window": {"calendar": "day", "timezone": "UTC"},
        "amount": 1_000, "on_exceed": "ask"}]})
}

/// The button's link, pointed at the test server instead of the public URL.
fn local(app: &TestApp, link: &str) -> String {
    let path = link.strip_prefix(PUBLIC_URL).unwrap_or_else(|| panic!("{link} is not under {PUBLIC_URL}"));
    format!("{}{path}", app.base)
}

/// The Approve and Deny links of a Slack message.
fn buttons(message: &Value) -> (String, String) {
    let actions = message["blocks"].as_array().unwrap().iter().find(|b| b["type"] == "actions").expect("buttons");
    let url = |id: &str| {
        let b = actions["elements"].as_array().unwrap().iter().find(|e| e["action_id"] == id).unwrap();
        b["url"].as_str().unwrap().to_owned()
    };
    (url("approve"), url("deny"))
}

fn query_param(link: &str, name: &str) -> String {
    let query = link.split_once('?').unwrap().1;
    query.split('&').find_map(|kv| kv.strip_prefix(&format!("{name}="))).unwrap().to_owned()
}

async fn page(app: &TestApp, url: &str) -> (StatusCode, String) {
    let r = app.http.get(url).send().await.unwrap();
    (r.status(), r.text().await.unwrap())
}

async fn submit(app: &TestApp, url: &str, action: &str, token: &str) -> (StatusCode, String) {
    let action_url = url.split_once('?').unwrap().0;
    let body = format!("action={}&token={}", urlencode(action), urlencode(token));
    let r = app
        .http
        .post(action_url)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    (r.status(), r.text().await.unwrap())
}

async fn approval(app: &TestApp, id: &str) -> Value {
    let (status, a) = app.get(&format!("/v1/approvals/{id}")).await;
    assert_eq!(status, StatusCode::OK, "{a}");
    a
}

async fn a_limit_that_asks_is_approved_through_the_link_once(backend: Backend) {
    let slack = SlackReceiver::start(0).await;
    let app = spawn(backend, &slack).await;
    let (agent, card) = agent_with_card(&app, daily_ask()).await;
    assert_eq!(app.authorize("a1", &card, 700).await["approved"], true);

    let asked = app.authorize("a2", &card, 400).await;
    assert_eq!((asked["approved"].clone(), asked["reason"].clone()), (json!(false), json!("approval_required")));
    assert_eq!(asked["rule"], "card.limit.daily");
    let id = asked["approval_id"].as_str().expect("the decline names its approval request").to_owned();
    // Retrying before anyone decided asks nothing new.
    let again = app.authorize("a3", &card, 400).await;
    assert_eq!(again["approval_id"], id.as_str());

    let messages = slack.wait_for(1).await;
    let message = &messages[0].1;
    let text = message.to_string();
    for needle in ["coder", "openai", "4.00 USD", "OPENAI *API", "card.limit.daily", "7.00 USD of 10.00 USD"] {
        assert!(text.contains(needle), "the message shows {needle:?}: {text}");
    }
    let (approve, deny) = buttons(message);
    assert!(approve.starts_with(&format!("{PUBLIC_URL}/approvals/{id}?action=approve&token=")), "{approve}");
    assert!(deny.contains("action=deny"));
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(slack.received().len(), 1, "one request, one message");
    let a = approval(&app, &id).await;
    assert_eq!((a["status"].clone(), a["notification"]["status"].clone()), (json!("pending"), json!("sent")));
    assert_eq!((a["spent"]["amount"].clone(), a["cap"]["amount"].clone()), (json!(700), json!(1_000)));

    // Opening the link (as an unfurler or a mail scanner would) changes nothing.
    for _ in 0..2 {
        let (status, html) = page(&app, &local(&app, &approve)).await;
        assert_eq!(status, StatusCode::OK);
        assert!(html.contains("<form method=\"post\">") && html.contains("Approve 4.00 USD"), "{html}");
    }
    assert_eq!(approval(&app, &id).await["status"], "pending");
    assert_eq!(app.authorize("a4", &card, 400).await["reason"], "approval_required");

    let (status, html) = submit(&app, &local(&app, &approve), "approve", &query_param(&approve, "token")).await;
    assert_eq!(status, StatusCode::OK, "{html}");
    assert!(html.contains("Approved"), "{html}");
    let a = approval(&app, &id).await;
    assert_eq!((a["status"].clone(), a["decided_by"].clone()), (json!("approved"), json!("link")));

    // The retry goes through on the raised limit, and names the approval it used.
    let retry = app.authorize("a5", &card, 400).await;
    assert_eq!(retry["approved"], true, "{retry}");
    assert_eq!(retry["approval_id"], id.as_str());
    // The one after it crosses the raised limit and asks again.
    let after = app.authorize("a6", &card, 400).await;
    assert_eq!(after["reason"], "approval_required");
    assert_ne!(after["approval_id"], id.as_str());

    let (_, events) = app.get(&format!("/v1/agents/{agent}/cards/{card}/events")).await;
    let granted = events["data"].as_array().unwrap().iter().find(|e| e["kind"] == "approval_granted").unwrap();
    assert_eq!(granted["data"]["decided_by"], "link");
    assert_eq!(granted["data"]["allowance"]["amount"]["amount"], 400);
    let (_, ledger) = app.get(&format!("/v1/agents/{agent}/ledger")).await;
    let used = ledger["data"].as_array().unwrap().iter().find(|e| e["id"] == retry["authorization_id"]).unwrap();
    assert_eq!(used["approval_id"], id.as_str(), "the ledger shows the approval it used");
    let asking = ledger["data"].as_array().unwrap().iter().find(|e| e["id"] == asked["authorization_id"]).unwrap();
    assert_eq!(asking["approval_id"], id.as_str(), "and the request each decline made");
    app.assert_chains_whole().await;
}

async fn links_refuse_forged_expired_used_and_crossed_tokens(backend: Backend) {
    let slack = SlackReceiver::start(0).await;
    let app = spawn(backend, &slack).await;
    let (_, card) = agent_with_card(&app, daily_ask()).await;
    let id = app.authorize("a1", &card, 1_500).await["approval_id"].as_str().unwrap().to_owned();
    let (approve, deny) = buttons(&slack.wait_for(1).await[0].1);
    let (approve, deny) = (local(&app, &approve), local(&app, &deny));
    let token = query_param(&approve, "token");
    let path = format!("{}/approvals/{id}", app.base);

    let mut forged = token.clone();
    let last = forged.pop().unwrap();
    forged.push(if last == '0' { '1' } else { '0' });
    let signer = LinkSigner::new(&Secret::new(APPROVAL_SECRET));
    let expired = signer.sign(&id, ApprovalAction::Approve, jiff::Timestamp::now().as_second() - 1);
    let other_secret =
        LinkSigner::new(&Secret::new("some-other-secret-0123456789")).sign(&id, ApprovalAction::Approve, i64::MAX / 2);
    let cases = [
        ("forged", "approve", forged.as_str(), StatusCode::FORBIDDEN),
        ("another secret", "approve", other_secret.as_str(), StatusCode::FORBIDDEN),
        ("the deny token used to approve", "approve", &query_param(&deny, "token"), StatusCode::FORBIDDEN),
        ("the approve token used to deny", "deny", token.as_str(), StatusCode::FORBIDDEN),
        ("expired", "approve", expired.as_str(), StatusCode::GONE),
        ("no token", "approve", "", StatusCode::BAD_REQUEST),
    ];
    for (what, action, token, status) in cases {
        let url = format!("{path}?action={action}&token={token}");
        let (got, html) = page(&app, &url).await;
        assert_eq!(got, status, "GET with {what}: {html}");
        assert!(html.contains("<h1>"), "a page a person can read");
        let (got, _) = submit(&app, &url, action, token).await;
        assert_eq!(got, status, "POST with {what}");
    }
    let (got, _) = page(&app, &format!("{}/approvals/apr_01doesnotexist?action=approve&token={token}", app.base)).await;
    assert_eq!(got, StatusCode::FORBIDDEN, "a token for another approval");
    assert_eq!(approval(&app, &id).await["status"], "pending", "no refused link changed anything");

    let (status, _) = submit(&app, &approve, "approve", &token).await;
    assert_eq!(status, StatusCode::OK);
    let (status, html) = submit(&app, &approve, "approve", &token).await;
    assert_eq!(status, StatusCode::CONFLICT, "a used link: {html}");
    assert!(html.contains("already approved"), "{html}");
    let (status, _) = submit(&app, &deny, "deny", &query_param(&deny, "token")).await;
    assert_eq!(status, StatusCode::CONFLICT, "the other link of a decided request");
    let (status, html) = page(&app, &approve).await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("approved by link") && !html.contains("<form"), "GET shows the outcome: {html}");
    assert_eq!(approval(&app, &id).await["status"], "approved");
}

async fn a_threshold_approval_lets_one_authorization_through(backend: Backend) {
    let slack = SlackReceiver::start(0).await;
    let app = spawn(backend, &slack).await;
    let (_, card) = agent_with_card(&app, json!({"approval": {"above": 5_000}})).await;
    assert_eq!(app.authorize("a0", &card, 5_000).await["approved"], true);
    let asked = app.authorize("a1", &card, 12_000).await;
    assert_eq!((asked["reason"].clone(), asked["rule"].clone()), (json!("approval_required"), json!("card.approval")));
    let id = asked["approval_id"].as_str().unwrap();
    let (status, a) = app.post(&format!("/v1/approvals/{id}/approve"), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{a}");
    assert_eq!(a["single_use"], true);
    assert!(a["decided_by"].as_str().unwrap().starts_with("key_"), "{a}");
    let retry = app.authorize("a2", &card, 12_000).await;
    assert_eq!(retry["approved"], true, "{retry}");
    // Spent: the same purchase again needs another approval.
    assert_eq!(app.authorize("a3", &card, 12_000).await["reason"], "approval_required");
    // Deciding twice is a conflict, not a second allowance.
    let (status, e) = app.post(&format!("/v1/approvals/{id}/approve"), json!({})).await;
    assert_eq!((status, e["error"]["code"].clone()), (StatusCode::CONFLICT, json!("approval_decided")));
}

async fn denial_keeps_the_agent_declined(backend: Backend) {
    let slack = SlackReceiver::start(0).await;
    let app = spawn(backend, &slack).await;
    let (agent, card) = agent_with_card(&app, daily_ask()).await;
    let id = app.authorize("a1", &card, 1_200).await["approval_id"].as_str().unwrap().to_owned();
    let (_, deny) = buttons(&slack.wait_for(1).await[0].1);
    let (status, html) = submit(&app, &local(&app, &deny), "deny", &query_param(&deny, "token")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("Denied"), "{html}");
    assert_eq!(approval(&app, &id).await["status"], "denied");
    assert_eq!(app.authorize("a2", &card, 1_200).await["reason"], "approval_required");
    let (_, events) = app.get(&format!("/v1/agents/{agent}/cards/{card}/events")).await;
    assert!(events["data"].as_array().unwrap().iter().any(|e| e["kind"] == "approval_denied"));
    assert_eq!(app.balance(&agent).await["held"], 0);
}

/// A `block_actions` payload as Slack posts it, signed now.
fn slack_click(action: &str, approval_id: &str, response_url: &str) -> (String, String, String) {
    let payload = json!({
        "type": "block_actions",
        "user": {"id": "U0APPROVER", "username": "ann", "team_id": "T000"},
        "api_app_id": "A000",
        "container": {"type": "message", "message_ts": "1700000000.000100", "channel_id": "C000"},
        "response_url": response_url,
        "actions": [{"action_id": action, "block_id": "spendgate_approval", "value": approval_id,
                     "type": "button", "action_ts": "1700000001.000200"}],
    });
    let body = format!("payload={}", urlencode(&payload.to_string()));
    let t = jiff::Timestamp::now().as_second();
    let signature = SlackSignature::new(&Secret::new(SIGNING_SECRET)).sign(t, body.as_bytes());
    (body, t.to_string(), signature)
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn post_slack(app: &TestApp, body: &str, t: &str, signature: &str) -> StatusCode {
    app.http
        .post(format!("{}/slack/interactions", app.base))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .header("X-Slack-Request-Timestamp", t)
        .header("X-Slack-Signature", signature)
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
        .status()
}

async fn slack_buttons_decide_and_update_the_message(backend: Backend) {
    let slack = SlackReceiver::start(0).await;
    let app = spawn(backend, &slack).await;
    let (_, card) = agent_with_card(&app, daily_ask()).await;
    let id = app.authorize("a1", &card, 1_500).await["approval_id"].as_str().unwrap().to_owned();
    slack.wait_for(1).await;
    let response_url = format!("{}/actions/T000/1/response", slack.base);

    let (body, t, signature) = slack_click("approve", &id, &response_url);
    let stale = (jiff::Timestamp::now().as_second() - 301).to_string();
    let stale_sig = SlackSignature::new(&Secret::new(SIGNING_SECRET)).sign(stale.parse().unwrap(), body.as_bytes());
    let wrong = SlackSignature::new(&Secret::new("not-the-signing-secret")).sign(t.parse().unwrap(), body.as_bytes());
    assert_eq!(post_slack(&app, &body, &t, "").await, StatusCode::UNAUTHORIZED, "unsigned");
    assert_eq!(post_slack(&app, &body, &t, &wrong).await, StatusCode::UNAUTHORIZED, "another secret");
    assert_eq!(post_slack(&app, &body, &stale, &stale_sig).await, StatusCode::UNAUTHORIZED, "stale");
    assert_eq!(post_slack(&app, &format!("{body}x"), &t, &signature).await, StatusCode::UNAUTHORIZED, "tampered");
    assert_eq!(approval(&app, &id).await["status"], "pending", "no refused request decided anything");

    assert_eq!(post_slack(&app, &body, &t, &signature).await, StatusCode::OK);
    let a = approval(&app, &id).await;
    assert_eq!((a["status"].clone(), a["decided_by"].clone()), (json!("approved"), json!("slack:U0APPROVER")));
    let updates = slack.wait_for(2).await;
    let (path, update) = &updates[1];
    assert_eq!(path, "/actions/T000/1/response");
    assert_eq!(update["replace_original"], true);
    assert!(update.to_string().contains("Approved by <@U0APPROVER>"), "{update}");
    assert!(!update.to_string().contains("\"actions\""), "the buttons are gone: {update}");
    assert_eq!(app.authorize("a2", &card, 1_500).await["approved"], true);

    // A second click (on Deny, say) decides nothing and brings the message up to date.
    let (body, t, signature) = slack_click("deny", &id, &response_url);
    assert_eq!(post_slack(&app, &body, &t, &signature).await, StatusCode::OK);
    assert_eq!(approval(&app, &id).await["status"], "approved");
    assert!(slack.wait_for(3).await[2].1.to_string().contains("Approved by"));
}

async fn a_slack_outage_is_retried_and_never_delays_a_decision(backend: Backend) {
    // Slack fails twice, then takes the message.
    let slack = SlackReceiver::start(2).await;
    let app = spawn(backend, &slack).await;
    let (_, card) = agent_with_card(&app, daily_ask()).await;
    let id = app.authorize("a1", &card, 1_500).await["approval_id"].as_str().unwrap().to_owned();
    slack.wait_for(1).await;
    let mut a = approval(&app, &id).await;
    for _ in 0..50 {
        if a["notification"]["status"] == "sent" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        a = approval(&app, &id).await;
    }
    assert_eq!((a["notification"]["status"].clone(), a["notification"]["attempts"].clone()), (json!("sent"), json!(3)));

    // Slack down for good: every attempt fails, the failure is recorded, decisions stay quick.
    let down = SlackReceiver::start(usize::MAX).await;
    let app = spawn(backend, &down).await;
    let (_, card) = agent_with_card(&app, daily_ask()).await;
    let started = std::time::Instant::now();
    let id = app.authorize("b1", &card, 1_500).await["approval_id"].as_str().unwrap().to_owned();
    assert!(started.elapsed() < std::time::Duration::from_millis(500), "the answer did not wait for Slack");
    let mut a = approval(&app, &id).await;
    for _ in 0..100 {
        if a["notification"]["status"] == "failed" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        a = approval(&app, &id).await;
    }
    assert_eq!(a["notification"]["status"], "failed", "{a}");
    assert_eq!(a["notification"]["attempts"], 5);
    assert!(a["notification"]["error"].as_str().unwrap().contains("500"), "{a}");
    assert!(!a["notification"]["error"].as_str().unwrap().contains("XXXX"), "the webhook URL is a secret");
    assert_eq!(a["status"], "pending", "a person can still decide through the API");
}

async fn the_api_lists_and_decides_for_managers_only(backend: Backend) {
    let slack = SlackReceiver::start(0).await;
    let app = spawn(backend, &slack).await;
    let (agent, card) = agent_with_card(&app, daily_ask()).await;
    let first = app.authorize("a1", &card, 1_100).await["approval_id"].as_str().unwrap().to_owned();
    let second = app.authorize("a2", &card, 1_200).await["approval_id"].as_str().unwrap().to_owned();
    assert_ne!(first, second, "different amounts are different requests");

    let (status, list) = app.get("/v1/approvals?status=pending").await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let ids: Vec<&str> = list["data"].as_array().unwrap().iter().map(|a| a["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [second.as_str(), first.as_str()], "newest first");
    let (_, page1) = app.get("/v1/approvals?status=pending&limit=1").await;
    assert_eq!(page1["data"][0]["id"], second.as_str());
    let cursor = page1["next_cursor"].as_str().expect("a second page");
    let (_, page2) = app.get(&format!("/v1/approvals?status=pending&limit=1&cursor={cursor}")).await;
    assert_eq!(page2["data"][0]["id"], first.as_str());
    let (status, e) = app.get("/v1/approvals?status=maybe").await;
    assert_eq!((status, e["error"]["code"].clone()), (StatusCode::BAD_REQUEST, json!("validation_failed")));

    let operator = app.create_key("operator", None).await;
    let agent_key = app.create_key("agent", Some(&agent)).await;
    for key in [&operator, &agent_key] {
        let (status, _) = app.call(reqwest::Method::GET, "/v1/approvals", Some(key), None).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let path = format!("/v1/approvals/{first}/approve");
        let (status, _) = app.call(reqwest::Method::POST, &path, Some(key), Some(json!({}))).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "an agent cannot approve its own spending");
    }
    let manager = app.create_key("manager", None).await;
    let path = format!("/v1/approvals/{first}/deny");
    let (status, a) = app.call(reqwest::Method::POST, &path, Some(&manager), Some(json!({}))).await;
    assert_eq!((status, a["status"].clone()), (StatusCode::OK, json!("denied")));
    let (_, denied) = app.get("/v1/approvals?status=denied").await;
    assert_eq!(denied["data"].as_array().unwrap().len(), 1);
    let (_, doc) = app.get("/openapi.json").await;
    for path in ["/v1/approvals", "/v1/approvals/{approval_id}", "/v1/approvals/{approval_id}/approve"] {
        assert!(doc["paths"][path].is_object(), "openapi lacks {path}");
    }
    let (status, _) = app.get("/v1/approvals/apr_01doesnotexist").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = app.post("/v1/approvals/not-an-id/approve", json!({})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
