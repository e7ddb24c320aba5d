//! The writer thread, a thin shell around the ledger's pure core: for each batch it loads (locks
//! the agents' rows, catches their books up), applies a step of `policy` and `ledger::core` to
//! each command, saves what the step made, and commits; `commit` answers once that is durable.
//!
//! - `commit`: the batch loop, the transaction, and the acknowledgements;
//! - `catch_up`: each agent's in-memory book, brought up to date with the rows;
//! - `decide`: authorizations (decide, record, override, abandon, dry run);
//! - `lifecycle`: what happens to a hold afterwards (capture, reverse, refund, adjust, expire);
//! - `treasury`: money between a treasury and its agents (funding, drains, top-ups), between a
//!   parent and its child (allocations), and what backs a treasury (deposits, withdrawals).

mod catch_up;
mod commit;
mod decide;
mod lifecycle;
mod treasury;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};

use super::book::Book;
use super::views::{AuthOutcome, LifecycleOutcome, TransferView, TreasuryTransferView};
use super::{Actor, Authorize, LedgerSettings, Movement, Payer, Rates, StopsWriter, Target, Verdict, WriterHealth};
use crate::cache::{self, Snapshots, Versioned};
use crate::domain::agent::Agent;
use crate::domain::authorization::DeclineReason;
use crate::domain::card::Card;
use crate::domain::catalog::Catalog;
use crate::domain::event::Event;
use crate::domain::ids::AgentId;
use crate::domain::ledger::{Source, TreasuryKind};
use crate::domain::money::{Currency, Money};
use crate::error::{Error, Result};
use crate::policy::FxRules;
use crate::store::chain::{Chained, LinkRow};
use crate::store::deposits::DepositRow;
use crate::store::ledger::{self as rows, AgentLedger, AuthorizationRow};
use crate::store::policies::DisagreementRow;
use crate::store::x402::PaymentRow;
use crate::store::{self, Db, DbConnection};

pub(super) enum Command {
    Authorize(Box<AuthorizeCmd>),
    Abandon(Box<AbandonCmd>),
    Movement(Box<MovementCmd>),
    Fund(Box<FundCmd>),
    Drain(Box<DrainCmd>),
    Allocate(Box<AllocateCmd>),
    Treasury(Box<TreasuryCmd>),
    Deposit(Box<DepositCmd>),
    /// What a committed batch left to do for an agent, in a batch of its own.
    FollowUp(FollowUp),
    Expire {
        before_ms: i64,
        reply: oneshot::Sender<Result<usize>>,
    },
}

pub(super) struct AuthorizeCmd {
    pub auth: Authorize,
    /// None for a wallet payment.
    pub card: Option<Arc<Versioned<Card>>>,
    pub agent: Arc<Versioned<Agent>>,
    pub deadline: Instant,
    /// None: decide by policy. Some: the processor already decided; record it.
    pub verdict: Option<Verdict>,
    /// Decide and answer, recording nothing: no hold, no decline, no approval request.
    pub dry_run: bool,
    pub reply: oneshot::Sender<Result<AuthOutcome>>,
}

/// The caller answered with a decline (timeout, internal error): record it, and void any hold
/// that was written for the same authorization after all.
pub(super) struct AbandonCmd {
    pub auth: Authorize,
    pub reason: DeclineReason,
    pub reply: oneshot::Sender<()>,
}

pub(super) struct MovementCmd {
    pub target: Target,
    pub external_id: String,
    pub movement: Movement,
    /// A payment's outcome, recorded in the movement's own transaction.
    pub payment: Option<Box<PaymentRow>>,
    pub reply: oneshot::Sender<Result<LifecycleOutcome>>,
}

/// What a batch leaves for right after it commits, so that no answer waits for it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum FollowUp {
    /// The agent's top-up rule: the batch took its balance under the line (`crossed`: from at or
    /// above it).
    TopUp { agent_id: AgentId, crossed: bool },
    /// A deactivated agent got money back (a hold released, a refund): drain it to the treasury
    /// (to its parent, for a sub-agent).
    Drain { agent_id: AgentId },
}

impl FollowUp {
    fn agent_id(&self) -> &AgentId {
        match self {
            FollowUp::TopUp { agent_id, .. } | FollowUp::Drain { agent_id } => agent_id,
        }
    }
}

