//! Human approvals. A decision that needs a person is stored as an approval request by the ledger
//! (in the same transaction as the declined attempt); this module tells people about it (Slack),
//! takes their decision (signed links, Slack buttons, the API) and turns an approval into an
//! allowance the policy core reads. Nothing here is on the authorization path: a slow or absent
//! Slack never delays an answer.

pub mod link;
pub mod mandates;
pub mod page;
pub mod slack;
mod store;

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc;
use utoipa::ToSchema;

use crate::crypto::Secret;
use crate::domain::access::{Permission, Principal};
use crate::domain::approval::{ApprovalAction, ApprovalStatus};
use crate::domain::authorization::Merchant;
use crate::domain::ids::{AgentId, ApprovalId, KeyId};
use crate::domain::money::Money;
use crate::error::{Error, ErrorCode, Result};
use crate::ledger::{Ledger, RequestedAmount};
use link::{LinkSigner, TokenError};
use slack::SlackSignature;
use store::Db;

/// How long an approved limit raise lasts when its window has no end of its own (rolling,
/// lifetime), and how long an approved threshold pass waits for the agent's retry.
const ALLOWANCE_HOURS: i64 = 24;

pub struct ApprovalSettings {
    /// Base of the approval links.
    pub public_url: String,
    pub links: Option<LinkSigner>,
    pub slack_webhook_url: Option<Secret>,
    pub slack_signature: Option<SlackSignature>,
    pub slack_timeout: Duration,
    /// First pause between two attempts to reach Slack; doubled after each.
    pub retry_base: Duration,
    pub max_attempts: i32,
    /// How long people have to decide a mandate (`approval_ttl_hours`).
    pub request_ttl: Duration,
}

#[derive(Clone)]
pub struct Approvals {
    inner: Arc<Inner>,
}

struct Inner {
    records: store::Records,
    ledger: Ledger,
    settings: ApprovalSettings,
    http: reqwest::Client,
    /// Told each approved request that carries a deferred payment, for the rail to make it (the
    /// rail also sweeps the database for any it misses).
    approved: Option<mpsc::Sender<String>>,
    /// Waits on a mandate's decision under way: one per agent (see `mandates`).
    waiting: crate::ledger::OnePerAgent,
}

/// Who decided: a Slack user, someone holding a link, or an API key.
#[derive(Debug, Clone)]
pub enum Approver {
    Slack(String),
    Link,
    Key(KeyId),
}

impl Approver {
    fn stored(&self) -> String {
        match self {
            Approver::Slack(user) => format!("slack:{user}"),
            Approver::Link => "link".to_owned(),
            Approver::Key(key) => key.to_string(),
        }
    }
}

/// An approval request as the API, the page and Slack show it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ApprovalView {
    pub id: String,
    /// `pending`, `approved`, `denied`, or `expired` (nobody decided in time).
    pub status: ApprovalStatus,
    pub agent_id: String,
    pub agent_name: String,
    pub card_id: Option<String>,
    pub card_label: Option<String>,
    pub rail: String,
    /// The rule that asked: `card.limit.daily`, `agent.approval`, …
    pub rule: String,
    /// What was asked, in the merchant's currency.
    pub amount: RequestedAmount,
    /// The same in the rule's cap currency.
    pub cap_amount: Money,
    /// The limit's cap or the approval threshold, in the cap currency.
    pub cap: Option<Money>,
    /// What the limit's window had counted before the request.
    pub spent: Option<Money>,
    pub merchant: Merchant,
    pub trace_id: Option<String>,
    /// The declined attempt that asked.
    pub authorization_id: String,
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: jiff::Timestamp,
    /// `slack:<user id>`, `link`, or the API key that decided.
    pub decided_by: Option<String>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub decided_at: Option<jiff::Timestamp>,
    /// Until when an approval's allowance applies.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub allowance_until: Option<jiff::Timestamp>,
    /// One authorization passes (an approval threshold), or the limit is raised by `cap_amount` (a limit).
    pub single_use: bool,
    pub notification: Notification,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: jiff::Timestamp,
    /// Set for a mandate the agent asked for (`rule` is `mandate`): the spend it covers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mandate: Option<mandates::MandateView>,
}

/// Delivery of the Slack message.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Notification {
    /// `pending`, `sent`, `failed` (every attempt failed) or `off` (no Slack webhook set).
    pub status: String,
    pub attempts: i32,
    pub error: Option<String>,
}

impl ApprovalView {
    /// The request in words: `12.00 USD at OPENAI *API`.
    pub fn summary(&self) -> String {
        match &self.mandate {
            Some(m) => format!("a mandate of {}: {}", self.cap_amount, m.purpose),
            None => format!("{} at {}", self.cap_amount, self.merchant.name),
        }
    }
}

