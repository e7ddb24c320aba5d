//! The MCP server, driven by the official TypeScript SDK over Streamable HTTP and over stdio
//! (`spendgate mcp`): every tool is called, its effect checked through the admin API, and a
//! prompt-injected agent tries what its key may not.

mod common;
#[path = "common/x402_server.rs"]
mod x402_server;

use common::node::{node_with, run_script};
use common::{TEST_TOKEN, TestApp};
use reqwest::StatusCode;
use serde_json::{Value, json};
use x402_server::{PAY_TO, X402Server};

const SDK: &str = "@modelcontextprotocol/sdk@1.32.2";

const TOOLS: [&str; 8] = [
    "what_can_i_spend",
    "check_payment",
    "pay",
    "payment_approval",
    "set_trace",
    "recent_spend",
    "ask_for_mandate",
    "mandate_status",
];

struct Setting {
    agent: String,
    card: String,
    other_card: String,
    key: String,
    server: X402Server,
}

async fn setting(app: &TestApp) -> Setting {
    let server = X402Server::start(TEST_TOKEN).await;
    let host = server.base.trim_start_matches("http://").to_owned();
    let agent = app.create_agent("coder").await;
    let policy = json!({
        "limits": [{"id": "daily", "scope": "agent", "window": {"rolling": "24h"}, "amount": 10_000}],
        "x402": {"allow_hosts": [host], "per_call": 100, "pay_to": [format!("eip155:84532:{}", PAY_TO.to_lowercase())]},
    });
    assert_eq!(app.put(&format!("/v1/agents/{agent}/policy"), policy).await.0, StatusCode::OK);
    let card = app.issue_card(&agent, json!({"label": "openai"})).await["id"].as_str().unwrap().to_owned();
    app.fund(&agent, 50_000).await;
    let other = app.create_agent("other").await;
    let other_card = app.issue_card(&other, json!({"label": "aws"})).await["id"].as_str().unwrap().to_owned();
    let key = app.create_key("agent", Some(&agent)).await;
    Setting { agent, card, other_card, key, server }
}

