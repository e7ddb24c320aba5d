//! Slack: the approval message (Block Kit, posted to an incoming webhook), its delivery with
//! retries, the request signature (`X-Slack-Signature`) and the Approve/Deny button payloads.

use std::time::Duration;

use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::sync::mpsc;

use super::{ApprovalView, Approvals};
use crate::crypto::{Secret, mac, within};
use crate::domain::approval::ApprovalStatus;

/// Slack's own limit on a request's age.
const TOLERANCE_SECONDS: i64 = 300;
/// How often the notifier looks in the database for messages still to send (after a restart, or
/// when its queue was full).
const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// `X-Slack-Signature: v0=<hex HMAC-SHA256 of "v0:<X-Slack-Request-Timestamp>:<raw body>">`, keyed
/// with the app's signing secret.
#[derive(Clone)]
pub struct SlackSignature(Vec<u8>);

impl SlackSignature {
    pub fn new(secret: &Secret) -> Self {
        SlackSignature(secret.expose().as_bytes().to_vec())
    }

    fn mac(&self, timestamp: &str, body: &[u8]) -> Hmac<Sha256> {
        let mut mac = mac(&self.0);
        mac.update(b"v0:");
        mac.update(timestamp.as_bytes());
        mac.update(b":");
        mac.update(body);
        mac
    }

    pub fn sign(&self, timestamp: i64, body: &[u8]) -> String {
        format!("v0={}", hex::encode(self.mac(&timestamp.to_string(), body).finalize().into_bytes()))
    }

    /// Err says why, for the security log only.
    pub fn verify(
        &self,
        timestamp: Option<&str>,
        signature: Option<&str>,
        body: &[u8],
        now: i64,
    ) -> Result<(), &'static str> {
        let timestamp = timestamp.ok_or("missing X-Slack-Request-Timestamp")?;
        let t: i64 = timestamp.parse().map_err(|_| "X-Slack-Request-Timestamp is not a number")?;
        if !within(t, now, TOLERANCE_SECONDS) {
            return Err("X-Slack-Request-Timestamp outside the tolerance");
        }
        let signature = signature.ok_or("missing X-Slack-Signature")?;
        let hex_sig = signature.strip_prefix("v0=").ok_or("X-Slack-Signature is not v0=")?;
        let sig = hex::decode(hex_sig).map_err(|_| "X-Slack-Signature is not hex")?;
        // verify_slice compares in constant time.
        self.mac(timestamp, body).verify_slice(&sig).map_err(|_| "X-Slack-Signature does not match")
    }
}

/// Text for Slack's mrkdwn: `&`, `<` and `>` are its control characters.
pub(crate) fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

fn context_fields(view: &ApprovalView) -> Vec<Value> {
    let mut fields = vec![format!("*Agent*\n{}", escape(&view.agent_name))];
    if let Some(label) = &view.card_label {
        fields.push(format!("*Card*\n{}", escape(label)));
    } else {
        fields.push(format!("*Rail*\n{}", escape(&view.rail)));
    }
    let merchant_amount = format!("{} {}", view.amount.amount, view.amount.currency);
    let mut amount = format!("*Amount*\n{}", view.cap_amount);
    if view.amount.currency != view.cap_amount.currency.code() {
        amount.push_str(&format!(" (merchant: {merchant_amount} minor units)"));
    }
    fields.push(amount);
    fields.push(format!("*Merchant*\n{}", escape(&view.merchant.name)));
    let blocked = match (&view.spent, &view.cap) {
        (Some(spent), Some(cap)) => format!("*Limit*\n`{}`: {spent} of {cap} spent", escape(&view.rule)),
        (None, Some(cap)) => format!("*Threshold*\n`{}`: above {cap}", escape(&view.rule)),
        _ => format!("*Rule*\n`{}`", escape(&view.rule)),
    };
    fields.push(blocked);
    if let Some(trace) = &view.trace_id {
        fields.push(format!("*Trace*\n{}", escape(trace)));
    }
    let expires = view.expires_at.as_second();
    fields.push(format!("*Expires*\n<!date^{expires}^{{date_short_pretty}} {{time}}|{}>", view.expires_at));
    fields.into_iter().map(|text| json!({"type": "mrkdwn", "text": text})).collect()
}

