//! x402 fetches that wait for a person. A fetch whose payment needs approval is stored with the
//! approval request, sealed under the master key (its headers may carry the agent's credentials
//! for the API); the agent gets 202 and a status URL. Once someone approves, spendgate makes the
//! fetch itself under the agent's Idempotency-Key, decided by the same policy core (the approval
//! is now an allowance), and keeps the answer for the status URL. Denied or expired: nothing is
//! ever signed.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use utoipa::ToSchema;

use super::settlement::MAX_STORED_BODY;
use super::store::{corrupt, now_ms};
use super::wallet::MasterKey;
use super::{FetchOutcome, FetchRequest, Fetched, Usdc};
use crate::domain::ids::AgentId;
use crate::error::{Error, ErrorCode, Result};

/// How often approved payments that nobody finished are looked for.
const SWEEP_EVERY: Duration = Duration::from_secs(30);
/// An approval decided this long ago without a result is taken to be left by a stopped process.
const ABANDONED_AFTER_MS: i64 = 60_000;

/// A payment waiting for a person, or being made after one approved.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Awaiting {
    pub approval_id: String,
    /// `pending` (nobody has decided) or `paying` (approved; spendgate is paying).
    pub status: String,
    /// Where the agent reads the outcome: the upstream answer once paid.
    pub status_url: String,
}

impl Awaiting {
    fn new(agent: &AgentId, approval_id: String, status: &str) -> Awaiting {
        let status_url = format!("/v1/agents/{agent}/x402/approvals/{approval_id}");
        Awaiting { approval_id, status: status.to_owned(), status_url }
    }
}

/// What the status URL answers.
#[derive(Debug)]
pub enum DeferredStatus {
    Waiting(Awaiting),
    /// What the fetch would have answered: the upstream answer, with `Spendgate-*` headers.
    Answer {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// What spendgate refused, as an error with this status.
    Refused {
        status: u16,
        code: String,
        message: String,
    },
}

/// The fetch to make once approved, as sealed in the approval request.
#[derive(Serialize, Deserialize)]
struct Deferred {
    key: String,
    request: FetchRequest,
}

/// What a deferred fetch came to, as stored for the status URL.
#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Stored {
    Answer { status: u16, headers: Vec<(String, String)>, body: String },
    Refused { status: u16, code: String, message: String },
}

impl Stored {
    fn refused(e: &Error) -> Stored {
        Stored::Refused { status: e.status(), code: e.code().as_str().to_owned(), message: e.to_string() }
    }

    fn answer(fetched: Fetched) -> Stored {
        let payment = fetched.paid.as_ref().map(|p| p.payment.id.clone());
        let (status, headers, body) = fetched.into_parts();
        if body.len() > MAX_STORED_BODY {
            let message = match payment {
                Some(id) => {
                    format!("payment {id} was made; its answer was larger than {MAX_STORED_BODY} bytes to keep")
                }
                None => format!("the answer was larger than {MAX_STORED_BODY} bytes to keep"),
            };
            return Stored::Refused { status: 409, code: "answer_too_large".into(), message };
        }
        Stored::Answer { status, headers, body: BASE64.encode(body) }
    }

    fn of_status(status: DeferredStatus) -> Stored {
        match status {
            DeferredStatus::Waiting(waiting) => Stored::Answer {
                status: 202,
                headers: vec![("Content-Type".into(), "application/json".into())],
                body: BASE64.encode(serde_json::to_vec(&waiting).expect("serializes")),
            },
            DeferredStatus::Answer { status, headers, body } => {
                Stored::Answer { status, headers, body: BASE64.encode(body) }
            }
            DeferredStatus::Refused { status, code, message } => Stored::Refused { status, code, message },
        }
    }

    fn into_status(self) -> DeferredStatus {
        match self {
            Stored::Answer { status, headers, body } => {
                DeferredStatus::Answer { status, headers, body: BASE64.decode(body).unwrap_or_default() }
            }
            Stored::Refused { status, code, message } => DeferredStatus::Refused { status, code, message },
        }
    }
}

fn context(agent: &AgentId) -> Vec<u8> {
    format!("x402-fetch:{agent}").into_bytes()
}

/// The fetch sealed for its agent, to store with an approval request.
pub(super) fn seal(master: &MasterKey, agent: &AgentId, key: &str, request: &FetchRequest) -> String {
    let deferred = Deferred { key: key.to_owned(), request: request.clone() };
    let json = zeroize::Zeroizing::new(serde_json::to_vec(&deferred).expect("a fetch request serializes"));
    master.seal_bytes(&context(agent), &json)
}

fn open(master: &MasterKey, agent: &AgentId, sealed: &str) -> Result<Deferred> {
    let json = master.open_bytes(&context(agent), sealed).ok_or_else(|| {
        Error::Internal(format!("the deferred fetch of agent {agent} does not open with this master key"))
    })?;
    serde_json::from_slice(&json).map_err(|e| Error::Internal(format!("a deferred fetch is unreadable: {e}")))
}

/// Errors that may pass if tried again (the API or the database was unreachable).
fn transient(e: &Error) -> bool {
    e.status() == 429 || matches!(e, Error::Upstream(_) | Error::StorageUnavailable(_) | Error::Internal(_))
}

