//! The `spendgate` binary as people run it: serve (with --demo), migrate, and the CLI client,
//! including a server killed with SIGKILL mid-life.

use std::process::{Command, Output};

use serde_json::Value;

mod common;

use common::process::{BIN, Server, serve};

fn cli(base: &str, key: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_clear()
        .env("SPENDGATE_URL", base)
        .env("SPENDGATE_API_KEY", key)
        .output()
        .expect("run the CLI")
}

fn json_of(out: &Output) -> Value {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

fn text_of(out: &Output) -> String {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const OWNER: &str = "sgk_cli_test_owner_key_0123456789abcdef0123456789";

#[test]
fn cli_drives_agents_cards_and_keys() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), &[], &[("SPENDGATE_BOOTSTRAP_ADMIN_KEY", OWNER)]);
    let base = server.base.as_str();

    let agent = json_of(&cli(base, OWNER, &["agents", "create", "--name", "pr-bot", "--json"]));
    let agent_id = agent["id"].as_str().unwrap();
    let table = text_of(&cli(base, OWNER, &["agents", "list"]));
    assert!(table.contains("pr-bot") && table.contains(agent_id) && table.contains("1 row(s)"), "{table}");

    let card = json_of(&cli(
        base,
        OWNER,
        &["cards", "issue", "--agent", agent_id, "--label", "openai", "--template", "coding-agent", "--json"],
    ));
    let card_id = card["id"].as_str().unwrap();
    assert_eq!(card["number"].as_str().unwrap().len(), 16);
    assert_eq!(card["policy"]["limits"][0]["id"], "agent_24h");
    let policy = r#"{"per_transaction": 999}"#;
    let eur = json_of(&cli(
        base,
        OWNER,
        &["cards", "issue", "--agent", agent_id, "--label", "aws", "--currency", "eur", "--policy", policy, "--json"],
    ));
    assert_eq!(eur["policy"], serde_json::json!({"currency": "EUR", "per_transaction": 999}));

    let frozen = text_of(&cli(base, OWNER, &["cards", "freeze", card_id, "--reason", "loop detected"]));
    assert!(frozen.contains("frozen"), "{frozen}");
    let shown = json_of(&cli(base, OWNER, &["cards", "show", card_id, "--json"]));
    assert_eq!(shown["status"], "frozen");
    let listed = text_of(&cli(base, OWNER, &["cards", "list", "--agent", agent_id]));
    assert!(listed.contains("openai") && listed.contains("aws") && listed.contains("frozen"), "{listed}");

    let operator = json_of(&cli(base, OWNER, &["keys", "create", "--role", "operator", "--name", "oncall", "--json"]));
    let operator_key = operator["key"].as_str().unwrap();
    let refused = cli(base, operator_key, &["cards", "unfreeze", card_id, "--reason", "try"]);
    assert!(!refused.status.success());
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(message.contains("the server refused (403 forbidden)"), "{message}");

    assert_eq!(
        json_of(&cli(base, OWNER, &["cards", "unfreeze", card_id, "--reason", "ok", "--json"]))["status"],
        "active"
    );
    assert_eq!(
        json_of(&cli(base, OWNER, &["cards", "close", card_id, "--reason", "done", "--json"]))["status"],
        "closed"
    );
    let reopen = cli(base, OWNER, &["cards", "unfreeze", card_id, "--reason", "again"]);
    assert!(String::from_utf8_lossy(&reopen.stderr).contains("409 card_closed"));

    let revoked = json_of(&cli(base, OWNER, &["keys", "revoke", operator["id"].as_str().unwrap(), "--json"]));
    assert!(revoked["revoked_at"].is_string());
    let after = cli(base, operator_key, &["agents", "list"]);
    assert!(String::from_utf8_lossy(&after.stderr).contains("401 unauthenticated"));
    let keys = text_of(&cli(base, OWNER, &["keys", "list"]));
    assert!(keys.contains("oncall") && keys.contains("bootstrap"), "{keys}");
}

#[test]
fn cli_says_clearly_when_it_cannot_talk_to_the_server() {
    let unreachable = cli("http://127.0.0.1:9", OWNER, &["agents", "list"]);
    assert!(!unreachable.status.success());
    let message = String::from_utf8_lossy(&unreachable.stderr);
    assert!(message.contains("cannot reach spendgate at http://127.0.0.1:9"), "{message}");

    let no_key = Command::new(BIN).args(["agents", "list"]).env_clear().output().unwrap();
    assert!(!no_key.status.success());
    assert!(String::from_utf8_lossy(&no_key.stderr).contains("SPENDGATE_API_KEY"));
}

#[test]
fn demo_prints_a_working_key_and_loads_once() {
    let dir = tempfile::tempdir().unwrap();
    let demo_key = |server: &Server| {
        let after = server.stdout.split("Demo owner key").nth(1).expect("demo banner");
        after.split_whitespace().find(|w| w.starts_with("sgk_")).expect("key").to_owned()
    };
    let first = serve(dir.path(), &["--demo"], &[]);
    assert!(first.stdout.contains("curl -s -H 'Authorization: Bearer sgk_"), "{}", first.stdout);
    assert!(first.stdout.contains("First start: created an owner API key"));
    let key1 = demo_key(&first);
    let agents = json_of(&cli(&first.base, &key1, &["agents", "list", "--json"]));
    assert_eq!(agents["data"].as_array().unwrap().len(), 2);
    drop(first);

    let second = serve(dir.path(), &["--demo"], &[]);
    assert!(!second.stdout.contains("First start"), "the first key is shown only once");
    let key2 = demo_key(&second);
    assert_ne!(key1, key2);
    let agents = json_of(&cli(&second.base, &key2, &["agents", "list", "--json"]));
    assert_eq!(agents["data"].as_array().unwrap().len(), 2, "demo data is loaded only into an empty database");
    let old = cli(&second.base, &key1, &["agents", "list"]);
    assert!(!old.status.success(), "the previous demo key is revoked");
    assert!(dir.path().join("data/spendgate.db").exists(), "the default database is data/spendgate.db");
}

