//! The rail's own records, the only way it reaches the database: wallets, payments, deposits read
//! on the chain and how far it was read, the events it writes, and the approvals its deferred
//! fetches wait on. Holds and balances it reads through the
//! ledger.

use crate::domain::event::Event;
use crate::domain::ids::AgentId;
use crate::error::Result;
use crate::store;
pub use crate::store::Db;
use crate::store::approvals::ApprovalRow;
pub use crate::store::deposits::{CursorRow, DepositRow};
pub use crate::store::wallets::WalletRow;
pub use crate::store::x402::{PaymentRow, SignedAmount};

#[derive(Clone)]
pub(super) struct Records {
    db: Db,
}

/// Now, in the milliseconds the records keep.
pub(super) fn now_ms() -> i64 {
    store::now().as_millisecond()
}

impl Records {
    pub fn new(db: Db) -> Self {
        Records { db }
    }

    pub async fn wallet(&self, agent: &AgentId) -> Result<Option<WalletRow>> {
        let id = agent.clone();
        self.db.read(move |conn| store::wallets::find(conn, &id)).await
    }

    /// Stores the wallet unless the agent has one; returns the stored one and whether it is this.
    pub async fn insert_wallet(&self, row: WalletRow) -> Result<(WalletRow, bool)> {
        self.db.write(move |conn| store::wallets::insert_or_get(conn, &row)).await
    }

    pub async fn record(&self, event: Event) -> Result<()> {
        self.db.write(move |conn| store::events::record(conn, &event)).await
    }

    pub async fn payment(&self, agent: &AgentId, id: &str) -> Result<Option<PaymentRow>> {
        let (agent, id) = (agent.clone(), id.to_owned());
        self.db.read(move |conn| store::x402::find(conn, &agent, &id)).await
    }

    /// The payment made under the agent's idempotency key, if any.
    pub async fn payment_by_key(&self, agent: &AgentId, key: &str) -> Result<Option<PaymentRow>> {
        let (agent, key) = (agent.clone(), key.to_owned());
        self.db.read(move |conn| store::x402::find_by_key(conn, &agent, &key)).await
    }

    /// Stores the payment unless one exists for its key; returns the stored one and whether it is this.
    pub async fn insert_payment(&self, row: PaymentRow) -> Result<(PaymentRow, bool)> {
        self.db.write(move |conn| store::x402::insert_or_get(conn, &row)).await
    }

    /// How the payment ended (or that it is still unknown), with the answer to replay.
    pub async fn save_outcome(&self, row: PaymentRow) -> Result<()> {
        self.db.write(move |conn| store::x402::update_outcome(conn, &row)).await
    }

    /// What the wallet's payments of `asset` on the network that the chain may still settle add up to.
    pub async fn unsettled_sum(&self, payer: &str, network: &str, asset: &str, now_s: i64) -> Result<i64> {
        let (payer, network, asset) = (payer.to_owned(), network.to_owned(), asset.to_owned());
        self.db.read(move |conn| store::x402::unsettled_sum(conn, &payer, &network, &asset, now_s)).await
    }

    /// Every payment the wallet signed on the network.
    pub async fn signed_by(&self, payer: &str, network: &str) -> Result<Vec<SignedAmount>> {
        let (payer, network) = (payer.to_owned(), network.to_owned());
        self.db.read(move |conn| store::x402::signed_by(conn, &payer, &network)).await
    }

    /// Every wallet, as (agent, address).
    pub async fn wallet_addresses(&self) -> Result<Vec<(String, String)>> {
        self.db.read(store::wallets::addresses).await
    }

    pub async fn deposits_into(&self, address: &str, network: &str) -> Result<Vec<DepositRow>> {
        let (address, network) = (address.to_owned(), network.to_owned());
        self.db.read(move |conn| store::deposits::into_wallet(conn, &address, &network)).await
    }

    pub async fn cursor(&self, network: &str) -> Result<Option<CursorRow>> {
        let network = network.to_owned();
        self.db.read(move |conn| store::deposits::cursor(conn, &network)).await
    }

    pub async fn save_cursor(&self, cursor: CursorRow) -> Result<()> {
        self.db.write(move |conn| store::deposits::save_cursor(conn, &cursor)).await
    }

    /// Records the event unless the agent's trail has one of its kind since `since_ms`.
    pub async fn record_unless_since(&self, event: Event, since_ms: i64) -> Result<bool> {
        self.db.write(move |conn| store::events::record_unless_since(conn, &event, since_ms)).await
    }

    pub async fn approval(&self, id: &str) -> Result<Option<ApprovalRow>> {
        let id = id.to_owned();
        self.db.read(move |conn| store::approvals::find(conn, &id)).await
    }

    /// Approved deferred fetches decided before `before_ms` with no result yet.
    pub async fn unfinished_deferred(&self, before_ms: i64, limit: i64) -> Result<Vec<String>> {
        self.db.read(move |conn| store::approvals::unfinished_deferred(conn, before_ms, limit)).await
    }

    pub async fn set_deferred_result(&self, approval_id: &str, json: String) -> Result<bool> {
        let (id, now) = (approval_id.to_owned(), now_ms());
        self.db.write(move |conn| store::approvals::set_deferred_result(conn, &id, &json, now)).await
    }
}

/// A stored value that does not read back: the row's fault, not the caller's.
pub(super) fn corrupt(what: &str, id: &str) -> crate::error::Error {
    store::corrupt(what, id)
}
