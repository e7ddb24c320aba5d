//! Policy versions, drafts, shadow and promotion through the API, and what an agent key cannot do
//! with them, on SQLite and PostgreSQL.

mod common;

use common::TestApp;
use reqwest::StatusCode;
use serde_json::{Value, json};

fn hourly(count: i64) -> Value {
    json!({"limits": [{"id": "hourly", "scope": "card", "window": {"rolling": "1h"}, "count": count}]})
}

async fn setup(app: &TestApp) -> (String, String) {
    let (status, agent) = app.post("/v1/agents", json!({"name": "bot"})).await;
    assert_eq!(status, StatusCode::CREATED, "{agent}");
    let agent = agent["id"].as_str().unwrap().to_owned();
    app.fund(&agent, 1_000_000).await;
    let card = app.issue_card(&agent, json!({"label": "openai", "policy": hourly(3)})).await;
    (agent, card["id"].as_str().unwrap().to_owned())
}

async fn drafts_shadow_and_promotion(app: TestApp) {
    let (agent, card) = setup(&app).await;
    let versions = format!("/v1/policies/{card}/versions");
    let draft = format!("/v1/policies/{card}/draft");
    let (status, list) = app.get(&versions).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
    assert_eq!((list["data"][0]["number"].clone(), list["data"][0]["state"].clone()), (json!(1), json!("live")));

    // A draft that is not a policy is refused and nothing is saved.
    let (status, body) = app.put(&draft, json!({"policy": {"limits": [{"id": "x"}]}})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(app.get(&draft).await.0, StatusCode::NOT_FOUND);

    // A draft beside the live policy, and what it changes.
    let (status, saved) = app.put(&draft, json!({"policy": hourly(1), "reason": "one call an hour is enough"})).await;
    assert_eq!(status, StatusCode::OK, "{saved}");
    assert_eq!(saved["draft"]["state"], "draft");
    assert_eq!(saved["live"]["number"], 1);
    assert_eq!(saved["diff"], json!([{"path": "limits.hourly.count", "live": 3, "draft": 1}]));

    // It decides nothing, and in shadow it only disagrees.
    for i in 0..2 {
        assert_eq!(app.authorize(&format!("before-shadow-{i}"), &card, 500).await["approved"], true);
    }
    let (status, v) = app.put(&format!("{draft}/shadow"), json!({"shadow": true})).await;
    assert_eq!((status, v["shadow"].clone()), (StatusCode::OK, json!(true)), "{v}");
    let third = app.authorize("in-shadow", &card, 700).await;
    assert_eq!(third["approved"], true, "a draft in shadow changes no answer: {third}");
    let (status, report) = app.get(&format!("{draft}/shadow")).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["changed"], 1, "{report}");
    assert_eq!(report["newly_declined"]["count"], 1);
    assert_eq!(report["newly_declined"]["amount"]["USD"], 700);
    assert_eq!(report["changes"][0]["authorization_id"], third["authorization_id"]);
    assert_eq!(report["changes"][0]["replayed"]["reason"], "velocity_exceeded");
    assert_eq!(report["by_reason"][0]["key"], "velocity_exceeded card.limit.hourly");

    // An agent key can read its own policies' versions, and change none of it.
    let agent_key = app.create_key("agent", Some(&agent)).await;
    let as_agent = |method: reqwest::Method, path: String, body: Value| {
        let key = agent_key.clone();
        let app = &app;
        async move { app.call(method, &path, Some(&key), (!body.is_null()).then_some(body)).await }
    };
    use reqwest::Method;
    assert_eq!(as_agent(Method::GET, versions.clone(), json!(null)).await.0, StatusCode::OK);
    for (method, path, body) in [
        (Method::PUT, draft.clone(), json!({"policy": hourly(100)})),
        (Method::POST, format!("{draft}/promote"), json!({"reason": "I need more"})),
        (Method::PUT, format!("{draft}/shadow"), json!({"shadow": false})),
        (Method::DELETE, draft.clone(), json!({"reason": "no"})),
        (Method::POST, "/v1/backtests".to_owned(), json!({"targets": [card], "policy": hourly(100)})),
    ] {
        let (status, body) = as_agent(method.clone(), path.clone(), body).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}: {body}");
    }
    let (_, still) = app.get(&draft).await;
    assert_eq!(still["draft"]["policy"]["limits"], hourly(1)["limits"], "nothing the agent key sent changed the draft");
    assert_eq!(still["draft"]["shadow"], true);

    // Promotion: atomic (two at once make one version), numbered, in the trail with its reason.
    let promote = format!("{draft}/promote");
    let (a, b) = tokio::join!(
        app.post(&promote, json!({"reason": "tighten after PR-4823"})),
        app.post(&promote, json!({"reason": "tighten after PR-4823"}))
    );
    let mut statuses = [a.0, b.0];
    statuses.sort();
    assert_eq!(statuses[0], StatusCode::OK, "{a:?} {b:?}");
    assert!(statuses[1] == StatusCode::NOT_FOUND || statuses[1] == StatusCode::CONFLICT, "{a:?} {b:?}");
    let promoted = if a.0 == StatusCode::OK { a.1 } else { b.1 };
    assert_eq!((promoted["number"].clone(), promoted["state"].clone()), (json!(2), json!("live")));
    assert_eq!(promoted["shadow"], false);
    let (_, list) = app.get(&versions).await;
    let states: Vec<(Value, Value)> =
        list["data"].as_array().unwrap().iter().map(|v| (v["number"].clone(), v["state"].clone())).collect();
    assert_eq!(states, [(json!(2), json!("live")), (json!(1), json!("superseded"))]);
    let (_, policy) = app.get(&format!("/v1/agents/{agent}/cards/{card}/policy")).await;
    assert_eq!(policy["limits"], hourly(1)["limits"]);
    let declined = app.authorize("after-promotion", &card, 500).await;
    assert_eq!((declined["approved"].clone(), declined["reason"].clone()), (json!(false), json!("velocity_exceeded")));
    let (_, events) = app.get(&format!("/v1/agents/{agent}/cards/{card}/events?limit=500")).await;
    let changed: Vec<&Value> =
        events["data"].as_array().unwrap().iter().filter(|e| e["kind"] == "policy_changed").collect();
    assert_eq!(changed.len(), 1, "{events}");
    assert_eq!(changed[0]["reason"], "tighten after PR-4823");
    assert_eq!(changed[0]["data"]["version"], 2);
    assert_eq!(changed[0]["data"]["previous"]["limits"], hourly(3)["limits"]);
    assert_eq!(app.get(&draft).await.0, StatusCode::NOT_FOUND, "the draft is live now");
    assert_eq!(app.post(&promote, json!({"reason": "again"})).await.0, StatusCode::NOT_FOUND);

    // Setting the policy directly is a version too; a discarded draft stays in the history.
    let (status, _) = app.put(&format!("/v1/agents/{agent}/cards/{card}/policy"), hourly(5)).await;
    assert_eq!(status, StatusCode::OK);
    app.put(&draft, json!({"policy": hourly(2)})).await;
    let owner = Some(app.owner_key.as_str());
    let (status, discarded) =
        app.call(reqwest::Method::DELETE, &draft, owner, Some(json!({"reason": "not now"}))).await;
    assert_eq!((status, discarded["state"].clone()), (StatusCode::OK, json!("discarded")), "{discarded}");
    let (_, list) = app.get(&versions).await;
    let states: Vec<Value> = list["data"].as_array().unwrap().iter().map(|v| v["state"].clone()).collect();
    assert_eq!(states, [json!("discarded"), json!("live"), json!("superseded"), json!("superseded")]);
    app.assert_chains_whole().await;
}

