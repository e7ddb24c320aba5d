//! The admin API over HTTP against the real server, on SQLite and on PostgreSQL.

mod common;
#[path = "common/stalling_proxy.rs"]
mod stalling_proxy;

use std::time::Duration;

use common::TestApp;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

on_both_backends!(
    health_and_docs,
    agents_are_created_listed_and_paged,
    cards_are_issued_with_a_number_shown_once,
    templates_and_currencies,
    external_processor_cards_are_registered_once,
    freeze_unfreeze_close_and_the_audit_trail,
    agent_freeze_reaches_every_card,
    policies_are_validated_and_nothing_changes_on_refusal,
    roles_hold,
    keys_are_revoked_at_once,
    a_key_revoked_by_another_process_stops_within_seconds,
    bad_input_gets_a_clear_4xx_and_writes_nothing,
    concurrent_status_changes_never_reopen_a_closed_card,
    concurrent_issues_all_land,
    concurrent_registrations_of_one_processor_card_make_one_card,
);

fn assert_error(status: StatusCode, body: &Value, expected: StatusCode, code: &str) {
    assert_eq!(status, expected, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
}

async fn health_and_docs(app: TestApp) {
    let (status, _) = app.call(Method::GET, "/healthz", None, None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = app.call(Method::GET, "/readyz", None, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, doc) = app.call(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    for path in
        ["/v1/agents", "/v1/agents/{agent_id}/cards", "/v1/agents/{agent_id}/cards/{card_id}/freeze", "/v1/keys"]
    {
        assert!(doc["paths"][path].is_object(), "openapi lacks {path}");
    }
    assert!(doc["components"]["schemas"]["Policy"].is_object());
    // The processors' routes are described, every /v1 operation names its error answers, and a
    // limit's window may be the string "lifetime".
    for path in ["/webhooks/stripe/authorizations", "/webhooks/lithic/asa", "/webhooks/marqeta/jit"] {
        assert!(doc["paths"][path]["post"].is_object(), "openapi lacks {path}");
    }
    let list = &doc["paths"]["/v1/agents"]["get"]["responses"];
    for status in ["200", "400", "401", "403", "503"] {
        assert!(list[status].is_object(), "GET /v1/agents lacks {status}: {list}");
    }
    // Every error code, each once, is the one list a client matches on.
    let codes: Vec<&str> = doc["components"]["schemas"]["ErrorDetail"]["properties"]["code"]["enum"]
        .as_array()
        .expect("the error codes are listed")
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    let every: Vec<&str> = spendgate::error::ErrorCode::every().map(|c| c.as_str()).collect();
    assert_eq!(codes, every);
    let windows = doc["components"]["schemas"]["Limit"]["properties"]["window"]["oneOf"].as_array().unwrap();
    assert!(windows.iter().any(|w| w["enum"] == json!(["lifetime"])), "{windows:?}");
    // A method a path does not take: 405, naming the ones it does.
    let response = app.http.delete(format!("{}/v1/agents", app.base)).bearer_auth(&app.owner_key).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(response.headers()["allow"], "GET, POST");
    app.get("/v1/agents").await;
    let (status, text) = app.call(Method::GET, "/metrics", None, None).await;
    assert_eq!(status, StatusCode::OK);
    let text = text.as_str().expect("text");
    assert!(text.contains(r#"spendgate_http_requests_total{method="GET",route="/v1/agents",status="200"}"#), "{text}");
}

async fn agents_are_created_listed_and_paged(app: TestApp) {
    let (status, agent) = app.post("/v1/agents", json!({"name": " pr-bot ", "department": "platform"})).await;
    assert_eq!(status, StatusCode::CREATED, "{agent}");
    let id = agent["id"].as_str().unwrap();
    assert!(id.starts_with("agt_"));
    assert_eq!(agent["name"], "pr-bot");
    assert_eq!(agent["department"], "platform");
    assert_eq!(agent["status"], "active");
    assert!(agent["created_at"].as_str().unwrap().ends_with('Z'));
    let (status, got) = app.get(&format!("/v1/agents/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got, agent);

    for name in ["b", "c"] {
        app.create_agent(name).await;
    }
    let (_, page1) = app.get("/v1/agents?limit=2").await;
    assert_eq!(page1["data"].as_array().unwrap().len(), 2);
    let cursor = page1["next_cursor"].as_str().expect("a second page");
    let (_, page2) = app.get(&format!("/v1/agents?limit=2&cursor={cursor}")).await;
    let names: Vec<_> = page2["data"].as_array().unwrap().iter().map(|a| a["name"].clone()).collect();
    assert_eq!(names, vec![json!("c")]);
    assert!(page2["next_cursor"].is_null());
    let (status, body) = app.get("/v1/agents?limit=0").await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "validation_failed");
}

async fn cards_are_issued_with_a_number_shown_once(app: TestApp) {
    let agent = app.create_agent("coder").await;
    let card = app.issue_card(&agent, json!({"label": "openai"})).await;
    let number = card["number"].as_str().expect("number shown at issue");
    assert_eq!(number.len(), 16);
    assert!(number.starts_with("400000"), "the configured test BIN: {number}");
    assert!(spendgate::domain::card::luhn_valid(number), "{number}");
    assert_eq!(card["last4"], &number[12..]);
    assert_eq!(card["currency"], "USD");
    assert_eq!(card["processor"], "simulator");
    assert_eq!(card["status"], "active");
    assert_eq!(card["policy"], json!({"currency": "USD"}));
    assert!(card["exp_year"].as_u64().unwrap() >= 2029);
    let id = card["id"].as_str().unwrap();

    let (_, by_agent) = app.get(&format!("/v1/agents/{agent}/cards/{id}")).await;
    let (_, direct) = app.get(&format!("/v1/cards/{id}")).await;
    let (_, list) = app.get(&format!("/v1/agents/{agent}/cards")).await;
    let (_, events) = app.get(&format!("/v1/agents/{agent}/cards/{id}/events")).await;
    assert_eq!(by_agent, direct);
    assert!(by_agent.get("number").is_none() || by_agent["number"].is_null());
    assert_eq!(list["data"][0]["id"], id);
    for shown in [&by_agent, &direct, &list, &events] {
        assert!(!shown.to_string().contains(number), "the number leaked: {shown}");
    }
    assert!(!app.stored_text().contains(number), "the full card number was stored");
    assert_eq!(events["data"][0]["kind"], "issued");

    // A card of another agent is not found under this agent.
    let other = app.create_agent("other").await;
    let (status, body) = app.get(&format!("/v1/agents/{other}/cards/{id}")).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");
}

async fn templates_and_currencies(app: TestApp) {
    let (status, templates) = app.get("/v1/policy-templates").await;
    assert_eq!(status, StatusCode::OK);
    let coding = templates["data"].as_array().unwrap().iter().find(|t| t["name"] == "coding-agent").expect("template");
    assert_eq!(coding["policy"]["x402"]["per_call"], 500);

    let agent = app.create_agent("coder").await;
    let card = app.issue_card(&agent, json!({"label": "aws", "template": "coding-agent"})).await;
    assert_eq!(card["policy"], coding["policy"]);
    let (_, events) = app.get(&format!("/v1/agents/{agent}/cards/{}/events", card["id"].as_str().unwrap())).await;
    assert_eq!(events["data"][0]["data"]["template"], "coding-agent");

    let path = format!("/v1/agents/{agent}/cards");
    let (status, body) = app.post(&path, json!({"label": "x", "template": "nope"})).await;
    assert_error(status, &body, StatusCode::UNPROCESSABLE_ENTITY, "unknown_template");
    let (status, body) = app.post(&path, json!({"label": "x", "template": "coding-agent", "currency": "EUR"})).await;
    assert_error(status, &body, StatusCode::UNPROCESSABLE_ENTITY, "template_currency_mismatch");
    let (status, body) = app.post(&path, json!({"label": "x", "template": "coding-agent", "policy": {}})).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "validation_failed");

    let eur = app
        .issue_card(&agent, json!({"label": "aws-eu", "currency": "eur", "policy": {"per_transaction": 5000}}))
        .await;
    assert_eq!(eur["currency"], "EUR");
    assert_eq!(eur["policy"]["currency"], "EUR");
    let jpy = app.issue_card(&agent, json!({"label": "jp", "currency": "JPY"})).await;
    assert_eq!(jpy["currency"], "JPY");
    let (status, body) = app.post(&path, json!({"label": "x", "currency": "ABC"})).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "validation_failed");
    assert!(body["error"]["message"].as_str().unwrap().starts_with("currency:"), "{body}");
    let (status, body) = app.post(&path, json!({"label": "x", "currency": "EUR", "policy": {"currency": "USD"}})).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "validation_failed");
    assert!(body["error"]["message"].as_str().unwrap().contains("policy.currency"), "{body}");
    // A policy in EUR and no currency: a EUR card.
    let by_policy =
        app.issue_card(&agent, json!({"label": "eu", "policy": {"currency": "EUR", "per_transaction": 1}})).await;
    assert_eq!((by_policy["currency"].as_str(), by_policy["policy"]["currency"].as_str()), (Some("EUR"), Some("EUR")));
    let (status, body) = app.post(&path, json!({"label": "x", "policy": {"currency": "XYZ"}})).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "validation_failed");

    let (_, list) = app.get(&path).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 4, "refused issues wrote nothing: {list}");
}

async fn external_processor_cards_are_registered_once(app: TestApp) {
    let agent = app.create_agent("coder").await;
    let path = format!("/v1/agents/{agent}/cards");
    let body = json!({"label": "openai", "processor": "stripe", "processor_card_id": "ic_123", "last4": "4242"});
    let card = app.issue_card(&agent, body.clone()).await;
    assert_eq!(card["processor"], "stripe");
    assert_eq!(card["processor_card_id"], "ic_123");
    assert_eq!(card["last4"], "4242");
    assert!(card["number"].is_null());
    let (status, err) = app.post(&path, body).await;
    assert_error(status, &err, StatusCode::CONFLICT, "card_exists");
    let (status, err) = app.post(&path, json!({"label": "x", "processor": "lithic", "last4": "1111"})).await;
    assert_error(status, &err, StatusCode::BAD_REQUEST, "validation_failed");
    let (status, err) = app.post(&path, json!({"label": "x", "processor": "visa"})).await;
    assert_error(status, &err, StatusCode::BAD_REQUEST, "validation_failed");
    let (status, err) = app.post(&path, json!({"label": "x", "processor_card_id": "sim_1"})).await;
    assert_error(status, &err, StatusCode::BAD_REQUEST, "validation_failed");
}

async fn freeze_unfreeze_close_and_the_audit_trail(app: TestApp) {
    let agent = app.create_agent("coder").await;
    let card = app.issue_card(&agent, json!({"label": "openai"})).await;
    let base = format!("/v1/agents/{agent}/cards/{}", card["id"].as_str().unwrap());
    let reason = |r: &str| json!({ "reason": r });

    let (status, frozen) = app.post(&format!("{base}/freeze"), reason("suspicious spend")).await;
    assert_eq!((status, frozen["status"].as_str()), (StatusCode::OK, Some("frozen")), "{frozen}");
    let (status, again) = app.post(&format!("{base}/freeze"), reason("again")).await;
    assert_eq!((status, again["status"].as_str()), (StatusCode::OK, Some("frozen")));
    let (status, active) = app.post(&format!("{base}/unfreeze"), reason("checked")).await;
    assert_eq!((status, active["status"].as_str()), (StatusCode::OK, Some("active")));
    let (status, body) = app.post(&format!("{base}/freeze"), json!({})).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "validation_failed");
    let (status, body) = app.post(&format!("{base}/freeze"), reason("  ")).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "validation_failed");
    let (status, closed) = app.post(&format!("{base}/close"), reason("task done")).await;
    assert_eq!((status, closed["status"].as_str()), (StatusCode::OK, Some("closed")));
    let (status, body) = app.post(&format!("{base}/unfreeze"), reason("oops")).await;
    assert_error(status, &body, StatusCode::CONFLICT, "card_closed");
    let (status, body) = app.post(&format!("{base}/freeze"), reason("oops")).await;
    assert_error(status, &body, StatusCode::CONFLICT, "card_closed");
    let (status, body) = app.put(&format!("{base}/policy"), json!({"per_transaction": 1})).await;
    assert_error(status, &body, StatusCode::CONFLICT, "card_closed");
    let (status, _) = app.post(&format!("{base}/close"), reason("again")).await;
    assert_eq!(status, StatusCode::OK);

    let (_, events) = app.get(&format!("{base}/events")).await;
    let kinds: Vec<_> = events["data"].as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["issued", "frozen", "unfrozen", "closed"], "repeats and refusals add no event");
    let frozen_event = &events["data"][1];
    assert_eq!(frozen_event["reason"], "suspicious spend");
    assert!(frozen_event["actor"].as_str().unwrap().starts_with("key_"));
    assert!(frozen_event["created_at"].is_string());
}

