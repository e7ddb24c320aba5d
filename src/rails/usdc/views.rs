//! What the rail takes from agents and answers them: fetch and authorize requests, fetched
//! answers with what was paid, wallets and payments as the API shows them.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::deferred::DeferredStatus;
use super::store::PaymentRow;
use crate::domain::ledger::{PaymentProtocol, PaymentStatus};
use crate::domain::money::Money;

/// What an agent asks spendgate to call.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FetchRequest {
    /// An http(s) URL without credentials, on a public address (see docs/security.md).
    #[schema(pattern = "^[Hh][Tt][Tt][Pp][Ss]?://")]
    pub url: String,
    /// GET (default), POST, PUT, PATCH, DELETE or HEAD.
    #[schema(pattern = "^(?i:get|post|put|patch|delete|head)$")]
    pub method: Option<String>,
    #[serde(default)]
    pub headers: HashMap<String, String>,
    pub body: Option<String>,
    #[schema(min_length = 1, max_length = 200, pattern = r"\S")]
    pub trace_id: Option<String>,
    /// The most this call may cost, in minor units of the agent's currency.
    #[schema(minimum = 0)]
    pub max_amount: Option<i64>,
}

/// A payment to decide without making it: would the policy pay `amount` to this URL's host now?
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PaymentCheck {
    #[schema(pattern = "^[Hh][Tt][Tt][Pp][Ss]?://")]
    pub url: String,
    /// US cents (USDC pays in dollars).
    #[schema(minimum = 1, maximum = 1_000_000_000_000_000_i64)]
    pub amount: i64,
    /// The recipient as CAIP-10 (`eip155:8453:0x…`), as the server's 402 would name it. Without
    /// it, a policy that lists recipients declines (`recipient_not_allowed`): the check cannot
    /// know where the server will ask the money to go.
    #[schema(min_length = 1, max_length = 200)]
    pub pay_to: Option<String>,
    #[schema(min_length = 1, max_length = 200, pattern = r"\S")]
    pub trace_id: Option<String>,
}

/// An agent that makes the HTTP call itself asks for the payment header only.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthorizeRequest {
    #[schema(pattern = "^[Hh][Tt][Tt][Pp][Ss]?://")]
    pub url: String,
    /// The 402's `PAYMENT-REQUIRED` header value (v2), or its JSON body (v1), or the decoded v2 document.
    #[schema(value_type = Object)]
    pub payment_required: serde_json::Value,
    #[schema(min_length = 1, max_length = 200, pattern = r"\S")]
    pub trace_id: Option<String>,
    #[schema(minimum = 0)]
    pub max_amount: Option<i64>,
}

/// The payment header to send, and the payment it belongs to.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Authorized {
    pub header: String,
    pub value: String,
    pub payment: PaymentView,
    pub cost: Money,
    pub remaining: Money,
}

/// What a fetch came to: the upstream answer, or, for a payment that needs a person's approval,
/// what its status URL answers (waiting, refused, or the answer once paid).
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // one per request, moved once: boxing saves nothing
pub enum FetchOutcome {
    Answered(Fetched),
    Deferred(DeferredStatus),
}

/// The upstream answer, and what was paid for it.
#[derive(Debug)]
pub struct Fetched {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub paid: Option<Paid>,
}

impl Fetched {
    /// Status, headers and body for the agent: the upstream ones, plus `Spendgate-*` headers
    /// saying what was paid.
    pub fn into_parts(self) -> (u16, Vec<(String, String)>, Vec<u8>) {
        let mut headers = self.headers;
        if let Some(paid) = &self.paid {
            headers.extend([
                ("Spendgate-Payment".to_owned(), paid.payment.id.clone()),
                ("Spendgate-Settlement".to_owned(), paid.payment.status.as_str().to_owned()),
                ("Spendgate-Cost".to_owned(), paid.cost.amount.to_string()),
                ("Spendgate-Remaining".to_owned(), paid.remaining.amount.to_string()),
                ("Spendgate-Currency".to_owned(), paid.cost.currency.code().to_owned()),
            ]);
        }
        (self.status, headers, self.body)
    }
}