/// Runs `calls` through the SDK's client over `transport`; what it saw.
async fn drive(app: &TestApp, s: &Setting, transport: &str, calls: Value) -> Value {
    let env = [
        ("SPENDGATE_URL", app.base.clone()),
        ("SPENDGATE_API_KEY", s.key.clone()),
        ("MCP_TRANSPORT", transport.to_owned()),
        ("SPENDGATE_BIN", env!("CARGO_BIN_EXE_spendgate").to_owned()),
        ("MCP_CALLS", calls.to_string()),
    ];
    // The client runs beside this test's server, which answers on this thread.
    let out = actix_web::rt::task::spawn_blocking(move || {
        let home = node_with(&[SDK]);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        run_script(&home, "tests/mcp/client.mjs", &env)
    })
    .await
    .expect("the client ran");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn text(result: &Value) -> &str {
    result["content"][0]["text"].as_str().unwrap_or_else(|| panic!("no text in {result}"))
}

fn failed(result: &Value) -> bool {
    result["isError"] == true || result.get("protocolError").is_some()
}

async fn every_tool_over(app: &TestApp, transport: &str) {
    let s = setting(app).await;
    let trace = format!("PR-{transport}");
    let paid = s.server.url("/v2/paid?price=250000");
    let new_api = X402Server::start(TEST_TOKEN).await;
    let new_host = new_api.base.trim_start_matches("http://");
    let listed = format!("eip155:84532:{PAY_TO}");
    let unlisted = "eip155:84532:0x00000000000000000000000000000000000000bb";
    let calls = json!([
        {"name": "what_can_i_spend", "arguments": {}},
        {"name": "set_trace", "arguments": {"trace_id": trace}},
        {"name": "check_payment", "arguments": {"url": paid, "amount": 25, "pay_to": listed}},
        {"name": "pay", "arguments": {"url": paid, "trace_id": trace, "idempotency_key": "task-1"}},
        {"name": "pay", "arguments": {"url": paid, "trace_id": trace, "idempotency_key": "task-1"}},
        {"name": "recent_spend", "arguments": {"trace_id": trace}},
        {"name": "payment_approval", "arguments": {"approval_id": "appr_01m90000000000000000000000"}},
        // What a prompt-injected agent tries:
        {"name": "check_payment", "arguments": {"card_id": s.other_card, "amount": 1}},
        {"name": "set_trace", "arguments": {"card_id": s.other_card, "trace_id": "hijack"}},
        {"name": "pay", "arguments": {"url": "http://169.254.169.254/latest/meta-data/", "idempotency_key": "task-2"}},
        {"name": "pay", "arguments": {"url": s.server.url("/v2/paid?price=5000000"), "idempotency_key": "task-3"}},
        {"name": "check_payment", "arguments": {"url": paid, "amount": 25, "pay_to": unlisted}},
        {"name": "what_can_i_spend", "arguments": {"agent_id": "agt_01m90000000000000000000000"}},
        {"name": "set_policy", "arguments": {"policy": {}}},
        // More, asked of a person, who approves while the agent waits; then it pays past its cap.
        // A host the policy does not list, past the per-call cap: refused, and not contacted, until
        // a mandate naming it lets it through.
        {"name": "pay", "arguments": {"url": new_api.url("/v2/paid?price=5000000"), "idempotency_key": "task-4"}},
        {"name": "ask_for_mandate", "arguments": {"purpose": "one large report for PR", "amount": 600, "hosts": [new_host], "hours": 2}},
        {"name": "mandate_status", "arguments": {"mandate_id": {"$from": 15, "path": "structuredContent.id"}, "wait_seconds": 30}},
        {"name": "pay", "arguments": {"url": new_api.url("/v2/paid?price=5000000"), "idempotency_key": "task-5"}},
    ]);
    let (seen, approved) = tokio::join!(drive(app, &s, transport, calls), approve_the_mandate(app, &s.agent));
    assert_eq!(approved, StatusCode::OK);
    assert_eq!(seen["server"]["name"], "spendgate", "{seen}");
    assert!(seen["instructions"].as_str().unwrap().contains("what_can_i_spend"));
    let mut names: Vec<&str> = seen["tools"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    names.sort_unstable();
    let mut expected = TOOLS.to_vec();
    expected.sort_unstable();
    assert_eq!(names, expected);
    for tool in seen["tools"].as_array().unwrap() {
        assert!(tool["description"].as_str().unwrap().len() > 60, "a model needs words: {tool}");
        assert_eq!(tool["inputSchema"]["type"], "object", "{tool}");
    }
    let pay_schema = &seen["tools"].as_array().unwrap().iter().find(|t| t["name"] == "pay").unwrap()["inputSchema"];
    assert_eq!(pay_schema["required"], json!(["url"]), "{pay_schema}");

    let r = seen["results"].as_array().unwrap();
    assert!(text(&r[0]).contains("Available balance 500.00 USD"), "{}", r[0]);
    assert_eq!(r[0]["structuredContent"]["limits"][0]["rule"], "agent.limit.daily");
    assert!(text(&r[1]).contains(&trace), "{}", r[1]);
    assert!(text(&r[2]).starts_with("Would be approved"), "{}", r[2]);
    assert!(text(&r[3]).contains("The API answered 200. Paid 0.25 USD"), "{}", r[3]);
    let payment = r[3]["structuredContent"]["paid"]["payment_id"].as_str().unwrap();
    assert_eq!(r[4]["structuredContent"]["paid"]["payment_id"], payment, "the same key pays once: {}", r[4]);
    assert!(text(&r[5]).contains(&format!("[trace {trace}]")), "{}", r[5]);
    assert!(failed(&r[6]) && text(&r[6]).contains("not_found"), "{}", r[6]);

    // The attacks: each refused, in words that say so.
    assert!(failed(&r[7]), "another agent's card: {}", r[7]);
    assert!(failed(&r[8]), "another agent's card: {}", r[8]);
    assert!(failed(&r[9]) && text(&r[9]).contains("host_not_allowed"), "an internal address: {}", r[9]);
    assert!(failed(&r[10]) && text(&r[10]).contains("per_call_exceeded"), "past the per-call cap: {}", r[10]);
    assert!(text(&r[11]).contains("recipient_not_allowed"), "an unlisted recipient: {}", r[11]);
    assert!(failed(&r[12]), "an argument the tool does not take: {}", r[12]);
    assert!(!r[12].to_string().contains("other"), "{}", r[12]);
    assert!(failed(&r[13]), "no tool changes a policy: {}", r[13]);

    assert!(failed(&r[14]) && text(&r[14]).contains("host_not_allowed"), "{}", r[14]);
    assert!(text(&r[15]).contains("is waiting for a person's decision"), "{}", r[15]);
    assert!(text(&r[16]).contains("is approved"), "{}", r[16]);
    assert!(text(&r[17]).contains("Paid 5.00 USD"), "within the mandate: {}", r[17]);
    assert_eq!(new_api.unpaid(), 1, "the unlisted host was contacted only once the mandate named it");

    // The effects, through the admin API.
    let (_, card) = app.get(&format!("/v1/cards/{}", s.card)).await;
    assert_eq!(card["trace_id"], trace.as_str());
    let (_, theirs) = app.get(&format!("/v1/cards/{}", s.other_card)).await;
    assert!(theirs["trace_id"].is_null(), "{theirs}");
    assert_eq!((s.server.settled().len(), new_api.settled().len()), (1, 1), "one payment each");
    let (_, ledger) = app.get(&format!("/v1/agents/{}/ledger?trace={trace}", s.agent)).await;
    let held: Vec<&Value> = ledger["data"].as_array().unwrap().iter().filter(|e| e["approved"] == true).collect();
    assert_eq!(held.len(), 1, "{ledger}");
    assert_eq!(held[0]["x402"]["payment_id"], payment);
    let (_, policy) = app.get(&format!("/v1/agents/{}/policy", s.agent)).await;
    assert_eq!(policy["x402"]["per_call"], 100, "{policy}");
    assert_eq!(app.balance(&s.agent).await["available"], 50_000 - 25 - 500);
}

/// A person, watching the pending approvals, approves the agent's mandate when it appears.
async fn approve_the_mandate(app: &TestApp, agent: &str) -> StatusCode {
    for _ in 0..600 {
        let (_, pending) = app.get("/v1/approvals?status=pending").await;
        let mandate =
            pending["data"].as_array().unwrap().iter().find(|a| a["agent_id"] == agent && a["rule"] == "mandate");
        if let Some(id) = mandate.and_then(|m| m["id"].as_str()) {
            return app.post(&format!("/v1/approvals/{id}/approve"), json!({})).await.0;
        }
        actix_web::rt::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("no mandate was asked for");
}

async fn every_tool_over_http(app: TestApp) {
    every_tool_over(&app, "http").await;
    // Only an agent key has tools: they act for its agent.
    let (status, e) = app.post("/mcp", json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})).await;
    assert_eq!((status, e["error"]["code"].as_str()), (StatusCode::FORBIDDEN, Some("forbidden")), "{e}");
    let (status, _) = app.call(reqwest::Method::POST, "/mcp", None, Some(json!({}))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

async fn every_tool_over_stdio(app: TestApp) {
    every_tool_over(&app, "stdio").await;
}

on_both_backends!(every_tool_over_http, every_tool_over_stdio);