async fn agent_freeze_reaches_every_card(app: TestApp) {
    let agent = app.create_agent("coder").await;
    let cards: Vec<Value> = vec![
        app.issue_card(&agent, json!({"label": "openai"})).await,
        app.issue_card(&agent, json!({"label": "aws"})).await,
    ];
    let (status, frozen) = app.post(&format!("/v1/agents/{agent}/freeze"), json!({"reason": "runaway loop"})).await;
    assert_eq!((status, frozen["status"].as_str()), (StatusCode::OK, Some("frozen")), "{frozen}");
    for card in &cards {
        let (_, events) = app.get(&format!("/v1/agents/{agent}/cards/{}/events", card["id"].as_str().unwrap())).await;
        let last = events["data"].as_array().unwrap().last().unwrap().clone();
        assert_eq!((last["kind"].as_str(), last["reason"].as_str()), (Some("agent_frozen"), Some("runaway loop")));
    }
    let (_, agent_now) = app.get(&format!("/v1/agents/{agent}")).await;
    assert_eq!(agent_now["status"], "frozen");
    let (status, thawed) = app.post(&format!("/v1/agents/{agent}/unfreeze"), json!({"reason": "fixed"})).await;
    assert_eq!((status, thawed["status"].as_str()), (StatusCode::OK, Some("active")));
    let (_, events) = app.get(&format!("/v1/agents/{agent}/events")).await;
    let kinds: Vec<_> = events["data"].as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["agent_created", "issued", "issued", "agent_frozen", "agent_unfrozen"]);
}