pub(super) struct FundCmd {
    pub agent_id: AgentId,
    pub external_id: String,
    pub amount: Money,
    /// Who moves it, and why.
    pub actor: Actor,
    pub reply: oneshot::Sender<Result<(TransferView, bool)>>,
}

pub(super) struct DrainCmd {
    pub agent_id: AgentId,
    pub external_id: String,
    /// None: all that is available.
    pub amount: Option<i64>,
    pub actor: Actor,
    pub reply: oneshot::Sender<Result<(TransferView, bool)>>,
}

/// Money from an agent's parent into its balance.
pub(super) struct AllocateCmd {
    pub child: AgentId,
    pub external_id: String,
    pub amount: i64,
    pub actor: Actor,
    pub reply: oneshot::Sender<Result<(TransferView, bool)>>,
}

/// A deposit into or a withdrawal from a treasury, recorded by a person.
pub(super) struct TreasuryCmd {
    pub external_id: String,
    pub kind: TreasuryKind,
    pub amount: Money,
    pub actor: Actor,
    pub reference: Option<String>,
    pub reply: oneshot::Sender<Result<(TreasuryTransferView, bool)>>,
}

/// A token transfer into an agent's wallet, read on the chain: the treasury's deposit and the
/// agent's funding in one transaction, once per (network, transaction, log).
pub(super) struct DepositCmd {
    /// As read; the writer sets what it credited.
    pub deposit: DepositRow,
    pub reply: oneshot::Sender<Result<(DepositRow, bool)>>,
}

enum Reply {
    Auth(AuthOutcome),
    Movement(Box<LifecycleOutcome>),
    Fund(TransferView, bool),
    Treasury(TreasuryTransferView, bool),
    Deposit(Box<DepositRow>, bool),
    Expired(usize),
    Done,
}

impl Command {
    fn answer(self, reply: Reply) {
        match (self, reply) {
            (Command::Authorize(c), Reply::Auth(o)) => drop(c.reply.send(Ok(o))),
            (Command::Movement(c), Reply::Movement(o)) => drop(c.reply.send(Ok(*o))),
            (Command::Fund(c), Reply::Fund(t, replayed)) => drop(c.reply.send(Ok((t, replayed)))),
            (Command::Drain(c), Reply::Fund(t, replayed)) => drop(c.reply.send(Ok((t, replayed)))),
            (Command::Allocate(c), Reply::Fund(t, replayed)) => drop(c.reply.send(Ok((t, replayed)))),
            (Command::Treasury(c), Reply::Treasury(t, replayed)) => drop(c.reply.send(Ok((t, replayed)))),
            (Command::Deposit(c), Reply::Deposit(d, replayed)) => drop(c.reply.send(Ok((*d, replayed)))),
            (Command::FollowUp(_), Reply::Done) => {}
            (Command::Expire { reply, .. }, Reply::Expired(n)) => drop(reply.send(Ok(n))),
            (Command::Abandon(c), _) => {
                let _ = c.reply.send(());
            }
            (cmd, _) => cmd.fail(Error::Internal("mismatched ledger reply".into())),
        }
    }

    fn fail(self, e: Error) {
        match self {
            Command::Authorize(c) => drop(c.reply.send(Err(e))),
            Command::Movement(c) => drop(c.reply.send(Err(e))),
            Command::Fund(c) => drop(c.reply.send(Err(e))),
            Command::Drain(c) => drop(c.reply.send(Err(e))),
            Command::Allocate(c) => drop(c.reply.send(Err(e))),
            Command::Treasury(c) => drop(c.reply.send(Err(e))),
            Command::Deposit(c) => drop(c.reply.send(Err(e))),
            Command::FollowUp(f) => {
                tracing::error!(error = %e, follow_up = ?f, "could not follow a batch up; the agent's next change tries again");
            }
            Command::Expire { reply, .. } => drop(reply.send(Err(e))),
            Command::Abandon(c) => {
                tracing::error!(error = %e, external_id = %c.auth.external_id, "could not record an abandoned authorization");
                let _ = c.reply.send(());
            }
        }
    }
}

