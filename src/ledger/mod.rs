//! The two-phase ledger and the decision path: `authorize` = snapshot → `policy::evaluate` →
//! durable hold (or recorded decline), atomically; then post, void, refund and expire; and money
//! between the treasuries and the agents (fund, drain, top-up, allocate).
//!
//! Every write goes through one writer thread per process, which batches whatever is queued into
//! one transaction (group commit): a batch locks its agents' rows in id order, brings each agent's
//! in-memory book up to date from the rows changed since it last looked, decides, writes, and
//! commits before any answer leaves. Correctness across processes rests on the row locks and the
//! database, not on this process's memory.
//!
//! `core` is the arithmetic of holds and balances, pure and property-tested; `writer/` is the shell
//! that loads, applies a step of `policy` and `core`, saves and commits; `book` is an agent's spends
//! in memory; `views` what the ledger answers.

pub mod book;
pub mod core;
mod views;
mod writer;

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::cache::{Snapshots, Versioned};
use crate::domain::agent::Agent;
use crate::domain::approval::Allowance;
use crate::domain::authorization::{AuthRequest, DeclineReason};
use crate::domain::card::Card;
use crate::domain::catalog::Catalog;
use crate::domain::ids::{AgentId, CardId};
use crate::domain::ledger::{Source, TreasuryKind};
use crate::domain::money::Money;
use crate::error::{Error, ErrorCode, Result};
use crate::policy::fx::RateTable;
use crate::policy::usage::LimitUsage;
use crate::policy::{self, FxRules};
use crate::store::Db;
use crate::store::deposits::DepositRow;
use crate::store::ledger::LedgerFilter;
use crate::store::x402::PaymentRow;
pub use views::{
    AuthOutcome, AuthorizationView, BalanceView, LedgerEntry, LifecycleOutcome, RequestedAmount, TransferView,
    TreasuryTransferView, TreasuryView,
};
use writer::Command;

/// Who moves money between a treasury and an agent, or records a treasury's backing, and why.
#[derive(Debug, Clone)]
pub struct Actor {
    /// The API key's id.
    pub key: String,
    pub reason: Option<String>,
}

/// The traces an agent's usage is shown for: the one asked about and its cards' active ones.
fn traces_of<'a>(trace: Option<&'a str>, cards: &'a [Card]) -> Vec<&'a str> {
    let mut traces: Vec<&str> = trace.into_iter().chain(cards.iter().filter_map(|c| c.trace_id.as_deref())).collect();
    traces.sort_unstable();
    traces.dedup();
    traces
}

/// The current rate table, replaced whole by the refresher.
pub type Rates = Arc<RwLock<Arc<RateTable>>>;

#[derive(Debug, Clone)]
pub struct LedgerSettings {
    /// How long a decision may take before it is answered as a `timeout` decline.
    pub budget: Duration,
    pub fx: FxRules,
    /// Most commands in one transaction.
    pub max_batch: usize,
    /// Most commands waiting for the writer; beyond it callers wait (within their budget).
    pub queue: usize,
    /// How long a request for a person's approval stays open.
    pub approval_ttl: Duration,
    /// Told the id of each approval request once it is stored, to send it to people (the notifier
    /// also finds any it misses in the database).
    pub asked: Option<mpsc::Sender<String>>,
}

#[derive(Clone)]
pub struct Ledger {
    tx: mpsc::Sender<Command>,
    db: Db,
    rates: Rates,
    snapshots: Snapshots,
    budget: Duration,
    health: Arc<WriterHealth>,
    catalog: &'static Catalog,
    fx: FxRules,
    /// Dry runs asked by agent keys under way: one per agent, so an agent key cannot fill the
    /// writer's queue with questions.
    agents_asking: Arc<OnePerAgent>,
}