async fn backtests_refuse_bad_requests(app: TestApp) {
    let (_, card) = setup(&app).await;
    for (body, status) in [
        (json!({"targets": []}), StatusCode::BAD_REQUEST),
        (json!({"targets": ["card_01doesnotexist"], "policy": hourly(1)}), StatusCode::NOT_FOUND),
        (
            json!({"targets": [card], "policy": hourly(1), "from": "2026-12-06T00:00:00Z", "to": "2026-12-05T00:00:00Z"}),
            StatusCode::BAD_REQUEST,
        ),
        (json!({"targets": [card]}), StatusCode::BAD_REQUEST),
        (json!({"targets": [card], "policy": 5}), StatusCode::BAD_REQUEST),
        (json!({"targets": [card], "policy": hourly(1), "template": "saas"}), StatusCode::BAD_REQUEST),
        (json!({"targets": [card, card], "policy": hourly(1)}), StatusCode::BAD_REQUEST),
        (json!({"targets": [card], "policy": {"limits": "none"}}), StatusCode::BAD_REQUEST),
    ] {
        let (got, answer) = app.post("/v1/backtests", body.clone()).await;
        assert_eq!(got, status, "{body}: {answer}");
        assert!(answer["error"]["code"].is_string(), "{answer}");
    }
    assert_eq!(app.get("/v1/backtests/bkt_01doesnotexist").await.0, StatusCode::NOT_FOUND);
    let (_, list) = app.get("/v1/backtests").await;
    assert_eq!(list["data"], json!([]), "nothing refused was started");

    // A backtest that runs: what it was asked is kept, and its report is fetched by its id.
    app.authorize("one", &card, 500).await;
    let none = json!({"limits": [{"id": "hourly", "scope": "card", "window": {"rolling": "1h"}, "amount": 1}]});
    let (status, started) = app.post("/v1/backtests", json!({"targets": [card], "policy": none})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{started}");
    let id = started["id"].as_str().unwrap().to_owned();
    let report = finished_id(&app, &id).await;
    assert_eq!(report["decisions"], 1);
    assert_eq!(report["newly_declined"]["count"], 1, "a cap of one cent declines it");
    let (_, done) = app.get(&format!("/v1/backtests/{id}")).await;
    assert_eq!(done["spec"]["targets"], json!([card]));
    // Cancelling one that has ended changes nothing.
    let (status, after) = app.post(&format!("/v1/backtests/{id}/cancel"), json!({})).await;
    assert_eq!((status, after["status"].clone()), (StatusCode::OK, json!("done")));

    // The draft may be a stored version (the live one changes nothing) or a template.
    let (_, versions) = app.get(&format!("/v1/policies/{card}/versions")).await;
    let live = versions["data"][0]["id"].as_str().unwrap();
    let report = finished(&app, json!({"targets": [card], "version_id": live})).await;
    assert_eq!((report["decisions"].clone(), report["changed"].clone()), (json!(1), json!(0)), "{report}");
    let report = finished(&app, json!({"targets": [card], "template": "coding-agent"})).await;
    assert_eq!(report["decisions"], 1, "{report}");
    let (status, body) = app.post("/v1/backtests", json!({"targets": [card], "template": "nonesuch"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

/// Runs a backtest to its end; its report.
async fn finished(app: &TestApp, spec: Value) -> Value {
    let (status, started) = app.post("/v1/backtests", spec).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{started}");
    finished_id(app, started["id"].as_str().unwrap()).await
}

async fn finished_id(app: &TestApp, id: &str) -> Value {
    let path = format!("/v1/backtests/{id}");
    for _ in 0..200 {
        let (_, b) = app.get(&path).await;
        match b["status"].as_str() {
            Some("running") => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            Some("done") => return b["report"].clone(),
            _ => panic!("{b}"),
        }
    }
    panic!("the backtest did not finish");
}

on_both_backends!(drafts_shadow_and_promotion, backtests_refuse_bad_requests);
