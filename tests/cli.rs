//! The `spendgate` binary as people run it: serve (with --demo), migrate, and the CLI client,
//! including a server killed with SIGKILL mid-life.

use std::collections::HashMap;
use std::process::{Command, Output};

use serde_json::Value;

mod common;
#[path = "common/x402_server.rs"]
mod x402_server;

use common::process::{BIN, serve};

fn cli(base: &str, key: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_clear()
        .env("SPENDGATE_URL", base)
        .env("SPENDGATE_API_KEY", key)
        .output()
        .expect("run the CLI")
}

/// The CLI as the owner, with the server's settings (its secrets) in the environment too.
fn cli_with(base: &str, env: &[(&str, &str)], args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_clear()
        .env("SPENDGATE_URL", base)
        .env("SPENDGATE_API_KEY", OWNER)
        .envs(env.iter().copied())
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

/// The banner's lines after "Try it": the export line and the commands, as printed.
fn banner_commands(stdout: &str) -> (String, Vec<String>) {
    let tail = stdout.split("Try it").nth(1).expect("the banner offers commands");
    let lines: Vec<String> = tail
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("spendgate is"))
        .skip(1)
        .map(str::to_owned)
        .collect();
    let (export, commands) = lines.split_first().expect("an export line");
    assert!(export.starts_with("export SPENDGATE_URL="), "{export}");
    (export.clone(), commands.to_vec())
}