struct Writer {
    db: Db,
    snapshots: Snapshots,
    rates: Rates,
    fx: FxRules,
    catalog: &'static Catalog,
    max_batch: usize,
    books: HashMap<AgentId, Book>,
    /// This batch's new authorizations, inserted together (one round trip on PostgreSQL).
    unwritten: Vec<AuthorizationRow>,
    /// Payments approved in this batch, inserted right after their holds.
    unwritten_payments: Vec<PaymentRow>,
    /// Where drafts in shadow decided this batch's authorizations otherwise, inserted with them.
    disagreements: Vec<DisagreementRow>,
    /// The audit chain's links of this batch's writes, inserted with its authorizations.
    links: Vec<LinkRow>,
    approval_ttl_ms: i64,
    /// Where new approval requests are announced once their batch is on disk.
    notify: Option<mpsc::Sender<String>>,
    /// This batch's new approval requests.
    asked: Vec<String>,
    /// What this batch leaves to do once it commits.
    follow_ups: Vec<FollowUp>,
    /// Follow-ups of committed batches, for the next batch.
    due: Vec<FollowUp>,
    /// SQLite: where committed batches wait for the WAL sync that makes them durable.
    acknowledger: Option<std::sync::mpsc::Sender<commit::Committed>>,
    health: Arc<WriterHealth>,
}

pub(super) fn spawn(
    db: Db,
    snapshots: Snapshots,
    rates: Rates,
    catalog: &'static Catalog,
    settings: &LedgerSettings,
    rx: mpsc::Receiver<Command>,
    health: Arc<WriterHealth>,
) {
    let mut writer = Writer {
        health: health.clone(),
        db,
        snapshots,
        rates,
        fx: settings.fx,
        catalog,
        max_batch: settings.max_batch.max(1),
        books: HashMap::new(),
        unwritten: Vec::new(),
        unwritten_payments: Vec::new(),
        disagreements: Vec::new(),
        links: Vec::new(),
        approval_ttl_ms: settings.approval_ttl.as_millis() as i64,
        notify: settings.asked.clone(),
        asked: Vec::new(),
        follow_ups: Vec::new(),
        due: Vec::new(),
        acknowledger: None,
    };
    if let Some(wal) = writer.db.wal() {
        writer.acknowledger = Some(commit::spawn_acknowledger(move || wal.sync(), writer.notify.clone()));
    }
    std::thread::Builder::new()
        .name("ledger-writer".into())
        .spawn(move || {
            let _marks_stopped = StopsWriter(health);
            writer.run(rx)
        })
        .expect("the ledger writer thread starts");
}

/// One batch's view of an agent it has locked.
struct Locked {
    ledger: AgentLedger,
    currency: Currency,
    agent: Option<Arc<Versioned<Agent>>>,
    /// The available balance when the batch locked the agent: the batch that takes it below the
    /// agent's `alerts.balance_below` announces it (once per fall: the next batch opens below).
    opening: i64,
    /// What the batch's last approval for the agent was for, which that announcement names.
    spent_by: Option<serde_json::Value>,
    /// Its parent, its parent's parent, …: locked with it when its spend changes, and their books
    /// (which span their subtrees) changed with its own.
    ancestors: Vec<AgentId>,
}

/// The batch's authorizations already recorded, by (source, external id): retries answer with them.
type Recorded = HashMap<(Source, String), AuthorizationRow>;

