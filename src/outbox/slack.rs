//! An alert as a Slack message (Block Kit, for an incoming webhook): what happened, to which agent,
//! and what it cost where (the limit and how much of it is used, the service, the trace).

use serde_json::{Value, json};

use crate::approvals::slack::{escape, truncate};
use crate::domain::money::{Currency, Money};
use crate::domain::webhook::EventType;

/// The message for one delivery's payload (`{"id", "type", "timestamp", "data": {"alert": …}}`).
pub fn message(payload: &str) -> Result<Value, String> {
    let event: Value = serde_json::from_str(payload).map_err(|_| "the payload is not JSON")?;
    let kind = event["type"].as_str().and_then(EventType::parse).ok_or("the payload has no known type")?;
    let alert = &event["data"]["alert"];
    let agent = text(&alert["agent_name"]).unwrap_or_else(|| text(&event["data"]["agent_id"]).unwrap_or_default());
    let (title, mut fields) = match kind {
        EventType::LimitThresholdCrossed => (
            format!(
                ":warning: {agent} has used {}% of its limit {}",
                alert["percent"],
                text(&alert["rule"]).unwrap_or_default()
            ),
            vec![field(
                "Limit",
                &format!(
                    "`{}`: {} of {}",
                    escape(&text(&alert["rule"]).unwrap_or_default()),
                    money(&alert["used"]),
                    money(&alert["cap"])
                ),
            )],
        ),
        EventType::BalanceLow => (
            format!(":small_red_triangle_down: {agent}'s balance is {}", money(&alert["available"])),
            vec![field(
                "Balance",
                &format!("{} available, below {}", money(&alert["available"]), money(&alert["threshold"])),
            )],
        ),
        EventType::SpendAnomaly => (
            format!(
                ":rotating_light: {agent} spent {} in the last hour, over {}× its usual",
                money(&alert["last_hour"]),
                alert["multiple"]
            ),
            vec![field(
                "Rate",
                &format!(
                    "{} in the last hour; {} an hour on average over the {} before",
                    money(&alert["last_hour"]),
                    money(&alert["hourly_baseline"]),
                    escape(&text(&alert["baseline"]).unwrap_or_default())
                ),
            )],
        ),
        EventType::TreasuryShort => (
            format!(
                ":warning: The {} treasury could not top up {agent}",
                escape(&text(&alert["treasury_available"]["currency"]).unwrap_or_default())
            ),
            vec![field(
                "Top-up",
                &format!(
                    "{} wanted, {} moved; the treasury has {} left",
                    money(&alert["wanted"]),
                    money(&alert["moved"]),
                    money(&alert["treasury_available"])
                ),
            )],
        ),
        EventType::WalletMismatch => (
            format!(
                ":warning: {agent}'s wallet {} on {} disagrees with the ledger",
                escape(&text(&alert["address"]).unwrap_or_default()),
                escape(&text(&alert["network"]).unwrap_or_default())
            ),
            vec![field(
                "Difference",
                &format!(
                    "{} on the chain, {} in the ledger, {} not yet credited, {} in flight (token units)",
                    escape(&text(&alert["onchain"]).unwrap_or_default()),
                    escape(&text(&alert["ledger"]).unwrap_or_default()),
                    escape(&text(&alert["uncredited"]).unwrap_or_default()),
                    escape(&text(&alert["in_flight"]).unwrap_or_default())
                ),
            )],
        ),
        other => return Err(format!("{other} is not an alert")),
    };
    fields.insert(0, field("Agent", &escape(&agent)));
    for (name, key) in [("Service", "service"), ("Trace", "trace_id")] {
        if let Some(value) = text(&alert[key]) {
            fields.push(field(name, &escape(&value)));
        }
    }
    if let Some(merchant) = text(&alert["merchant"]["name"]) {
        fields.push(field("Merchant", &escape(&merchant)));
    }
    for (name, key, label) in [("Top services", "top_services", "service"), ("Top traces", "top_traces", "trace_id")] {
        let top: Vec<String> = alert[key]
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| format!("{}: {}", escape(&text(&t[label]).unwrap_or_else(|| "(none)".into())), money(&t["spend"])))
            .collect();
        if !top.is_empty() {
            fields.push(field(name, &top.join("\n")));
        }
    }
    // Slack shows at most ten fields in a section.
    fields.truncate(10);
    let title = truncate(&title, 150);
    Ok(json!({
        "text": title,
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": title}},
            {"type": "section", "fields": fields},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": format!("{} · {}", kind, escape(&text(&event["id"]).unwrap_or_default()))}]},
        ],
    }))
}