/// The request, with Approve and Deny buttons that open the signed links (and, when the app's
/// interactivity is set up, also reach `/slack/interactions`).
pub fn request_message(view: &ApprovalView, links: Option<(String, String)>) -> Value {
    let title = format!("Approval needed: {}", view.summary());
    let mut blocks = vec![
        json!({"type": "header", "text": {"type": "plain_text", "text": truncate(&title, 150)}}),
        json!({"type": "section", "fields": context_fields(view)}),
    ];
    if let Some((approve, deny)) = links {
        blocks.push(json!({
            "type": "actions",
            "block_id": "spendgate_approval",
            "elements": [
                {"type": "button", "action_id": "approve", "style": "primary", "value": view.id, "url": approve,
                 "text": {"type": "plain_text", "text": "Approve"}},
                {"type": "button", "action_id": "deny", "style": "danger", "value": view.id, "url": deny,
                 "text": {"type": "plain_text", "text": "Deny"}},
            ],
        }));
    }
    json!({"text": format!("{} asks to spend {}", view.agent_name, view.summary()), "blocks": blocks})
}

/// The message as it stands once decided (or expired): the same context, no buttons.
pub fn outcome_message(view: &ApprovalView) -> Value {
    let outcome = match view.status {
        ApprovalStatus::Approved => format!(":white_check_mark: Approved by {}", who(view)),
        ApprovalStatus::Denied => format!(":no_entry: Denied by {}", who(view)),
        ApprovalStatus::Expired => ":hourglass: Expired: nobody decided in time".to_owned(),
        ApprovalStatus::Pending => ":hourglass_flowing_sand: Waiting for a decision".to_owned(),
    };
    json!({
        "replace_original": true,
        "text": format!("{}: {}", view.summary(), outcome),
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": format!("*{}*\n{}", escape(&view.summary()), outcome)}},
            {"type": "section", "fields": context_fields(view)},
        ],
    })
}

fn who(view: &ApprovalView) -> String {
    match view.decided_by.as_deref() {
        Some(slack) if slack.starts_with("slack:") => format!("<@{}>", escape(&slack["slack:".len()..])),
        Some(other) => escape(other),
        None => "someone".to_owned(),
    }
}

pub(crate) fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max - 1) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

/// The parts of a `block_actions` payload spendgate reads.
#[derive(Debug, Deserialize)]
pub struct Interaction {
    #[serde(rename = "type")]
    pub kind: String,
    pub user: SlackUser,
    #[serde(default)]
    pub actions: Vec<Action>,
    pub response_url: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct SlackUser {
    pub id: String,
}

#[derive(Debug, Deserialize)]
pub struct Action {
    pub action_id: String,
    #[serde(default)]
    pub value: Option<String>,
}

/// Reads the form body Slack posts (`payload=<JSON>`).
pub fn parse_interaction(body: &[u8]) -> Result<Interaction, String> {
    #[derive(Deserialize)]
    struct Form {
        payload: String,
    }
    let form: Form = serde_urlencoded::from_bytes(body).map_err(|e| format!("not a Slack interaction form: {e}"))?;
    serde_json::from_str(&form.payload).map_err(|e| format!("payload is not a Slack interaction: {e}"))
}

/// Sends each announced request's message, retrying with backoff; sweeps the database for any
/// still unsent. One request at a time: Slack's webhooks allow about one message a second anyway.
pub(super) async fn notify_forever(approvals: Approvals, mut asked: mpsc::Receiver<String>) {
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    loop {
        let ids = tokio::select! {
            id = asked.recv() => match id {
                Some(id) => vec![id],
                None => return,
            },
            _ = sweep.tick() => {
                match approvals.inner.records.unsent(100).await {
                    Ok(ids) => ids,
                    Err(e) => {
                        tracing::warn!(error = %e, "approval notifier sweep failed");
                        Vec::new()
                    }
                }
            }
        };
        for id in ids {
            approvals.deliver(&id).await;
        }
    }
}

impl Approvals {
    /// Posts one request's message, unless it was sent already; records how delivery went.
    pub(super) async fn deliver(&self, id: &str) {
        let Some(url) = self.inner.settings.slack_webhook_url.clone() else { return };
        let view = match self.view(id).await {
            Ok(view) if view.notification.status == "pending" => view,
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(approval = id, error = %e, "cannot read an approval to notify");
                return;
            }
        };
        let message = request_message(&view, self.links(&view));
        let settings = &self.inner.settings;
        let mut pause = settings.retry_base;
        let mut attempts = view.notification.attempts;
        let outcome = loop {
            attempts += 1;
            let sent = self.inner.http.post(url.expose()).json(&message).send().await;
            let retry = match sent {
                Ok(r) if r.status().is_success() => break Ok(()),
                Ok(r) if r.status().is_server_error() || r.status().as_u16() == 429 => {
                    format!("Slack answered {}", r.status().as_u16())
                }
                Ok(r) => {
                    let status = r.status().as_u16();
                    let body = r.text().await.unwrap_or_default();
                    break Err(format!("Slack refused the message: {status} {}", truncate(&body, 200)));
                }
                // The URL carries Slack's secret: reqwest's error would print it.
                Err(e) if e.is_timeout() => "Slack did not answer in time".to_owned(),
                Err(_) => "Slack could not be reached".to_owned(),
            };
            if attempts >= settings.max_attempts {
                break Err(retry);
            }
            tracing::info!(approval = id, attempt = attempts, reason = %retry, "Slack delivery failed; retrying");
            tokio::time::sleep(pause).await;
            pause = pause.saturating_mul(2);
        };
        let (status, error) = match &outcome {
            Ok(()) => ("sent", None),
            Err(e) => {
                tracing::warn!(approval = id, attempts, error = %e, "Slack delivery failed");
                ("failed", Some(e.as_str()))
            }
        };
        let recorded = self.inner.records.set_notified(id, status, attempts, error.map(str::to_owned)).await;
        if let Err(e) = recorded {
            tracing::warn!(approval = id, error = %e, "cannot record Slack delivery");
        }
    }

