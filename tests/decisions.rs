//! The decision core through the native webhook: limits under concurrency, idempotent retries of
//! every event, the two-phase ledger, freezes, FX and bad input, on SQLite and PostgreSQL.

mod common;

use common::TestApp;
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn agent_with_card(app: &TestApp, policy: Value, fund: i64) -> (String, String) {
    let (status, agent) = app.post("/v1/agents", json!({"name": "bot", "policy": policy})).await;
    assert_eq!(status, StatusCode::CREATED, "{agent}");
    let agent = agent["id"].as_str().unwrap().to_owned();
    if fund > 0 {
        app.fund(&agent, fund).await;
    }
    let card = app.issue_card(&agent, json!({"label": "openai"})).await;
    (agent, card["id"].as_str().unwrap().to_owned())
}

async fn concurrent_authorizations_never_exceed_a_limit(app: TestApp) {
    let policy = json!({"limits": [{"id": "daily", "scope": "agent", "window": {"rolling": "24h"}, "amount": 50_000}]});
    let (agent, card) = agent_with_card(&app, policy, 100_000).await;
    let app = std::sync::Arc::new(app);
    let mut tasks = Vec::new();
    for i in 0..500 {
        let (app, card) = (app.clone(), card.clone());
        tasks.push(actix_web::rt::spawn(async move { app.authorize(&format!("race-{i}"), &card, 1_000).await }));
    }
    let mut approved = 0;
    for t in tasks {
        let d = t.await.unwrap();
        if d["approved"] == true {
            approved += 1;
        } else {
            assert_eq!(d["reason"], "limit_exceeded", "{d}");
            assert_eq!(d["rule"], "agent.limit.daily");
        }
    }
    assert_eq!(approved, 50, "500 concurrent $10 against a $500 limit");
    let b = app.balance(&agent).await;
    assert_eq!((b["held"].as_i64(), b["available"].as_i64()), (Some(50_000), Some(50_000)), "{b}");
    app.assert_chains_whole().await;
}

