//! Events out: the event types an endpoint can subscribe to, and the endpoints themselves.

use serde::Serialize;
use utoipa::ToSchema;

use super::ids::{EndpointId, KeyId};

worded! {
    /// What happened. Each delivery's body is `{"id", "type", "timestamp", "data"}`.
    pub enum EventType {
        #[serde(rename = "authorization.approved")]
        AuthorizationApproved = "authorization.approved",
        #[serde(rename = "authorization.declined")]
        AuthorizationDeclined = "authorization.declined",
        #[serde(rename = "approval.requested")]
        ApprovalRequested = "approval.requested",
        #[serde(rename = "approval.decided")]
        ApprovalDecided = "approval.decided",
        #[serde(rename = "card.frozen")]
        CardFrozen = "card.frozen",
        #[serde(rename = "card.unfrozen")]
        CardUnfrozen = "card.unfrozen",
        #[serde(rename = "card.closed")]
        CardClosed = "card.closed",
        #[serde(rename = "limit.threshold_crossed")]
        LimitThresholdCrossed = "limit.threshold_crossed",
        #[serde(rename = "balance.low")]
        BalanceLow = "balance.low",
        #[serde(rename = "spend.anomaly")]
        SpendAnomaly = "spend.anomaly",
        #[serde(rename = "audit.checkpoint")]
        AuditCheckpoint = "audit.checkpoint",
        #[serde(rename = "balance.topped_up")]
        BalanceToppedUp = "balance.topped_up",
        #[serde(rename = "treasury.short")]
        TreasuryShort = "treasury.short",
        #[serde(rename = "wallet.mismatch")]
        WalletMismatch = "wallet.mismatch",
    }
}

impl EventType {
    /// The alerts: a person should look. Only they may go to a Slack endpoint.
    pub fn is_alert(self) -> bool {
        matches!(
            self,
            EventType::LimitThresholdCrossed
                | EventType::BalanceLow
                | EventType::SpendAnomaly
                | EventType::TreasuryShort
                | EventType::WalletMismatch
        )
    }
}

worded! {
    /// How an endpoint takes its deliveries.
    pub enum EndpointFormat {
        /// The event as JSON, signed (Standard Webhooks).
        Standard = "standard",
        /// A Slack incoming webhook: each alert as a message with its cost context, unsigned (the
        /// URL is the credential).
        Slack = "slack",
    }
}

worded! {
    pub enum DeliveryStatus {
        Pending = "pending",
        Delivered = "delivered",
        Failed = "failed",
    }
}

/// A subscribed endpoint, as the API shows it (its secret only once, when it is made).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Endpoint {
    pub id: EndpointId,
    /// A Slack endpoint's shows its host only: the rest is its credential.
    pub url: String,
    pub format: EndpointFormat,
    pub events: Vec<EventType>,
    pub description: Option<String>,
    pub created_by: Option<KeyId>,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: jiff::Timestamp,
    /// `whsec_…`: verify each delivery's `webhook-signature` with it. Shown when the endpoint is made.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}
