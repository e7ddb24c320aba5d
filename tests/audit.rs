//! The tamper-evident audit trail, on both backends: a history with every kind of record verifies;
//! each way of tampering with the rows behind the server's back (an edit, a deletion, a reordering,
//! an insertion, a balance raised, a cut-off tail, a rewritten chain) is named at the right link;
//! records from before the chain are adopted into it at start-up.

mod common;

use common::TestApp;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use spendgate::audit::chain::{Head, from_hex, sha256};
use spendgate::store::{Db, chain as links};

/// What the history made, for the tests to tamper with.
struct History {
    agent: String,
    captured: String,
    declined: String,
}

/// An agent with a card, funded; an authorization captured, one voided, one declined (more than
/// the balance); the card frozen. Every kind of record: authorizations written more than once,
/// transfers, the admin's events and the ledger's.
async fn history(app: &TestApp) -> History {
    let agent = app.create_agent("auditee").await;
    let card = app.issue_card(&agent, json!({"label": "openai"})).await["id"].as_str().unwrap().to_owned();
    app.fund(&agent, 10_000).await;
    let captured = app.authorize("a-1", &card, 2_500).await["authorization_id"].as_str().unwrap().to_owned();
    let (s, body) = app
        .signed(
            &format!("/v1/authorizations/{captured}/capture"),
            &json!({"id": "cap-1", "amount": 2_500, "currency": "USD"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let voided = app.authorize("a-2", &card, 1_000).await["authorization_id"].as_str().unwrap().to_owned();
    let (s, body) = app.signed(&format!("/v1/authorizations/{voided}/reverse"), &json!({"id": "rev-1"})).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let declined = app.authorize("a-3", &card, 50_000).await;
    assert_eq!(declined["approved"], false, "{declined}");
    let declined = declined["authorization_id"].as_str().unwrap().to_owned();
    let (s, body) =
        app.post(&format!("/v1/agents/{agent}/cards/{card}/freeze"), json!({"reason": "done for today"})).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    History { agent, captured, declined }
}

/// What someone with write access to the database could do: hash every link of the agent's chain
/// again from the records as they now are, and set the agent's row to the new end.
async fn rehash_chain(app: &TestApp, agent: &str) {
    let db = Db::connect(&app.database_url, 1).unwrap();
    let agent = agent.to_owned();
    db.write(move |conn| {
        let mut head = Head::empty(&agent);
        let mut sql = String::new();
        for link in links::links(conn, &agent, 0, 100_000)? {
            let records = links::records(conn, link.kind, &[link.record_id.as_str()])?;
            let record = &records[&link.record_id];
            let content_hash =
                if record.chain_n == link.n { sha256(&record.content) } else { from_hex(&link.content_hash).unwrap() };
            head = Head { length: link.n, hash: spendgate::audit::chain::link_hash(&head.hash, &content_hash) };
            sql += &format!(
                "UPDATE chain_links SET content_hash = '{}', hash = '{}' WHERE agent_id = '{agent}' AND n = {};",
                hex::encode(content_hash),
                hex::encode(head.hash),
                link.n
            );
        }
        sql += &format!("UPDATE agents SET chain_head = '{}' WHERE id = '{agent}';", hex::encode(head.hash));
        use diesel::connection::SimpleConnection;
        conn.batch_execute(&sql)?;
        Ok(())
    })
    .await
    .unwrap();
}

async fn verify(app: &TestApp, body: Value) -> Value {
    let (s, v) = app.post("/v1/audit/verify", body).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v
}

/// The one broken link a verification reports: `problem at n`, then the record's kind and id.
fn broken(v: &Value) -> (String, String) {
    assert_eq!(v["verified"], false, "{v}");
    let broken = v["broken"].as_array().unwrap();
    assert_eq!(broken.len(), 1, "one chain is broken: {v}");
    let b = &broken[0];
    let text = |field: &str| b[field].as_str().unwrap_or("").to_owned();
    (format!("{} at {}", text("problem"), b["n"]), format!("{} {}", text("record_kind"), text("record_id")))
}

async fn untouched_history_verifies_and_only_owners_may_ask(app: TestApp) {
    let h = history(&app).await;
    let v = verify(&app, json!({})).await;
    assert_eq!(v["verified"], true, "{v}");
    assert!(v["broken"].as_array().unwrap().is_empty());
    // agent_created, issued, fund, 3 decisions, a post, a void (with the authorizations' writes),
    // the decline's event, frozen: every record is checked against its last write.
    // And the treasuries' journals, each its own chain.
    let records = app.scalar(&format!(
        "SELECT (SELECT COUNT(*) FROM authorizations WHERE agent_id = '{a}') + (SELECT COUNT(*) FROM transfers WHERE \
         agent_id = '{a}') + (SELECT COUNT(*) FROM events WHERE agent_id = '{a}')",
        a = h.agent
    ));
    let journal = app.scalar("SELECT COUNT(*) FROM treasury_transfers");
    assert_eq!(v["records"].as_i64().unwrap(), records + journal);
    let length = app.scalar(&format!("SELECT chain_length FROM agents WHERE id = '{}'", h.agent));
    let treasuries = app.scalar("SELECT CAST(SUM(chain_length) AS BIGINT) FROM treasuries");
    assert_eq!(v["links"].as_i64().unwrap(), length + treasuries);
    assert!(length > records, "an authorization written again gets a link for each write: {length} vs {records}");

    let (s, cp) = app.post("/v1/audit/checkpoints", json!({})).await;
    assert_eq!(s, StatusCode::CREATED, "{cp}");
    let head = cp["heads"].as_array().unwrap().iter().find(|x| x["agent_id"] == h.agent.as_str()).unwrap().clone();
    assert_eq!(head["length"].as_i64().unwrap(), length);
    let v = verify(&app, json!({"checkpoint": cp})).await;
    assert_eq!((v["verified"].clone(), v["checkpoint"].clone()), (json!(true), cp["id"].clone()), "{v}");
    let (s, list) = app.get("/v1/audit/checkpoints?limit=5").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(list[0], cp);

    // A checkpoint whose heads were changed no longer matches its digest: refused, not trusted.
    let mut forged = cp.clone();
    forged["heads"][0]["length"] = json!(1);
    let (s, e) = app.post("/v1/audit/verify", json!({"checkpoint": forged})).await;
    assert_eq!((s, e["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("validation_failed")), "{e}");

    let manager = app.create_key("manager", None).await;
    let agent_key = app.create_key("agent", Some(&h.agent)).await;
    for key in [&manager, &agent_key] {
        let (s, _) = app.call(Method::POST, "/v1/audit/verify", Some(key), Some(json!({}))).await;
        assert_eq!(s, StatusCode::FORBIDDEN);
        let (s, _) = app.call(Method::POST, "/v1/audit/checkpoints", Some(key), None).await;
        assert_eq!(s, StatusCode::FORBIDDEN);
    }
    let (s, _) = app.call(Method::GET, "/v1/audit/checkpoints", Some(&agent_key), None).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "an agent key reads no other agent's head");
    let (s, _) = app.call(Method::GET, "/v1/audit/checkpoints", Some(&manager), None).await;
    assert_eq!(s, StatusCode::OK);
}

async fn an_edited_amount_is_named_at_its_authorizations_last_write(app: TestApp) {
    let h = history(&app).await;
    let n = app.scalar(&format!("SELECT chain_n FROM authorizations WHERE id = '{}'", h.captured));
    app.execute_elsewhere(&format!("UPDATE authorizations SET posted = 1 WHERE id = '{}'", h.captured));
    let v = verify(&app, json!({})).await;
    assert_eq!(broken(&v), (format!("record_altered at {n}"), format!("authorization {}", h.captured)));
}

async fn a_deleted_transfer_and_a_deleted_link_are_named(app: TestApp) {
    let h = history(&app).await;
    let (transfer, n): (String, i64) = (
        app.text(&format!("SELECT id FROM transfers WHERE agent_id = '{}' AND kind = 'post'", h.agent)),
        app.scalar(&format!("SELECT chain_n FROM transfers WHERE agent_id = '{}' AND kind = 'post'", h.agent)),
    );
    app.execute_elsewhere(&format!("DELETE FROM transfers WHERE id = '{transfer}'"));
    assert_eq!(
        broken(&verify(&app, json!({})).await),
        (format!("record_missing at {n}"), format!("transfer {transfer}"))
    );

    // Its link gone too, the chain has a hole where it was.
    app.execute_elsewhere(&format!("DELETE FROM chain_links WHERE agent_id = '{}' AND n = {n}", h.agent));
    assert_eq!(broken(&verify(&app, json!({})).await).0, format!("link_missing at {}", n + 1));
}

async fn reordered_links_and_swapped_records_are_named(app: TestApp) {
    let h = history(&app).await;
    let a = &h.agent;
    // Two links change places (and, done again, change back).
    let swap = format!(
        "UPDATE chain_links SET n = -1 WHERE agent_id = '{a}' AND n = 3; \
         UPDATE chain_links SET n = 3 WHERE agent_id = '{a}' AND n = 4; \
         UPDATE chain_links SET n = 4 WHERE agent_id = '{a}' AND n = -1;"
    );
    app.execute_elsewhere(&swap);
    assert_eq!(broken(&verify(&app, json!({})).await).0, "link_altered at 3");
    app.execute_elsewhere(&swap);
    assert_eq!(verify(&app, json!({})).await["verified"], true, "put back, it verifies again");

    // Two events trade their times: the earlier one's link no longer matches.
    let first = app.text(&format!("SELECT id FROM events WHERE agent_id = '{a}' ORDER BY chain_n LIMIT 1"));
    let n = app.scalar(&format!("SELECT chain_n FROM events WHERE id = '{first}'"));
    app.execute_elsewhere(&format!(
        "UPDATE events SET created_at = (SELECT MAX(created_at) FROM events WHERE agent_id = '{a}') + 1 WHERE id = '{first}'"
    ));
    assert_eq!(broken(&verify(&app, json!({})).await), (format!("record_altered at {n}"), format!("event {first}")));
}

async fn a_record_written_behind_the_servers_back_is_unlinked(app: TestApp) {
    let h = history(&app).await;
    app.execute_elsewhere(&format!(
        "INSERT INTO transfers (id, external_id, agent_id, kind, amount, currency, created_at) \
         VALUES ('trf_zzzzzzzzzzzzzzzzzzzzzzzzzz', 'gift', '{}', 'fund', 1000000, 'USD', 0)",
        h.agent
    ));
    let found = broken(&verify(&app, json!({})).await);
    assert_eq!(found, ("record_unlinked at 0".to_owned(), "transfer trf_zzzzzzzzzzzzzzzzzzzzzzzzzz".to_owned()));
    // The decline's own record is still whole: what was written stays verified.
    let declined = app.scalar(&format!("SELECT chain_n FROM authorizations WHERE id = '{}'", h.declined));
    assert!(declined > 0);
}

/// Money from nowhere: the balance on the agent's row raised, no record to show for it. The
/// agent's records do not add up to it, and the treasury never granted it.
async fn a_balance_its_records_do_not_add_up_to_is_named(app: TestApp) {
    let h = history(&app).await;
    let available = app.balance(&h.agent).await["available"].as_i64().unwrap();
    app.execute_elsewhere(&format!("UPDATE agents SET funded = funded + 1000000 WHERE id = '{}'", h.agent));
    assert_eq!(app.balance(&h.agent).await["available"].as_i64().unwrap(), available + 1_000_000);
    let length = app.scalar(&format!("SELECT chain_length FROM agents WHERE id = '{}'", h.agent));
    let v = verify(&app, json!({})).await;
    let named: Vec<(&str, &str, i64)> = v["broken"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["agent_id"].as_str().unwrap(), b["problem"].as_str().unwrap(), b["n"].as_i64().unwrap()))
        .collect();
    let usd = app.scalar("SELECT chain_length FROM treasuries WHERE currency = 'USD'");
    assert_eq!(
        named,
        [(h.agent.as_str(), "balance_mismatch", length), ("treasury:USD", "balance_mismatch", usd)],
        "{v}"
    );
}

/// Cutting off the tail, with the agent's row set back to match, leaves a chain that is whole by
/// itself: the checkpoint kept elsewhere is what shows it.
async fn a_cut_off_tail_is_caught_by_a_checkpoint_kept_elsewhere(app: TestApp) {
    let h = history(&app).await;
    let a = &h.agent;
    let (s, kept) = app.post("/v1/audit/checkpoints", json!({})).await;
    assert_eq!(s, StatusCode::CREATED);
    let length = app.scalar(&format!("SELECT chain_length FROM agents WHERE id = '{a}'"));
    let frozen = app.text(&format!("SELECT record_id FROM chain_links WHERE agent_id = '{a}' AND n = {length}"));
    app.execute_elsewhere(&format!(
        "DELETE FROM events WHERE id = '{frozen}'; DELETE FROM chain_links WHERE agent_id = '{a}' AND n = {length}; \
         UPDATE agents SET chain_length = {prev}, chain_head = (SELECT hash FROM chain_links WHERE agent_id = '{a}' AND n = {prev}) \
         WHERE id = '{a}'; DELETE FROM audit_checkpoints;",
        prev = length - 1
    ));
    let v = verify(&app, json!({})).await;
    assert_eq!(v["verified"], true, "without a checkpoint, a clean cut is not visible: {v}");
    // Nor is the server's own checkpoint to be trusted once someone has written to it.
    app.post("/v1/audit/checkpoints", json!({})).await;
    app.execute_elsewhere(&format!(
        "UPDATE audit_checkpoints SET heads = REPLACE(heads, '\"length\":{prev}', '\"length\":{length}')",
        prev = length - 1
    ));
    let v = verify(&app, json!({})).await;
    assert!(broken(&v).0.starts_with("checkpoint_mismatch at 0"), "{v}");
    assert!(v["broken"][0]["detail"].as_str().unwrap().contains("was altered"), "{v}");
    app.execute_elsewhere("DELETE FROM audit_checkpoints");
    let v = verify(&app, json!({"checkpoint": kept})).await;
    assert_eq!(broken(&v).0, format!("checkpoint_mismatch at {length}"));
}

/// Someone who can write the database edits an event and hashes the whole chain again from there,
/// the agent's row included: every link checks, except against the checkpoint.
async fn a_rewritten_chain_is_caught_by_a_checkpoint(app: TestApp) {
    let h = history(&app).await;
    let a = &h.agent;
    let (_, kept) = app.post("/v1/audit/checkpoints", json!({})).await;
    let event = app.text(&format!("SELECT id FROM events WHERE agent_id = '{a}' AND kind = 'frozen'"));
    app.execute_elsewhere(&format!("UPDATE events SET reason = 'policy review' WHERE id = '{event}'"));
    assert!(broken(&verify(&app, json!({})).await).0.starts_with("record_altered"));
    rehash_chain(&app, a).await;
    assert_eq!(verify(&app, json!({})).await["verified"], false, "the server's own latest checkpoint catches it");
    app.execute_elsewhere("DELETE FROM audit_checkpoints");
    assert_eq!(verify(&app, json!({})).await["verified"], true, "rehashed, the chain is whole by itself");
    let length = app.scalar(&format!("SELECT chain_length FROM agents WHERE id = '{a}'"));
    assert_eq!(broken(&verify(&app, json!({"checkpoint": kept})).await).0, format!("checkpoint_mismatch at {length}"));
}

/// A database from before the chain: no links, every record at 0. The next start links them all.
async fn records_from_before_the_chain_are_adopted_at_start_up(app: TestApp) {
    let h = history(&app).await;
    app.execute_elsewhere(
        "DELETE FROM chain_links; UPDATE agents SET chain_length = 0, chain_head = NULL; \
         UPDATE authorizations SET chain_n = 0; UPDATE transfers SET chain_n = 0; UPDATE events SET chain_n = 0; \
         UPDATE treasuries SET chain_length = 0, chain_head = NULL; UPDATE treasury_transfers SET chain_n = 0;",
    );
    let node = app.another_node().await;
    let response = app
        .http
        .post(format!("{node}/v1/audit/verify"))
        .bearer_auth(&app.owner_key)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let v: Value = response.json().await.unwrap();
    assert_eq!(v["verified"], true, "{v}");
    let length = app.scalar(&format!("SELECT chain_length FROM agents WHERE id = '{}'", h.agent));
    let treasuries = app.scalar("SELECT CAST(SUM(chain_length) AS BIGINT) FROM treasuries");
    assert!(treasuries > 0);
    assert_eq!(v["records"].as_i64().unwrap(), length + treasuries, "one link for each record");
    // And the chain goes on from there.
    app.fund(&h.agent, 1).await;
    assert_eq!(verify(&app, json!({})).await["verified"], true);
}

on_both_backends!(
    untouched_history_verifies_and_only_owners_may_ask,
    an_edited_amount_is_named_at_its_authorizations_last_write,
    a_deleted_transfer_and_a_deleted_link_are_named,
    reordered_links_and_swapped_records_are_named,
    a_record_written_behind_the_servers_back_is_unlinked,
    a_balance_its_records_do_not_add_up_to_is_named,
    a_cut_off_tail_is_caught_by_a_checkpoint_kept_elsewhere,
    a_rewritten_chain_is_caught_by_a_checkpoint,
    records_from_before_the_chain_are_adopted_at_start_up,
);
