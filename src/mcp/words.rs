//! What the tools say, in the words a model acts on: approved, or declined with the reason, the rule
//! and what would unblock it; the money in major units with its currency.

use serde_json::{Value, json};

use crate::admin::Page;
use crate::admin::spendable::Spendable;
use crate::approvals::ApprovalView;
use crate::domain::approval::ApprovalStatus;
use crate::domain::money::Money;
use crate::error::{Error, ErrorCode};
use crate::ledger::{AuthOutcome, LedgerEntry};
use crate::policy::usage::LimitUsage;

/// The most of an API's answer a tool result carries: a model's context is not a download.
const MAX_BODY_CHARS: usize = 32_000;

pub(super) fn spendable(view: &Spendable) -> String {
    let b = &view.balance;
    let money = |amount| Money { amount, currency: b.currency };
    let mut out = format!(
        "Agent {} is {}. Available balance {} ({} held).",
        view.agent.name,
        view.agent.status.as_str(),
        money(b.available),
        money(b.held)
    );
    if view.limits.is_empty() {
        out.push_str(" No spending limits apply beyond the balance.");
    }
    for limit in &view.limits {
        out.push('\n');
        out.push_str(&limit_line(limit));
    }
    for card in &view.cards {
        let trace = card.trace_id.as_deref().map(|t| format!(", tagging trace {t}")).unwrap_or_default();
        out.push_str(&format!(
            "\nCard {} ({}, ****{}) is {}{trace}.",
            card.id,
            card.label,
            card.last4,
            card.status.as_str()
        ));
    }
    out
}

fn limit_line(l: &LimitUsage) -> String {
    let of = match (&l.card_id, &l.trace_id) {
        (Some(card), _) => format!(" on card {card}"),
        (None, Some(trace)) => format!(" on trace {trace}"),
        _ => String::new(),
    };
    let mut parts = Vec::new();
    if let Some(a) = l.amount {
        let m = |amount| Money { amount, currency: l.currency };
        parts.push(format!("{} left of {} ({} used)", m(a.remaining), m(a.cap.saturating_add(a.approved)), m(a.used)));
    }
    if let Some(c) = l.count {
        parts.push(format!("{} payments left of {}", c.remaining, c.cap.saturating_add(c.approved)));
    }
    let frees = l.frees_at.map(|t| format!("; frees up at {t}")).unwrap_or_default();
    format!("Limit {}{of}: {}{frees}.", l.rule, parts.join(", "))
}

pub(super) fn outcome(o: &AuthOutcome) -> String {
    let amount = o
        .amount
        .cap
        .map(|m| m.to_string())
        .unwrap_or_else(|| format!("{} {}", o.amount.merchant.amount, o.amount.merchant.currency));
    let mut out = match o.reason {
        None => format!("Would be approved: {amount}."),
        Some(reason) => {
            let rule = o.rule.as_deref().map(|r| format!(" by rule {r}")).unwrap_or_default();
            format!("Would be declined{rule}: {reason} ({amount}).")
        }
    };
    if let Some(available) = o.available {
        let after = if o.approved { " after it" } else { "" };
        out.push_str(&format!(" Available balance{after}: {available}."));
    }
    if let Some(unblock) = o.unblock {
        out.push_str(&format!(" To unblock: {unblock}."));
    }
    out.push_str(" Nothing was paid or recorded.");
    out
}

pub(super) fn refusal(e: &Error) -> String {
    match e.code() {
        ErrorCode::Declined(reason) => format!("declined: {reason}: {e}. To unblock: {}.", reason.remedy()),
        code => format!("refused ({}): {e}", code.as_str()),
    }
}