impl Writer {
    /// One batch in one transaction: lock the agents it touches (in id order), catch their books
    /// up, find the retries among its authorizations, apply each command, write what they made.
    pub(super) fn apply(
        &mut self,
        conn: &mut DbConnection,
        batch: &[Command],
        touched: &mut Vec<AgentId>,
    ) -> Result<Vec<Reply>> {
        let now = store::now();
        let now_ms = now.as_millisecond();

        // Which agents the batch touches, so their rows can be locked in one order (no deadlock
        // between two processes) before anything is read. An agent whose spend or money changes
        // comes with its ancestors: their limits count its spend, its money may go to its parent.
        let mut agent_ids = BTreeSet::new();
        let mut lineage: HashMap<AgentId, Vec<AgentId>> = HashMap::new();
        let mut spending = Vec::new();
        let mut targets: Vec<Option<AuthorizationRow>> = Vec::with_capacity(batch.len());
        let mut expiring = Vec::new();
        for cmd in batch {
            let mut target = None;
            match cmd {
                Command::Authorize(c) => {
                    let agent = &c.agent.value;
                    lineage.insert(agent.id.clone(), agent.ancestors.clone());
                    agent_ids.insert(agent.id.clone());
                }
                Command::Abandon(c) => match &c.auth.payer {
                    Payer::Card(card) => spending.extend(store::cards::agent_of(conn, card)?),
                    Payer::Wallet(agent) => spending.push(agent.clone()),
                },
                Command::Movement(c) => {
                    target = match &c.target {
                        Target::Id(id) => rows::find(conn, id)?,
                        Target::External { source, external_id } => rows::find_external(conn, *source, external_id)?,
                    };
                    if let Some(row) = &target {
                        spending.push(AgentId::from_stored(row.agent_id.clone()));
                    }
                }
                Command::Fund(c) => drop(agent_ids.insert(c.agent_id.clone())),
                // A drain goes to the agent's parent when it has one; an allocation comes from it.
                Command::Drain(c) => spending.push(c.agent_id.clone()),
                Command::Allocate(c) => spending.push(c.child.clone()),
                Command::FollowUp(f) => spending.push(f.agent_id().clone()),
                Command::Treasury(_) => {}
                Command::Deposit(c) => drop(agent_ids.insert(AgentId::from_stored(c.deposit.agent_id.clone()))),
                Command::Expire { before_ms, .. } => {
                    expiring = rows::pending_before(conn, *before_ms, 500)?;
                    spending.extend(expiring.iter().map(|r| AgentId::from_stored(r.agent_id.clone())));
                }
            }
            targets.push(target);
        }
        self.find_lineage(conn, &spending, &mut lineage)?;
        agent_ids.extend(spending);
        for ancestors in lineage.values() {
            agent_ids.extend(ancestors.iter().cloned());
        }

        let agent_ids: Vec<AgentId> = agent_ids.into_iter().collect();
        let mut locked: HashMap<AgentId, Locked> = HashMap::with_capacity(agent_ids.len());
        for (id, ledger) in rows::lock_agents(conn, &agent_ids)? {
            touched.push(id.clone());
            let currency = ledger.currency.parse().map_err(|_| store::corrupt("agent currency", &ledger.currency))?;
            let opening = ledger.balance.available();
            let ancestors = lineage.remove(&id).unwrap_or_default();
            locked.insert(id, Locked { ledger, currency, agent: None, opening, spent_by: None, ancestors });
        }
        self.catch_up(conn, &locked, now_ms)?;

        // The treasuries the batch moves money of, locked after its agents (always in that order).
        let currencies: Vec<Currency> = batch
            .iter()
            .filter_map(|cmd| match cmd {
                Command::Fund(c) => Some(c.amount.currency),
                Command::Treasury(c) => Some(c.amount.currency),
                Command::Deposit(_) => Some(Currency::USD),
                Command::Drain(c) => locked.get(&c.agent_id).map(|l| l.currency),
                Command::FollowUp(f) => locked.get(f.agent_id()).map(|l| l.currency),
                _ => None,
            })
            .collect();
        let mut treasuries: treasury::Treasuries = if currencies.is_empty() {
            HashMap::new()
        } else {
            store::treasury::lock(conn, &currencies)?.into_iter().map(|t| (t.currency, t)).collect()
        };

        // Retries of authorizations already recorded answer with the first result.
        let external: Vec<(Source, &str)> = batch
            .iter()
            .filter_map(|cmd| match cmd {
                Command::Authorize(c) => Some((c.auth.source, c.auth.external_id.as_str())),
                Command::Abandon(c) => Some((c.auth.source, c.auth.external_id.as_str())),
                _ => None,
            })
            .collect();
        let mut recorded: Recorded = HashMap::new();
        if !external.is_empty() {
            for row in rows::find_by_external(conn, &external)? {
                recorded.insert((row.source, row.external_id.clone()), row);
            }
        }

        let mut replies = Vec::with_capacity(batch.len());
        for (cmd, target) in batch.iter().zip(targets) {
            if !matches!(cmd, Command::Authorize(_)) {
                self.write_authorizations(conn)?;
            }
            let reply = match cmd {
                Command::Authorize(c) => Reply::Auth(self.authorize(conn, c, &mut locked, &mut recorded, now)?),
                Command::Abandon(c) => {
                    self.abandon(conn, c, &mut locked, &mut recorded, now)?;
                    Reply::Done
                }
                Command::Movement(c) => {
                    let moved = self.movement(conn, c, target, &mut locked, now_ms)?;
                    if let Some(payment) = &c.payment {
                        store::x402::update_outcome(conn, payment)?;
                    }
                    Reply::Movement(Box::new(moved))
                }
                Command::Fund(c) => {
                    let (t, replayed) = self.fund(conn, c, &mut locked, &mut treasuries, now_ms)?;
                    Reply::Fund(t, replayed)
                }
                Command::Drain(c) => {
                    let (t, replayed) = self.drain(conn, c, &mut locked, &mut treasuries, now_ms)?;
                    Reply::Fund(t, replayed)
                }
                Command::Allocate(c) => {
                    let (t, replayed) = self.allocate(conn, c, &mut locked, now_ms)?;
                    Reply::Fund(t, replayed)
                }
                Command::Treasury(c) => {
                    let (t, replayed) = self.record_treasury(conn, c, &mut treasuries, now_ms)?;
                    Reply::Treasury(t, replayed)
                }
                Command::Deposit(c) => {
                    let (d, replayed) = self.credit_deposit(conn, c, &mut locked, &mut treasuries, now_ms)?;
                    Reply::Deposit(Box::new(d), replayed)
                }
                Command::FollowUp(FollowUp::TopUp { agent_id, crossed }) => {
                    self.top_up(conn, agent_id, *crossed, &mut locked, &mut treasuries, now)?;
                    Reply::Done
                }
                Command::FollowUp(FollowUp::Drain { agent_id }) => {
                    self.drain_deactivated(conn, agent_id, &mut locked, &mut treasuries, now_ms)?;
                    Reply::Done
                }
                Command::Expire { .. } => Reply::Expired(self.expire(conn, &expiring, &mut locked, now_ms)?),
            };
            replies.push(reply);
        }

        for (id, l) in locked.iter_mut() {
            self.announce_low_balance(conn, id, l, now)?;
            self.note_follow_ups(conn, id, l)?;
        }
        self.write_authorizations(conn)?;
        rows::save_ledgers(conn, locked.iter().map(|(id, l)| (id, &l.ledger)))?;
        for t in treasuries.values() {
            store::treasury::save(conn, t)?;
        }
        Ok(replies)
    }

