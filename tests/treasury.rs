//! The treasury: every agent's money comes from its currency's treasury and goes back there; what
//! backs a treasury is recorded by people; top-ups refill a balance once per fall. The agents here
//! are in CHF, a currency the test world does not back, so every figure is this test's own.

mod common;

use common::TestApp;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// A CHF agent with `policy` (its currency added) and one CHF card: (agent, card).
async fn chf_agent(app: &TestApp, policy: Value) -> (String, String) {
    let mut policy = policy;
    policy["currency"] = json!("CHF");
    let (s, agent) = app.post("/v1/agents", json!({"name": "zurich", "policy": policy})).await;
    assert_eq!(s, StatusCode::CREATED, "{agent}");
    let agent = agent["id"].as_str().unwrap().to_owned();
    let card = app.issue_card(&agent, json!({"label": "svc", "currency": "CHF"})).await;
    (agent, card["id"].as_str().unwrap().to_owned())
}

async fn authorize_chf(app: &TestApp, id: &str, card: &str, amount: i64) -> Value {
    let body = json!({"id": id, "card_id": card, "amount": amount, "currency": "CHF",
        "merchant": {"id": "m_openai", "name": "OPENAI *API", "mcc": "5734", "country": "US"}});
    let (status, decision) = app.signed("/v1/authorizations", &body).await;
    assert_eq!(status, StatusCode::OK, "{decision}");
    decision
}

async fn treasury(app: &TestApp, currency: &str) -> Value {
    let (s, all) = app.get("/v1/treasury").await;
    assert_eq!(s, StatusCode::OK, "{all}");
    all["data"].as_array().unwrap().iter().find(|t| t["currency"] == currency).cloned().unwrap_or(Value::Null)
}

async fn deposit(app: &TestApp, id: &str, amount: i64) -> (StatusCode, Value) {
    app.post("/v1/treasury/deposits", json!({"id": id, "amount": amount, "currency": "CHF", "reference": "wire 42"}))
        .await
}

async fn fund(app: &TestApp, agent: &str, id: &str, amount: i64) -> (StatusCode, Value) {
    app.post(
        &format!("/v1/agents/{agent}/fund"),
        json!({"id": id, "amount": amount, "currency": "CHF", "reason": "sprint"}),
    )
    .await
}

async fn agent_transfers(app: &TestApp, agent: &str, kind: &str) -> Vec<Value> {
    let (_, page) = app.get(&format!("/v1/agents/{agent}/ledger?limit=500")).await;
    page["data"].as_array().unwrap().iter().filter(|e| e["type"] == "transfer" && e["kind"] == kind).cloned().collect()
}

async fn events(app: &TestApp, agent: &str, kind: &str) -> Vec<Value> {
    let (_, page) = app.get(&format!("/v1/agents/{agent}/events?limit=500")).await;
    page["data"].as_array().unwrap().iter().filter(|e| e["kind"] == kind).cloned().collect()
}