/// An API's answer as a tool result: its status, what was paid, and its body as text.
pub(super) fn upstream(status: u16, headers: &[(String, String)], body: &[u8]) -> (String, Value) {
    let header = |name: &str| headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str());
    let paid = header("Spendgate-Payment").map(|payment| {
        json!({
            "payment_id": payment,
            "settlement": header("Spendgate-Settlement"),
            "cost": header("Spendgate-Cost").and_then(|c| c.parse::<i64>().ok()),
            "remaining": header("Spendgate-Remaining").and_then(|c| c.parse::<i64>().ok()),
            "currency": header("Spendgate-Currency"),
        })
    });
    let text_body = String::from_utf8_lossy(body);
    let cut = text_body.chars().count() > MAX_BODY_CHARS;
    let shown: String = text_body.chars().take(MAX_BODY_CHARS).collect();
    let mut text = format!("The API answered {status}.");
    if let Some(p) = &paid {
        let minor = |v: &Value| v.as_i64().unwrap_or(0);
        let currency = p["currency"].as_str().and_then(|c| c.parse().ok());
        if let Some(currency) = currency {
            text.push_str(&format!(
                " Paid {} (payment {}, {}); {} left in your balance.",
                Money { amount: minor(&p["cost"]), currency },
                p["payment_id"].as_str().unwrap_or("?"),
                p["settlement"].as_str().unwrap_or("?"),
                Money { amount: minor(&p["remaining"]), currency }
            ));
        }
    } else {
        text.push_str(" Nothing was paid.");
    }
    if cut {
        text.push_str(&format!(" The body is cut to its first {MAX_BODY_CHARS} characters."));
    }
    text.push_str("\n\n");
    text.push_str(&shown);
    let data = json!({
        "status": status,
        "content_type": header("Content-Type"),
        "paid": paid,
        "body": shown,
        "truncated": cut,
    });
    (text, data)
}

pub(super) fn entries(page: &Page<LedgerEntry>) -> String {
    if page.data.is_empty() {
        return "No spend recorded.".to_owned();
    }
    let mut out = String::new();
    for entry in &page.data {
        let line = match entry {
            LedgerEntry::Authorization(a) => {
                let verdict = match a.reason {
                    None => a.status.as_str().to_owned(),
                    Some(reason) => format!("declined {reason}"),
                };
                let amount = a
                    .cap
                    .map(|m| m.to_string())
                    .unwrap_or_else(|| format!("{} {}", a.amount.amount, a.amount.currency));
                let trace = a.trace_id.as_deref().map(|t| format!(" [trace {t}]")).unwrap_or_default();
                format!("{} {verdict} {amount} at {}{trace} ({})", a.authorized_at, a.merchant.name, a.id)
            }
            LedgerEntry::Transfer(t) => format!("{} {} {} ({})", t.created_at, t.kind.as_str(), t.amount, t.id),
        };
        out.push_str(&line);
        out.push('\n');
    }
    if page.next_cursor.is_some() {
        out.push_str("There is more: ask with a trace or card to narrow it.\n");
    }
    out
}

pub(super) fn mandate(view: &ApprovalView) -> String {
    let Some(m) = &view.mandate else { return format!("approval {} is not a mandate", view.id) };
    let trace = view.trace_id.as_deref().map(|t| format!(" on trace {t}")).unwrap_or_default();
    let asked = format!("Mandate {} ({}{trace}, for: {})", view.id, view.cap_amount, m.purpose);
    let money = |amount| Money { amount, currency: view.cap_amount.currency };
    match view.status {
        ApprovalStatus::Pending => {
            format!("{asked} is waiting for a person's decision; ask mandate_status with wait_seconds.")
        }
        ApprovalStatus::Approved => {
            let until = view.allowance_until.map(|t| format!(" until {t}")).unwrap_or_default();
            format!(
                "{asked} is approved{until}: {} used, {} remaining. Payments inside it go through.",
                money(m.used),
                money(m.remaining)
            )
        }
        ApprovalStatus::Denied => format!("{asked} was denied by a person. Do not spend past your limits."),
        ApprovalStatus::Expired => format!("{asked} expired before anyone decided."),
    }
}