#[test]
fn an_issued_card_survives_a_killed_server() {
    let dir = tempfile::tempdir().unwrap();
    let env = [("SPENDGATE_BOOTSTRAP_ADMIN_KEY", OWNER)];
    let mut server = serve(dir.path(), &[], &env);
    let agent = json_of(&cli(&server.base, OWNER, &["agents", "create", "--name", "a", "--json"]));
    let agent_id = agent["id"].as_str().unwrap();
    let mut issued = Vec::new();
    for i in 0..5 {
        let label = format!("svc{i}");
        let card =
            json_of(&cli(&server.base, OWNER, &["cards", "issue", "--agent", agent_id, "--label", &label, "--json"]));
        issued.push(card["id"].as_str().unwrap().to_owned());
    }
    json_of(&cli(&server.base, OWNER, &["cards", "freeze", &issued[0], "--reason", "r", "--json"]));
    // SIGKILL: no shutdown hook, no flush.
    server.child.kill().unwrap();
    server.child.wait().unwrap();

    let again = serve(dir.path(), &[], &env);
    for id in &issued {
        let card = json_of(&cli(&again.base, OWNER, &["cards", "show", id, "--json"]));
        assert_eq!(card["id"], id.as_str());
    }
    let first = json_of(&cli(&again.base, OWNER, &["cards", "show", &issued[0], "--json"]));
    assert_eq!(first["status"], "frozen", "an acknowledged freeze survives the kill");
}

#[test]
fn migrate_applies_once() {
    let dir = tempfile::tempdir().unwrap();
    let run = || {
        Command::new(BIN)
            .arg("migrate")
            .current_dir(dir.path())
            .env_clear()
            .env("SPENDGATE_DATABASE_URL", "sqlite://state/sg.db")
            .output()
            .unwrap()
    };
    let first = text_of(&run());
    assert!(first.starts_with("applied 9 migration(s):"), "{first}");
    assert_eq!(text_of(&run()).trim(), "applied 0 migration(s)");
    let bad =
        Command::new(BIN).arg("migrate").env_clear().env("SPENDGATE_DATABASE_URL", "mysql://nope").output().unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("sqlite:// or postgres://"));
}

/// `simulate` signs a request in each processor's format with the server's own settings and prints the decision.
#[actix_web::test]
async fn simulate_sends_each_processors_request_and_prints_the_decision() {
    let secrets = [
        ("SPENDGATE_BOOTSTRAP_ADMIN_KEY", OWNER),
        ("SPENDGATE_STRIPE_WEBHOOK_SECRET", "whsec_cli_stripe_0123456789abcdef"),
        ("SPENDGATE_LITHIC_WEBHOOK_SECRET", "whsec_c3BlbmRnYXRlLWxpdGhpYy10ZXN0LXNlY3JldC0zMiE="),
        ("SPENDGATE_MARQETA_USERNAME", "jit"),
        ("SPENDGATE_MARQETA_PASSWORD", "Jit-Pass-0123456789!"),
    ];
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), &[], &secrets);
    let base = server.base.as_str();
    let http = common::http_client();
    let post = |path: String, body: Value| {
        let request = http.post(format!("{base}{path}")).bearer_auth(OWNER).json(&body);
        async move {
            let r = request.send().await.unwrap();
            assert!(r.status().is_success(), "{path}: {}", r.status());
            r.json::<Value>().await.unwrap()
        }
    };
    let agent =
        post("/v1/agents".into(), serde_json::json!({"name": "sim", "policy": {"per_transaction": 1_000}})).await;
    let agent = agent["id"].as_str().unwrap();
    post(format!("/v1/agents/{agent}/fund"), serde_json::json!({"id": "f1", "amount": 10_000, "currency": "USD"}))
        .await;
    let cards = [
        ("stripe", "ic_sim", "per_transaction_exceeded"),
        ("lithic", "lithic-sim", "VELOCITY_EXCEEDED"),
        ("marqeta", "mq-sim", "AMOUNT_LIMIT_EXCEEDED"),
    ];
    for (processor, card, _) in cards {
        let body =
            serde_json::json!({"label": processor, "processor": processor, "processor_card_id": card, "last4": "0001"});
        post(format!("/v1/agents/{agent}/cards"), body).await;
    }
    for (processor, card, code) in cards {
        let simulate = |amount: &str| {
            Command::new(BIN)
                .args([
                    "simulate",
                    processor,
                    "--card",
                    card,
                    "--amount",
                    amount,
                    "--merchant",
                    "OPENAI",
                    "--country",
                    "US",
                ])
                .env_clear()
                .env("SPENDGATE_URL", base)
                .envs(secrets)
                .output()
                .expect("run simulate")
        };
        let approved = text_of(&simulate("5.00"));
        assert!(approved.starts_with("approved"), "{processor}: {approved}");
        let declined = text_of(&simulate("12.50"));
        assert!(declined.starts_with(&format!("declined: {code}")), "{processor}: {declined}");
    }
    let balance: Value = http
        .get(format!("{base}/v1/agents/{agent}/balance"))
        .bearer_auth(OWNER)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(balance["held"], 1_500, "three approvals of 5.00: {balance}");
}