async fn policies_are_validated_and_nothing_changes_on_refusal(app: TestApp) {
    let agent = app.create_agent("coder").await;
    let card = app.issue_card(&agent, json!({"label": "openai", "currency": "EUR"})).await;
    let path = format!("/v1/agents/{agent}/cards/{}/policy", card["id"].as_str().unwrap());
    let policy = json!({"per_transaction": 25000,
        "limits": [{"id": "daily", "scope": "card", "window": {"rolling": "24h"}, "amount": 50000, "count": 100},
                   {"id": "monthly", "scope": "agent", "window": {"calendar": "month", "timezone": "Europe/Berlin"}, "amount": 500000}],
        "mcc": {"allow": ["5734", "7372"]}, "countries": {"allow": ["de", "IE"]},
        "active_hours": {"timezone": "Europe/Berlin", "from": "08:00", "to": "20:00", "days": ["mon", "fri"]},
        "approval": {"above": 10000}});
    let (status, saved) = app.put(&path, policy).await;
    assert_eq!(status, StatusCode::OK, "{saved}");
    assert_eq!(saved["currency"], "EUR");
    assert_eq!(saved["countries"]["allow"], json!(["DE", "IE"]));
    let (_, got) = app.get(&path).await;
    assert_eq!(got, saved);

    let refused = [
        (json!({"mcc": {"allow": ["0001"]}}), "policy.mcc.allow[0]"),
        (json!({"mcc_groups": {"block": ["poker"]}}), "policy.mcc_groups.block[0]"),
        (json!({"currency": "USD"}), "policy.currency"),
        (json!({"per_transaction": 0}), "policy.per_transaction"),
        (json!({"mcc": {"allow": ["5734"], "block": ["7995"]}}), "policy.mcc"),
        (
            json!({"limits": [{"id": "a", "scope": "card", "window": {"calendar": "day", "timezone": "Moon/Crater"}, "amount": 1}]}),
            "policy.limits[0].window.timezone",
        ),
        (
            json!({"limits": [{"id": "a", "scope": "card", "window": "lifetime", "amount": 1}, {"id": "a", "scope": "card", "window": "lifetime", "amount": 1}]}),
            "policy.limits[1].id",
        ),
        (
            json!({"limits": [{"id": "a", "scope": "card", "window": {"rolling": "1s"}, "amount": 1}]}),
            "policy.limits[0].window",
        ),
        (
            json!({"limits": [{"id": "a", "scope": "card", "window": "lifetime", "amount": -3}]}),
            "policy.limits[0].amount",
        ),
        (json!([1, 2]), "policy"),
    ];
    for (doc, field) in refused {
        let (status, body) = app.put(&path, doc.clone()).await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "validation_failed");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.starts_with(field), "{doc}: {message:?} should name {field}");
    }
    let (_, still) = app.get(&path).await;
    assert_eq!(still, saved, "a refused policy changed nothing");
    let (_, events) = app.get(&format!("/v1/agents/{agent}/cards/{}/events", card["id"].as_str().unwrap())).await;
    let changes = events["data"].as_array().unwrap().iter().filter(|e| e["kind"] == "policy_changed").count();
    assert_eq!(changes, 1);
    assert_eq!(events["data"][1]["data"]["previous"], json!({"currency": "EUR"}));

    let agent_policy = format!("/v1/agents/{agent}/policy");
    let doc = json!({"limits": [{"id": "day", "scope": "agent", "window": {"rolling": "24h"}, "amount": 50000, "rails": ["card", "usdc"]}]});
    let (status, saved) = app.put(&agent_policy, doc).await;
    assert_eq!(status, StatusCode::OK, "{saved}");
    assert_eq!(saved["currency"], "USD");
    let (_, got) = app.get(&agent_policy).await;
    assert_eq!(got, saved);
    let (status, body) = app.put(&agent_policy, json!({"countries": {"block": ["ZZ"]}})).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "validation_failed");
}