/// What the writer thread last did, for readiness: whether it runs, since when its current batch
/// has been under way, and whether its last commit failed.
pub struct WriterHealth {
    stopped: AtomicBool,
    /// The monotonic clock's origin for `busy_since_ms` (the wall clock may step).
    origin: std::time::Instant,
    /// Milliseconds after `origin` (at least 1) at which the batch under way started; 0 when idle.
    busy_since_ms: AtomicI64,
    last_failure: Mutex<Option<(std::time::Instant, String)>>,
    /// How long a failed commit counts against readiness with no commit since: a node taken out
    /// of rotation gets no traffic to commit, and must not stay unready for that alone.
    failures_count_for: Duration,
}

impl Default for WriterHealth {
    fn default() -> Self {
        WriterHealth::new(Duration::from_secs(10))
    }
}

impl WriterHealth {
    fn new(failures_count_for: Duration) -> Self {
        WriterHealth {
            stopped: AtomicBool::new(false),
            origin: std::time::Instant::now(),
            busy_since_ms: AtomicI64::new(0),
            last_failure: Mutex::new(None),
            failures_count_for,
        }
    }

    pub(crate) fn busy(&self, busy: bool) {
        let since = if busy { self.now_ms().max(1) } else { 0 };
        self.busy_since_ms.store(since, Ordering::Relaxed);
    }

    fn now_ms(&self) -> i64 {
        self.origin.elapsed().as_millis() as i64
    }

    /// After each commit: None when it succeeded, else why storage failed it (a command refused
    /// for its own sake says nothing about the writer).
    pub(crate) fn committed(&self, failure: Option<String>) {
        *self.last_failure.lock().unwrap_or_else(|e| e.into_inner()) =
            failure.map(|why| (std::time::Instant::now(), why));
    }

    /// Why the writer cannot be counted on now, if it cannot: stopped, a batch under way for
    /// longer than `stuck_after`, or its last commit failed.
    pub fn problem(&self, stuck_after: Duration) -> Option<String> {
        if self.stopped.load(Ordering::Relaxed) {
            return Some("the ledger writer has stopped".into());
        }
        let since = self.busy_since_ms.load(Ordering::Relaxed);
        let busy_ms = self.now_ms().saturating_sub(since);
        if since > 0 && busy_ms > stuck_after.as_millis() as i64 {
            return Some(format!("the ledger writer has been in one commit for {busy_ms} ms"));
        }
        let failure = self.last_failure.lock().unwrap_or_else(|e| e.into_inner());
        failure
            .as_ref()
            .filter(|(at, _)| at.elapsed() < self.failures_count_for)
            .map(|(_, why)| format!("the ledger's last commit failed: {why}"))
    }
}

/// Marks the writer stopped when its thread ends, by return or by panic.
pub(crate) struct StopsWriter(pub(crate) Arc<WriterHealth>);

impl Drop for StopsWriter {
    fn drop(&mut self) {
        self.0.stopped.store(true, Ordering::Relaxed);
    }
}

/// An authorization request as a rail hands it over.
#[derive(Debug, Clone)]
pub struct Authorize {
    /// With `external_id`, the idempotency key.
    pub source: Source,
    pub external_id: String,
    pub payer: Payer,
    pub request: AuthRequest,
    /// What to do if a person approves what this request asks (JSON the rail replays, e.g. an
    /// x402 fetch); None when the agent retries by itself.
    pub deferred: Option<String>,
    /// Written in the hold's own transaction if approved (x402: the signed payment, which must be
    /// durable before it is sent), with its `authorization_id` set to the hold's.
    pub payment: Option<Box<PaymentRow>>,
    /// A wallet payment worth more than the wallet holds on the chain, less what it has signed and
    /// not seen settle: what the policy would approve is declined `insufficient_onchain_funds`.
    pub onchain_short: bool,
}

/// Whose money an authorization spends.
#[derive(Debug, Clone, PartialEq)]
pub enum Payer {
    /// A card: the card's rules and its agent's apply.
    Card(CardId),
    /// The agent's wallet (USDC rail): the agent's rules apply.
    Wallet(AgentId),
}

