//! The USDC rail: agents pay x402 and MPP APIs from their wallets. A 402 is read (`x402`, `mpp`),
//! the cheapest payable requirement is signed (`eip3009`) and decided by the same ledger and policy
//! core as card spend (rail `usdc`); only an approved payment, committed with its hold, is ever sent.
//!
//! One payment per (agent, idempotency key): the signed payload is stored before it leaves, and a
//! retry re-sends that payload (same nonce, so it can settle at most once) instead of signing again.
//! Settlement has three outcomes: settled (the hold is posted), failed (voided), unknown (the hold
//! stays, so the spend keeps counting until someone knows better).
//!
//! A fetch whose payment needs a person's approval waits (`deferred`): the agent gets 202 and a
//! status URL, and spendgate pays by itself once someone approves.
//!
//! By job: `wallets` (made once, sealed), `proxy` (the outbound call and its guards), `payments`
//! (decide and sign), `settlement` (what the answer says, the hold moved to match), `deferred`,
//! `deposits` (transfers into wallets, read on the chain and credited once), `reconcile` (each
//! wallet against the ledger), `views` (what the API takes and shows), and `store`, the rail's only
//! way to its records. The wire formats are `x402`, `mpp` and `eip3009`; keys are `wallet`;
//! destinations are `destination`; the chain is read through `chain`.
//!
//! With a network's JSON-RPC endpoint set, a payment is also held to what the wallet holds there,
//! less what it has signed and not seen settle: beyond it, `insufficient_onchain_funds`, unsigned.

pub mod chain;
mod deferred;
mod deposits;
pub mod destination;
pub mod eip3009;
pub mod mpp;
mod payments;
mod proxy;
mod reconcile;
mod settlement;
mod store;
mod views;
pub mod wallet;
mod wallets;
pub mod x402;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use self::chain::{ChainSettings, Chains};
use self::destination::Destinations;
use self::proxy::FetchSlots;
use self::store::{Db, PaymentRow, Records, WalletRow};
use self::wallet::MasterKey;
use self::x402::Asset;
use crate::cache::Versioned;
use crate::domain::agent::Agent;
use crate::domain::ids::AgentId;
use crate::error::{Error, ErrorCode, Result};
use crate::ledger::Ledger;

pub use deferred::{Awaiting, DeferredStatus};
pub use views::{
    AuthorizeRequest, Authorized, ExportedWallet, FetchOutcome, FetchRequest, Fetched, MovementKind, Paid,
    PaymentCheck, PaymentView, ReconciliationStatus, WalletMovement, WalletReconciliation, WalletView,
};

#[derive(Debug)]
pub struct UsdcSettings {
    /// None: the rail is off (no `SPENDGATE_MASTER_KEY`).
    pub master_key: Option<MasterKey>,
    pub assets: Vec<Asset>,
    /// Upper bound on an authorization's validity, whatever the server's `maxTimeoutSeconds`.
    pub max_valid_seconds: u64,
    /// Time allowed for each upstream request.
    pub timeout: Duration,
    /// The private destinations the operator allows; every other non-global address is refused.
    pub destinations: Destinations,
    /// Largest upstream answer passed back (and read at all).
    pub max_response_bytes: usize,
    /// Fetches in flight at once, in all and for one agent: beyond them, 429.
    pub max_fetches: usize,
    pub max_fetches_per_agent: usize,
    /// None: no network is read (no `SPENDGATE_CHAIN_RPC`): no deposits are credited and
    /// payments are not checked against what the wallet holds.
    pub chain: Option<ChainSettings>,
}

#[derive(Clone)]
pub struct Usdc {
    inner: Arc<Inner>,
}

struct Inner {
    settings: UsdcSettings,
    http: reqwest::Client,
    records: Records,
    ledger: Ledger,
    /// One payment per key at a time in this process; across processes the unique key in the
    /// database decides, and the loser re-sends the winner's payload.
    in_flight: KeyLocks,
    /// One payment per wallet and network at a time in this process while it is checked against
    /// the chain, signed and stored.
    wallet_turns: KeyLocks,
    chains: Chains,
    /// Wallets as stored (the key sealed): an agent's wallet never changes once made.
    wallets: moka::sync::Cache<AgentId, WalletRow>,
    fetches: FetchSlots,
}

impl Usdc {
    pub fn new(settings: UsdcSettings, db: Db, ledger: Ledger) -> anyhow::Result<Usdc> {
        // The agent names the URL: only the allowed destinations are reached.
        let http =
            settings.destinations.client(settings.timeout).map_err(|e| anyhow::anyhow!("x402 HTTP client: {e}"))?;
        let wallets = moka::sync::Cache::new(100_000);
        let fetches = FetchSlots::new(settings.max_fetches, settings.max_fetches_per_agent);
        let chains = match &settings.chain {
            Some(chain) => Chains::new(chain)?,
            None => Chains::default(),
        };
        let inner = Inner {
            settings,
            http,
            records: Records::new(db),
            ledger,
            in_flight: KeyLocks::default(),
            wallet_turns: KeyLocks::default(),
            chains,
            wallets,
            fetches,
        };
        Ok(Usdc { inner: Arc::new(inner) })
    }

    pub fn enabled(&self) -> bool {
        self.inner.settings.master_key.is_some()
    }

    fn master(&self) -> Result<&MasterKey> {
        self.inner.settings.master_key.as_ref().ok_or_else(|| {
            Error::coded(
                ErrorCode::UsdcRailDisabled,
                "the USDC rail is off: set SPENDGATE_MASTER_KEY (32 bytes, base64) and restart",
            )
        })
    }

    pub async fn payment(&self, agent: &AgentId, id: &str) -> Result<PaymentView> {
        self.agent_exists(agent).await?;
        let (agent_id, id) = (agent.clone(), id.to_owned());
        let row = self.inner.records.payment(&agent_id, &id).await?;
        row.map(|r| PaymentView::from_row(&r)).ok_or_else(|| Error::NotFound("payment not found".into()))
    }

    /// The agent's snapshot; NotFound when there is no such agent.
    async fn agent(&self, agent: &AgentId) -> Result<Arc<Versioned<Agent>>> {
        match self.inner.ledger.agent(agent).await? {
            Some(snapshot) => Ok(snapshot),
            None => Err(Error::not_found("agent", agent.as_str())),
        }
    }

    async fn agent_exists(&self, agent: &AgentId) -> Result<()> {
        self.agent(agent).await.map(drop)
    }

    async fn find_payment(&self, agent: &AgentId, key: &str) -> Result<Option<PaymentRow>> {
        let (id, key) = (agent.clone(), key.to_owned());
        self.inner.records.payment_by_key(&id, &key).await
    }
}

/// Per-key async locks, dropped when nobody holds them.
#[derive(Default)]
struct KeyLocks(Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>);

impl KeyLocks {
    async fn lock(&self, key: String) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
            map.retain(|_, held| held.strong_count() > 0);
            match map.get(&key).and_then(Weak::upgrade) {
                Some(lock) => lock,
                None => {
                    let lock = Arc::new(tokio::sync::Mutex::new(()));
                    map.insert(key, Arc::downgrade(&lock));
                    lock
                }
            }
        };
        lock.lock_owned().await
    }
}