fn field(name: &str, value: &str) -> Value {
    json!({"type": "mrkdwn", "text": truncate(&format!("*{name}*\n{value}"), 2_000)})
}

fn text(v: &Value) -> Option<String> {
    v.as_str().map(str::to_owned)
}

/// `{"amount": 1250, "currency": "USD"}` as `12.50 USD`.
fn money(v: &Value) -> String {
    let currency = v["currency"].as_str().and_then(|c| c.parse::<Currency>().ok());
    match (v["amount"].as_i64(), currency) {
        (Some(amount), Some(currency)) => Money { amount, currency }.to_string(),
        _ => "?".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(kind: &str, alert: Value) -> String {
        json!({"id": "evt_1", "type": kind, "timestamp": "2026-12-06T00:00:00Z",
               "data": {"agent_id": "agt_1", "card_id": null, "alert": alert}})
        .to_string()
    }

    fn all_text(message: &Value) -> String {
        message["blocks"].to_string()
    }

    #[test]
    fn a_threshold_names_the_limit_its_use_the_service_and_the_trace() {
        let alert = json!({"agent_name": "researcher", "rule": "agent.limit.daily", "percent": 80,
            "cap": {"amount": 10000, "currency": "USD"}, "used": {"amount": 8250, "currency": "USD"},
            "service": "openai", "trace_id": "run-7", "merchant": {"id": null, "name": "OPENAI <API>"}});
        let m = message(&payload("limit.threshold_crossed", alert)).unwrap();
        assert_eq!(m["text"], ":warning: researcher has used 80% of its limit agent.limit.daily");
        let body = all_text(&m);
        for part in ["82.50 USD of 100.00 USD", "*Service*\\nopenai", "*Trace*\\nrun-7", "OPENAI &lt;API&gt;"] {
            assert!(body.contains(part), "{part} missing from {body}");
        }
    }

    #[test]
    fn an_anomaly_gives_the_rate_against_the_baseline_and_where_it_went() {
        let alert = json!({"agent_name": "a", "multiple": 3, "baseline": "7d",
            "last_hour": {"amount": 90000, "currency": "EUR"}, "hourly_baseline": {"amount": 1500, "currency": "EUR"},
            "top_services": [{"service": "openai", "spend": {"amount": 80000, "currency": "EUR"}}],
            "top_traces": [{"trace_id": null, "spend": {"amount": 90000, "currency": "EUR"}}]});
        let m = message(&payload("spend.anomaly", alert)).unwrap();
        let body = all_text(&m);
        assert!(m["text"].as_str().unwrap().contains("900.00 EUR in the last hour, over 3×"));
        for part in ["15.00 EUR an hour on average over the 7d before", "openai: 800.00 EUR", "(none): 900.00 EUR"] {
            assert!(body.contains(part), "{part} missing from {body}");
        }
    }

    #[test]
    fn other_events_and_bad_payloads_are_refused() {
        assert!(message(&payload("authorization.approved", json!({}))).is_err());
        assert!(message("not json").is_err());
        let m = message(&payload("balance.low", json!({"available": {"amount": 5, "currency": "JPY"}}))).unwrap();
        assert!(
            m["text"].as_str().unwrap().contains("agt_1's balance is 5 JPY"),
            "the agent's id stands in for its name"
        );
    }
}
