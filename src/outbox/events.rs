//! Which events a record of an agent's audit chain makes, as the body each delivery carries:
//! `{"id", "type", "timestamp", "data"}`.

use serde_json::{Value, json};

use crate::domain::authorization::DeclineReason;
use crate::domain::event::Event;
use crate::domain::webhook::EventType;
use crate::ledger::AuthorizationView;
use crate::store::webhooks::Linked;

/// One event, ready to deliver.
pub struct Out {
    /// Stable: every delivery and every attempt of this event carries it as `webhook-id`.
    pub id: String,
    pub event_type: EventType,
    /// When it happened.
    pub at_ms: i64,
    pub payload: String,
}

/// An authorization's every write is a link; its decision is one event per outcome (a processor
/// overriding spendgate makes the other), so the later writes' events are the same ids again.
pub fn of(linked: &Linked) -> Vec<Out> {
    match linked {
        Linked::Authorization(row) => {
            let mut data = serde_json::to_value(AuthorizationView::from_row(row)).unwrap_or(Value::Null);
            data["agent_id"] = json!(row.agent_id);
            let (event_type, outcome) = match row.reason {
                None => (EventType::AuthorizationApproved, "approved"),
                Some(_) => (EventType::AuthorizationDeclined, "declined"),
            };
            let asked = match (&row.reason, &row.approval_id) {
                (Some(reason), Some(approval)) if reason == DeclineReason::ApprovalRequired.as_str() => {
                    let asked = json!({"approval_id": approval, "agent_id": row.agent_id, "authorization": data});
                    Some(out(approval.clone(), EventType::ApprovalRequested, row.authorized_at, asked))
                }
                _ => None,
            };
            let decided = out(format!("{}.{outcome}", row.id), event_type, row.authorized_at, data);
            std::iter::once(decided).chain(asked).collect()
        }
        Linked::Event(e) if let Some(event_type) = alert_type(&e.kind) => vec![alert(e, event_type)],
        // A mandate the agent asked for is a request for a person, under the approval's id as a
        // decline's request is.
        Linked::Event(e) if e.kind == "mandate_requested" => {
            let mandate = e.data.clone().unwrap_or(Value::Null);
            let Some(approval) = mandate["approval_id"].as_str().map(str::to_owned) else { return Vec::new() };
            let asked = json!({"approval_id": approval, "agent_id": e.agent_id, "mandate": mandate});
            vec![out(approval, EventType::ApprovalRequested, e.created_at.as_millisecond(), asked)]
        }
        Linked::Event(e) => {
            let event_type = match (e.kind.as_str(), e.card_id.is_some()) {
                ("frozen", true) => EventType::CardFrozen,
                ("unfrozen", true) => EventType::CardUnfrozen,
                ("closed", true) => EventType::CardClosed,
                ("approval_granted" | "approval_denied", _) => EventType::ApprovalDecided,
                ("balance_topped_up", _) => EventType::BalanceToppedUp,
                _ => return Vec::new(),
            };
            let data = serde_json::to_value(e).unwrap_or(Value::Null);
            vec![out(e.id.to_string(), event_type, e.created_at.as_millisecond(), data)]
        }
        Linked::Other => Vec::new(),
    }
}

/// An alert, with what it cost and where in `alert`.
fn alert(e: &Event, event_type: EventType) -> Out {
    let data = e.data.clone().unwrap_or(Value::Null);
    let id = match event_type {
        // Once per limit, threshold and window, however often a void lets it cross again.
        EventType::LimitThresholdCrossed => {
            format!("{}:{}:{}:{}", e.agent_id, data["rule"], data["percent"], data["window_start"]).replace('"', "")
        }
        // Each is recorded once: a fall below the balance's threshold, an hour's anomaly.
        _ => e.id.to_string(),
    };
    let body = json!({"agent_id": e.agent_id, "card_id": e.card_id, "alert": data});
    out(id, event_type, e.created_at.as_millisecond(), body)
}

/// The webhook type of an alert recorded in the trail under `kind`.
fn alert_type(kind: &str) -> Option<EventType> {
    match kind {
        "limit_threshold_crossed" => Some(EventType::LimitThresholdCrossed),
        "balance_low" => Some(EventType::BalanceLow),
        "spend_anomaly" => Some(EventType::SpendAnomaly),
        "treasury_short" => Some(EventType::TreasuryShort),
        "wallet_mismatch" => Some(EventType::WalletMismatch),
        _ => None,
    }
}

pub fn out(id: String, event_type: EventType, at_ms: i64, data: Value) -> Out {
    let timestamp = jiff::Timestamp::from_millisecond(at_ms).map(|t| t.to_string()).unwrap_or_default();
    let payload = json!({"id": id, "type": event_type, "timestamp": timestamp, "data": data}).to_string();
    Out { id, event_type, at_ms, payload }
}