impl Usdc {
    /// Pays approved deferred fetches as they are announced, and every 30 s any that a stopped
    /// process (or a full queue) left unpaid.
    pub async fn pay_approved_forever(self, mut approved: mpsc::Receiver<String>) {
        let mut sweep = tokio::time::interval(SWEEP_EVERY);
        loop {
            tokio::select! {
                Some(id) = approved.recv() => {
                    let usdc = self.clone();
                    actix_web::rt::spawn(async move { usdc.pay_approved(&id).await });
                }
                _ = sweep.tick() => self.sweep_approved().await,
            }
        }
    }

    async fn sweep_approved(&self) {
        let found = self.inner.records.unfinished_deferred(now_ms() - ABANDONED_AFTER_MS, 100).await;
        match found {
            Ok(ids) => {
                for id in ids {
                    self.pay_approved(&id).await;
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not look for unpaid approved x402 fetches"),
        }
    }

    /// Makes an approved deferred fetch, once, and stores what it came to.
    pub async fn pay_approved(&self, approval_id: &str) {
        if let Err(e) = self.try_pay_approved(approval_id).await {
            tracing::warn!(approval = approval_id, error = %e, "approved x402 fetch not finished; it is tried again");
        }
    }

    async fn try_pay_approved(&self, approval_id: &str) -> Result<()> {
        let master = self.master()?;
        let Some(row) = self.inner.records.approval(approval_id).await? else { return Ok(()) };
        let Some(sealed) =
            row.deferred.as_deref().filter(|_| row.status == "approved" && row.deferred_result.is_none())
        else {
            return Ok(());
        };
        let agent = AgentId::from_stored(row.agent_id.clone());
        let deferred = open(master, &agent, sealed)?;
        let stored = match self.fetch_as(&agent, &deferred.key, deferred.request, Some(&row.id)).await {
            Ok(FetchOutcome::Answered(fetched)) => Stored::answer(fetched),
            // The price rose past what was approved: a person is asked again, under a new approval.
            Ok(FetchOutcome::Deferred(status)) => Stored::of_status(status),
            // Past the approval's allowance, a retry could only be declined: the failure is the answer.
            Err(e) if transient(&e) && row.allowance_until.is_some_and(|u| u > now_ms()) => {
                return Err(e);
            }
            Err(e) => Stored::refused(&e),
        };
        let json = serde_json::to_string(&stored).expect("serializes");
        self.inner.records.set_deferred_result(&row.id, json).await?;
        tracing::info!(approval = %row.id, agent = %agent, "approved x402 fetch finished");
        Ok(())
    }

    /// The status URL: waiting, refused, or the upstream answer once paid.
    pub async fn deferred_status(&self, agent: &AgentId, approval_id: &str) -> Result<DeferredStatus> {
        self.agent_exists(agent).await?;
        let row = self
            .inner
            .records
            .approval(approval_id)
            .await?
            .filter(|r| r.agent_id == agent.as_str() && r.deferred.is_some())
            .ok_or_else(|| {
                Error::NotFound(format!("agent {agent} has no x402 fetch waiting on approval {approval_id}"))
            })?;
        let now = now_ms();
        let refused = |code: ErrorCode, message: String| DeferredStatus::Refused {
            status: code.status(),
            code: code.as_str().to_owned(),
            message,
        };
        Ok(match (row.status.as_str(), row.deferred_result) {
            ("pending", _) if row.expires_at > now => DeferredStatus::Waiting(Awaiting::new(agent, row.id, "pending")),
            ("pending", _) => refused(
                ErrorCode::ApprovalExpired,
                format!("nobody approved payment {} in time; nothing was signed", row.id),
            ),
            ("denied", _) => refused(
                ErrorCode::ApprovalDenied,
                format!(
                    "approval {} was denied by {}; nothing was signed",
                    row.id,
                    row.decided_by.as_deref().unwrap_or("someone")
                ),
            ),
            (_, Some(json)) => serde_json::from_str::<Stored>(&json)
                .map_err(|e| corrupt(&format!("deferred result: {e}"), &row.id))?
                .into_status(),
            (_, None) => DeferredStatus::Waiting(Awaiting::new(agent, row.id, "paying")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deferred_fetch_opens_only_for_its_agent() {
        let master = MasterKey::from_base64(&MasterKey::generate_base64()).unwrap();
        let (agent, other) = (AgentId::generate(), AgentId::generate());
        let mut request: FetchRequest =
            serde_json::from_value(serde_json::json!({"url": "http://api.test/x"})).unwrap();
        request.headers.insert("Authorization".into(), "Bearer upstream-secret".into());
        let sealed = seal(&master, &agent, "key-1", &request);
        assert!(!sealed.contains("upstream-secret"), "sealed, not stored in plaintext");
        let opened = open(&master, &agent, &sealed).unwrap();
        assert_eq!(
            (opened.key.as_str(), opened.request.headers["Authorization"].as_str()),
            ("key-1", "Bearer upstream-secret")
        );
        assert!(open(&master, &other, &sealed).is_err(), "bound to its agent");
    }

    #[test]
    fn only_unreachable_parts_are_tried_again() {
        assert!(transient(&Error::Upstream("no answer".into())));
        assert!(transient(&Error::StorageUnavailable("busy".into())));
        assert!(!transient(&Error::coded(
            ErrorCode::Declined(crate::domain::authorization::DeclineReason::LimitExceeded),
            ""
        )));
        assert!(!transient(&Error::coded(ErrorCode::PaymentOutcomeUnknown, String::new())));
    }
}