async fn funds_from_the_treasury_and_drains_back(app: TestApp) {
    let (agent, card) = chf_agent(&app, json!({})).await;

    // Nothing backs the CHF treasury yet: no money from nowhere.
    let (s, e) = fund(&app, &agent, "f1", 6_000).await;
    assert_eq!((s, e["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("treasury_short")), "{e}");
    assert_eq!(app.balance(&agent).await["funded"], 0);

    // Only an owner records what backs a treasury; an agent key does not even see it.
    let manager = app.create_key("manager", None).await;
    let agent_key = app.create_key("agent", Some(&agent)).await;
    let body = json!({"id": "d0", "amount": 1, "currency": "CHF"});
    let (s, _) = app.call(Method::POST, "/v1/treasury/deposits", Some(&manager), Some(body)).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = app.call(Method::GET, "/v1/treasury", Some(&agent_key), None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let body = json!({"id": "d0", "amount": 1});
    let (s, _) = app.call(Method::POST, &format!("/v1/agents/{agent}/drain"), Some(&agent_key), Some(body)).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "an agent key drains nothing");

    // A deposit, its retry, and the same id for another amount.
    let (s, d) = deposit(&app, "d1", 10_000).await;
    assert_eq!(s, StatusCode::CREATED, "{d}");
    assert_eq!((d["kind"].as_str(), d["reference"].as_str()), (Some("deposit"), Some("wire 42")));
    assert_eq!(deposit(&app, "d1", 10_000).await.0, StatusCode::OK);
    let (s, e) = deposit(&app, "d1", 9_999).await;
    assert_eq!((s, e["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("idempotency_conflict")));
    for bad in [
        json!({"id": "d2", "amount": 0, "currency": "CHF"}),
        json!({"id": "d2", "amount": 5, "currency": "XXQ"}),
        json!({"id": " ", "amount": 5, "currency": "CHF"}),
        json!({"id": "d2", "amount": 5, "currency": "CHF", "reason": "\u{0007}"}),
        json!({"id": "d2", "amount": 5, "currency": "CHF", "extra": 1}),
    ] {
        let (s, e) = app.post("/v1/treasury/deposits", bad.clone()).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {e}");
    }

    // Funding takes from the treasury, with who and why; more than it has is refused whole.
    let (s, t) = fund(&app, &agent, "f1", 6_000).await;
    assert_eq!(s, StatusCode::CREATED, "{t}");
    assert_eq!((t["kind"].as_str(), t["reason"].as_str()), (Some("fund"), Some("sprint")), "{t}");
    assert!(t["actor"].as_str().unwrap().starts_with("key_"), "{t}");
    assert_eq!(fund(&app, &agent, "f1", 6_000).await.0, StatusCode::OK, "a retry replays");
    let (s, e) = fund(&app, &agent, "f2", 4_001).await;
    assert_eq!((s, e["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("treasury_short")), "{e}");

    // A withdrawal takes only what no agent was given.
    let withdraw =
        |id: &str, amount: i64| json!({"id": id, "amount": amount, "currency": "CHF", "reason": "back to the bank"});
    let (s, e) = app.post("/v1/treasury/withdrawals", withdraw("w1", 4_001)).await;
    assert_eq!((s, e["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("treasury_short")), "{e}");
    assert_eq!(app.post("/v1/treasury/withdrawals", withdraw("w1", 1_000)).await.0, StatusCode::CREATED);

    // A drain takes back what is available, never what is held: the merchant must be paid.
    let held = authorize_chf(&app, "a1", &card, 2_000).await;
    assert_eq!(held["approved"], true, "{held}");
    let (s, t) = app.post(&format!("/v1/agents/{agent}/drain"), json!({"id": "dr1", "reason": "project over"})).await;
    assert_eq!(s, StatusCode::CREATED, "{t}");
    assert_eq!((t["kind"].as_str(), t["amount"]["amount"].as_i64()), (Some("drain"), Some(4_000)), "{t}");
    let b = app.balance(&agent).await;
    assert_eq!(
        (b["available"].as_i64(), b["held"].as_i64(), b["funded"].as_i64()),
        (Some(0), Some(2_000), Some(2_000))
    );
    let (s, e) = app.post(&format!("/v1/agents/{agent}/drain"), json!({"id": "dr2"})).await;
    assert_eq!((s, e["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("exceeds_available")), "{e}");
    let (s, e) = app.post(&format!("/v1/agents/{agent}/drain"), json!({"id": "dr1", "amount": 5})).await;
    assert_eq!((s, e["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("idempotency_conflict")), "{e}");
    // The hold still captures.
    let capture = format!("/v1/authorizations/{}/capture", held["authorization_id"].as_str().unwrap());
    let (s, c) = app.signed(&capture, &json!({"id": "c1", "amount": 2_000, "currency": "CHF"})).await;
    assert_eq!(s, StatusCode::OK, "{c}");

    let t = treasury(&app, "CHF").await;
    assert_eq!(
        (&t["deposited"], &t["withdrawn"], &t["granted"], &t["returned"], &t["available"]),
        (&json!(10_000), &json!(1_000), &json!(6_000), &json!(4_000), &json!(7_000)),
        "{t}"
    );
    let (_, journal) = app.get("/v1/treasury/transfers?currency=CHF").await;
    let kinds: Vec<&str> = journal["data"].as_array().unwrap().iter().map(|m| m["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["deposit", "fund", "withdrawal", "drain"], "{journal}");
    let drained = &journal["data"][3];
    assert_eq!(
        (drained["agent_id"].as_str(), drained["reason"].as_str()),
        (Some(agent.as_str()), Some("project over"))
    );

    // The treasury's journal is an audit chain of its own, and what it says must be what agents hold.
    let (_, v) = app.post("/v1/audit/verify", json!({})).await;
    assert_eq!(v["verified"], true, "{v}");
    app.execute_elsewhere("UPDATE treasuries SET deposited = deposited + 500 WHERE currency = 'CHF'");
    let (_, v) = app.post("/v1/audit/verify", json!({})).await;
    assert_eq!(v["broken"][0]["agent_id"], "treasury:CHF", "{v}");
    assert_eq!(v["broken"][0]["problem"], "balance_mismatch", "{v}");
    app.execute_elsewhere("UPDATE treasuries SET deposited = deposited - 500 WHERE currency = 'CHF'");
    // Money into an agent behind the treasury's back: the agent's row and its records agree, the
    // treasury does not.
    app.execute_elsewhere(&format!("UPDATE agents SET funded = funded + 700 WHERE id = '{agent}'"));
    let (_, v) = app.post("/v1/audit/verify", json!({})).await;
    let problems: Vec<(&str, &str)> = v["broken"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["agent_id"].as_str().unwrap(), b["problem"].as_str().unwrap()))
        .collect();
    assert!(problems.contains(&("treasury:CHF", "balance_mismatch")), "{v}");
}

async fn a_maximum_balance_refuses_funding_past_it(app: TestApp) {
    let (agent, _) = chf_agent(&app, json!({"funding": {"max_balance": 5_000}})).await;
    assert_eq!(deposit(&app, "d1", 100_000).await.0, StatusCode::CREATED);
    assert_eq!(fund(&app, &agent, "f1", 4_000).await.0, StatusCode::CREATED);
    let (s, e) = fund(&app, &agent, "f2", 1_001).await;
    assert_eq!((s, e["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("max_balance_exceeded")), "{e}");
    assert!(e["error"]["message"].as_str().unwrap().contains("1000"), "{e}");
    assert_eq!(fund(&app, &agent, "f2", 1_000).await.0, StatusCode::CREATED);
    assert_eq!(treasury(&app, "CHF").await["granted"], 5_000);
    // A card's policy has no funding section; a top-up past the maximum is no policy either.
    let (s, _) = app
        .put(
            &format!("/v1/agents/{agent}/policy"),
            json!({"currency": "CHF", "funding": {"max_balance": 100, "top_up": {"below": 10, "to": 500}}}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
}

async fn a_top_up_fires_once_per_fall_and_a_short_treasury_is_announced(app: TestApp) {
    let rule = json!({"funding": {"top_up": {"below": 5_000, "to": 10_000, "max_per_day": 50_000}}});
    let (agent, card) = chf_agent(&app, rule).await;
    assert_eq!(deposit(&app, "d1", 20_000).await.0, StatusCode::CREATED);
    assert_eq!(fund(&app, &agent, "f1", 6_000).await.0, StatusCode::CREATED);

    // 40 authorizations of 1.00 at once: the balance falls through 50.00 once.
    let decisions = common::join_all((0..40).map(|i| {
        let (app, card) = (&app, &card);
        async move { authorize_chf(app, &format!("a{i}"), card, 100).await }
    }))
    .await;
    assert!(decisions.iter().all(|d| d["approved"] == true));
    for _ in 0..100 {
        if !agent_transfers(&app, &agent, "top_up").await.is_empty() {
            break;
        }
        actix_web::rt::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    actix_web::rt::time::sleep(std::time::Duration::from_millis(300)).await;
    let top_ups = agent_transfers(&app, &agent, "top_up").await;
    assert_eq!(top_ups.len(), 1, "exactly one top-up: {top_ups:#?}");
    let topped = top_ups[0]["amount"]["amount"].as_i64().unwrap();
    assert_eq!(top_ups[0]["actor"], "spendgate");
    // It brought the balance from under 50.00 back to 100.00.
    assert!((5_001..=8_000).contains(&topped), "{topped}");
    let b = app.balance(&agent).await;
    assert_eq!(b["funded"], 6_000 + topped, "{b}");
    assert_eq!(b["available"], 6_000 + topped - 4_000, "{b}");
    assert_eq!(events(&app, &agent, "balance_topped_up").await.len(), 1);
    assert_eq!(treasury(&app, "CHF").await["granted"], 6_000 + topped);

    // The treasury runs dry: the next fall tops up what is left and announces the rest, once.
    let left = treasury(&app, "CHF").await["available"].as_i64().unwrap();
    let body = json!({"id": "w1", "amount": left - 300, "currency": "CHF"});
    assert_eq!(app.post("/v1/treasury/withdrawals", body).await.0, StatusCode::CREATED);
    let spend = b["available"].as_i64().unwrap() - 4_000;
    assert_eq!(authorize_chf(&app, "big", &card, spend).await["approved"], true);
    let mut short = Vec::new();
    for _ in 0..100 {
        short = events(&app, &agent, "treasury_short").await;
        if !short.is_empty() {
            break;
        }
        actix_web::rt::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(short.len(), 1, "{short:#?}");
    assert_eq!(short[0]["data"]["wanted"]["amount"], 6_000, "{short:#?}");
    assert_eq!(short[0]["data"]["moved"]["amount"], 300, "{short:#?}");
    assert_eq!(treasury(&app, "CHF").await["available"], 0);
    assert_eq!(app.balance(&agent).await["available"], 4_300);
    app.assert_chains_whole().await;
}

/// Drains until the agent's drains add up to `total`, or gives up after five seconds.
async fn drained_reaches(app: &TestApp, agent: &str, total: i64) -> i64 {
    let mut sum = 0;
    for _ in 0..100 {
        sum = agent_transfers(app, agent, "drain").await.iter().map(|t| t["amount"]["amount"].as_i64().unwrap()).sum();
        if sum >= total {
            break;
        }
        actix_web::rt::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    sum
}

async fn deactivation_freezes_revokes_and_drains_as_holds_settle(app: TestApp) {
    let rule = json!({"funding": {"top_up": {"below": 1_000, "to": 5_000}}});
    let (agent, card) = chf_agent(&app, rule).await;
    assert_eq!(deposit(&app, "d1", 100_000).await.0, StatusCode::CREATED);
    assert_eq!(fund(&app, &agent, "f1", 10_000).await.0, StatusCode::CREATED);
    let key = app.create_key("agent", Some(&agent)).await;
    let captured = authorize_chf(&app, "a1", &card, 3_000).await;
    let voided = authorize_chf(&app, "a2", &card, 2_000).await;
    assert!(captured["approved"] == true && voided["approved"] == true);

    let operator = app.create_key("operator", None).await;
    let (s, _) = app
        .call(Method::POST, &format!("/v1/agents/{agent}/deactivate"), Some(&operator), Some(json!({"reason": "x"})))
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "an operator may freeze, not deactivate");
    let (s, d) = app.post(&format!("/v1/agents/{agent}/deactivate"), json!({"reason": "project over"})).await;
    assert_eq!(s, StatusCode::OK, "{d}");
    assert_eq!(d["cards_frozen"], json!([card]), "{d}");
    assert_eq!(d["keys_revoked"], 1, "{d}");
    assert_eq!(d["drained"]["amount"]["amount"], 5_000, "what was available, not what is held: {d}");
    let first_drain = d["drained"]["id"].clone();
    assert!(d["agent"]["deactivated_at"].is_string(), "{d}");

    // Nothing more can be spent or asked for; nothing refills it.
    let (s, _) = app.call(Method::GET, "/v1/me", Some(&key), None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "its keys are revoked");
    assert_eq!(authorize_chf(&app, "a3", &card, 100).await["approved"], false);
    let (_, c) = app.get(&format!("/v1/cards/{card}")).await;
    assert_eq!(c["status"], "frozen");
    let (s, e) = app.post(&format!("/v1/agents/{agent}/unfreeze"), json!({"reason": "oops"})).await;
    assert_eq!((s, e["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("agent_deactivated")), "{e}");

    // The holds still settle, and what they release goes back to the treasury.
    let capture = format!("/v1/authorizations/{}/capture", captured["authorization_id"].as_str().unwrap());
    let (s, c) = app.signed(&capture, &json!({"id": "c1", "amount": 2_500, "currency": "CHF"})).await;
    assert_eq!(s, StatusCode::OK, "{c}");
    assert_eq!(drained_reaches(&app, &agent, 5_500).await, 5_500);
    let reverse = format!("/v1/authorizations/{}/reverse", voided["authorization_id"].as_str().unwrap());
    let (s, r) = app.signed(&reverse, &json!({"id": "r1"})).await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(drained_reaches(&app, &agent, 7_500).await, 7_500);
    actix_web::rt::time::sleep(std::time::Duration::from_millis(200)).await;
    let b = app.balance(&agent).await;
    assert_eq!(
        (b["available"].as_i64(), b["held"].as_i64(), b["spent"].as_i64()),
        (Some(0), Some(0), Some(2_500)),
        "{b}"
    );
    assert!(agent_transfers(&app, &agent, "top_up").await.is_empty(), "a deactivated agent is not topped up");
    assert_eq!(treasury(&app, "CHF").await["returned"], 7_500);

    // Again: nothing more is done; the first drain is answered again.
    let (s, d) = app.post(&format!("/v1/agents/{agent}/deactivate"), json!({"reason": "again"})).await;
    assert_eq!((s, &d["drained"]["id"], d["keys_revoked"].as_i64()), (StatusCode::OK, &first_drain, Some(0)), "{d}");

    // A person brings it back, with its cards; it needs money and a new key.
    let (s, a) = app
        .post(&format!("/v1/agents/{agent}/reactivate"), json!({"reason": "new project", "unfreeze_cards": true}))
        .await;
    assert_eq!(s, StatusCode::OK, "{a}");
    assert_eq!((a["status"].as_str(), a["deactivated_at"].is_null()), (Some("active"), true), "{a}");
    assert_eq!(authorize_chf(&app, "a4", &card, 100).await["reason"], "insufficient_funds");
    assert_eq!(fund(&app, &agent, "f2", 1_000).await.0, StatusCode::CREATED);
    assert_eq!(authorize_chf(&app, "a5", &card, 100).await["approved"], true);
    let (s, _) = app.call(Method::GET, "/v1/me", Some(&key), None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "its old keys stay revoked");
    app.assert_chains_whole().await;
}

async fn a_parent_allocates_to_its_child_and_takes_it_back(app: TestApp) {
    let (parent, _) = chf_agent(&app, json!({"funding": {"max_balance": 10_000}})).await;
    let (s, child) = app
        .post("/v1/agents", json!({"name": "worker", "policy": {"currency": "CHF", "funding": {"max_balance": 5_000}}, "parent_id": parent}))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{child}");
    let child = child["id"].as_str().unwrap().to_owned();
    let card =
        app.issue_card(&child, json!({"label": "svc", "currency": "CHF"})).await["id"].as_str().unwrap().to_owned();
    assert_eq!(deposit(&app, "d1", 20_000).await.0, StatusCode::CREATED);
    assert_eq!(fund(&app, &parent, "f1", 10_000).await.0, StatusCode::CREATED);

    let allocate = |id: &str, amount: i64| json!({"id": id, "amount": amount, "reason": "the crawl"});
    let (s, t) = app.post(&format!("/v1/agents/{child}/allocate"), allocate("al1", 4_000)).await;
    assert_eq!(s, StatusCode::CREATED, "{t}");
    assert_eq!((t["kind"].as_str(), t["amount"]["amount"].as_i64()), (Some("allocation_in"), Some(4_000)), "{t}");
    assert_eq!(app.post(&format!("/v1/agents/{child}/allocate"), allocate("al1", 4_000)).await.0, StatusCode::OK);
    let (s, e) = app.post(&format!("/v1/agents/{child}/allocate"), allocate("al2", 1_001)).await;
    assert_eq!((s, e["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("max_balance_exceeded")), "{e}");
    let (s, e) = app.post(&format!("/v1/agents/{parent}/allocate"), allocate("al3", 1)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "an agent without a parent: {e}");
    assert_eq!(app.balance(&parent).await["available"], 6_000);
    assert_eq!(app.balance(&child).await["available"], 4_000);
    // The parent is funded up to its maximum again; what its child gives back was its own.
    assert_eq!(fund(&app, &parent, "f2", 4_000).await.0, StatusCode::CREATED);

    // The child spends; a drain takes what is left back to the parent, not the treasury.
    assert_eq!(authorize_chf(&app, "a1", &card, 1_500).await["approved"], true);
    let (s, t) = app.post(&format!("/v1/agents/{child}/drain"), json!({"id": "dr1", "amount": 500})).await;
    assert_eq!((s, t["kind"].as_str()), (StatusCode::CREATED, Some("allocation_out")), "{t}");
    assert_eq!(app.balance(&parent).await["available"], 10_500, "past its maximum: its own money came back");
    let (s, e) = app.post(&format!("/v1/agents/{child}/drain"), json!({"id": "dr2", "amount": 2_001})).await;
    assert_eq!((s, e["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("exceeds_available")), "{e}");
    let t = treasury(&app, "CHF").await;
    assert_eq!((&t["granted"], &t["returned"]), (&json!(14_000), &json!(0)), "{t}");

    // A deactivated child goes back to its parent, with what its hold releases.
    let (s, d) = app.post(&format!("/v1/agents/{child}/deactivate"), json!({"reason": "done"})).await;
    assert_eq!((s, d["drained"]["amount"]["amount"].as_i64()), (StatusCode::OK, Some(2_000)), "{d}");
    let (_, ledger) = app.get(&format!("/v1/agents/{child}/ledger")).await;
    let hold = ledger["data"].as_array().unwrap().iter().find(|e| e["type"] == "authorization").unwrap().clone();
    let (s, _) =
        app.signed(&format!("/v1/authorizations/{}/reverse", hold["id"].as_str().unwrap()), &json!({"id": "r1"})).await;
    assert_eq!(s, StatusCode::OK);
    for _ in 0..100 {
        if app.balance(&parent).await["available"] == 14_000 {
            break;
        }
        actix_web::rt::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(app.balance(&parent).await["available"], 14_000, "every cent back with the parent");
    assert_eq!(app.balance(&child).await["funded"], 0);
    app.assert_chains_whole().await;
}

/// A sub-agent made in CHF under `parent`, funded, with a card: (agent, card).
async fn chf_child(app: &TestApp, parent: &str, id: &str) -> (String, String) {
    let body = json!({"name": "worker", "policy": {"currency": "CHF"}, "parent_id": parent});
    let (s, child) = app.post("/v1/agents", body).await;
    assert_eq!(s, StatusCode::CREATED, "{child}");
    let child = child["id"].as_str().unwrap().to_owned();
    assert_eq!(fund(app, &child, id, 10_000).await.0, StatusCode::CREATED);
    let card = app.issue_card(&child, json!({"label": "svc", "currency": "CHF"})).await;
    (child, card["id"].as_str().unwrap().to_owned())
}

async fn reports_and_the_export_add_a_tree_up(app: TestApp) {
    assert_eq!(deposit(&app, "d1", 100_000).await.0, StatusCode::CREATED);
    let budget = json!({"limits": [{"id": "budget", "scope": "agent", "window": "lifetime", "amount": 5_000}]});
    let (parent, parent_card) = chf_agent(&app, budget).await;
    assert_eq!(fund(&app, &parent, "fp", 10_000).await.0, StatusCode::CREATED);
    let (child, child_card) = chf_child(&app, &parent, "fc").await;
    let (grandchild, grandchild_card) = chf_child(&app, &child, "fg").await;
    let (other, other_card) = chf_agent(&app, json!({})).await;
    assert_eq!(fund(&app, &other, "fo", 10_000).await.0, StatusCode::CREATED);
    for (id, card, amount) in
        [("p", &parent_card, 100), ("c", &child_card, 200), ("g", &grandchild_card, 400), ("o", &other_card, 800)]
    {
        assert_eq!(authorize_chf(&app, id, card, amount).await["approved"], true);
    }
    // What a sub-agent may still spend names its ancestors' limits, counted over their subtrees.
    let (s, spendable) = app.get(&format!("/v1/agents/{grandchild}/spendable")).await;
    assert_eq!(s, StatusCode::OK, "{spendable}");
    let limit = spendable["limits"].as_array().unwrap().iter().find(|l| l["rule"] == "grandparent.limit.budget");
    let amount = &limit.unwrap_or_else(|| panic!("{spendable}"))["amount"];
    assert_eq!((&amount["used"], &amount["remaining"]), (&json!(700), &json!(4_300)), "{spendable}");
    let (_, spendable) = app.get(&format!("/v1/agents/{child}/spendable")).await;
    assert!(spendable["limits"].as_array().unwrap().iter().any(|l| l["rule"] == "parent.limit.budget"), "{spendable}");
    let (s, report) = app.get("/v1/reports/spend?group_by=root&currency=CHF").await;
    assert_eq!(s, StatusCode::OK, "{report}");
    let mut roots: Vec<(String, i64)> = report["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| (g["group"]["root"].as_str().unwrap().to_owned(), g["totals"]["held"].as_i64().unwrap()))
        .filter(|(root, _)| *root == parent || *root == other)
        .collect();
    roots.sort_by_key(|(_, held)| *held);
    assert_eq!(roots, [(parent.clone(), 700), (other.clone(), 800)], "{report}");
    let (s, report) = app.get(&format!("/v1/reports/spend?group_by=agent&tree={child}")).await;
    assert_eq!(s, StatusCode::OK, "{report}");
    assert_eq!(report["total"]["held"], 600, "the child and the grandchild: {report}");
    let (s, csv) = app.get(&format!("/v1/ledger/export?tree={child}&format=jsonl")).await;
    assert_eq!(s, StatusCode::OK);
    let agents: std::collections::BTreeSet<String> = csv
        .as_str()
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["agent_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(agents, [child.clone(), grandchild.clone()].into_iter().collect(), "{csv}");
    // An agent key reads its own records only: naming its parent's tree is not a way up.
    let key = app.create_key("agent", Some(&child)).await;
    let (s, _) =
        app.call(Method::GET, &format!("/v1/reports/spend?group_by=agent&tree={parent}"), Some(&key), None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = app.get("/v1/reports/spend?group_by=agent&tree=nobody").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
}

on_both_backends!(
    reports_and_the_export_add_a_tree_up,
    funds_from_the_treasury_and_drains_back,
    a_parent_allocates_to_its_child_and_takes_it_back,
    deactivation_freezes_revokes_and_drains_as_holds_settle,
    a_maximum_balance_refuses_funding_past_it,
    a_top_up_fires_once_per_fall_and_a_short_treasury_is_announced,
);