async fn retries_of_every_event_are_idempotent(app: TestApp) {
    let (agent, card) = agent_with_card(&app, json!({}), 10_000).await;
    let first = app.authorize("auth-1", &card, 2_000).await;
    let again = app.authorize("auth-1", &card, 2_000).await;
    assert_eq!(first["authorization_id"], again["authorization_id"]);
    assert_eq!((first["replayed"].as_bool(), again["replayed"].as_bool()), (Some(false), Some(true)));
    assert_eq!(app.balance(&agent).await["held"], 2_000, "held once");
    let id = first["authorization_id"].as_str().unwrap();

    let capture = json!({"id": "cap-1", "amount": 1_500, "currency": "USD"});
    let (s1, c1) = app.signed(&format!("/v1/authorizations/{id}/capture"), &capture).await;
    let (s2, c2) = app.signed(&format!("/v1/authorizations/{id}/capture"), &capture).await;
    assert_eq!((s1, s2), (StatusCode::OK, StatusCode::OK), "{c1} {c2}");
    assert_eq!(c1["transfers"], c2["transfers"]);
    assert_eq!(c2["replayed"], true);
    let kinds: Vec<&str> = c1["transfers"].as_array().unwrap().iter().map(|t| t["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["post", "void"], "a partial capture releases the rest");
    let refund = json!({"id": "ref-1", "amount": 500});
    let (_, r1) = app.signed(&format!("/v1/authorizations/{id}/refund"), &refund).await;
    let (_, r2) = app.signed(&format!("/v1/authorizations/{id}/refund"), &refund).await;
    assert_eq!(r1["transfers"], r2["transfers"], "{r1} {r2}");
    let b = app.balance(&agent).await;
    assert_eq!(
        (b["held"].as_i64(), b["spent"].as_i64(), b["refunded"].as_i64(), b["available"].as_i64()),
        (Some(0), Some(1_500), Some(500), Some(9_000)),
        "{b}"
    );
    // The same id for a different movement is a conflict, not a second transfer.
    let (status, e) =
        app.signed(&format!("/v1/authorizations/{id}/refund"), &json!({"id": "cap-1", "amount": 1})).await;
    assert_eq!((status, e["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("idempotency_conflict")));

    let fund = json!({"id": "top-up-1", "amount": 700, "currency": "USD"});
    let (s1, f1) = app.post(&format!("/v1/agents/{agent}/fund"), fund.clone()).await;
    let (s2, f2) = app.post(&format!("/v1/agents/{agent}/fund"), fund).await;
    assert_eq!((s1, s2), (StatusCode::CREATED, StatusCode::OK));
    assert_eq!(f1, f2);
    let (s3, _) = app
        .post(&format!("/v1/agents/{agent}/fund"), json!({"id": "top-up-1", "amount": 701, "currency": "USD"}))
        .await;
    assert_eq!(s3, StatusCode::CONFLICT);
    assert_eq!(app.balance(&agent).await["available"], 9_700);

    // Reversals: partial, then the rest, then a retry of the first.
    let second = app.authorize("auth-2", &card, 1_000).await;
    let id2 = second["authorization_id"].as_str().unwrap();
    let part = json!({"id": "rev-1", "amount": 400});
    let (_, v1) = app.signed(&format!("/v1/authorizations/{id2}/reverse"), &part).await;
    assert_eq!(v1["authorization"]["held"], 600, "{v1}");
    let (_, v2) = app.signed(&format!("/v1/authorizations/{id2}/reverse"), &json!({"id": "rev-2"})).await;
    assert_eq!(
        (v2["authorization"]["held"].as_i64(), v2["authorization"]["status"].as_str()),
        (Some(0), Some("voided"))
    );
    let (s, v1b) = app.signed(&format!("/v1/authorizations/{id2}/reverse"), &part).await;
    assert_eq!((s, v1b["replayed"].as_bool()), (StatusCode::OK, Some(true)));
    let (s, e) = app.signed(&format!("/v1/authorizations/{id2}/reverse"), &json!({"id": "rev-3"})).await;
    assert_eq!((s, e["error"]["code"].as_str()), (StatusCode::CONFLICT, Some("nothing_held")));
    assert_eq!(app.balance(&agent).await["held"], 0);
    app.assert_chains_whole().await;
}

async fn voids_free_the_window_refunds_do_not_and_excess_counts(app: TestApp) {
    let policy = json!({"limits": [{"id": "cap", "scope": "card", "window": "lifetime", "amount": 3_000}]});
    let (_agent, card) = agent_with_card(&app, json!({}), 100_000).await;
    let (s, _) = app.put(&format!("/v1/agents/{_agent}/cards/{card}/policy"), policy).await;
    assert_eq!(s, StatusCode::OK);
    let a = app.authorize("w-1", &card, 3_000).await;
    assert_eq!(a["approved"], true);
    assert_eq!(app.authorize("w-2", &card, 1).await["reason"], "limit_exceeded");
    let id = a["authorization_id"].as_str().unwrap();
    app.signed(&format!("/v1/authorizations/{id}/reverse"), &json!({"id": "v", "amount": 1_000})).await;
    assert_eq!(app.authorize("w-3", &card, 1_000).await["approved"], true, "a void frees its amount");
    let (_, c) = app
        .signed(&format!("/v1/authorizations/{id}/capture"), &json!({"id": "c", "amount": 2_500, "currency": "USD"}))
        .await;
    let kinds: Vec<&str> = c["transfers"].as_array().unwrap().iter().map(|t| t["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["post", "excess"], "{c}");
    // 2,500 posted + 1,000 held is above the cap already: nothing more is approved.
    assert_eq!(app.authorize("w-4", &card, 1).await["reason"], "limit_exceeded");
    app.signed(&format!("/v1/authorizations/{id}/refund"), &json!({"id": "r", "amount": 2_500})).await;
    assert_eq!(app.authorize("w-5", &card, 1).await["reason"], "limit_exceeded", "a refund does not restore the limit");
}

async fn a_freeze_applies_to_the_next_request_and_declines_are_recorded(app: TestApp) {
    let (agent, card) = agent_with_card(&app, json!({}), 10_000).await;
    assert_eq!(app.authorize("f-1", &card, 100).await["approved"], true);
    let (s, _) = app.post(&format!("/v1/agents/{agent}/cards/{card}/freeze"), json!({"reason": "test"})).await;
    assert_eq!(s, StatusCode::OK);
    let d = app.authorize("f-2", &card, 100).await;
    assert_eq!((d["reason"].as_str(), d["rule"].as_str()), (Some("card_frozen"), Some("card.status")));
    app.post(&format!("/v1/agents/{agent}/cards/{card}/unfreeze"), json!({"reason": "ok"})).await;
    assert_eq!(app.authorize("f-3", &card, 100).await["approved"], true);
    app.post(&format!("/v1/agents/{agent}/freeze"), json!({"reason": "agent"})).await;
    assert_eq!(app.authorize("f-4", &card, 100).await["reason"], "agent_frozen");

    let (_, events) = app.get(&format!("/v1/agents/{agent}/cards/{card}/events")).await;
    let declines: Vec<&Value> =
        events["data"].as_array().unwrap().iter().filter(|e| e["kind"] == "authorization_declined").collect();
    assert_eq!(declines.len(), 2, "{events}");
    assert_eq!(declines[0]["reason"], "card_frozen");
    assert_eq!(declines[0]["data"]["merchant"]["name"], "OPENAI *API");
    let (_, ledger) = app.get(&format!("/v1/agents/{agent}/ledger?card={card}")).await;
    let statuses: Vec<&str> = ledger["data"].as_array().unwrap().iter().filter_map(|e| e["status"].as_str()).collect();
    assert_eq!(statuses, ["pending", "declined", "pending", "declined"], "{ledger}");
}

async fn traces_tag_authorizations_and_filter_the_ledger(app: TestApp) {
    let policy = json!({"limits": [{"id": "per_pr", "scope": "trace", "window": "lifetime", "amount": 1_000}]});
    let (agent, card) = agent_with_card(&app, policy, 10_000).await;
    let (s, c) = app.put(&format!("/v1/agents/{agent}/cards/{card}/trace"), json!({"trace_id": "pr-42"})).await;
    assert_eq!((s, c["trace_id"].as_str()), (StatusCode::OK, Some("pr-42")));
    assert_eq!(app.authorize("t-1", &card, 1_000).await["approved"], true);
    assert_eq!(app.authorize("t-2", &card, 1).await["rule"], "agent.limit.per_pr");
    app.put(&format!("/v1/agents/{agent}/cards/{card}/trace"), json!({"trace_id": "pr-43"})).await;
    assert_eq!(app.authorize("t-3", &card, 1_000).await["approved"], true);
    let (_, page) = app.get(&format!("/v1/agents/{agent}/ledger?trace=pr-42")).await;
    assert_eq!(page["data"].as_array().unwrap().len(), 2, "{page}");
}

async fn bad_input_is_refused_and_changes_nothing(app: TestApp) {
    let (agent, card) = agent_with_card(&app, json!({}), 10_000).await;
    let body = json!({"id": "x", "card_id": card, "amount": 100, "currency": "USD", "merchant": {"name": "A"}});
    let bytes = serde_json::to_vec(&body).unwrap();
    let url = format!("{}/v1/authorizations", app.base);
    let post = |sig: Option<String>, bytes: Vec<u8>| {
        let mut r = app.http.post(&url).body(bytes);
        if let Some(sig) = sig {
            r = r.header("Spendgate-Signature", sig);
        }
        r.send()
    };
    assert_eq!(post(None, bytes.clone()).await.unwrap().status(), StatusCode::UNAUTHORIZED);
    let stale = format!("t={},v1=00", jiff::Timestamp::now().as_second() - 301);
    assert_eq!(post(Some(stale), bytes.clone()).await.unwrap().status(), StatusCode::UNAUTHORIZED);
    let mut forged = bytes.clone();
    forged[10] ^= 1;
    assert_eq!(
        post(Some(common::sign("/v1/authorizations", &bytes)), forged).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    let garbage = b"{not json".to_vec();
    let r = post(Some(common::sign("/v1/authorizations", &garbage)), garbage).await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let huge = vec![b' '; 300 * 1024];
    assert_eq!(
        post(Some(common::sign("/v1/authorizations", &huge)), huge).await.unwrap().status(),
        StatusCode::PAYLOAD_TOO_LARGE
    );
    let (s, _) = app
        .signed(
            "/v1/authorizations",
            &json!({"id": "n", "card_id": card, "amount": -1, "currency": "USD", "merchant": {}}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (_, page) = app.get(&format!("/v1/agents/{agent}/ledger")).await;
    assert_eq!(page["data"].as_array().unwrap().len(), 1, "only the funding: {page}");
    // An unknown card and an unknown currency are declines.
    let d = app.authorize("u-1", "card_01nonexistent0000000000000", 100).await;
    assert_eq!((d["approved"].as_bool(), d["reason"].as_str()), (Some(false), Some("unknown_card")));
    let (s, d) = app
        .signed(
            "/v1/authorizations",
            &json!({"id": "u-2", "card_id": card, "amount": 5, "currency": "ZZZ", "merchant": {}}),
        )
        .await;
    assert_eq!((s, d["reason"].as_str()), (StatusCode::OK, Some("unsupported_currency")));
    let (s, e) = app
        .signed(
            "/v1/authorizations/auth_01nothere00000000000000000/capture",
            &json!({"id": "c", "amount": 1, "currency": "USD"}),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{e}");
}

async fn holds_expire_and_free_their_amount(app: TestApp) {
    let (agent, card) = agent_with_card(&app, json!({}), 1_000).await;
    assert_eq!(app.authorize("e-1", &card, 1_000).await["approved"], true);
    assert_eq!(app.authorize("e-2", &card, 1).await["reason"], "insufficient_funds");
    let expired = app.ledger.expire_holds(jiff::Timestamp::now() + jiff::SignedDuration::from_secs(1)).await.unwrap();
    assert_eq!(expired, 1);
    let b = app.balance(&agent).await;
    assert_eq!((b["held"].as_i64(), b["available"].as_i64()), (Some(0), Some(1_000)));
    assert_eq!(app.authorize("e-3", &card, 1_000).await["approved"], true);
}

/// A lifecycle signature authorizes one action on one authorization: replayed against another
/// authorization (another agent's too) or another action, it is refused and moves nothing.
async fn a_lifecycle_signature_is_bound_to_its_path(app: TestApp) {
    use spendgate::crypto::Secret;
    use spendgate::rails::card::signature::{HexSignature, Route};
    let (victim, victim_card) = agent_with_card(&app, json!({}), 10_000).await;
    let (_, own_card) = agent_with_card(&app, json!({}), 10_000).await;
    let theirs = app.authorize("theirs", &victim_card, 4_000).await["authorization_id"].as_str().unwrap().to_owned();
    let mine = app.authorize("mine", &own_card, 1_000).await["authorization_id"].as_str().unwrap().to_owned();
    let keys = HexSignature::new(Some(&Secret::new(common::WEBHOOK_SECRET)), None).unwrap();
    let now = jiff::Timestamp::now().as_second();
    let send = |path: String, signature: String, body: Vec<u8>| {
        app.http.post(format!("{}{path}", app.base)).header("Spendgate-Signature", signature).body(body).send()
    };

    // A capture signed for my authorization, sent as a reverse of theirs and as a capture of theirs.
    let body = serde_json::to_vec(&json!({"id": "cap-x", "amount": 1_000, "currency": "USD"})).unwrap();
    let my_capture = format!("/v1/authorizations/{mine}/capture");
    let signature = keys.sign_route(Route { method: "POST", path: &my_capture }, &body, now);
    for path in [format!("/v1/authorizations/{theirs}/reverse"), format!("/v1/authorizations/{theirs}/capture")] {
        let r = send(path.clone(), signature.clone(), body.clone()).await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{path}");
    }
    // The old v1 scheme signs the body alone: refused on every route whose path decides.
    let v1 = keys.sign(&body, now);
    for action in ["capture", "reverse", "refund"] {
        let r = send(format!("/v1/authorizations/{mine}/{action}"), v1.clone(), body.clone()).await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "v1 on {action}");
    }
    let b = app.balance(&victim).await;
    assert_eq!((b["held"].as_i64(), b["spent"].as_i64()), (Some(4_000), Some(0)), "nothing moved: {b}");

    // On its own path it works; and v1 still decides a new authorization, whose body names everything.
    let r = send(my_capture, signature, body).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let auth = serde_json::to_vec(&json!({"id": "v1-auth", "card_id": own_card, "amount": 100, "currency": "USD",
        "merchant": {"name": "OPENAI *API"}}))
    .unwrap();
    let r = send("/v1/authorizations".into(), keys.sign(&auth, now), auth).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap()["approved"], true);
}

/// A dry run answers what a real request would get now, against the same holds and limits, and
/// records nothing: through the admin API (any reader of the card's agent) and through a signed
/// webhook with `Spendgate-Dry-Run: true`.
async fn a_dry_run_decides_like_the_real_thing_and_records_nothing(app: TestApp) {
    let policy = json!({"limits": [{"id": "daily", "scope": "agent", "window": {"rolling": "24h"}, "amount": 5_000}]});
    let (agent, card) = agent_with_card(&app, policy, 100_000).await;
    let purchase = |amount: i64| {
        json!({"amount": amount, "currency": "USD",
               "merchant": {"name": "OPENAI *API", "mcc": "5734", "country": "US"}})
    };
    let dry = |amount: i64| {
        let path = format!("/v1/cards/{card}/dry-run");
        let app = &app;
        async move { app.post(&path, purchase(amount)).await }
    };
    let (status, first) = dry(4_000).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!((first["approved"].as_bool(), first["dry_run"].as_bool()), (Some(true), Some(true)), "{first}");
    assert!(first["authorization_id"].is_null(), "nothing recorded, nothing to name: {first}");
    assert_eq!(first["available"]["amount"], 96_000, "what would be left: {first}");
    // Twice the same dry run: still approved, because the first held nothing.
    assert_eq!(dry(4_000).await.1["approved"], true);
    let b = app.balance(&agent).await;
    assert_eq!((b["held"].as_i64(), b["available"].as_i64()), (Some(0), Some(100_000)), "{b}");
    let (_, ledger) = app.get(&format!("/v1/agents/{agent}/ledger")).await;
    assert_eq!(ledger["data"].as_array().unwrap().len(), 1, "only the funding: {ledger}");

    // A real hold counts against the limit the dry run then sees.
    assert_eq!(app.authorize("real-1", &card, 4_000).await["approved"], true);
    let (_, second) = dry(2_000).await;
    assert_eq!((second["approved"].as_bool(), second["reason"].as_str()), (Some(false), Some("limit_exceeded")));
    assert_eq!(second["rule"], "agent.limit.daily");

    // The signed webhook with the header: the same answer, nothing recorded.
    let body = json!({"id": "dry-1", "card_id": card, "amount": 2_000, "currency": "USD",
                      "merchant": {"name": "OPENAI *API", "mcc": "5734", "country": "US"}});
    let bytes = serde_json::to_vec(&body).unwrap();
    let response = app
        .http
        .post(format!("{}/v1/authorizations", app.base))
        .header("Spendgate-Signature", common::sign("/v1/authorizations", &bytes))
        .header("Spendgate-Dry-Run", "true")
        .header("Content-Type", "application/json")
        .body(bytes)
        .send()
        .await
        .unwrap();
    let answer: Value = response.json().await.unwrap();
    assert_eq!((answer["reason"].as_str(), answer["dry_run"].as_bool()), (Some("limit_exceeded"), Some(true)));
    // The same id sent for real afterwards is a first decision, not a replay of the dry run.
    let real = app.authorize("dry-1", &card, 1_000).await;
    assert_eq!((real["approved"].as_bool(), real["replayed"].as_bool()), (Some(true), Some(false)), "{real}");
    let b = app.balance(&agent).await;
    assert_eq!(b["held"], 5_000, "two real holds only: {b}");
    let (_, declines) = app.get(&format!("/v1/agents/{agent}/ledger")).await;
    assert_eq!(declines["data"].as_array().unwrap().len(), 3, "funding and two holds: {declines}");

    // An agent key reads its own cards only; bad input is a 4xx that changes nothing.
    let other = app.create_agent("other").await;
    let key = app.create_key("agent", Some(&other)).await;
    let (status, _) =
        app.call(reqwest::Method::POST, &format!("/v1/cards/{card}/dry-run"), Some(&key), Some(purchase(1))).await;
    assert!(status == StatusCode::FORBIDDEN || status == StatusCode::NOT_FOUND, "{status}");
    let (status, e) = app.post(&format!("/v1/cards/{card}/dry-run"), purchase(-1)).await;
    assert_eq!((status, e["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("validation_failed")), "{e}");
    let (status, _) = app.post("/v1/cards/card_00000000000000000000000000/dry-run", purchase(1)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

on_both_backends!(
    a_dry_run_decides_like_the_real_thing_and_records_nothing,
    a_lifecycle_signature_is_bound_to_its_path,
    concurrent_authorizations_never_exceed_a_limit,
    retries_of_every_event_are_idempotent,
    voids_free_the_window_refunds_do_not_and_excess_counts,
    a_freeze_applies_to_the_next_request_and_declines_are_recorded,
    traces_tag_authorizations_and_filter_the_ledger,
    bad_input_is_refused_and_changes_nothing,
    holds_expire_and_free_their_amount,
);

/// A local server speaking the ECB's daily file format, dated today, and a second source in the JSON
/// shape rate services use (`/rates.json`, in USD, with EUR and KES). Returns its base URL.
async fn fx_feed() -> String {
    use actix_web::{App, HttpResponse, HttpServer, web};
    let today = jiff::Timestamp::now().to_zoned(jiff::tz::TimeZone::UTC).date();
    let xml = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><gesmes:Envelope xmlns:gesmes=\"http://www.gesmes.org/xml/2002-08-01\" \
         xmlns=\"http://www.ecb.int/vocabulary/2002-08-01/eurofxref\"><Cube><Cube time='{today}'>\
         <Cube currency='USD' rate='1.2500'/><Cube currency='JPY' rate='150.00'/></Cube></Cube></gesmes:Envelope>"
    );
    let extra = json!({"base": "USD", "date": today.to_string(), "rates": {"EUR": 0.8, "KES": 129.5, "USD": 1}});
    let server = HttpServer::new(move || {
        let (xml, extra) = (xml.clone(), extra.clone());
        App::new()
            .route(
                "/eurofxref-daily.xml",
                web::get().to(move || {
                    let xml = xml.clone();
                    async move { HttpResponse::Ok().content_type("text/xml").body(xml) }
                }),
            )
            .route(
                "/rates.json",
                web::get().to(move || {
                    let extra = extra.clone();
                    async move { HttpResponse::Ok().json(extra) }
                }),
            )
    })
    .workers(1)
    .bind("127.0.0.1:0")
    .unwrap();
    let addr = server.addrs()[0];
    actix_web::rt::spawn(server.run());
    format!("http://{addr}")
}

/// A plain install converts from its first minute with the ECB's rates; without them (offline, or
/// `fx_url` empty), the bundled table is stale and cross-currency declines, unless accepted as in
/// the demo, where every decision says it used the bundled table.
#[actix_web::test]
async fn stale_rates_decline_until_a_refresh_brings_fresh_ones() {
    // The built-in table is weeks old: a cross-currency authorization declines.
    let app = common::spawn(common::Backend::Sqlite).await;
    assert_eq!(app.get("/readyz").await.1["fx"]["source"], "bundled");
    let (_, card) = agent_with_card(&app, json!({}), 100_000).await;
    let eur =
        json!({"id": "fx-1", "card_id": card, "amount": 1_000, "currency": "EUR", "merchant": {"name": "AWS EMEA"}});
    let (_, d) = app.signed("/v1/authorizations", &eur).await;
    assert_eq!((d["reason"].as_str(), d["rule"].as_str()), (Some("stale_fx"), Some("fx.max_age")), "{d}");
    assert_eq!(app.authorize("fx-2", &card, 1_000).await["approved"], true, "same currency needs no rate");

    let accepting = common::spawn_with(common::Backend::Sqlite, |c| c.fx_accept_bundled = true).await;
    let (_, card) = agent_with_card(&accepting, json!({}), 100_000).await;
    let (_, d) = accepting
        .signed(
            "/v1/authorizations",
            &eur.as_object()
                .map(|o| {
                    let mut o = o.clone();
                    o.insert("card_id".into(), json!(card));
                    Value::Object(o)
                })
                .unwrap(),
        )
        .await;
    assert_eq!((d["approved"].as_bool(), d["fx"]["source"].as_str()), (Some(true), Some("bundled")), "{d}");
    assert_eq!(d["fx"]["date"], "2026-09-24");
    // Bahrain's dinar: the ECB does not publish it; its peg to the USD converts it.
    let bhd =
        json!({"id": "fx-bhd", "card_id": card, "amount": 1_000, "currency": "BHD", "merchant": {"name": "BATELCO"}});
    let (_, d) = accepting.signed("/v1/authorizations", &bhd).await;
    assert_eq!(d["approved"], true, "{d}");
    assert_eq!(d["amount"]["cap"], json!({"amount": 266, "currency": "USD"}), "1.000 BHD = 2.66 USD: {d}");

    let feed = fx_feed().await;
    let app = common::spawn_with(common::Backend::Sqlite, |c| {
        c.fx_url = format!("{feed}/eurofxref-daily.xml");
        c.fx_extra_url = format!("{feed}/rates.json");
    })
    .await;
    let (_, card) = agent_with_card(&app, json!({}), 100_000).await;
    let mut decision = Value::Null;
    for i in 0..50 {
        let jpy = json!({"id": format!("fx-{i}"), "card_id": card, "amount": 1_000, "currency": "JPY", "merchant": {"name": "AWS JP"}});
        decision = app.signed("/v1/authorizations", &jpy).await.1;
        if decision["approved"] == true {
            break;
        }
        actix_web::rt::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(decision["approved"], true, "{decision}");
    // 1000 JPY at 150 JPY and 1.25 USD per euro is 8.333… USD, rounded up to 8.34.
    assert_eq!(decision["amount"]["cap"], json!({"amount": 834, "currency": "USD"}));
    let today = jiff::Timestamp::now().to_zoned(jiff::tz::TimeZone::UTC).date().to_string();
    assert_eq!(
        (decision["fx"]["date"].as_str(), decision["fx"]["source"].as_str()),
        (Some(today.as_str()), Some("ecb"))
    );
    let ready = app.get("/readyz").await.1;
    assert_eq!((ready["fx"]["source"].as_str(), ready["fx"]["date"].as_str()), (Some("ecb"), Some(today.as_str())));
    // Kenya's shilling, from the second source: 1295.00 KES is 8.00 EUR (161.875 KES per EUR, crossed
    // through its own EUR rate) and so 10.00 USD at the ECB's 1.25.
    let kes = json!({"id": "fx-kes", "card_id": card, "amount": 129_500, "currency": "KES", "merchant": {"name": "SAFARICOM"}});
    let (_, d) = app.signed("/v1/authorizations", &kes).await;
    assert_eq!((d["approved"].as_bool(), d["fx"]["source"].as_str()), (Some(true), Some("extra")), "{d}");
    assert_eq!(d["amount"]["cap"], json!({"amount": 1_000, "currency": "USD"}));
    // The ledger keeps where the rate came from.
    let agent = app.get(&format!("/v1/cards/{card}")).await.1["agent_id"].as_str().unwrap().to_owned();
    let (_, ledger) = app.get(&format!("/v1/agents/{agent}/ledger")).await;
    let approved = ledger["data"].as_array().unwrap().iter().find(|e| e["approved"] == true).unwrap();
    assert_eq!(approved["fx"]["source"], "ecb", "{approved}");
}