/// Runs one printed command in a shell after the printed export, from `dir`.
fn run_printed(dir: &std::path::Path, export: &str, command: &str) -> String {
    let out =
        Command::new("sh").arg("-c").arg(format!("{export}\n{command}")).current_dir(dir).env_clear().output().unwrap();
    assert!(out.status.success(), "{command}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `serve --demo` on a fresh directory: one owner key, kept across restarts with the secrets
/// (mode 0600), and the three printed commands list, approve, freeze and decline as printed.
#[test]
fn the_demo_decides_declines_and_freezes_with_the_printed_commands() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let first = serve(dir.path(), &["--demo"], &[]);
    let keys: std::collections::BTreeSet<&str> =
        first.stdout.split(|c: char| c.is_whitespace() || c == '=').filter(|w| w.starts_with("sgk_")).collect();
    assert_eq!(keys.len(), 1, "one owner key: {}", first.stdout);
    assert!(!first.stdout.contains("First start"), "{}", first.stdout);
    let (export, commands) = banner_commands(&first.stdout);
    assert_eq!(commands.len(), 3, "{commands:?}");
    let agents = run_printed(dir.path(), &export, &commands[0]);
    assert!(agents.contains("pr-reviewer") && agents.contains("2 row(s)"), "{agents}");
    let approved = run_printed(dir.path(), &export, &commands[1]);
    assert!(approved.starts_with("approved"), "{approved}");
    assert!(approved.contains("12.50 USD") && approved.contains("987.50 USD"), "{approved}");
    let declined = run_printed(dir.path(), &export, &commands[2]);
    assert!(declined.contains("declined: card_frozen (rule card.status)"), "{declined}");
    // Offline (no ECB fetch here), the demo still converts, and says with which table.
    let card = commands[1].split_whitespace().find(|w| w.starts_with("card_")).unwrap();
    let other = commands[1].replace(card, "CARD");
    let agents = json_of(&cli(&first.base, export.rsplit('=').next().unwrap(), &["agents", "list", "--json"]));
    let agent = agents["data"].as_array().unwrap().iter().find(|a| a["name"] == "pr-reviewer").unwrap()["id"].clone();
    let cards = json_of(&cli(
        &first.base,
        export.rsplit('=').next().unwrap(),
        &["cards", "list", "--agent", agent.as_str().unwrap(), "--json"],
    ));
    let anthropic = cards["data"].as_array().unwrap().iter().find(|c| c["label"] == "anthropic").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for amount in ["'10.00 EUR'", "'1.000 BHD'"] {
        let command = other.replace("CARD", &anthropic).replace("12.50", amount).replace("OPENAI *API", "ANTHROPIC");
        let converted = run_printed(dir.path(), &export, &command);
        assert!(converted.starts_with("approved") && converted.contains("(bundled)"), "{command}: {converted}");
    }

    let data = dir.path().join("data");
    let mut secrets = Vec::new();
    for name in ["owner.key", "master.key", "webhook.secret", "approval.secret"] {
        let meta = std::fs::metadata(data.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{name}");
        secrets.push(std::fs::read_to_string(data.join(name)).unwrap());
    }
    let key = secrets[0].trim().to_owned();
    assert!(export.contains(&key));
    drop(first);

    let second = serve(dir.path(), &["--demo"], &[]);
    let (export2, commands2) = banner_commands(&second.stdout);
    assert!(export2.ends_with(&format!("SPENDGATE_API_KEY={key}")), "the same key at every start: {export2}");
    for (i, name) in ["owner.key", "master.key", "webhook.secret", "approval.secret"].iter().enumerate() {
        assert_eq!(std::fs::read_to_string(data.join(name)).unwrap(), secrets[i], "{name} is kept");
    }
    let agents = json_of(&cli(&second.base, &key, &["agents", "list", "--json"]));
    assert_eq!(agents["data"].as_array().unwrap().len(), 2, "demo data is loaded only into an empty database");
    // The frozen card is not offered again: the banner names an active one.
    assert!(run_printed(dir.path(), &export2, &commands2[1]).starts_with("approved"));
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
    assert!(first.starts_with("applied 19 migration(s):"), "{first}");
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
    post("/v1/treasury/deposits".into(), serde_json::json!({"id": "d1", "amount": 10_000, "currency": "USD"})).await;
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
                    "--live",
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
    let get = |path: String| {
        let request = http.get(format!("{base}{path}")).bearer_auth(OWNER);
        async move { request.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let balance = get(format!("/v1/agents/{agent}/balance")).await;
    assert_eq!(balance["held"], 1_500, "three approvals of 5.00: {balance}");

    // Without --live, a dry run: the decision and its rule, nothing held.
    for (processor, card, _) in cards {
        let out = Command::new(BIN)
            .args(["simulate", processor, "--card", card, "--amount", "12.50"])
            .env_clear()
            .env("SPENDGATE_URL", base)
            .envs(secrets)
            .output()
            .unwrap();
        let text = text_of(&out);
        assert!(
            text.starts_with(
                "declined: per_transaction_exceeded (rule agent.per_transaction)  [dry run: nothing recorded]"
            ),
            "{processor}: {text}"
        );
    }
    let after = get(format!("/v1/agents/{agent}/balance")).await;
    assert_eq!(after["held"], 1_500, "dry runs hold nothing: {after}");
    let ledger = get(format!("/v1/agents/{agent}/ledger")).await;
    assert_eq!(ledger["data"].as_array().unwrap().len(), 7, "the funding and six live decisions: {ledger}");
}

/// The day-to-day commands against a live server: funding, balance, the ledger with its filters,
/// policies from a file, traces, events, approvals, the wallet, a paid x402 fetch, and a signed
/// authorization on a processor's card; with the errors a person makes named as such.
#[test]
fn the_cli_covers_the_days_work() {
    // The x402 server runs on a thread of its own, since this test waits on each command.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            tx.send(x402_server::X402Server::start(common::TEST_TOKEN).await).unwrap();
            std::future::pending::<()>().await;
        })
    });
    let upstream = rx.recv().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let assets = format!("eip155:84532={}", common::TEST_TOKEN);
    let env = [
        ("SPENDGATE_BOOTSTRAP_ADMIN_KEY", OWNER),
        ("SPENDGATE_MASTER_KEY", common::MASTER_KEY),
        ("SPENDGATE_X402_ASSETS", assets.as_str()),
        ("SPENDGATE_X402_PRIVATE_DESTINATIONS", "127.0.0.1/32"),
        ("SPENDGATE_STRIPE_WEBHOOK_SECRET", "whsec_cli_stripe_0123456789abcdef"),
        ("SPENDGATE_LITHIC_WEBHOOK_SECRET", "whsec_c3BlbmRnYXRlLWxpdGhpYy10ZXN0LXNlY3JldC0zMiE="),
        ("SPENDGATE_APPROVAL_SECRET", "approval-secret-0123456789"),
    ];
    let server = serve(dir.path(), &[], &env);
    let run = |args: &[&str]| cli_with(&server.base, &env, args);
    let policy = dir.path().join("policy.json");
    std::fs::write(&policy, r#"{"currency": "USD", "approval": {"above": 5000}}"#).unwrap();
    let policy_arg = format!("@{}", policy.display());
    let agent =
        text_of(&run(&["agents", "create", "--name", "daily", "--policy", &policy_arg, "--quiet"])).trim().to_owned();
    assert!(agent.starts_with("agt_"), "{agent}");
    // Funding needs money behind the treasury first; an owner records it.
    let refused = run(&["fund", &agent, "--amount", "250.00 USD"]);
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && said.contains("treasury_short"), "{said}");
    let deposit = text_of(&run(&["treasury", "deposit", "--amount", "1000.00 USD", "--reference", "wire 7"]));
    assert!(deposit.contains("deposit"), "{deposit}");
    assert!(text_of(&run(&["fund", &agent, "--amount", "250.00 USD", "--reason", "sprint"])).contains("250.00 USD"));
    let treasury = text_of(&run(&["treasury", "--json"]));
    assert!(treasury.contains("\"available\": 75000") || treasury.contains("\"available\":75000"), "{treasury}");
    let balance = text_of(&run(&["balance", &agent]));
    assert!(balance.contains("available 250.00 USD"), "{balance}");

    // Amounts: a sign, too many decimals, the wrong currency, said the same way however written.
    for args in [["fund", &agent, "--amount", "-5"], ["fund", &agent, "--amount=-5", ""]] {
        let args: Vec<&str> = args.into_iter().filter(|a| !a.is_empty()).collect();
        let out = run(&args);
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("--amount must not be negative"), "{args:?}");
    }
    let out = run(&["fund", &agent, "--amount", "1.005"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("more decimals than USD has (2)"));
    let newline = Command::new(BIN)
        .args(["agents", "list"])
        .env_clear()
        .env("SPENDGATE_URL", &server.base)
        .env("SPENDGATE_API_KEY", format!("{OWNER}\n"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&newline.stderr).contains("line break"), "{newline:?}");

    // A card at Stripe, registered: `authorize` sends Stripe's own request, signed with its secret.
    let issued = json_of(&run(&[
        "cards",
        "issue",
        "--agent",
        &agent,
        "--label",
        "stripe",
        "--processor",
        "stripe",
        "--processor-card-id",
        "ic_cli_1",
        "--last4",
        "4242",
        "--json",
    ]));
    let card = issued["id"].as_str().unwrap().to_owned();
    let card_policy = json_of(&run(&["policy", "get", "--card", &card, "--json"]));
    assert_eq!(card_policy["currency"], "USD");
    let set =
        json_of(&run(&["policy", "set", "--card", &card, r#"{"currency": "USD", "per_transaction": 2000}"#, "--json"]));
    assert_eq!(set["per_transaction"], 2000);
    assert!(json_of(&run(&["trace", "set", &card, "pr-7", "--json"]))["trace_id"] == "pr-7");

    let approved = text_of(&run(&["authorize", "--card", &card, "--amount", "12.50", "--merchant", "OPENAI *API"]));
    assert!(approved.starts_with("approved"), "{approved}");
    let declined = text_of(&run(&["authorize", "--card", &card, "--amount", "25"]));
    assert!(declined.starts_with("declined: per_transaction_exceeded (rule card.per_transaction)"), "{declined}");
    // Past the agent's approval threshold: a request for a person, listed and approved from the CLI.
    run(&["policy", "set", "--card", &card, r#"{"currency": "USD"}"#]);
    let asked = text_of(&run(&["authorize", "--card", &card, "--amount", "60"]));
    assert!(asked.starts_with("declined: approval_required (rule agent.approval)"), "{asked}");
    let pending = text_of(&run(&["approvals", "list", "--status", "pending", "--quiet"]));
    let approval = pending.lines().next().expect("one pending approval").to_owned();
    assert_eq!(json_of(&run(&["approvals", "approve", &approval, "--json"]))["status"], "approved");
    assert!(text_of(&run(&["authorize", "--card", &card, "--amount", "60"])).starts_with("approved"));

    // Lithic's answer carries only its own code: the rule that fired comes from the ledger.
    let lithic = text_of(&run(&[
        "cards",
        "issue",
        "--agent",
        &agent,
        "--label",
        "lithic",
        "--processor",
        "lithic",
        "--processor-card-id",
        "lithic-cli",
        "--last4",
        "0001",
        "--policy",
        r#"{"per_transaction": 500}"#,
        "--quiet",
    ]));
    let over = text_of(&run(&["authorize", "--card", lithic.trim(), "--amount", "10"]));
    assert!(over.starts_with("declined: per_transaction_exceeded (rule card.per_transaction)"), "{over}");

    let ledger = json_of(&run(&["ledger", &agent, "--trace", "pr-7", "--json"]));
    assert_eq!(ledger["data"].as_array().unwrap().len(), 4, "the trace's four authorizations: {ledger}");
    let table = text_of(&run(&["ledger", &agent, "--card", &card]));
    assert!(table.contains("declined: per_transaction_exceeded") && table.contains("12.50 USD"), "{table}");
    let events = text_of(&run(&["events", "--card", &card]));
    assert!(events.contains("issued") && events.contains("policy_changed"), "{events}");
    text_of(&run(&["trace", "clear", &card]));

    // The wallet and a paid call.
    let wallet = json_of(&run(&["wallet", "show", &agent, "--json"]));
    assert!(wallet["address"].as_str().is_some_and(|a| a.starts_with("0x")), "{wallet}");
    let paid = json_of(&run(&[
        "x402",
        "fetch",
        &agent,
        &upstream.url("/v2/paid?price=10000"),
        "--max-amount",
        "0.05",
        "--trace",
        "research-1",
        "--json",
    ]));
    assert_eq!(
        (paid["status"].as_u64(), paid["spendgate"]["spendgate-cost"].as_str()),
        (Some(200), Some("1")),
        "{paid}"
    );
    assert_eq!(upstream.settled().len(), 1);
    let too_dear = run(&["x402", "fetch", &agent, &upstream.url("/v2/paid?price=990000"), "--max-amount", "0.05"]);
    assert!(!too_dear.status.success());
    let said = String::from_utf8_lossy(&too_dear.stderr);
    assert!(said.contains("402 per_call_exceeded") && said.contains("nothing was signed"), "{said}");
    assert_eq!(upstream.settled().len(), 1, "nothing paid past the ceiling");
}

/// The end of the sprint, from the CLI: what did each PR cost, per service, and its lines as CSV.
#[test]
fn the_cost_per_trace_and_service_is_one_command() {
    let dir = tempfile::tempdir().unwrap();
    let env =
        [("SPENDGATE_BOOTSTRAP_ADMIN_KEY", OWNER), ("SPENDGATE_WEBHOOK_SECRET", "whsec_cli_native_0123456789abcdef")];
    let server = serve(dir.path(), &[], &env);
    let run = |args: &[&str]| cli_with(&server.base, &env, args);
    let agent =
        text_of(&run(&["agents", "create", "--name", "ci", "--department", "eng", "--quiet"])).trim().to_owned();
    text_of(&run(&["treasury", "deposit", "--amount", "100.00 USD"]));
    text_of(&run(&["fund", &agent, "--amount", "100.00"]));
    for (label, amount, trace) in
        [("openai", "12.50", "PR-4823"), ("github", "3.00", "PR-4823"), ("openai", "1.00", "PR-9")]
    {
        let card = text_of(&run(&["cards", "issue", "--agent", &agent, "--label", label, "--quiet"])).trim().to_owned();
        let decision = text_of(&run(&["authorize", "--card", &card, "--amount", amount, "--trace", trace]));
        assert!(decision.contains("approved"), "{decision}");
    }

    let table = text_of(&run(&["report", "spend", "--by", "trace,service", "--since", "30d"]));
    let lines: Vec<&str> = table.lines().collect();
    let row =
        |needle: &str| lines.iter().position(|l| l.contains(needle)).unwrap_or_else(|| panic!("{needle}:\n{table}"));
    assert!(row("12.50 USD") < row("3.00 USD") && row("3.00 USD") < row("1.00 USD"), "top spend first:\n{table}");
    assert!(lines[row("12.50 USD")].contains("PR-4823") && lines[row("12.50 USD")].contains("openai"), "{table}");
    assert!(table.contains("16.50 USD") && table.contains("amounts in USD"), "the total:\n{table}");
    let report = json_of(&run(&["report", "spend", "--by", "trace", "--since", "30d", "--json"]));
    assert_eq!(report["groups"][0]["group"]["trace"], "PR-4823");
    assert_eq!(report["groups"][0]["totals"]["held"], 15_50);

    let csv = text_of(&run(&["ledger", "export", "--since", "7d", "--by-trace", "PR-4823", "--format", "csv"]));
    let mut reader = csv::Reader::from_reader(csv.as_bytes());
    let services: Vec<String> =
        reader.deserialize::<HashMap<String, String>>().map(|r| r.unwrap()["service"].clone()).collect();
    assert_eq!(services, ["openai", "github"], "{csv}");
    let file = dir.path().join("out.jsonl");
    let out = run(&["ledger", "export", "--format", "jsonl", "--output", file.to_str().unwrap()]);
    assert!(out.status.success() && out.stdout.is_empty(), "{out:?}");
    assert_eq!(std::fs::read_to_string(&file).unwrap().lines().count(), 4, "the funding and three authorizations");
    let refused = run(&["ledger", "export", "--status", "approved"]);
    assert!(String::from_utf8_lossy(&refused.stderr).contains("400 validation_failed"), "{refused:?}");

    // The audit trail: whole, its heads kept in a file, and broken once a row changes behind the
    // server's back (the command then fails, for cron).
    let heads = dir.path().join("heads.json");
    std::fs::write(&heads, text_of(&run(&["audit", "checkpoint"]))).unwrap();
    let verified = text_of(&run(&["audit", "verify", "--checkpoint", heads.to_str().unwrap()]));
    assert!(verified.starts_with("verified: 2 chains") && verified.contains("held to checkpoint ckp_"), "{verified}");
    use diesel::connection::SimpleConnection;
    let db = dir.path().join("data/spendgate.db");
    let mut conn = <diesel::SqliteConnection as diesel::Connection>::establish(db.to_str().unwrap()).unwrap();
    conn.batch_execute("PRAGMA busy_timeout = 5000; UPDATE transfers SET amount = 1000000 WHERE kind = 'fund'")
        .unwrap();
    let broken = run(&["audit", "verify", "--checkpoint", heads.to_str().unwrap()]);
    let shown = String::from_utf8_lossy(&broken.stdout);
    assert!(!broken.status.success(), "{shown}");
    assert!(shown.contains("BROKEN: 1 chain(s)") && shown.contains("record_altered"), "{shown}");
    assert!(String::from_utf8_lossy(&broken.stderr).contains("the audit trail is broken"), "{broken:?}");
}

#[test]
fn a_policy_change_is_drafted_backtested_shadowed_and_promoted_from_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let env =
        [("SPENDGATE_BOOTSTRAP_ADMIN_KEY", OWNER), ("SPENDGATE_WEBHOOK_SECRET", "whsec_cli_native_0123456789abcdef")];
    let server = serve(dir.path(), &[], &env);
    let run = |args: &[&str]| cli_with(&server.base, &env, args);
    let agent = json_of(&run(&["agents", "create", "--name", "infra-bot", "--json"]));
    let agent = agent["id"].as_str().unwrap();
    text_of(&run(&["treasury", "deposit", "--amount", "500 USD"]));
    text_of(&run(&["fund", agent, "--amount", "500"]));
    let five = r#"{"limits": [{"id": "hourly", "scope": "card", "window": {"rolling": "1h"}, "count": 5}]}"#;
    let card = json_of(&run(&["cards", "issue", "--agent", agent, "--label", "aws", "--policy", five, "--json"]));
    let card = card["id"].as_str().unwrap();
    for _ in 0..4 {
        let out =
            text_of(&run(&["authorize", "--card", card, "--amount", "10", "--merchant", "AWS", "--trace", "PR-4823"]));
        assert!(out.starts_with("approved"), "{out}");
    }

    let two = five.replace("\"count\": 5", "\"count\": 2");
    let drafted = text_of(&run(&["policy", "draft", "--card", card, &two, "--reason", "a loop spent $40 in an hour"]));
    assert!(drafted.contains("limits.hourly.count: 5 -> 2"), "{drafted}");
    assert_eq!(text_of(&run(&["policy", "diff", "--card", card])), drafted);

    let report = text_of(&run(&["policy", "backtest", "--card", card, "--since", "1d"]));
    assert!(
        report.contains("this draft would have declined 2 that were approved, 20.00 USD in all, 2 of them on trace PR-4823 (most at aws)"),
        "{report}"
    );
    assert!(report.contains("velocity_exceeded card.limit.hourly"), "{report}");

    text_of(&run(&["policy", "shadow", "--card", card, "on"]));
    let live = text_of(&run(&["authorize", "--card", card, "--amount", "10", "--merchant", "AWS"]));
    assert!(live.starts_with("approved"), "the draft in shadow decides nothing: {live}");
    let shadow = text_of(&run(&["policy", "shadow", "--card", card, "report"]));
    assert!(shadow.contains("would have declined 1 that were approved, 10.00 USD in all"), "{shadow}");

    let promoted = json_of(&run(&["policy", "promote", "--card", card, "--reason", "tighten", "--json"]));
    assert_eq!((promoted["state"].as_str(), promoted["number"].as_i64()), (Some("live"), Some(2)));
    let declined = text_of(&run(&["authorize", "--card", card, "--amount", "10", "--merchant", "AWS"]));
    assert!(declined.starts_with("declined: velocity_exceeded"), "{declined}");
    let versions = text_of(&run(&["policy", "versions", "--card", card]));
    assert!(
        versions.contains("live") && versions.contains("superseded") && versions.contains("2 row(s)"),
        "{versions}"
    );
}