    /// Inserts the authorizations decided so far in this batch: at its end, or before a command
    /// that may read them back.
    pub(super) fn write_authorizations(&mut self, conn: &mut DbConnection) -> Result<()> {
        rows::insert_authorizations(conn, &std::mem::take(&mut self.unwritten))?;
        for payment in std::mem::take(&mut self.unwritten_payments) {
            store::x402::insert(conn, &payment)?;
        }
        store::policies::insert_disagreements(conn, &std::mem::take(&mut self.disagreements))?;
        store::chain::insert_links(conn, &std::mem::take(&mut self.links))
    }

    /// The ancestors of each of these agents not in `lineage` yet: from its snapshot when cached
    /// (a parent never changes), else read, those without a parent in one query.
    fn find_lineage(
        &self,
        conn: &mut DbConnection,
        ids: &[AgentId],
        lineage: &mut HashMap<AgentId, Vec<AgentId>>,
    ) -> Result<()> {
        let mut unknown = Vec::new();
        for id in ids {
            if lineage.contains_key(id) {
                continue;
            }
            match self.snapshots.cached_agent(id) {
                Some(agent) => drop(lineage.insert(id.clone(), agent.value.ancestors.clone())),
                None => unknown.push(id.clone()),
            }
        }
        if unknown.is_empty() {
            return Ok(());
        }
        let with_parents = store::agents::with_parents(conn, &unknown)?;
        for id in unknown {
            let ancestors = if with_parents.contains(&id) { store::agents::ancestors(conn, &id)? } else { Vec::new() };
            lineage.insert(id, ancestors);
        }
        Ok(())
    }

    /// Brings the books of an authorization's agent and of each of its ancestors (whose books
    /// span their subtrees) to the row as it now stands.
    pub(super) fn book_row(&mut self, row: &AuthorizationRow, ancestors: &[AgentId]) {
        let own = AgentId::from_stored(row.agent_id.clone());
        for id in std::iter::once(&own).chain(ancestors) {
            if let Some(book) = self.books.get_mut(id) {
                book.apply(row);
            }
        }
    }

    /// Makes `record` the next link of its agent's audit chain; the link is written with the batch.
    pub(super) fn chain<R: Chained>(&mut self, l: &mut Locked, record: &mut R) {
        self.links.push(store::chain::link(&mut l.ledger.chain, record));
    }