impl Approvals {
    /// Starts the Slack notifier when a webhook is set; `asked` announces new requests, and
    /// `approved` is told of approved deferred payments.
    pub fn start(
        settings: ApprovalSettings,
        db: Db,
        ledger: Ledger,
        asked: Option<mpsc::Receiver<String>>,
        approved: Option<mpsc::Sender<String>>,
    ) -> Result<Approvals> {
        let http = reqwest::Client::builder()
            .timeout(settings.slack_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| Error::Internal(format!("HTTP client: {e}")))?;
        let approvals = Approvals {
            inner: Arc::new(Inner {
                records: store::Records::new(db),
                ledger,
                settings,
                http,
                approved,
                waiting: Default::default(),
            }),
        };
        if let Some(asked) = asked {
            actix_web::rt::spawn(slack::notify_forever(approvals.clone(), asked));
        }
        Ok(approvals)
    }

    pub fn links_enabled(&self) -> bool {
        self.inner.settings.links.is_some()
    }

    /// One approval, for anyone who may read its agent.
    pub async fn get(&self, who: &Principal, id: &str) -> Result<ApprovalView> {
        who.check(Permission::Manage, None)?;
        self.view(id).await
    }

    pub async fn list(
        &self,
        who: &Principal,
        status: Option<&str>,
        cursor: Option<String>,
        limit: i64,
    ) -> Result<(Vec<ApprovalView>, Option<String>)> {
        who.check(Permission::Manage, None)?;
        let status = status.map(|s| {
            ApprovalStatus::parse(s).ok_or_else(|| {
                Error::Validation(format!("status must be pending, approved, denied or expired, not {s:?}"))
            })
        });
        let wanted = status.transpose()?;
        // Expired requests are stored as pending: read pending ones and sort by what they are now.
        let stored = wanted.map(|s| if s == ApprovalStatus::Expired { ApprovalStatus::Pending } else { s });
        self.inner.records.list(stored, wanted, cursor, limit, store::now_ms()).await
    }

    /// For the approval page and Slack, whose callers prove themselves with a token or a signature.
    pub async fn view(&self, id: &str) -> Result<ApprovalView> {
        let key = parse_id(id)?;
        let now_ms = store::now_ms();
        self.inner.records.view(&key, now_ms).await?.ok_or_else(|| Error::not_found("approval", id))
    }

    /// Checks an approval link's token.
    pub fn check_link(&self, id: &str, action: ApprovalAction, token: &str) -> std::result::Result<(), TokenError> {
        let signer = self.inner.settings.links.as_ref().ok_or(TokenError::Forged)?;
        signer.verify(id, action, token, jiff::Timestamp::now().as_second())
    }

    /// The Approve and Deny links for a request.
    pub fn links(&self, view: &ApprovalView) -> Option<(String, String)> {
        let signer = self.inner.settings.links.as_ref()?;
        let base = self.inner.settings.public_url.trim_end_matches('/');
        let expires = view.expires_at.as_second();
        let link = |action: ApprovalAction| {
            let token = signer.sign(&view.id, action, expires);
            format!("{base}/approvals/{}?action={}&token={token}", view.id, action.as_str())
        };
        Some((link(ApprovalAction::Approve), link(ApprovalAction::Deny)))
    }

    /// Through the API: a manager or owner key.
    pub async fn decide_as(&self, who: &Principal, id: &str, action: ApprovalAction) -> Result<ApprovalView> {
        who.check(Permission::Manage, None)?;
        self.decide(id, action, Approver::Key(who.key_id.clone())).await
    }

    /// Applies a person's decision, once: a request already decided or expired is a conflict.
    /// An approval becomes an allowance the very next decision about the agent sees.
    pub async fn decide(&self, id: &str, action: ApprovalAction, by: Approver) -> Result<ApprovalView> {
        let key = parse_id(id)?;
        let decided_by = by.stored();
        let actor = match &by {
            Approver::Key(key) => Some(key.clone()),
            _ => None,
        };
        let (view, deferred) = self.inner.records.decide(key, action, decided_by, actor).await?;
        self.inner.ledger.snapshots().invalidate_agent(&AgentId::from_stored(view.agent_id.clone()));
        if let (true, ApprovalStatus::Approved, Some(approved)) = (deferred, view.status, &self.inner.approved)
            && approved.try_send(view.id.clone()).is_err()
        {
            tracing::warn!(approval = %view.id, "deferred payment queue full; the sweep makes the payment");
        }
        tracing::info!(approval = %view.id, status = view.status.as_str(), by = ?view.decided_by, "approval decided");
        Ok(view)
    }
}

fn parse_id(id: &str) -> Result<String> {
    ApprovalId::parse(id).map(|id| id.to_string()).ok_or_else(|| Error::not_found("approval", id))
}

/// The conflict for a request that can no longer be decided.
fn already(view: &ApprovalView) -> Error {
    match view.status {
        ApprovalStatus::Expired => {
            Error::coded(ErrorCode::ApprovalExpired, format!("approval {} has expired", view.id))
        }
        status => Error::coded(
            ErrorCode::ApprovalDecided,
            format!(
                "approval {} was already {} by {}",
                view.id,
                status.as_str(),
                view.decided_by.as_deref().unwrap_or("someone")
            ),
        ),
    }
}
