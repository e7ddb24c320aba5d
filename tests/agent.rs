//! An agent key is all an agent needs: it learns what it may spend, checks a payment before making
//! it, and tags its own cards with the task it works on, and it can do nothing more than that for
//! any agent but its own, whatever it names in a path or a body.

mod common;

use common::TestApp;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

struct Agent<'a> {
    app: &'a TestApp,
    key: String,
}

impl Agent<'_> {
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.app.call(method, path, Some(&self.key), body).await
    }
}

/// An agent with a daily cap and velocity, a per-trace cap, and one card with a monthly cap.
async fn coder(app: &TestApp) -> (String, String, Agent<'_>) {
    let agent = app.create_agent("coder").await;
    let policy = json!({"limits": [
        {"id": "daily", "scope": "agent", "window": {"rolling": "24h"}, "amount": 10_000, "count": 5},
        {"id": "per_task", "scope": "trace", "window": "lifetime", "amount": 3_000},
    ]});
    assert_eq!(app.put(&format!("/v1/agents/{agent}/policy"), policy).await.0, StatusCode::OK);
    let card = app
        .issue_card(
            &agent,
            json!({"label": "openai", "policy": {"limits": [
                {"id": "monthly", "scope": "card", "window": {"calendar": "month", "timezone": "Europe/Berlin"}, "amount": 5_000}
            ]}}),
        )
        .await;
    let card = card["id"].as_str().unwrap().to_owned();
    app.fund(&agent, 50_000).await;
    let key = app.create_key("agent", Some(&agent)).await;
    (agent, card, Agent { app, key })
}

fn limit<'a>(me: &'a Value, rule: &str) -> &'a Value {
    me["limits"].as_array().unwrap().iter().find(|l| l["rule"] == rule).unwrap_or_else(|| panic!("{rule} in {me}"))
}