/// At most one of something under way per agent (a dry run, a wait on a decision): what an agent
/// key could otherwise start by the thousand.
#[derive(Default)]
pub struct OnePerAgent(Mutex<std::collections::HashSet<AgentId>>);

/// An agent's turn; the next may start once it is dropped.
pub struct Turn<'a> {
    of: &'a OnePerAgent,
    agent: AgentId,
}

impl OnePerAgent {
    /// The agent's turn, or None while another is under way.
    pub fn take(&self, agent: &AgentId) -> Option<Turn<'_>> {
        let free = self.0.lock().unwrap_or_else(|e| e.into_inner()).insert(agent.clone());
        free.then(|| Turn { of: self, agent: agent.clone() })
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.of.0.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.agent);
    }
}

/// An authorization that a processor decided without spendgate's answer (its own controls, a
/// stand-in on timeout, a force post): recorded as a fact, with no rule applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Approved,
    Declined,
}

/// Which authorization a movement is about.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// spendgate's authorization id.
    Id(String),
    /// The id the rail gave it (a processor's authorization or transaction id).
    External { source: Source, external_id: String },
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Id(id) => f.write_str(id),
            Target::External { source, external_id } => write!(f, "{source}:{external_id}"),
        }
    }
}

/// What happens to an authorization after its hold.
#[derive(Debug, Clone, PartialEq)]
pub enum Movement {
    /// Post (capture) this amount: any rest of the hold is released, any excess recorded.
    Capture { amount: i64, currency: String },
    /// Void all of the hold, or part of it. Amounts default to the authorization's currency.
    Reverse { amount: Option<i64>, currency: Option<String> },
    /// Credit the balance; limits are not restored.
    Refund { amount: i64, currency: Option<String> },
    /// The processor changed the amount it holds: the hold becomes this total (less releases the
    /// difference, more is recorded as an `increase`).
    Adjust { amount: i64, currency: String },
}

impl Ledger {
    /// Starts the writer thread; policies name MCC groups of `catalog`.
    pub fn start(
        db: Db,
        snapshots: Snapshots,
        rates: Rates,
        catalog: &'static Catalog,
        settings: LedgerSettings,
    ) -> Ledger {
        let (tx, rx) = mpsc::channel(settings.queue.max(1));
        let health = Arc::new(WriterHealth::default());
        writer::spawn(db.clone(), snapshots.clone(), rates.clone(), catalog, &settings, rx, health.clone());
        Ledger {
            tx,
            db,
            rates,
            snapshots,
            budget: settings.budget,
            health,
            catalog,
            fx: settings.fx,
            agents_asking: Arc::default(),
        }
    }