#[derive(Debug, Clone)]
pub struct Paid {
    pub payment: PaymentView,
    /// What the payment counts against limits, in the agent's currency.
    pub cost: Money,
    pub remaining: Money,
}

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct WalletView {
    pub agent_id: String,
    /// EIP-55 checksummed.
    pub address: String,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: jiff::Timestamp,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ExportedWallet {
    pub address: String,
    /// 0x-hex secp256k1 private key.
    pub private_key: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct PaymentView {
    pub id: String,
    pub authorization_id: String,
    pub url: String,
    /// The 402 protocol it answered: `x402` or `mpp`.
    pub protocol: PaymentProtocol,
    /// 1 or 2 for x402; absent for MPP.
    pub x402_version: Option<i32>,
    pub network: String,
    pub asset: String,
    pub pay_to: String,
    /// Atomic units of the asset (USDC: 6 decimals).
    pub amount: String,
    pub payer: String,
    /// `signed` (sent or handed out, no answer yet), `settled`, `failed` or `unknown`.
    pub status: PaymentStatus,
    pub transaction_hash: Option<String>,
    pub error: Option<String>,
    #[schema(value_type = String, format = DateTime)]
    pub valid_before: jiff::Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: jiff::Timestamp,
}

impl PaymentView {
    pub fn from_row(row: &PaymentRow) -> Self {
        let at = |ms: i64| jiff::Timestamp::from_millisecond(ms).unwrap_or_default();
        PaymentView {
            id: row.id.clone(),
            authorization_id: row.authorization_id.clone(),
            url: row.url.clone(),
            protocol: row.protocol,
            x402_version: (row.protocol == PaymentProtocol::X402).then_some(row.x402_version),
            network: row.network.clone(),
            asset: row.asset.clone(),
            pay_to: row.pay_to.clone(),
            amount: row.amount.clone(),
            payer: row.payer.clone(),
            status: row.status,
            transaction_hash: row.transaction_hash.clone(),
            error: row.error.clone(),
            valid_before: jiff::Timestamp::from_second(row.valid_before).unwrap_or_default(),
            created_at: at(row.created_at),
        }
    }
}

/// One wallet's token on one network: what the chain says it holds against what the ledger
/// says. Amounts are the token's atomic units (6 decimals), as decimal strings.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WalletReconciliation {
    pub agent_id: String,
    pub address: String,
    pub network: String,
    pub token: String,
    /// The balance on the chain now; absent when it could not be read (`error` says why).
    pub onchain: Option<String>,
    /// What the ledger says the wallet holds: deposits credited less payments settled.
    pub ledger: String,
    /// Deposits on the chain not yet credited (not yet confirmed, or not yet read).
    pub uncredited: String,
    /// Payments signed whose settlement spendgate has not seen: some may have moved money.
    pub in_flight: String,
    /// On the chain less (ledger + uncredited): 0 when balanced, down to −in_flight while
    /// payments settle, anything else a mismatch.
    pub difference: Option<String>,
    pub status: ReconciliationStatus,
    /// Deposits credited and payments settled, counted.
    pub deposits: usize,
    pub payments: usize,
    /// What explains a difference: the deposits not yet credited and the payments in flight.
    pub explained_by: Vec<WalletMovement>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReconciliationStatus {
    /// The chain holds exactly what the ledger says.
    Balanced,
    /// The chain holds less by no more than the payments in flight.
    InFlight,
    /// Anything else: money moved that the ledger does not know of (an alert is raised).
    Mismatch,
    /// The chain could not be read.
    Unread,
}

/// A transfer that explains a wallet's difference.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WalletMovement {
    pub kind: MovementKind,
    /// Atomic units; what leaves the wallet is negative.
    pub amount: String,
    pub tx_hash: Option<String>,
    pub block: Option<u64>,
    pub payment_id: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MovementKind {
    UncreditedDeposit,
    PaymentInFlight,
}