    /// Handles a verified `block_actions` payload: applies the button's decision for the Slack
    /// user, then rewrites the message through `response_url`. Err: a payload that is not ours.
    pub async fn interaction(&self, body: &[u8]) -> Result<(), String> {
        let interaction = parse_interaction(body)?;
        if interaction.kind != "block_actions" {
            return Ok(());
        }
        let Some(action) = interaction.actions.first() else { return Ok(()) };
        let Some(decision) = crate::domain::approval::ApprovalAction::parse(&action.action_id) else { return Ok(()) };
        let id = action.value.clone().ok_or("a button without a value")?;
        let view = match self.decide(&id, decision, super::Approver::Slack(interaction.user.id.clone())).await {
            Ok(view) => view,
            // Decided or expired already: the message is brought up to date all the same.
            Err(e) if e.status() == 409 => self.view(&id).await.map_err(|e| e.to_string())?,
            Err(e) => return Err(e.to_string()),
        };
        if let Some(url) = interaction.response_url {
            let http = self.inner.http.clone();
            let message = outcome_message(&view);
            actix_web::rt::spawn(async move {
                if let Err(e) = http.post(&url).json(&message).send().await.and_then(|r| r.error_for_status()) {
                    tracing::warn!(status = ?e.status(), "cannot update the Slack message");
                }
            });
        }
        Ok(())
    }

    pub fn slack_signature(&self) -> Option<&SlackSignature> {
        self.inner.settings.slack_signature.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The worked example of Slack's "Verifying requests from Slack".
    #[test]
    fn slack_signatures_match_slacks_documented_example() {
        let secret = SlackSignature::new(&Secret::new("8f742231b10e8888abcd99yyyzzz85a5"));
        let body = b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
        let expected = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";
        assert_eq!(secret.sign(1531420618, body), expected);
        assert_eq!(secret.verify(Some("1531420618"), Some(expected), body, 1531420618 + 299), Ok(()));
        assert!(secret.verify(Some("1531420618"), Some(expected), body, 1531420618 + 301).is_err(), "stale");
        assert!(secret.verify(Some("1531420619"), Some(expected), body, 1531420618).is_err(), "timestamp is signed");
        let mut tampered = body.to_vec();
        tampered[6] = b'X';
        assert!(secret.verify(Some("1531420618"), Some(expected), &tampered, 1531420618).is_err());
        assert!(secret.verify(Some("1531420618"), Some("v0="), body, 1531420618).is_err(), "empty signature");
        assert!(secret.verify(Some("1531420618"), None, body, 1531420618).is_err());
        assert!(secret.verify(None, Some(expected), body, 1531420618).is_err());
        // Timestamps at i64's limits are stale, not an overflow.
        for t in [i64::MIN, i64::MAX] {
            assert!(secret.verify(Some(&t.to_string()), Some(expected), body, 1531420618).is_err());
        }
    }

    #[test]
    fn interactions_are_read_from_the_form_payload() {
        let payload = json!({"type": "block_actions", "user": {"id": "U123", "username": "ann"},
            "actions": [{"action_id": "approve", "value": "apr_1", "type": "button"}],
            "response_url": "https://hooks.slack.com/actions/T/1/x"});
        let body = serde_urlencoded::to_string([("payload", payload.to_string())]).unwrap();
        let i = parse_interaction(body.as_bytes()).unwrap();
        assert_eq!((i.kind.as_str(), i.user.id.as_str()), ("block_actions", "U123"));
        assert_eq!(i.actions[0].value.as_deref(), Some("apr_1"));
        assert!(parse_interaction(b"payload=not-json").is_err());
        assert!(parse_interaction(b"nothing=here").is_err());
    }

    #[test]
    fn slack_text_is_escaped() {
        assert_eq!(escape("<!channel> & <http://x|y>"), "&lt;!channel&gt; &amp; &lt;http://x|y&gt;");
        assert_eq!(truncate("abcdef", 4), "abc…");
        assert_eq!(truncate("abc", 4), "abc");
    }
}