    /// Why decisions cannot be made and recorded now, each a line for a person; none when they
    /// can. The database must answer within `within`, the writer must run and be in no commit for
    /// longer (see `WriterHealth::problem`), and (SQLite) the WAL must have synced.
    pub async fn problems(&self, within: Duration) -> Vec<String> {
        let mut problems = Vec::new();
        match tokio::time::timeout(within, self.db.ping()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = ?e, "readiness: the database does not answer");
                problems.push("database: not reachable".to_owned());
            }
            Err(_) => problems.push(format!("database: no answer within {} ms", within.as_millis())),
        }
        problems.extend(self.health.problem(within).map(|why| format!("ledger: {why}")));
        if let Some(why) = self.db.wal_failure() {
            tracing::warn!(error = %why, "readiness: the WAL could not be synced");
            problems.push("storage: syncing the write-ahead log failed; restart spendgate".to_owned());
        }
        problems
    }

    /// The rate table in force now.
    pub fn rates(&self) -> Arc<RateTable> {
        self.rates.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// How stale rates are treated.
    pub fn fx(&self) -> FxRules {
        self.fx
    }

    pub fn snapshots(&self) -> &Snapshots {
        &self.snapshots
    }

    /// The agent's snapshot (from the cache); None when there is no such agent.
    pub async fn agent(&self, id: &AgentId) -> Result<Option<Arc<Versioned<Agent>>>> {
        self.snapshots.agent(&self.db, id).await
    }

    /// One authorization as the API shows it.
    pub async fn authorization(&self, id: &str) -> Result<Option<AuthorizationView>> {
        let id = id.to_owned();
        let row = self.db.read(move |conn| crate::store::ledger::find(conn, &id)).await?;
        Ok(row.as_ref().map(AuthorizationView::from_row))
    }

    /// The card a processor knows by `processor_card_id`.
    pub async fn card_for_processor(&self, processor: &'static str, id: &str) -> Result<Option<CardId>> {
        self.snapshots.card_for_processor(&self.db, processor, id).await
    }

    /// Decides and records one authorization, always within the budget. Never an error: a
    /// failure anywhere is a recorded decline (`internal_error`, `timeout`), so the path fails closed.
    pub async fn authorize(&self, auth: Authorize) -> AuthOutcome {
        self.authorize_within(auth, self.budget).await
    }

    /// `authorize` within `budget` or the configured budget, whichever is shorter: a processor's
    /// deadline, less a margin for the answer to reach it.
    pub async fn authorize_within(&self, auth: Authorize, budget: Duration) -> AuthOutcome {
        let deadline = Instant::now() + budget.min(self.budget);
        let attempt = tokio::time::timeout_at(deadline, self.try_authorize(&auth, deadline)).await;
        let reason = match attempt {
            Ok(Ok(outcome)) => return outcome,
            Ok(Err(e)) => {
                tracing::error!(error = %e, source = %auth.source, "authorization failed; declined");
                DeclineReason::InternalError
            }
            Err(_) => {
                tracing::warn!(
                    source = %auth.source,
                    budget_ms = budget.min(self.budget).as_millis() as u64,
                    "decision budget exceeded; declined"
                );
                DeclineReason::Timeout
            }
        };
        metrics::counter!("spendgate_decisions_failed_total", "reason" => reason.as_str()).increment(1);
        // Record the decline, and void any hold the writer may still commit for it.
        let failed = AuthOutcome::failed(reason, &auth.request);
        let (reply, _) = oneshot::channel();
        let _ = self.tx.try_send(Command::Abandon(Box::new(writer::AbandonCmd { auth, reason, reply })));
        failed
    }

    /// Borrows the request so that `authorize` keeps it for a decline: one copy goes to the writer.
    async fn try_authorize(&self, auth: &Authorize, deadline: Instant) -> Result<AuthOutcome> {
        let Some((card, agent)) = self.payer(&auth.payer).await? else {
            metrics::counter!("spendgate_decisions_total", "outcome" => "unknown_card").increment(1);
            return Ok(AuthOutcome::failed(DeclineReason::UnknownCard, &auth.request));
        };
        let (reply, answer) = oneshot::channel();
        let deadline = deadline.into_std();
        let cmd =
            writer::AuthorizeCmd { auth: auth.clone(), card, agent, deadline, verdict: None, dry_run: false, reply };
        self.send(Command::Authorize(Box::new(cmd))).await?;
        answer.await.map_err(|_| Error::Internal("the ledger writer stopped".into()))?
    }

    /// What `authorize` would answer now, recording nothing: the same snapshot, totals and rules,
    /// decided under the same locks, so the answer is the one a real request would get.
    /// `by_agent`: an agent key asks, and may have one dry run under way at a time (else 429).
    pub async fn dry_run(&self, auth: Authorize, by_agent: bool) -> Result<AuthOutcome> {
        let outcome = match self.payer(&auth.payer).await? {
            None => AuthOutcome::failed(DeclineReason::UnknownCard, &auth.request),
            Some((card, agent)) => {
                let _turn = match by_agent {
                    false => None,
                    true => Some(self.agents_asking.take(&agent.value.id).ok_or_else(|| {
                        Error::coded(
                            ErrorCode::TooManyDryRuns,
                            "this agent has a dry run under way; ask again once it is answered",
                        )
                    })?),
                };
                let (reply, answer) = oneshot::channel();
                let deadline = std::time::Instant::now() + self.budget;
                let cmd = writer::AuthorizeCmd { auth, card, agent, deadline, verdict: None, dry_run: true, reply };
                self.send(Command::Authorize(Box::new(cmd))).await?;
                answer.await.map_err(|_| Error::Internal("the ledger writer stopped".into()))??
            }
        };
        Ok(AuthOutcome { dry_run: true, unblock: outcome.reason.map(DeclineReason::remedy), ..outcome })
    }

    /// Records an authorization the processor decided on its own. Idempotent by external id; an
    /// approval over spendgate's own decline (a stand-in after a late answer) turns it into a hold.
    /// Returns None when the card is unknown.
    pub async fn record(&self, auth: Authorize, verdict: Verdict) -> Result<Option<AuthOutcome>> {
        let Some((card, agent)) = self.payer(&auth.payer).await? else { return Ok(None) };
        let (reply, answer) = oneshot::channel();
        let deadline = std::time::Instant::now() + self.budget;
        let cmd = writer::AuthorizeCmd { auth, card, agent, deadline, verdict: Some(verdict), dry_run: false, reply };
        self.send(Command::Authorize(Box::new(cmd))).await?;
        answer.await.map_err(|_| Error::Internal("the ledger writer stopped".into()))?.map(Some)
    }

    /// The payer's card (none for a wallet) and agent snapshots; None when either does not exist.
    async fn payer(&self, payer: &Payer) -> Result<Option<(Option<Arc<Versioned<Card>>>, Arc<Versioned<Agent>>)>> {
        Ok(match payer {
            Payer::Card(id) => self.snapshots.card(&self.db, id).await?.map(|(card, agent)| (Some(card), agent)),
            Payer::Wallet(id) => self.snapshots.agent(&self.db, id).await?.map(|agent| (None, agent)),
        })
    }

    pub async fn movement(&self, target: Target, external_id: &str, movement: Movement) -> Result<LifecycleOutcome> {
        self.move_hold(target, external_id, movement, None).await
    }

    /// A movement and the outcome of the payment it settles, in one commit.
    pub async fn settle(
        &self,
        target: Target,
        external_id: &str,
        movement: Movement,
        payment: PaymentRow,
    ) -> Result<LifecycleOutcome> {
        self.move_hold(target, external_id, movement, Some(Box::new(payment))).await
    }

    async fn move_hold(
        &self,
        target: Target,
        external_id: &str,
        movement: Movement,
        payment: Option<Box<PaymentRow>>,
    ) -> Result<LifecycleOutcome> {
        let external_id = external_id.to_owned();
        self.ask(|reply| {
            Command::Movement(Box::new(writer::MovementCmd { target, external_id, movement, payment, reply }))
        })
        .await
    }

    /// Treasury → agent, by `actor`.
    pub async fn fund(&self, agent: &AgentId, id: &str, amount: Money, actor: &Actor) -> Result<(TransferView, bool)> {
        let (agent_id, external_id, actor) = (agent.clone(), id.to_owned(), actor.clone());
        self.ask(|reply| Command::Fund(Box::new(writer::FundCmd { agent_id, external_id, amount, actor, reply }))).await
    }

    /// Agent → treasury (a sub-agent's, → its parent) of what is available (all of it when
    /// `amount` is None).
    pub async fn drain(
        &self,
        agent: &AgentId,
        id: &str,
        amount: Option<i64>,
        actor: &Actor,
    ) -> Result<(TransferView, bool)> {
        let (agent_id, external_id, actor) = (agent.clone(), id.to_owned(), actor.clone());
        self.ask(|reply| Command::Drain(Box::new(writer::DrainCmd { agent_id, external_id, amount, actor, reply })))
            .await
    }

    /// Parent → child, by `actor`.
    pub async fn allocate(
        &self,
        child: &AgentId,
        id: &str,
        amount: i64,
        actor: &Actor,
    ) -> Result<(TransferView, bool)> {
        let (child, external_id, actor) = (child.clone(), id.to_owned(), actor.clone());
        self.ask(|reply| Command::Allocate(Box::new(writer::AllocateCmd { child, external_id, amount, actor, reply })))
            .await
    }

    /// A deposit into or a withdrawal from a treasury, as a person records it.
    pub async fn record_treasury(
        &self,
        kind: TreasuryKind,
        id: &str,
        amount: Money,
        reference: Option<String>,
        actor: &Actor,
    ) -> Result<(TreasuryTransferView, bool)> {
        let (external_id, actor) = (id.to_owned(), actor.clone());
        let command = |reply| writer::TreasuryCmd { external_id, kind, amount, actor, reference, reply };
        self.ask(|reply| Command::Treasury(Box::new(command(reply)))).await
    }

    /// Credits a deposit read on the chain (once: the same log again replays the first credit);
    /// returns it as recorded and whether it was recorded before.
    pub async fn credit_deposit(&self, deposit: DepositRow) -> Result<(DepositRow, bool)> {
        self.ask(|reply| Command::Deposit(Box::new(writer::DepositCmd { deposit, reply }))).await
    }

    /// Voids holds authorized before `before`; returns how many.
    pub async fn expire_holds(&self, before: jiff::Timestamp) -> Result<usize> {
        self.ask(|reply| Command::Expire { before_ms: before.as_millisecond(), reply }).await
    }

    /// Sends the writer a command and waits for its answer.
    async fn ask<T>(&self, command: impl FnOnce(oneshot::Sender<Result<T>>) -> Command) -> Result<T> {
        let (reply, answer) = oneshot::channel();
        self.send(command(reply)).await?;
        answer.await.map_err(|_| Error::Internal("the ledger writer stopped".into()))?
    }

    async fn send(&self, cmd: Command) -> Result<()> {
        self.tx.send(cmd).await.map_err(|_| Error::Internal("the ledger writer stopped".into()))
    }

    pub async fn balance(&self, agent_id: &AgentId) -> Result<BalanceView> {
        let id = agent_id.clone();
        let found = self.db.read(move |conn| crate::store::ledger::balance(conn, &id)).await?;
        let (currency, b) = found.ok_or_else(|| Error::not_found("agent", agent_id.as_str()))?;
        BalanceView::new(&currency, &b)
    }

    /// How much of each limit over the agent and these of its cards is used now (a read: it
    /// counts what the database holds, as a decision made now would).
    pub async fn usage(&self, agent: &Agent, cards: Vec<Card>, trace: Option<String>) -> Result<Vec<LimitUsage>> {
        let horizon = policy::horizon_ms(std::iter::once(&agent.policy).chain(cards.iter().map(|c| &c.policy)));
        let now = crate::clock::now();
        let since = horizon.map(|h| now.as_millisecond().saturating_sub(h));
        let id = agent.id.clone();
        let rows = self.db.read(move |conn| crate::store::ledger::counting_since(conn, &id, since)).await?;
        let book = book::Book::of(&rows);
        let rates = self.rates();
        // Each ancestor's limits are counted over its subtree below (`ancestor_usage`).
        let snap = |card| self.counting_snapshot(agent, card, book.spends(), &rates, &agent.allowances);
        let traces = traces_of(trace.as_deref(), &cards);
        let mut out = policy::usage::usage(&snap(None), None, now);
        for t in &traces {
            out.extend(policy::usage::usage(&snap(None), Some(t), now));
        }
        for card in &cards {
            out.extend(policy::usage::usage(&snap(Some(card)), trace.as_deref().or(card.trace_id.as_deref()), now));
        }
        for (ancestor, owner) in agent.ancestors.iter().zip(policy::ANCESTORS) {
            out.extend(self.ancestor_usage(ancestor, owner, &traces, now).await?);
        }
        Ok(out)
    }

    /// An ancestor's limits as they stand for the agent under it: counted over the ancestor's whole
    /// subtree, as a decision counts them, and named as its declines would be (`parent.limit.…`).
    async fn ancestor_usage(
        &self,
        id: &AgentId,
        owner: &str,
        traces: &[&str],
        now: jiff::Timestamp,
    ) -> Result<Vec<LimitUsage>> {
        let Some(ancestor) = self.snapshots.agent(&self.db, id).await? else { return Ok(Vec::new()) };
        let ancestor = &ancestor.value;
        let since = policy::horizon_ms([&ancestor.policy]).map(|h| now.as_millisecond().saturating_sub(h));
        let root = id.clone();
        let rows = self
            .db
            .read(move |conn| {
                let mut rows = crate::store::ledger::counting_since(conn, &root, since)?;
                for member in crate::store::agents::descendants(conn, &root)? {
                    rows.extend(crate::store::ledger::counting_since(conn, &member, since)?);
                }
                Ok(rows)
            })
            .await?;
        let book = book::Book::of(&rows);
        let rates = self.rates();
        let snap = self.counting_snapshot(ancestor, None, book.spends(), &rates, &[]);
        let mut out = policy::usage::usage(&snap, None, now);
        for t in traces {
            out.extend(policy::usage::usage(&snap, Some(t), now));
        }
        for limit in &mut out {
            if let Some(rest) = limit.rule.strip_prefix("agent.") {
                limit.rule = format!("{owner}.{rest}");
            }
        }
        Ok(out)
    }

    /// What a read of the limits counts with: the spends given, no running totals, no balance and
    /// no ancestors (a usage read counts each ancestor's limits on their own).
    fn counting_snapshot<'a>(
        &'a self,
        agent: &'a Agent,
        card: Option<&'a Card>,
        spends: &'a [policy::Spend],
        rates: &'a RateTable,
        allowances: &'a [Allowance],
    ) -> policy::Snapshot<'a> {
        policy::Snapshot {
            agent,
            card,
            card_used: false,
            spends,
            totals: None,
            available: 0,
            rates,
            fx: self.fx,
            catalog: self.catalog,
            allowances,
            ancestors: &[],
        }
    }

    /// The agent's authorizations and transfers, oldest first, merged by time.
    pub async fn entries(
        &self,
        agent_id: &AgentId,
        filter: LedgerFilter,
        cursor: Option<String>,
        limit: i64,
    ) -> Result<(Vec<LedgerEntry>, Option<String>)> {
        let id = agent_id.clone();
        self.db.read(move |conn| views::entries(conn, &id, &filter, cursor.as_deref(), limit)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_writer_is_unready_when_stopped_stuck_or_failing() {
        let health = Arc::new(WriterHealth::new(Duration::from_millis(200)));
        let within = Duration::from_millis(50);
        assert_eq!(health.problem(within), None);
        health.busy(true);
        assert_eq!(health.problem(within), None, "a commit under way for less than the bound");
        std::thread::sleep(Duration::from_millis(60));
        assert!(health.problem(within).is_some_and(|p| p.contains("in one commit")));
        health.busy(false);
        health.committed(Some("connection reset".into()));
        assert!(health.problem(within).is_some_and(|p| p.contains("connection reset")));
        health.committed(None);
        assert_eq!(health.problem(within), None, "a good commit clears it");
        health.committed(Some("connection reset".into()));
        std::thread::sleep(Duration::from_millis(210));
        assert_eq!(health.problem(within), None, "with no commit since, a failure stops counting");
        // The thread's guard marks it stopped however it ends, a panic included.
        let guard = StopsWriter(health.clone());
        let _ = std::thread::spawn(move || {
            let _guard = guard;
            panic!("the writer dies");
        })
        .join();
        assert_eq!(health.problem(within).as_deref(), Some("the ledger writer has stopped"));
    }
}
