//! The approval page: plain server-rendered HTML, no JavaScript, readable on a phone. A GET only
//! shows the request and a confirm button (link scanners and Slack's unfurler open links on their
//! own); the POST of that form applies the decision.

use super::ApprovalView;
use crate::domain::approval::{ApprovalAction, ApprovalStatus};

/// HTML text and attribute values.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn layout(title: &str, body: &str) -> String {
    format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex">
<title>{title} · spendgate</title>
<style>
body {{ font: 16px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0; background: #f5f6f8; color: #1d2330; }}
main {{ max-width: 34rem; margin: 0 auto; padding: 1.25rem; }}
h1 {{ font-size: 1.35rem; margin: 0.5rem 0 1rem; }}
dl {{ background: #fff; border-radius: 10px; padding: 0.75rem 1rem; margin: 0 0 1.25rem; display: grid; grid-template-columns: max-content 1fr; gap: 0.35rem 1rem; }}
dt {{ color: #5b6475; }}
dd {{ margin: 0; overflow-wrap: anywhere; }}
button {{ font: inherit; font-weight: 600; width: 100%; padding: 0.9rem; border: 0; border-radius: 10px; color: #fff; cursor: pointer; }}
.approve {{ background: #1f7a3f; }}
.deny {{ background: #b3261e; }}
.note {{ background: #fff; border-radius: 10px; padding: 1rem; }}
</style>
</head>
<body><main>
{body}
</main></body>
</html>
"#,
        title = esc(title),
    )
}

fn details(view: &ApprovalView) -> String {
    let mut rows = vec![("Agent", view.agent_name.clone())];
    if let Some(label) = &view.card_label {
        rows.push(("Card", label.clone()));
    }
    rows.push(("Amount", view.cap_amount.to_string()));
    rows.push(("Merchant", view.merchant.name.clone()));
    rows.push(("Rule", view.rule.clone()));
    match (&view.spent, &view.cap) {
        (Some(spent), Some(cap)) => rows.push(("Spent so far", format!("{spent} of {cap}"))),
        (None, Some(cap)) => rows.push(("Needs approval above", cap.to_string())),
        _ => {}
    }
    if let Some(trace) = &view.trace_id {
        rows.push(("Trace", trace.clone()));
    }
    rows.push(("Expires", view.expires_at.strftime("%Y-%m-%d %H:%M UTC").to_string()));
    let items: String = rows.iter().map(|(k, v)| format!("<dt>{}</dt><dd>{}</dd>", esc(k), esc(v))).collect();
    format!("<dl>{items}</dl>")
}

/// What the request is now, for a request that can no longer be decided.
fn settled(view: &ApprovalView) -> String {
    let by = view.decided_by.as_deref().unwrap_or("someone");
    match view.status {
        ApprovalStatus::Approved => format!("This request was approved by {}.", esc(by)),
        ApprovalStatus::Denied => format!("This request was denied by {}.", esc(by)),
        ApprovalStatus::Expired => "This request expired before anyone decided.".to_owned(),
        ApprovalStatus::Pending => "This request is waiting for a decision.".to_owned(),
    }
}

/// The GET: the request and one button that confirms this link's action.
pub fn confirm(view: &ApprovalView, action: ApprovalAction, token: &str) -> String {
    if view.status != ApprovalStatus::Pending {
        return layout(
            "Approval",
            &format!("<h1>{}</h1>{}<p class=\"note\">{}</p>", esc(&view.summary()), details(view), settled(view)),
        );
    }
    let (verb, class) = match action {
        ApprovalAction::Approve => ("Approve", "approve"),
        ApprovalAction::Deny => ("Deny", "deny"),
    };
    let body = format!(
        r#"<h1>{verb} {summary}?</h1>
{details}
<form method="post">
<input type="hidden" name="action" value="{action}">
<input type="hidden" name="token" value="{token}">
<button type="submit" class="{class}">{verb} {amount}</button>
</form>"#,
        summary = esc(&view.summary()),
        details = details(view),
        action = action.as_str(),
        token = esc(token),
        amount = esc(&view.cap_amount.to_string()),
    );
    layout(&format!("{verb} {}", view.summary()), &body)
}

/// The POST's answer: what was decided.
pub fn decided(view: &ApprovalView) -> String {
    let headline = match view.status {
        ApprovalStatus::Approved => "Approved",
        ApprovalStatus::Denied => "Denied",
        _ => "Not decided",
    };
    let next = match view.status {
        ApprovalStatus::Approved if view.single_use => "The agent's next attempt at this purchase will go through.",
        ApprovalStatus::Approved => "The limit is raised by this amount; the agent's retry will go through.",
        ApprovalStatus::Denied => "Nothing was paid. The agent's retries stay declined.",
        _ => "",
    };
    layout(
        headline,
        &format!("<h1>{headline}: {}</h1>{}<p class=\"note\">{next}</p>", esc(&view.summary()), details(view)),
    )
}

/// A link that cannot be used, with why.
pub fn refused(title: &str, message: &str) -> String {
    layout(title, &format!("<h1>{}</h1><p class=\"note\">{}</p>", esc(title), esc(message)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_in_html() {
        assert_eq!(esc(r#"<a href="x">O'Neil & co</a>"#), "&lt;a href=&quot;x&quot;&gt;O&#39;Neil &amp; co&lt;/a&gt;");
    }
}