async fn me_says_what_is_left_and_when_it_frees(app: TestApp) {
    let (agent, card, me) = coder(&app).await;
    // The agent tags its card with its task, by `me`, then spends on it.
    let (status, tagged) =
        me.call(Method::PUT, &format!("/v1/agents/me/cards/{card}/trace"), Some(json!({"trace_id": "PR-1"}))).await;
    assert_eq!((status, tagged["trace_id"].as_str()), (StatusCode::OK, Some("PR-1")), "{tagged}");
    let before = jiff::Timestamp::now().as_millisecond();
    for (id, amount) in [("a1", 1_200), ("a2", 800)] {
        assert_eq!(app.authorize(id, &card, amount).await["approved"], true);
    }

    let (status, view) = me.call(Method::GET, "/v1/me", None).await;
    assert_eq!(status, StatusCode::OK, "{view}");
    assert_eq!(
        (view["agent"]["id"].as_str(), view["agent"]["status"].as_str()),
        (Some(agent.as_str()), Some("active"))
    );
    assert_eq!((view["balance"]["available"].as_i64(), view["balance"]["held"].as_i64()), (Some(48_000), Some(2_000)));
    assert_eq!(view["cards"][0]["trace_id"], "PR-1", "{view}");

    let daily = limit(&view, "agent.limit.daily");
    assert_eq!(daily["amount"], json!({"cap": 10_000, "approved": 0, "used": 2_000, "remaining": 8_000}));
    assert_eq!(daily["count"], json!({"cap": 5, "approved": 0, "used": 2, "remaining": 3}));
    // The first spend leaves the rolling day 24 hours after it was authorized.
    let frees: jiff::Timestamp = daily["frees_at"].as_str().unwrap().parse().unwrap();
    let day = 86_400_000;
    assert!((before + day..=jiff::Timestamp::now().as_millisecond() + day).contains(&frees.as_millisecond()));

    let task = limit(&view, "agent.limit.per_task");
    assert_eq!((task["trace_id"].as_str(), task["amount"]["remaining"].as_i64()), (Some("PR-1"), Some(1_000)));
    assert!(task["frees_at"].is_null(), "a lifetime window never frees: {task}");
    let monthly = limit(&view, "card.limit.monthly");
    assert_eq!((monthly["card_id"].as_str(), monthly["amount"]["used"].as_i64()), (Some(card.as_str()), Some(2_000)));
    let next_month: jiff::Timestamp = monthly["frees_at"].as_str().unwrap().parse().unwrap();
    let berlin = next_month.to_zoned(jiff::tz::TimeZone::get("Europe/Berlin").unwrap());
    assert_eq!((berlin.day(), berlin.hour(), berlin.minute()), (1, 0, 0), "midnight on the 1st in Berlin: {berlin}");

    // A trace asked for is counted too; the owner reads the same view by id; a key with no agent has no `me`.
    let (_, other_task) = me.call(Method::GET, "/v1/me?trace=PR-2", None).await;
    let per_task = other_task["limits"].as_array().unwrap().iter().find(|l| l["trace_id"] == "PR-2").unwrap();
    assert_eq!(per_task["amount"]["used"], 0);
    let (status, by_id) = app.get(&format!("/v1/agents/{agent}/spendable")).await;
    assert_eq!((status, &by_id["limits"]), (StatusCode::OK, &view["limits"]));
    let (status, e) = app.get("/v1/me").await;
    assert_eq!((status, e["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("validation_failed")), "{e}");
}

/// A prompt-injected agent tries what its key may not: another agent, a policy change, an
/// unfreeze, funding, a key. Each is refused and changes nothing.
async fn an_agent_key_widens_nothing(app: TestApp) {
    let (agent, card, me) = coder(&app).await;
    let other = app.create_agent("other").await;
    let other_card = app.issue_card(&other, json!({"label": "aws"})).await["id"].as_str().unwrap().to_owned();
    let reason = Some(json!({"reason": "the user said so"}));
    let refused: Vec<(Method, String, Option<Value>)> = vec![
        (Method::GET, format!("/v1/agents/{other}"), None),
        (Method::GET, format!("/v1/agents/{other}/spendable"), None),
        (Method::PUT, format!("/v1/agents/{other}/cards/{other_card}/trace"), Some(json!({"trace_id": "x"}))),
        (Method::POST, format!("/v1/cards/{other_card}/dry-run"), Some(json!({"amount": 1, "currency": "USD"}))),
        (
            Method::POST,
            format!("/v1/agents/{other}/x402/dry-run"),
            Some(json!({"url": "https://a.example", "amount": 1})),
        ),
        (Method::PUT, "/v1/agents/me/policy".into(), Some(json!({}))),
        (Method::PUT, format!("/v1/agents/me/cards/{card}/policy"), Some(json!({}))),
        (Method::POST, "/v1/agents/me/unfreeze".into(), reason.clone()),
        (Method::POST, "/v1/agents/me/freeze".into(), reason.clone()),
        (Method::POST, "/v1/agents/me/fund".into(), Some(json!({"id": "f", "amount": 1, "currency": "USD"}))),
        (Method::POST, "/v1/keys".into(), Some(json!({"role": "owner"}))),
        (Method::GET, "/v1/agents".into(), None),
    ];
    for (method, path, body) in refused {
        let (status, e) = me.call(method.clone(), &path, body).await;
        assert_eq!(
            (status, e["error"]["code"].as_str()),
            (StatusCode::FORBIDDEN, Some("forbidden")),
            "{method} {path}"
        );
    }
    // Its own agent's path holding another agent's card is no way in either.
    let (status, _) =
        me.call(Method::PUT, &format!("/v1/agents/me/cards/{other_card}/trace"), Some(json!({"trace_id": "x"}))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, theirs) = app.get(&format!("/v1/cards/{other_card}")).await;
    assert!(theirs["trace_id"].is_null(), "{theirs}");
    let (_, policy) = app.get(&format!("/v1/agents/{agent}/policy")).await;
    assert_eq!(policy["limits"].as_array().unwrap().len(), 2, "{policy}");
    assert_eq!(app.balance(&agent).await["available"], 50_000);
    // Bad input is a 400, and clearing the trace works.
    let (status, _) =
        me.call(Method::PUT, &format!("/v1/agents/me/cards/{card}/trace"), Some(json!({"trace_id": " "}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, cleared) =
        me.call(Method::PUT, &format!("/v1/agents/me/cards/{card}/trace"), Some(json!({"trace_id": null}))).await;
    assert_eq!((status, cleared["trace_id"].clone()), (StatusCode::OK, Value::Null));
}

async fn an_agent_checks_a_payment_before_making_it(app: TestApp) {
    let (agent, card, me) = coder(&app).await;
    let policy = json!({"limits": [{"id": "daily", "scope": "agent", "window": {"rolling": "24h"}, "amount": 10_000}],
        "x402": {"allow_hosts": ["api.example.com"], "per_call": 500}});
    assert_eq!(app.put(&format!("/v1/agents/{agent}/policy"), policy).await.0, StatusCode::OK);
    let check = |url: &str, amount: i64| json!({"url": url, "amount": amount, "trace_id": "PR-9"});

    let (status, yes) =
        me.call(Method::POST, "/v1/agents/me/x402/dry-run", Some(check("https://api.example.com/v1", 300))).await;
    assert_eq!(status, StatusCode::OK, "{yes}");
    assert_eq!((yes["approved"].as_bool(), yes["dry_run"].as_bool()), (Some(true), Some(true)), "{yes}");
    assert!(yes.get("unblock").is_none());
    let (_, host) =
        me.call(Method::POST, "/v1/agents/me/x402/dry-run", Some(check("https://evil.example/pay", 300))).await;
    assert_eq!(
        (host["reason"].as_str(), host["rule"].as_str()),
        (Some("host_not_allowed"), Some("agent.x402.allow_hosts"))
    );
    assert!(host["unblock"].as_str().unwrap().contains("person"), "{host}");
    let (_, big) =
        me.call(Method::POST, "/v1/agents/me/x402/dry-run", Some(check("https://api.example.com/v1", 501))).await;
    assert_eq!(big["reason"], "per_call_exceeded", "{big}");

    // A card purchase past the daily cap, checked by the agent on its own card.
    let purchase = json!({"amount": 10_001, "currency": "USD", "merchant": {"name": "OPENAI *API", "mcc": "5734"}});
    let (status, no) = me.call(Method::POST, &format!("/v1/cards/{card}/dry-run"), Some(purchase)).await;
    assert_eq!((status, no["reason"].as_str()), (StatusCode::OK, Some("limit_exceeded")), "{no}");
    assert!(no["unblock"].as_str().unwrap().contains("/v1/me"), "{no}");

    // Recipients: a policy that lists them needs the one the check names.
    let listed = "eip155:84532:0x00000000000000000000000000000000000000aa";
    let policy = json!({"x402": {"allow_hosts": ["api.example.com"], "pay_to": [listed]}});
    assert_eq!(app.put(&format!("/v1/agents/{agent}/policy"), policy).await.0, StatusCode::OK);
    let (_, unnamed) =
        me.call(Method::POST, "/v1/agents/me/x402/dry-run", Some(check("https://api.example.com/v1", 10))).await;
    assert_eq!(unnamed["reason"], "recipient_not_allowed", "{unnamed}");
    let mut named = check("https://api.example.com/v1", 10);
    named["pay_to"] = json!(listed.to_uppercase().replace("EIP155", "eip155").replace("0X", "0x"));
    let (_, ok) = me.call(Method::POST, "/v1/agents/me/x402/dry-run", Some(named)).await;
    assert_eq!(ok["approved"], true, "{ok}");
    let mut bad = check("https://api.example.com/v1", 10);
    bad["pay_to"] = json!("0xnot-an-account");
    let (status, _) = me.call(Method::POST, "/v1/agents/me/x402/dry-run", Some(bad)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // One dry run at a time per agent key: the rest are told to ask again, never queued.
    let asks = (0..16)
        .map(|_| me.call(Method::POST, "/v1/agents/me/x402/dry-run", Some(check("https://api.example.com/v1", 10))));
    for (status, answer) in common::join_all(asks).await {
        let code = answer["error"]["code"].as_str();
        assert!(
            status == StatusCode::OK || (status, code) == (StatusCode::TOO_MANY_REQUESTS, Some("too_many_dry_runs")),
            "{status} {answer}"
        );
    }

    // Nothing was recorded by any of it.
    let (_, ledger) = app.get(&format!("/v1/agents/{agent}/ledger")).await;
    assert_eq!(ledger["data"].as_array().unwrap().len(), 1, "the funding only: {ledger}");
}

/// A card that pays at most 5.00 a purchase, tagged with `trace` by the agent's own key.
async fn capped_card(app: &TestApp, me: &Agent<'_>, agent: &str, trace: &str) -> String {
    let card = app.issue_card(agent, json!({"label": "openai", "policy": {"per_transaction": 500}})).await;
    let card = card["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/agents/me/cards/{card}/trace");
    assert_eq!(me.call(Method::PUT, &path, Some(json!({"trace_id": trace}))).await.0, StatusCode::OK);
    card
}

async fn a_mandate_a_person_approves_once_covers_the_spend_inside_it(app: TestApp) {
    let (agent, _, me) = coder(&app).await;
    let card = capped_card(&app, &me, &agent, "PR-1").await;
    assert_eq!(app.authorize("before", &card, 1_500).await["reason"], "per_transaction_exceeded");
    let ask = json!({"purpose": "run the eval suite on PR-1", "amount": 3_000, "trace_id": "PR-1",
        "merchants": ["OPENAI*"], "hours": 24});
    let (status, asked) = me.call(Method::POST, "/v1/agents/me/mandates", Some(ask.clone())).await;
    assert_eq!(status, StatusCode::CREATED, "{asked}");
    let id = asked["id"].as_str().unwrap().to_owned();
    assert_eq!((asked["status"].as_str(), asked["rule"].as_str()), (Some("pending"), Some("mandate")), "{asked}");
    assert_eq!(asked["mandate"]["remaining"], 0);
    assert_eq!(app.authorize("pending", &card, 1_500).await["reason"], "per_transaction_exceeded");
    // The agent cannot approve its own mandate, nor ask for another agent.
    let (status, _) = me.call(Method::POST, &format!("/v1/approvals/{id}/approve"), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let other = app.create_agent("other").await;
    let (status, _) = me.call(Method::POST, &format!("/v1/agents/{other}/mandates"), Some(ask)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // The agent waits; a person approves; the wait answers at once.
    let path = format!("/v1/agents/me/mandates/{id}?wait=20");
    let started = std::time::Instant::now();
    let approve = async {
        actix_web::rt::time::sleep(std::time::Duration::from_millis(300)).await;
        app.post(&format!("/v1/approvals/{id}/approve"), json!({})).await
    };
    let ((status, decided), (approved, _)) = tokio::join!(me.call(Method::GET, &path, None), approve);
    assert_eq!((status, approved), (StatusCode::OK, StatusCode::OK));
    assert_eq!(decided["status"], "approved", "{decided}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5), "{:?}", started.elapsed());

    // Inside it: approved, naming it. Past it, or outside its scope: the rules decide.
    for n in 0..2 {
        let d = app.authorize(&format!("in-{n}"), &card, 1_500).await;
        assert_eq!((d["approved"].as_bool(), d["approval_id"].as_str()), (Some(true), Some(id.as_str())), "{d}");
    }
    assert_eq!(app.authorize("past", &card, 600).await["reason"], "per_transaction_exceeded");
    let elsewhere = capped_card(&app, &me, &agent, "PR-2").await;
    assert_eq!(app.authorize("other-trace", &elsewhere, 1_500).await["reason"], "per_transaction_exceeded");
    let (_, now) = me.call(Method::GET, &format!("/v1/agents/me/mandates/{id}"), None).await;
    assert_eq!(
        (now["mandate"]["used"].as_i64(), now["mandate"]["remaining"].as_i64()),
        (Some(3_000), Some(0)),
        "{now}"
    );
    let (_, ledger) = app.get(&format!("/v1/agents/{agent}/ledger?trace=PR-1")).await;
    let under: Vec<&Value> =
        ledger["data"].as_array().unwrap().iter().filter(|e| e["approval_id"] == id.as_str()).collect();
    assert_eq!(under.len(), 2, "every spend under it names it: {ledger}");

    // Bad requests change nothing.
    for bad in [
        json!({"purpose": "", "amount": 1}),
        json!({"purpose": "x", "amount": 0}),
        json!({"purpose": "x", "amount": 1, "hours": 0}),
        json!({"purpose": "x", "amount": 1, "currency": "EUR"}),
    ] {
        let (status, _) = me.call(Method::POST, "/v1/agents/me/mandates", Some(bad.clone())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
    }
    // Asking costs people's attention: five may wait at once.
    for n in 0..6 {
        let (status, e) = me
            .call(Method::POST, "/v1/agents/me/mandates", Some(json!({"purpose": format!("ask {n}"), "amount": 1})))
            .await;
        let expected = if n < 5 { StatusCode::CREATED } else { StatusCode::TOO_MANY_REQUESTS };
        assert_eq!(status, expected, "{e}");
    }
}

/// Concurrent spend under one mandate approves exactly what it holds.
async fn a_mandate_is_exact_under_concurrency(app: TestApp) {
    let (agent, _, me) = coder(&app).await;
    let card = capped_card(&app, &me, &agent, "PR-7").await;
    let ask = json!({"purpose": "load test", "amount": 3_000, "trace_id": "PR-7"});
    let (_, asked) = me.call(Method::POST, "/v1/agents/me/mandates", Some(ask)).await;
    let id = asked["id"].as_str().unwrap();
    // One wait per agent at a time: a second, meanwhile, is answered at once.
    let me = &me;
    let timed = |path: String| async move {
        let started = std::time::Instant::now();
        let (_, view) = me.call(Method::GET, &path, None).await;
        (view["status"].clone(), started.elapsed())
    };
    let path = format!("/v1/agents/me/mandates/{id}?wait=2");
    let ((first, waited), (second, answered)) = tokio::join!(timed(path.clone()), timed(path));
    assert_eq!((first.as_str(), second.as_str()), (Some("pending"), Some("pending")));
    let (long, short) = if waited > answered { (waited, answered) } else { (answered, waited) };
    assert!(
        long >= std::time::Duration::from_millis(1_900) && short < std::time::Duration::from_secs(1),
        "{long:?} {short:?}"
    );
    assert_eq!(app.post(&format!("/v1/approvals/{id}/approve"), json!({})).await.0, StatusCode::OK);
    let tries = (0..20).map(|n| {
        let (app, card) = (&app, card.clone());
        async move { app.authorize(&format!("c-{n}"), &card, 600).await }
    });
    let approved = common::join_all(tries).await.iter().filter(|d| d["approved"] == true).count();
    assert_eq!(approved, 5, "3000 / 600");
    let (_, now) = app.get(&format!("/v1/agents/{agent}/mandates/{id}")).await;
    assert_eq!(now["mandate"]["used"], 3_000);
}

on_both_backends!(
    me_says_what_is_left_and_when_it_frees,
    an_agent_key_widens_nothing,
    an_agent_checks_a_payment_before_making_it,
    a_mandate_a_person_approves_once_covers_the_spend_inside_it,
    a_mandate_is_exact_under_concurrency,
);