async fn roles_hold(app: TestApp) {
    let agent = app.create_agent("coder").await;
    let other = app.create_agent("other").await;
    let card = app.issue_card(&agent, json!({"label": "openai"})).await;
    let card_path = format!("/v1/agents/{agent}/cards/{}", card["id"].as_str().unwrap());
    let manager = app.create_key("manager", None).await;
    let operator = app.create_key("operator", None).await;
    let agent_key = app.create_key("agent", Some(&agent)).await;
    let reason = Some(json!({"reason": "test"}));
    let call = |key: &str, method: Method, path: &str, body: Option<Value>| {
        let key = key.to_owned();
        let path = path.to_owned();
        let app = &app;
        async move { app.call(method, &path, Some(&key), body).await.0 }
    };

    // manager: agents, cards, policies, unfreeze; not keys.
    assert_eq!(call(&manager, Method::POST, "/v1/agents", Some(json!({"name": "m"}))).await, StatusCode::CREATED);
    assert_eq!(
        call(&manager, Method::POST, "/v1/keys", Some(json!({"role": "operator"}))).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(call(&manager, Method::GET, "/v1/keys", None).await, StatusCode::FORBIDDEN);
    // operator: read and freeze; not unfreeze, not issue, not policy.
    assert_eq!(call(&operator, Method::GET, "/v1/agents", None).await, StatusCode::OK);
    assert_eq!(call(&operator, Method::POST, &format!("{card_path}/freeze"), reason.clone()).await, StatusCode::OK);
    assert_eq!(
        call(&operator, Method::POST, &format!("{card_path}/unfreeze"), reason.clone()).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        call(&operator, Method::POST, &format!("/v1/agents/{agent}/freeze"), reason.clone()).await,
        StatusCode::OK
    );
    assert_eq!(
        call(&operator, Method::POST, &format!("/v1/agents/{agent}/unfreeze"), reason.clone()).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        call(&operator, Method::POST, &format!("/v1/agents/{agent}/cards"), Some(json!({"label": "x"}))).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        call(&operator, Method::PUT, &format!("{card_path}/policy"), Some(json!({}))).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(call(&manager, Method::POST, &format!("{card_path}/unfreeze"), reason.clone()).await, StatusCode::OK);
    assert_eq!(
        call(&manager, Method::POST, &format!("/v1/agents/{agent}/unfreeze"), reason.clone()).await,
        StatusCode::OK
    );
    // agent: reads only its own agent.
    assert_eq!(call(&agent_key, Method::GET, &format!("/v1/agents/{agent}"), None).await, StatusCode::OK);
    assert_eq!(call(&agent_key, Method::GET, &card_path, None).await, StatusCode::OK);
    assert_eq!(
        call(&agent_key, Method::GET, &format!("/v1/cards/{}", card["id"].as_str().unwrap()), None).await,
        StatusCode::OK
    );
    assert_eq!(call(&agent_key, Method::GET, "/v1/policy-templates", None).await, StatusCode::OK);
    assert_eq!(call(&agent_key, Method::GET, &format!("/v1/agents/{other}"), None).await, StatusCode::FORBIDDEN);
    assert_eq!(call(&agent_key, Method::GET, "/v1/agents", None).await, StatusCode::FORBIDDEN);
    assert_eq!(
        call(&agent_key, Method::POST, &format!("{card_path}/freeze"), reason.clone()).await,
        StatusCode::FORBIDDEN
    );
    let (status, body) = app.call(Method::POST, &format!("{card_path}/close"), Some(&agent_key), reason.clone()).await;
    assert_error(status, &body, StatusCode::FORBIDDEN, "forbidden");
    let (_, after) = app.get(&card_path).await;
    assert_eq!(after["status"], "active", "refused requests changed nothing");

    // Key requests that cannot be honoured.
    let (status, body) = app.post("/v1/keys", json!({"role": "agent"})).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "validation_failed");
    let (status, body) = app.post("/v1/keys", json!({"role": "manager", "agent_id": agent})).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "validation_failed");
    let (status, body) = app.post("/v1/keys", json!({"role": "agent", "agent_id": "agt_01nonexistent"})).await;
    assert_error(status, &body, StatusCode::UNPROCESSABLE_ENTITY, "unknown_agent");
    let (status, body) = app.post("/v1/keys", json!({"role": "root"})).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "validation_failed");
}