    /// The agent as of the locked `config_version`: the batch's, or `hint` (the caller's
    /// snapshot) or the cache's when that new, or else read again under the lock.
    fn locked_agent(
        &mut self,
        conn: &mut DbConnection,
        id: &AgentId,
        l: &mut Locked,
        hint: Option<&Arc<Versioned<Agent>>>,
    ) -> Result<Arc<Versioned<Agent>>> {
        let version = l.ledger.config_version;
        let current = |a: &&Arc<Versioned<Agent>>| a.version == version;
        let agent = match hint.filter(current).or(l.agent.as_ref().filter(current)) {
            Some(agent) => agent.clone(),
            None => match self.snapshots.cached_agent(id).filter(|a| a.version == version) {
                Some(agent) => agent,
                None => {
                    let fresh = cache::load_agent(conn, id)?.ok_or_else(|| Error::not_found("agent", id.as_str()))?;
                    let fresh = Arc::new(fresh);
                    self.snapshots.put_agent(fresh.clone());
                    fresh
                }
            },
        };
        l.agent = Some(agent.clone());
        Ok(agent)
    }

    /// Records `balance_low` when the batch took the agent's available balance from at or above
    /// its `alerts.balance_below` to under it.
    fn announce_low_balance(
        &mut self,
        conn: &mut DbConnection,
        id: &AgentId,
        l: &mut Locked,
        now: jiff::Timestamp,
    ) -> Result<()> {
        let available = l.ledger.balance.available();
        if available >= l.opening {
            return Ok(());
        }
        let agent = self.locked_agent(conn, id, l, None)?;
        let Some(threshold) = agent.value.policy.alerts.as_ref().and_then(|a| a.balance_below) else {
            return Ok(());
        };
        if available >= threshold || l.opening < threshold {
            return Ok(());
        }
        let money = |amount: i64| serde_json::json!({"amount": amount, "currency": l.currency.code()});
        let mut data = serde_json::json!({
            "agent_name": agent.value.name,
            "threshold": money(threshold),
            "available": money(available),
            "held": money(l.ledger.balance.held),
        });
        if let (Some(data), Some(serde_json::Value::Object(spent_by))) = (data.as_object_mut(), &l.spent_by) {
            data.extend(spent_by.clone());
        }
        let event = Event::by_spendgate(id, None, "balance_low", now).data(data);
        self.record_event(conn, l, &event)
    }

    /// Notes what the batch leaves to do for an agent once it commits (in a batch of its own, so
    /// no answer waits for it): a top-up when it took the balance under the rule's line, a drain
    /// when a deactivated agent got money back.
    /// The locked row says whether the agent is deactivated; its policy is read only on a fall
    /// (which `announce_low_balance` has read it for already).
    fn note_follow_ups(&mut self, conn: &mut DbConnection, id: &AgentId, l: &mut Locked) -> Result<()> {
        let available = l.ledger.balance.available();
        if available > l.opening && available > 0 && l.ledger.deactivated {
            self.follow_ups.push(FollowUp::Drain { agent_id: id.clone() });
        }
        if available >= l.opening {
            return Ok(());
        }
        let agent = self.locked_agent(conn, id, l, None)?;
        let Some(rule) = agent.value.policy.funding.as_ref().and_then(|f| f.top_up) else { return Ok(()) };
        if available < rule.below {
            self.follow_ups.push(FollowUp::TopUp { agent_id: id.clone(), crossed: l.opening >= rule.below });
        }
        Ok(())
    }

    /// Records an event in the agent's trail, as the next link of its chain.
    pub(super) fn record_event(&mut self, conn: &mut DbConnection, l: &mut Locked, event: &Event) -> Result<()> {
        let link = store::events::insert_linked(conn, event, &mut l.ledger.chain)?;
        self.links.push(link);
        Ok(())
    }

    /// Stages an approved request's payment to be written with its hold; false when one is already
    /// stored (or staged) under its idempotency key, which then stands.
    pub(super) fn stage_payment(&mut self, conn: &mut DbConnection, payment: &PaymentRow, hold: &str) -> Result<bool> {
        let same = |p: &PaymentRow| p.agent_id == payment.agent_id && p.idempotency_key == payment.idempotency_key;
        let agent = AgentId::from_stored(payment.agent_id.clone());
        if self.unwritten_payments.iter().any(same)
            || store::x402::find_by_key(conn, &agent, &payment.idempotency_key)?.is_some()
        {
            return Ok(false);
        }
        self.unwritten_payments.push(PaymentRow { authorization_id: hold.to_owned(), ..payment.clone() });
        Ok(true)
    }
}