async fn keys_are_revoked_at_once(app: TestApp) {
    let (status, created) = app.post("/v1/keys", json!({"role": "operator", "name": "oncall"})).await;
    assert_eq!(status, StatusCode::CREATED);
    let secret = created["key"].as_str().unwrap().to_owned();
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["prefix"], &secret[..12]);
    assert!(!app.stored_text().contains(&secret), "key secrets are stored only as hashes");
    let (_, list) = app.get("/v1/keys").await;
    assert!(list["data"].as_array().unwrap().iter().any(|k| k["id"] == id.as_str() && k.get("key").is_none()));
    assert!(!list.to_string().contains(&secret));

    assert_eq!(app.call(Method::GET, "/v1/agents", Some(&secret), None).await.0, StatusCode::OK);
    let (status, revoked) = app.call(Method::DELETE, &format!("/v1/keys/{id}"), Some(&app.owner_key), None).await;
    assert_eq!(status, StatusCode::OK, "{revoked}");
    assert!(revoked["revoked_at"].is_string());
    let (status, body) = app.call(Method::GET, "/v1/agents", Some(&secret), None).await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthenticated");
    let (status, _) = app.call(Method::DELETE, &format!("/v1/keys/{id}"), Some(&app.owner_key), None).await;
    assert_eq!(status, StatusCode::OK, "revoking twice is a no-op");
    let (status, body) = app.call(Method::DELETE, "/v1/keys/key_01nothere", Some(&app.owner_key), None).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found");

    // The last owner key cannot be revoked; with a second owner it can.
    let (_, keys) = app.get("/v1/keys").await;
    let owner_id = keys["data"].as_array().unwrap().iter().find(|k| k["role"] == "owner").unwrap()["id"].clone();
    let owner_path = format!("/v1/keys/{}", owner_id.as_str().unwrap());
    let (status, body) = app.call(Method::DELETE, &owner_path, Some(&app.owner_key), None).await;
    assert_error(status, &body, StatusCode::CONFLICT, "last_owner_key");
    let second = app.create_key("owner", None).await;
    let (status, _) = app.call(Method::DELETE, &owner_path, Some(&second), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(app.get("/v1/agents").await.0, StatusCode::UNAUTHORIZED);
}

/// Another process sharing the database revokes a key this one has cached: it stops working here
/// within the live-key cache's 5 s.
async fn a_key_revoked_by_another_process_stops_within_seconds(app: TestApp) {
    let (status, created) = app.post("/v1/keys", json!({"role": "operator"})).await;
    assert_eq!(status, StatusCode::CREATED);
    let (secret, id) = (created["key"].as_str().unwrap().to_owned(), created["id"].as_str().unwrap().to_owned());
    assert_eq!(app.call(Method::GET, "/v1/agents", Some(&secret), None).await.0, StatusCode::OK);

    app.execute_elsewhere(&format!("UPDATE api_keys SET revoked_at = 1 WHERE id = '{id}'"));
    let revoked = std::time::Instant::now();
    loop {
        let (status, body) = app.call(Method::GET, "/v1/agents", Some(&secret), None).await;
        if status == StatusCode::UNAUTHORIZED {
            assert_error(status, &body, StatusCode::UNAUTHORIZED, "unauthenticated");
            break;
        }
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(
            revoked.elapsed() < Duration::from_secs(7),
            "the revoked key still works after {:?}",
            revoked.elapsed()
        );
        actix_web::rt::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn bad_input_gets_a_clear_4xx_and_writes_nothing(app: TestApp) {
    let agent = app.create_agent("coder").await;
    let raw = |method: Method, path: &str, content_type: Option<&str>, body: Vec<u8>, key: Option<&str>| {
        let mut request = app.http.request(method, format!("{}{path}", app.base)).body(body);
        if let Some(ct) = content_type {
            request = request.header("Content-Type", ct);
        }
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        async move {
            let response = request.send().await.unwrap();
            let status = response.status();
            let json: Value = response.json().await.expect("every error is JSON");
            (status, json)
        }
    };
    let key = Some(app.owner_key.as_str());
    let json_ct = Some("application/json");

    let (s, b) = raw(Method::POST, "/v1/agents", json_ct, b"{\"name\": ".to_vec(), key).await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "invalid_json");
    let (s, b) = raw(Method::POST, "/v1/agents", Some("text/plain"), b"{\"name\": \"x\"}".to_vec(), key).await;
    assert_error(s, &b, StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type");
    let big = serde_json::to_vec(&json!({"name": "x".repeat(70 * 1024)})).unwrap();
    let (s, b) = raw(Method::POST, "/v1/agents", json_ct, big, key).await;
    assert_error(s, &b, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
    let (s, b) = raw(Method::POST, "/v1/agents", json_ct, br#"{"name": "x", "colour": "red"}"#.to_vec(), key).await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "validation_failed");
    assert!(b["error"]["message"].as_str().unwrap().contains("colour"), "{b}");
    let (s, b) = raw(Method::POST, "/v1/agents", json_ct, br#"{"name": ""}"#.to_vec(), key).await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "validation_failed");
    let (s, b) = raw(Method::POST, "/v1/agents", json_ct, br#"{"name": 7}"#.to_vec(), key).await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "validation_failed");
    let (s, b) = raw(Method::POST, "/v1/agents", json_ct, br#"{"name": "x"}"#.to_vec(), None).await;
    assert_error(s, &b, StatusCode::UNAUTHORIZED, "unauthenticated");
    let (s, b) = raw(Method::POST, "/v1/agents", json_ct, br#"{"name": "x"}"#.to_vec(), Some("sgk_wrong")).await;
    assert_error(s, &b, StatusCode::UNAUTHORIZED, "unauthenticated");
    let (s, b) = raw(Method::GET, "/v1/agents/agt_01doesnotexist", None, vec![], key).await;
    assert_error(s, &b, StatusCode::NOT_FOUND, "not_found");
    let (s, b) = raw(Method::GET, "/v1/agents/card_01wrongprefix", None, vec![], key).await;
    assert_error(s, &b, StatusCode::NOT_FOUND, "not_found");
    let (s, b) = raw(Method::GET, "/v1/cards/%00%ff", None, vec![], key).await;
    assert_error(s, &b, StatusCode::NOT_FOUND, "not_found");
    let (s, b) =
        raw(Method::POST, "/v1/agents/agt_01doesnotexist/cards", json_ct, br#"{"label": "x"}"#.to_vec(), key).await;
    assert_error(s, &b, StatusCode::NOT_FOUND, "not_found");
    let (s, b) = raw(Method::GET, "/v1/nothing-here", None, vec![], key).await;
    assert_error(s, &b, StatusCode::NOT_FOUND, "not_found");
    let (s, b) = raw(Method::DELETE, "/v1/agents", None, vec![], key).await;
    assert_error(s, &b, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    let (s, b) = raw(Method::GET, "/v1/agents?limit=abc", None, vec![], key).await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "validation_failed");
    let path = format!("/v1/agents/{agent}/cards");
    let (s, b) =
        raw(Method::POST, &path, json_ct, br#"{"label": "x", "expires_at": "2001-01-01T00:00:00Z"}"#.to_vec(), key)
            .await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "validation_failed");
    let (s, b) = raw(Method::POST, &path, json_ct, br#"{"label": "x", "expires_at": "tomorrow"}"#.to_vec(), key).await;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "validation_failed");

    let (_, agents) = app.get("/v1/agents").await;
    assert_eq!(agents["data"].as_array().unwrap().len(), 1, "no refused request wrote an agent");
    let (_, cards) = app.get(&path).await;
    assert_eq!(cards["data"].as_array().unwrap().len(), 0, "no refused request wrote a card");
}

async fn concurrent_status_changes_never_reopen_a_closed_card(app: TestApp) {
    let agent = app.create_agent("coder").await;
    let card = app.issue_card(&agent, json!({"label": "openai"})).await;
    let base = format!("/v1/agents/{agent}/cards/{}", card["id"].as_str().unwrap());
    let actions = ["freeze", "unfreeze", "close", "unfreeze", "freeze", "unfreeze"];
    let requests = (0..30).map(|i| {
        let path = format!("{base}/{}", actions[i % actions.len()]);
        let app = &app;
        async move { app.post(&path, json!({"reason": format!("race {i}")})).await.0 }
    });
    let statuses = common::join_all(requests).await;
    assert!(statuses.iter().all(|s| [StatusCode::OK, StatusCode::CONFLICT].contains(s)), "{statuses:?}");
    let mut closes = statuses.iter().enumerate().filter(|(i, _)| actions[i % actions.len()] == "close");
    assert!(
        closes.clone().count() > 0 && closes.all(|(_, s)| *s == StatusCode::OK),
        "a close always lands: {statuses:?}"
    );
    let (_, after) = app.get(&base).await;
    assert_eq!(after["status"], "closed", "a closed card stays closed");
    let (_, events) = app.get(&format!("{base}/events")).await;
    let events = events["data"].as_array().unwrap();
    let closes = events.iter().filter(|e| e["kind"] == "closed").count();
    assert_eq!(closes, 1);
    assert_eq!(events.last().unwrap()["kind"], "closed", "nothing happens to a card after it closes");
}

async fn concurrent_issues_all_land(app: TestApp) {
    let agent = app.create_agent("coder").await;
    let path = format!("/v1/agents/{agent}/cards");
    let requests = (0..25).map(|i| {
        let app = &app;
        let path = path.clone();
        async move { app.post(&path, json!({"label": format!("svc-{i}")})).await }
    });
    let results = common::join_all(requests).await;
    let mut ids: Vec<_> = results
        .iter()
        .map(|(s, c)| {
            assert_eq!(*s, StatusCode::CREATED, "{c}");
            c["id"].as_str().unwrap().to_owned()
        })
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 25);
    let (_, list) = app.get(&format!("{path}?limit=500")).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 25);
}

async fn concurrent_registrations_of_one_processor_card_make_one_card(app: TestApp) {
    let agent = app.create_agent("coder").await;
    let path = format!("/v1/agents/{agent}/cards");
    let body = json!({"label": "openai", "processor": "lithic", "processor_card_id": "tok_same", "last4": "1234"});
    let requests = (0..12).map(|_| {
        let (app, path, body) = (&app, path.clone(), body.clone());
        async move { app.post(&path, body).await }
    });
    let results = common::join_all(requests).await;
    let created = results.iter().filter(|(s, _)| *s == StatusCode::CREATED).count();
    assert_eq!(created, 1, "{results:?}");
    for (status, body) in results.iter().filter(|(s, _)| *s != StatusCode::CREATED) {
        assert_eq!(*status, StatusCode::CONFLICT, "a lost race is a 409, never a 5xx: {body}");
    }
    let (_, list) = app.get(&path).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
}

/// A database that stops answering (no error, no answer, as behind a network that drops packets):
/// `/readyz` says so within about a second, API requests answer 503 `storage_unavailable` within the
/// storage timeout, decisions decline; once the database answers again, so does everything.
#[actix_web::test]
#[cfg_attr(not(postgres_tests), ignore = "needs PostgreSQL: set SPENDGATE_TEST_DATABASE_URL")]
async fn a_stalled_database_is_reported_and_answered_within_bounds() {
    let direct = common::postgres_url().expect("SPENDGATE_TEST_DATABASE_URL is not set");
    let port = direct.split('@').nth(1).and_then(|h| h.split('/').next()).unwrap_or("127.0.0.1:5432").to_owned();
    let proxy = stalling_proxy::StallingProxy::start(&port);
    let app = common::spawn_with(common::Backend::Postgres, |c| {
        c.database_url = c.database_url.replacen(&port, &proxy.addr, 1);
        c.database_timeout_ms = 1_500;
        c.decision_budget_ms = 500;
    })
    .await;
    let agent = app.create_agent("stalled").await;
    app.fund(&agent, 10_000).await;
    let card = app.issue_card(&agent, json!({"label": "openai"})).await["id"].as_str().unwrap().to_owned();
    let (status, ready) = app.get("/readyz").await;
    assert_eq!((status, ready["status"].as_str()), (StatusCode::OK, Some("ready")), "{ready}");

    let bad_key = "sgk_not_a_key_0123456789abcdef0123456789abcdef";
    let (status, _) = app.call(Method::GET, "/v1/agents", Some(bad_key), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    proxy.stall(true);
    // A client that would wait far longer than the bounds: what it gets is the server's own answer.
    let patient = reqwest::Client::builder().timeout(Duration::from_secs(20)).build().unwrap();
    // The key just refused is remembered a few seconds: refused again without asking the database.
    let again = patient.get(format!("{}/v1/agents", app.base)).bearer_auth(bad_key).send().await.unwrap();
    assert_eq!(again.status(), StatusCode::UNAUTHORIZED);
    let ready = patient.get(format!("{}/readyz", app.base)).send().await.expect("readyz answers");
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["status"], "unavailable", "{body}");
    assert!(body["problems"][0].as_str().unwrap().starts_with("database"), "{body}");
    let listed = patient
        .get(format!("{}/v1/agents?limit=5", app.base))
        .bearer_auth(&app.owner_key)
        .send()
        .await
        .expect("the API answers");
    assert_eq!(listed.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = listed.json().await.unwrap();
    assert_eq!(body["error"]["code"], "storage_unavailable", "{body}");
    let decision = app.authorize("stalled-1", &card, 100).await;
    assert_eq!(decision["approved"], false, "fail closed: {decision}");

    proxy.stall(false);
    assert!(readyz_answers(&app, StatusCode::OK, 100).await.is_some(), "ready again once the database answers");
    assert_eq!(app.authorize("after-1", &card, 100).await["approved"], true);
}

/// A SQLite file another process holds locked: the writer waits in its commit, `/readyz` says so
/// and decisions decline within their budget; once the lock is gone, both recover.
#[actix_web::test]
async fn a_locked_sqlite_file_is_reported() {
    use diesel::connection::SimpleConnection;
    use diesel::{Connection, SqliteConnection};
    let app = common::spawn_with(common::Backend::Sqlite, |c| c.decision_budget_ms = 300).await;
    let agent = app.create_agent("locked").await;
    app.fund(&agent, 10_000).await;
    let card = app.issue_card(&agent, json!({"label": "openai"})).await["id"].as_str().unwrap().to_owned();
    let path = app.database_url.strip_prefix("sqlite://").unwrap().to_owned();
    let mut holder = SqliteConnection::establish(&path).unwrap();
    holder.batch_execute("BEGIN EXCLUSIVE").unwrap();

    // Fail closed: declined (the commit failed, or outran the budget), and recorded once it can be.
    let decision = app.authorize("while-locked", &card, 100).await;
    assert_eq!(decision["approved"], false, "{decision}");
    assert!(["internal_error", "timeout"].contains(&decision["reason"].as_str().unwrap()), "{decision}");
    let unready = readyz_answers(&app, StatusCode::SERVICE_UNAVAILABLE, 40).await;
    let unready = unready.expect("readyz reports the writer's failing or stuck commit");
    assert!(unready["problems"][0].as_str().unwrap().starts_with("ledger"), "{unready}");

    holder.batch_execute("ROLLBACK").unwrap();
    assert_eq!(app.authorize("after-lock", &card, 100).await["approved"], true);
    assert!(readyz_answers(&app, StatusCode::OK, 100).await.is_some(), "ready again once the lock is gone");
}

/// `/readyz`'s body once it answers `status`, asked every 100 ms at most `tries` times.
async fn readyz_answers(app: &TestApp, status: StatusCode, tries: usize) -> Option<Value> {
    for _ in 0..tries {
        let (answered, body) = app.get("/readyz").await;
        if answered == status {
            return Some(body);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}
