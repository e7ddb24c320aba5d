//! The writer thread: group commit of ledger commands. Everything here runs inside one database
//! transaction per batch; nothing is answered before that transaction is on disk.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

use diesel::Connection;
use tokio::sync::{mpsc, oneshot};

use super::book::Book;
use super::views::{AuthOutcome, AuthorizationView, LifecycleOutcome, TransferView};
use super::{Authorize, LedgerSettings, Movement, Payer, Rates, StopsWriter, Target, Verdict, WriterHealth};
use crate::cache::{self, Snapshots, Versioned};
use crate::domain::agent::Agent;
use crate::domain::approval::{Allowance, ApprovalStatus, Ask};
use crate::domain::authorization::{AuthRequest, Decision, DeclineReason};
use crate::domain::card::Card;
use crate::domain::catalog::Catalog;
use crate::domain::event::Event;
use crate::domain::ids::{AgentId, ApprovalId, AuthorizationId, CardId, EventId, TransferId};
use crate::domain::money::{Currency, Money};
use crate::error::{Error, Result};
use crate::policy::{self, FxRules, Snapshot};
use crate::store::approvals::ApprovalRow;
use crate::store::ledger::{self as rows, AgentLedger, AuthorizationRow, TransferRow};
use crate::store::x402::PaymentRow;
use crate::store::{self, Db, DbConnection};

pub(super) enum Command {
    Authorize(Box<AuthorizeCmd>),
    Abandon(Box<AbandonCmd>),
    Movement(Box<MovementCmd>),
    Fund(Box<FundCmd>),
    Expire { before_ms: i64, reply: oneshot::Sender<Result<usize>> },
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

pub(super) struct FundCmd {
    pub agent_id: AgentId,
    pub external_id: String,
    pub amount: Money,
    pub reply: oneshot::Sender<Result<(TransferView, bool)>>,
}

enum Reply {
    Auth(AuthOutcome),
    Movement(Box<LifecycleOutcome>),
    Fund(TransferView, bool),
    Expired(usize),
    Done,
}

impl Command {
    fn answer(self, reply: Reply) {
        match (self, reply) {
            (Command::Authorize(c), Reply::Auth(o)) => drop(c.reply.send(Ok(o))),
            (Command::Movement(c), Reply::Movement(o)) => drop(c.reply.send(Ok(*o))),
            (Command::Fund(c), Reply::Fund(t, replayed)) => drop(c.reply.send(Ok((t, replayed)))),
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
            Command::Expire { reply, .. } => drop(reply.send(Err(e))),
            Command::Abandon(c) => {
                tracing::error!(error = %e, external_id = %c.auth.external_id, "could not record an abandoned authorization");
                let _ = c.reply.send(());
            }
        }
    }
}

/// A committed batch's answers and the approval requests it made, to be delivered once durable.
struct Committed {
    answers: Vec<(Command, Reply)>,
    asked: Vec<String>,
}

impl Committed {
    /// Answers, and hands the approval requests to the notifier, never waiting: a full queue
    /// leaves them to the notifier's sweep of the database.
    fn deliver(self, notify: Option<&mpsc::Sender<String>>) {
        self.answers.into_iter().for_each(|(cmd, reply)| cmd.answer(reply));
        for id in self.asked {
            if let Some(notify) = notify
                && notify.try_send(id).is_err()
            {
                tracing::warn!("approval notifier queue full; its sweep will send the message");
            }
        }
    }

    /// Committed but not known to be durable: each caller is told it failed, so nothing is
    /// approved that a power loss could take back (an authorization's caller declines it and has
    /// its hold voided, see `Ledger::authorize_within`).
    fn fail(self, why: &str) {
        let e = || Error::StorageUnavailable(why.to_owned());
        self.answers.into_iter().for_each(|(cmd, _)| cmd.fail(e()));
    }
}

/// SQLite: answers committed batches once the WAL holding them is synced. Meanwhile the writer
/// goes on with the next batch, so the disk's sync no longer holds up the decisions queued
/// behind it, and one sync covers every batch committed before it started.
fn spawn_acknowledger(
    mut sync: impl FnMut() -> Result<()> + Send + 'static,
    notify: Option<mpsc::Sender<String>>,
) -> std::sync::mpsc::Sender<Committed> {
    let (tx, rx) = std::sync::mpsc::channel::<Committed>();
    let run = move || {
        while let Ok(first) = rx.recv() {
            let group: Vec<Committed> = std::iter::once(first).chain(rx.try_iter()).collect();
            let started = Instant::now();
            let synced = sync();
            metrics::histogram!("spendgate_sqlite_wal_sync_seconds").record(started.elapsed().as_secs_f64());
            match synced {
                Ok(()) => group.into_iter().for_each(|c| c.deliver(notify.as_ref())),
                Err(e) => {
                    let why = match e {
                        Error::StorageUnavailable(why) => why,
                        other => other.to_string(),
                    };
                    group.into_iter().for_each(|c| c.fail(&why));
                }
            }
        }
    };
    std::thread::Builder::new().name("ledger-acks".into()).spawn(run).expect("the acknowledging thread starts");
    tx
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
    approval_ttl_ms: i64,
    /// Where new approval requests are announced once their batch is on disk.
    notify: Option<mpsc::Sender<String>>,
    /// This batch's new approval requests.
    asked: Vec<String>,
    /// SQLite: where committed batches wait for the WAL sync that makes them durable.
    acknowledger: Option<std::sync::mpsc::Sender<Committed>>,
    health: Arc<WriterHealth>,
}

pub(super) fn spawn(
    db: Db,
    snapshots: Snapshots,
    rates: Rates,
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
        catalog: crate::fixtures::catalog(),
        max_batch: settings.max_batch.max(1),
        books: HashMap::new(),
        unwritten: Vec::new(),
        unwritten_payments: Vec::new(),
        approval_ttl_ms: settings.approval_ttl.as_millis() as i64,
        notify: settings.asked.clone(),
        asked: Vec::new(),
        acknowledger: None,
    };
    if let Some(wal) = writer.db.wal() {
        writer.acknowledger = Some(spawn_acknowledger(move || wal.sync(), writer.notify.clone()));
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
}

impl Writer {
    fn run(&mut self, mut rx: mpsc::Receiver<Command>) {
        let mut batch = Vec::with_capacity(self.max_batch);
        while let Some(first) = rx.blocking_recv() {
            batch.push(first);
            while batch.len() < self.max_batch {
                match rx.try_recv() {
                    Ok(cmd) => batch.push(cmd),
                    Err(_) => break,
                }
            }
            metrics::histogram!("spendgate_ledger_batch_size").record(batch.len() as f64);
            let started = Instant::now();
            self.health.busy(true);
            self.process(std::mem::take(&mut batch));
            self.health.busy(false);
            metrics::histogram!("spendgate_ledger_batch_seconds").record(started.elapsed().as_secs_f64());
            self.db.settle_wal();
        }
    }

    /// Commits the batch and answers it; if the batch fails, each command is tried alone so that
    /// one bad command cannot fail the others.
    fn process(&mut self, batch: Vec<Command>) {
        let mut touched = Vec::new();
        let result = self
            .db
            .ledger_connection()
            .and_then(|mut conn| Connection::transaction(&mut *conn, |conn| self.apply(conn, &batch, &mut touched)));
        match &result {
            Ok(_) => self.health.committed(None),
            Err(Error::StorageUnavailable(why)) => self.health.committed(Some(why.clone())),
            Err(_) => {}
        }
        match result {
            Ok(replies) => {
                let committed = Committed {
                    answers: batch.into_iter().zip(replies).collect(),
                    asked: std::mem::take(&mut self.asked),
                };
                match &self.acknowledger {
                    Some(acknowledger) => {
                        if let Err(unsent) = acknowledger.send(committed) {
                            unsent.0.fail("the acknowledging thread has stopped");
                        }
                    }
                    None => committed.deliver(self.notify.as_ref()),
                }
            }
            Err(e) => {
                // What the books saw of the rolled-back transaction is not true: forget it.
                touched.iter().for_each(|a| drop(self.books.remove(a)));
                self.unwritten.clear();
                self.unwritten_payments.clear();
                self.asked.clear();
                if batch.len() > 1 {
                    tracing::warn!(error = %e, size = batch.len(), "ledger batch failed; retrying each command alone");
                    batch.into_iter().for_each(|cmd| self.process(vec![cmd]));
                } else if let Some(cmd) = batch.into_iter().next() {
                    cmd.fail(e);
                }
            }
        }
    }

    fn apply(&mut self, conn: &mut DbConnection, batch: &[Command], touched: &mut Vec<AgentId>) -> Result<Vec<Reply>> {
        let now = store::now();
        let now_ms = now.as_millisecond();

        // Which agents the batch touches, so their rows can be locked in one order (no deadlock
        // between two processes) before anything is read.
        let mut agent_ids = BTreeSet::new();
        let mut targets: Vec<Option<AuthorizationRow>> = Vec::with_capacity(batch.len());
        let mut expiring = Vec::new();
        for cmd in batch {
            let mut target = None;
            match cmd {
                Command::Authorize(c) => {
                    agent_ids.insert(c.agent.value.id.clone());
                }
                Command::Abandon(c) => match &c.auth.payer {
                    Payer::Card(card) => agent_ids.extend(store::cards::agent_of(conn, card)?),
                    Payer::Wallet(agent) => drop(agent_ids.insert(agent.clone())),
                },
                Command::Movement(c) => {
                    target = match &c.target {
                        Target::Id(id) => rows::find(conn, id)?,
                        Target::External { source, external_id } => rows::find_external(conn, source, external_id)?,
                    };
                    if let Some(row) = &target {
                        agent_ids.insert(AgentId::from_stored(row.agent_id.clone()));
                    }
                }
                Command::Fund(c) => {
                    agent_ids.insert(c.agent_id.clone());
                }
                Command::Expire { before_ms, .. } => {
                    expiring = rows::pending_before(conn, *before_ms, 500)?;
                    agent_ids.extend(expiring.iter().map(|r| AgentId::from_stored(r.agent_id.clone())));
                }
            }
            targets.push(target);
        }

        let agent_ids: Vec<AgentId> = agent_ids.into_iter().collect();
        let mut locked: HashMap<AgentId, Locked> = HashMap::with_capacity(agent_ids.len());
        for (id, ledger) in rows::lock_agents(conn, &agent_ids)? {
            touched.push(id.clone());
            let currency = ledger.currency.parse().map_err(|_| store::corrupt("agent currency", &ledger.currency))?;
            locked.insert(id, Locked { ledger, currency, agent: None });
        }
        self.catch_up(conn, &locked, now_ms)?;

        // Retries of authorizations already recorded answer with the first result.
        let external: Vec<(&str, &str)> = batch
            .iter()
            .filter_map(|cmd| match cmd {
                Command::Authorize(c) => Some((c.auth.source, c.auth.external_id.as_str())),
                Command::Abandon(c) => Some((c.auth.source, c.auth.external_id.as_str())),
                _ => None,
            })
            .collect();
        let mut recorded: HashMap<(String, String), AuthorizationRow> = HashMap::new();
        if !external.is_empty() {
            for row in rows::find_by_external(conn, &external)? {
                recorded.insert((row.source.clone(), row.external_id.clone()), row);
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
                    let (t, replayed) = self.fund(conn, c, &mut locked, now_ms)?;
                    Reply::Fund(t, replayed)
                }
                Command::Expire { .. } => Reply::Expired(self.expire(conn, &expiring, &mut locked, now_ms)?),
            };
            replies.push(reply);
        }

        self.write_authorizations(conn)?;
        rows::save_ledgers(conn, locked.iter().map(|(id, l)| (id, &l.ledger)))?;
        Ok(replies)
    }

    /// Stores a request for a person's approval of what `row` asked, or finds the same request
    /// still open; returns its id.
    fn ask(
        &mut self,
        conn: &mut DbConnection,
        row: &AuthorizationRow,
        ask: &Ask,
        deferred: Option<&String>,
        now_ms: i64,
    ) -> Result<String> {
        let request = ApprovalRow {
            id: ApprovalId::generate().to_string(),
            agent_id: row.agent_id.clone(),
            card_id: row.card_id.clone(),
            authorization_id: row.id.clone(),
            rail: row.rail.clone(),
            rule: row.rule.clone().unwrap_or_default(),
            single_use: ask.single_use,
            amount: row.amount,
            currency: row.currency.clone(),
            cap_amount: ask.amount,
            cap_currency: ask.currency.code().to_owned(),
            cap: ask.cap,
            spent: ask.spent,
            window_end_at: ask.window_end_ms,
            merchant_id: row.merchant_id.clone(),
            merchant_name: row.merchant_name.clone(),
            mcc: row.mcc.clone(),
            country: row.country.clone(),
            trace_id: row.trace_id.clone(),
            deferred: deferred.cloned(),
            status: ApprovalStatus::Pending.as_str().to_owned(),
            expires_at: now_ms + self.approval_ttl_ms,
            decided_by: None,
            decided_at: None,
            allowance_until: None,
            notify_status: if self.notify.is_some() { "pending" } else { "off" }.to_owned(),
            notify_attempts: 0,
            notify_error: None,
            created_at: now_ms,
            updated_at: now_ms,
            deferred_result: None,
        };
        if let Some(open) = store::approvals::find_pending_like(conn, &request, now_ms)? {
            return Ok(open.id);
        }
        store::approvals::insert(conn, &request)?;
        self.asked.push(request.id.clone());
        Ok(request.id)
    }

    /// Brings each locked agent's book up to the state before this batch (`seq - 1`) from the
    /// rows written since it last looked: by another process, or never loaded.
    /// Then drops, once a minute, the spends no limit of the agent or its cards can count any more.
    fn catch_up(&mut self, conn: &mut DbConnection, locked: &HashMap<AgentId, Locked>, now_ms: i64) -> Result<()> {
        let mut behind = Vec::new();
        for (id, l) in locked {
            let book = self.books.entry(id.clone()).or_insert_with(Book::unloaded);
            if book.seq != l.ledger.seq - 1 {
                behind.push((id.clone(), book.seq));
            }
            book.seq = l.ledger.seq;
        }
        for row in rows::approved_since(conn, &behind)? {
            if let Some(book) = self.books.get_mut(&AgentId::from_stored(row.agent_id.clone())) {
                book.apply(&row);
            }
        }
        for (id, l) in locked {
            let Some(book) = self.books.get_mut(id) else { continue };
            let version = Some(l.ledger.config_version);
            if book.horizon_of != version {
                book.horizon = horizon(conn, id)?;
                book.horizon_of = version;
            }
            if let Some(horizon) = book.horizon
                && now_ms - book.pruned_at_ms >= PRUNE_EVERY_MS
            {
                book.prune(now_ms.saturating_sub(horizon));
                book.pruned_at_ms = now_ms;
            }
        }
        Ok(())
    }

    /// Inserts the authorizations decided so far in this batch: at its end, or before a command
    /// that may read them back.
    fn write_authorizations(&mut self, conn: &mut DbConnection) -> Result<()> {
        rows::insert_authorizations(conn, &std::mem::take(&mut self.unwritten))?;
        for payment in std::mem::take(&mut self.unwritten_payments) {
            store::x402::insert(conn, &payment)?;
        }
        Ok(())
    }

    /// Stages an approved request's payment to be written with its hold; false when one is already
    /// stored (or staged) under its idempotency key, which then stands.
    fn stage_payment(&mut self, conn: &mut DbConnection, payment: &PaymentRow, hold: &str) -> Result<bool> {
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

    fn authorize(
        &mut self,
        conn: &mut DbConnection,
        c: &AuthorizeCmd,
        locked: &mut HashMap<AgentId, Locked>,
        recorded: &mut HashMap<(String, String), AuthorizationRow>,
        now: jiff::Timestamp,
    ) -> Result<AuthOutcome> {
        let key = (c.auth.source.to_owned(), c.auth.external_id.clone());
        let agent_id = &c.agent.value.id;
        let Some(l) = locked.get_mut(agent_id) else {
            return Ok(AuthOutcome::failed(DeclineReason::UnknownCard, &c.auth.request));
        };
        if let Some(row) = recorded.get(&key) {
            let overridden = c.verdict == Some(Verdict::Approved)
                && row.posted == 0
                && row.held == 0
                && (row.status == "declined" || row.reason.is_some());
            let withdrawn = c.verdict == Some(Verdict::Declined) && row.status == "pending" && row.posted == 0;
            if withdrawn {
                // The processor declined what spendgate approved (its answer came too late, or its own
                // controls said no): nothing will be captured, so the hold goes.
                self.write_authorizations(conn)?;
                let mut row = row.clone();
                let held = row.held;
                row.reason = Some(DeclineReason::ProcessorDeclined.as_str().to_owned());
                let external_id = format!("declined:{}", row.id);
                self.release(conn, &mut row, l, held, "void", &external_id, now.as_millisecond())?;
                let data = serde_json::json!({"authorization_id": row.id, "previous_reason": null});
                record_event(conn, &row, "authorization_overridden", row.reason.clone(), data, now)?;
                let outcome = AuthOutcome::from_row(&row, l.currency, l.ledger.balance.available(), false);
                recorded.insert(key, row);
                return Ok(outcome);
            }
            if !overridden {
                return Ok(AuthOutcome::from_row(row, l.currency, l.ledger.balance.available(), true));
            }
        }
        // A snapshot older than the agent's config_version is read again, under the lock.
        let version = l.ledger.config_version;
        let agent = match (&l.agent, c.agent.version == version) {
            (_, true) => c.agent.clone(),
            (Some(fresh), false) => fresh.clone(),
            (None, false) => {
                let fresh = Arc::new(
                    cache::load_agent(conn, agent_id)?.ok_or_else(|| Error::not_found("agent", agent_id.as_str()))?,
                );
                self.snapshots.put_agent(fresh.clone());
                fresh
            }
        };
        l.agent = Some(agent.clone());
        let card = match &c.card {
            None => None,
            Some(card) if card.version == version => Some(card.clone()),
            Some(card) => match cache::load_card(conn, &card.value.id)? {
                Some(fresh) => {
                    let fresh = Arc::new(fresh);
                    self.snapshots.put_card(fresh.clone());
                    Some(fresh)
                }
                None => return Ok(AuthOutcome::failed(DeclineReason::UnknownCard, &c.auth.request)),
            },
        };
        let card = card.as_ref().map(|c| &c.value);

        // The card's active trace tags requests that carry none, for trace limits as for the record.
        let tagged;
        let request = match (&c.auth.request.trace_id, card.and_then(|c| c.trace_id.as_ref())) {
            (None, Some(trace)) => {
                tagged = AuthRequest { trace_id: Some(trace.clone()), ..c.auth.request.clone() };
                &tagged
            }
            _ => &c.auth.request,
        };
        let book = self.books.get_mut(agent_id).expect("locked agents have a book");
        if c.verdict.is_none() {
            // The running totals follow the rules they sum for: a new version starts them over.
            if book.totals_of != Some(version) {
                book.totals.clear();
                book.totals_of = Some(version);
            }
            let (spends, totals) = book.spends_and_totals();
            totals.prepare(request, &agent.value, card, spends, self.catalog, now);
        }
        let book = &*book;
        let rates = self.rates.read().unwrap_or_else(|e| e.into_inner()).clone();
        let allowances: Vec<Allowance> = agent
            .value
            .allowances
            .iter()
            .filter(|a| !(a.single_use && book.approval_used(&a.approval_id)))
            .cloned()
            .collect();
        let snap = Snapshot {
            agent: &agent.value,
            card,
            card_used: card.is_some_and(|card| book.card_used(&card.id)),
            spends: book.spends(),
            available: l.ledger.balance.available(),
            rates: &rates,
            fx: self.fx,
            catalog: self.catalog,
            allowances: &allowances,
            totals: Some(&book.totals),
        };
        let decision = match c.verdict {
            Some(verdict) => processor_decision(verdict, request, &snap, now)?,
            None if Instant::now() > c.deadline => Decision::decline(DeclineReason::Timeout, None),
            None => policy::evaluate(request, &snap, now),
        };
        if c.dry_run {
            let row = new_row(&c.auth, agent_id, card, l, &decision, request.trace_id.clone(), now.as_millisecond());
            let available = l.ledger.balance.available() - row.held;
            // Nothing was recorded, so there is nothing to name; `Ledger::dry_run` marks the answer.
            return Ok(AuthOutcome {
                authorization_id: None,
                ..AuthOutcome::from_row(&row, l.currency, available, false)
            });
        }
        if let Some(previous) = recorded.get(&key).cloned() {
            return self.override_decline(conn, previous, &decision, l, recorded, key, now);
        }

        let mut row = new_row(&c.auth, agent_id, card, l, &decision, request.trace_id.clone(), now.as_millisecond());
        if let (Some(ask), None) = (&decision.ask, c.verdict) {
            row.approval_id = Some(self.ask(conn, &row, ask, c.auth.deferred.as_ref(), now.as_millisecond())?);
        }
        self.unwritten.push(row.clone());
        let mut payment_stored = false;
        if decision.approved() {
            l.ledger.balance.held += row.held;
            if let Some(book) = self.books.get_mut(agent_id) {
                book.apply(&row);
            }
            if let Some(payment) = &c.auth.payment {
                payment_stored = self.stage_payment(conn, payment, &row.id)?;
            }
        } else {
            record_decline_event(conn, &row, now)?;
        }
        let mut outcome = AuthOutcome::from_row(&row, l.currency, l.ledger.balance.available(), false);
        outcome.payment_stored = payment_stored;
        let label = if decision.approved() { "approved" } else { "declined" };
        metrics::counter!("spendgate_decisions_total", "outcome" => label).increment(1);
        recorded.insert(key, row);
        Ok(outcome)
    }

    /// The processor approved what spendgate declined (or answered too late for): the attempt
    /// becomes a hold after all, and the card's trail says whose decision it was.
    #[allow(clippy::too_many_arguments)]
    fn override_decline(
        &mut self,
        conn: &mut DbConnection,
        mut row: AuthorizationRow,
        decision: &Decision,
        l: &mut Locked,
        recorded: &mut HashMap<(String, String), AuthorizationRow>,
        key: (String, String),
        now: jiff::Timestamp,
    ) -> Result<AuthOutcome> {
        self.write_authorizations(conn)?;
        let amounts = decision.amounts.ok_or_else(|| Error::Internal("an approval without amounts".into()))?;
        let previous = row.reason.take();
        // The approval it asked for, if any, was not what let it through.
        row.approval_id = None;
        row.status = "pending".into();
        row.rule = decision.rule.clone();
        row.cap_amount = amounts.agent.amount;
        row.card_amount = amounts.card.amount;
        row.held = amounts.agent.amount;
        row.counted = row.held;
        row.counted_card = amounts.card.amount;
        l.ledger.balance.held += row.held;
        self.save_row(conn, &mut row, l, now.as_millisecond())?;
        let data = serde_json::json!({"authorization_id": row.id, "previous_reason": previous});
        record_event(conn, &row, "authorization_overridden", previous.clone(), data, now)?;
        let outcome = AuthOutcome::from_row(&row, l.currency, l.ledger.balance.available(), false);
        recorded.insert(key, row);
        Ok(outcome)
    }

    fn abandon(
        &mut self,
        conn: &mut DbConnection,
        c: &AbandonCmd,
        locked: &mut HashMap<AgentId, Locked>,
        recorded: &mut HashMap<(String, String), AuthorizationRow>,
        now: jiff::Timestamp,
    ) -> Result<()> {
        let key = (c.auth.source.to_owned(), c.auth.external_id.clone());
        if let Some(row) = recorded.get(&key).cloned() {
            let agent = AgentId::from_stored(row.agent_id.clone());
            let Some(l) = locked.get_mut(&agent) else { return Ok(()) };
            if row.status == "pending" && row.reason.is_none() {
                let mut row = row;
                row.reason = Some(c.reason.as_str().to_owned());
                let held = row.held;
                let external_id = format!("abandoned:{}", row.id);
                self.release(conn, &mut row, l, held, "void", &external_id, now.as_millisecond())?;
                // Its caller was told "declined": the payment committed with the hold is never sent.
                store::x402::fail_unsent(conn, &row.id, "the decision came after its budget", now.as_millisecond())?;
                recorded.insert(key, row);
            }
            return Ok(());
        }
        let (agent_id, card) = match &c.auth.payer {
            Payer::Card(id) => match cache::load_card(conn, id)? {
                Some(card) => (card.value.agent_id.clone(), Some(card.value)),
                None => return Ok(()),
            },
            Payer::Wallet(agent) => (agent.clone(), None),
        };
        let Some(l) = locked.get_mut(&agent_id) else { return Ok(()) };
        let decision = Decision::decline(c.reason, None);
        let trace = c.auth.request.trace_id.clone();
        let row = new_row(&c.auth, &agent_id, card.as_ref(), l, &decision, trace, now.as_millisecond());
        self.unwritten.push(row.clone());
        record_decline_event(conn, &row, now)?;
        recorded.insert(key, row);
        Ok(())
    }

    /// Voids `amount` of the row's hold (kind `void` or `expire`), freeing it in the windows.
    #[allow(clippy::too_many_arguments)]
    fn release(
        &mut self,
        conn: &mut DbConnection,
        row: &mut AuthorizationRow,
        l: &mut Locked,
        amount: i64,
        kind: &str,
        external_id: &str,
        now_ms: i64,
    ) -> Result<TransferRow> {
        row.held -= amount;
        row.counted -= amount;
        row.counted_card = card_share(row);
        if row.held == 0 {
            row.status = match (row.posted > 0, kind) {
                (true, _) => "posted",
                (false, "expire") => "expired",
                (false, _) => "voided",
            }
            .to_owned();
        }
        l.ledger.balance.held -= amount;
        self.save_row(conn, row, l, now_ms)?;
        let t = transfer(row, external_id, kind, amount, now_ms);
        rows::insert_transfer(conn, &t)?;
        Ok(t)
    }

    fn save_row(&mut self, conn: &mut DbConnection, row: &mut AuthorizationRow, l: &Locked, now_ms: i64) -> Result<()> {
        row.seq = l.ledger.seq;
        row.updated_at = now_ms;
        rows::update_amounts(conn, row)?;
        if let Some(book) = self.books.get_mut(&AgentId::from_stored(row.agent_id.clone())) {
            book.apply(row);
        }
        Ok(())
    }

    fn movement(
        &mut self,
        conn: &mut DbConnection,
        c: &MovementCmd,
        target: Option<AuthorizationRow>,
        locked: &mut HashMap<AgentId, Locked>,
        now_ms: i64,
    ) -> Result<LifecycleOutcome> {
        let missing = || Error::not_found("authorization", &c.target.to_string());
        let Some(stale) = target else { return Err(missing()) };
        // Read again under the agent's lock: the row may have moved since.
        let mut row = rows::find(conn, &stale.id)?.ok_or_else(missing)?;
        let agent = AgentId::from_stored(row.agent_id.clone());
        let l = locked.get_mut(&agent).ok_or_else(missing)?;

        let prior = rows::find_transfers(conn, &agent, &c.external_id)?;
        if let Some(first) = prior.first() {
            let same_kind = match c.movement {
                Movement::Capture { .. } => first.kind == "post",
                Movement::Reverse { .. } => first.kind == "void",
                Movement::Refund { .. } => first.kind == "refund",
                Movement::Adjust { .. } => matches!(first.kind.as_str(), "void" | "increase"),
            };
            if first.authorization_id.as_deref() != Some(row.id.as_str()) || !same_kind {
                return Err(conflict(
                    "idempotency_conflict",
                    format!("id {} was already used for another transfer", c.external_id),
                ));
            }
            let transfers = prior.iter().map(TransferView::from_row).collect::<Result<_>>()?;
            return Ok(LifecycleOutcome {
                authorization: AuthorizationView::from_row(&row),
                transfers,
                replayed: true,
            });
        }
        if row.status == "declined" {
            return Err(conflict("authorization_declined", "the authorization was declined: nothing was held".into()));
        }

        let mut transfers = Vec::new();
        match &c.movement {
            Movement::Capture { amount, currency } => {
                let amount = self.in_cap_currency(&row, *amount, currency)?;
                let post = amount.min(row.held);
                let excess = amount - post;
                let released = row.held - post;
                l.ledger.balance.held -= row.held;
                l.ledger.balance.spent += amount;
                row.held = 0;
                row.posted += amount;
                row.counted = row.posted;
                row.counted_card = card_share(&row);
                row.status = "posted".into();
                self.save_row(conn, &mut row, l, now_ms)?;
                transfers.push(transfer(&row, &c.external_id, "post", post, now_ms));
                if excess > 0 {
                    transfers.push(transfer(&row, &format!("{}:excess", c.external_id), "excess", excess, now_ms));
                }
                if released > 0 {
                    transfers.push(transfer(&row, &format!("{}:release", c.external_id), "void", released, now_ms));
                }
                for t in &transfers {
                    rows::insert_transfer(conn, t)?;
                }
            }
            Movement::Reverse { amount, currency } => {
                if row.held == 0 {
                    return Err(conflict("nothing_held", format!("authorization {} holds nothing to reverse", row.id)));
                }
                let amount = match amount {
                    Some(a) => {
                        let currency = currency.clone().unwrap_or_else(|| row.currency.clone());
                        self.in_cap_currency(&row, *a, &currency)?
                    }
                    None => row.held,
                };
                let amount = amount.min(row.held);
                transfers.push(self.release(conn, &mut row, l, amount, "void", &c.external_id, now_ms)?);
            }
            Movement::Refund { amount, currency } => {
                let currency = currency.clone().unwrap_or_else(|| row.currency.clone());
                let amount = self.in_cap_currency(&row, *amount, &currency)?;
                if row.refunded + amount > row.posted {
                    return Err(conflict(
                        "refund_exceeds_posted",
                        format!("refunds would total more than the {} posted", row.posted),
                    ));
                }
                row.refunded += amount;
                l.ledger.balance.refunded += amount;
                self.save_row(conn, &mut row, l, now_ms)?;
                let t = transfer(&row, &c.external_id, "refund", amount, now_ms);
                rows::insert_transfer(conn, &t)?;
                transfers.push(t);
            }
            Movement::Adjust { amount, currency } => {
                if row.status != "pending" {
                    return Err(conflict("nothing_held", format!("authorization {} is {}", row.id, row.status)));
                }
                let total = self.in_cap_currency(&row, *amount, currency)?;
                if total < row.held {
                    let less = row.held - total;
                    transfers.push(self.release(conn, &mut row, l, less, "void", &c.external_id, now_ms)?);
                } else if total > row.held {
                    // The processor approved more (an incremental authorization, an advice): a fact,
                    // recorded, and counted against limits like any hold.
                    let more = total - row.held;
                    row.held += more;
                    row.counted += more;
                    row.counted_card = card_share(&row);
                    l.ledger.balance.held += more;
                    self.save_row(conn, &mut row, l, now_ms)?;
                    let t = transfer(&row, &c.external_id, "increase", more, now_ms);
                    rows::insert_transfer(conn, &t)?;
                    transfers.push(t);
                } else {
                    // Nothing moves, but the id is spent (a void of 0): the same event delivered again
                    // after a later change must not set the hold back to this amount.
                    let t = transfer(&row, &c.external_id, "void", 0, now_ms);
                    rows::insert_transfer(conn, &t)?;
                    transfers.push(t);
                }
            }
        }
        let transfers = transfers.iter().map(TransferView::from_row).collect::<Result<_>>()?;
        Ok(LifecycleOutcome { authorization: AuthorizationView::from_row(&row), transfers, replayed: false })
    }

    /// A movement's amount in the agent's currency: at the authorization's own rate when it is in
    /// the authorization's currency, as is when in the agent's, else at today's rate. Rounded up.
    fn in_cap_currency(&self, row: &AuthorizationRow, amount: i64, currency: &str) -> Result<i64> {
        if amount <= 0 {
            return Err(Error::validation("amount must be a positive number of minor units"));
        }
        if currency.eq_ignore_ascii_case(&row.currency) && row.amount > 0 {
            return Ok(scale_up(amount, row.cap_amount, row.amount));
        }
        if currency.eq_ignore_ascii_case(&row.cap_currency) {
            return Ok(amount);
        }
        let unsupported = || Error::Unprocessable {
            code: "unsupported_currency",
            message: format!("cannot convert {currency} to {}", row.cap_currency),
        };
        let from: Currency = currency.parse().map_err(|_| unsupported())?;
        let to: Currency = row.cap_currency.parse().map_err(|_| unsupported())?;
        let rates = self.rates.read().unwrap_or_else(|e| e.into_inner()).clone();
        rates.convert(amount, from, to).map(|c| c.amount).map_err(|_| unsupported())
    }

    fn fund(
        &mut self,
        conn: &mut DbConnection,
        c: &FundCmd,
        locked: &mut HashMap<AgentId, Locked>,
        now_ms: i64,
    ) -> Result<(TransferView, bool)> {
        let l = locked.get_mut(&c.agent_id).ok_or_else(|| Error::not_found("agent", c.agent_id.as_str()))?;
        if let Some(first) = rows::find_transfers(conn, &c.agent_id, &c.external_id)?.first() {
            if first.kind != "fund" || first.amount != c.amount.amount || first.currency != c.amount.currency.code() {
                return Err(conflict(
                    "idempotency_conflict",
                    format!("id {} was already used for another transfer", c.external_id),
                ));
            }
            return Ok((TransferView::from_row(first)?, true));
        }
        if c.amount.currency != l.currency {
            return Err(Error::Unprocessable {
                code: "currency_mismatch",
                message: format!("the agent's balance is in {}, not {}", l.currency, c.amount.currency),
            });
        }
        l.ledger.balance.funded += c.amount.amount;
        let t = TransferRow {
            id: TransferId::generate().to_string(),
            external_id: c.external_id.clone(),
            agent_id: c.agent_id.to_string(),
            authorization_id: None,
            card_id: None,
            trace_id: None,
            kind: "fund".into(),
            amount: c.amount.amount,
            currency: l.currency.code().to_owned(),
            created_at: now_ms,
        };
        rows::insert_transfer(conn, &t)?;
        Ok((TransferView::from_row(&t)?, false))
    }

    fn expire(
        &mut self,
        conn: &mut DbConnection,
        expiring: &[AuthorizationRow],
        locked: &mut HashMap<AgentId, Locked>,
        now_ms: i64,
    ) -> Result<usize> {
        let mut n = 0;
        for stale in expiring {
            let Some(mut row) = rows::find(conn, &stale.id)? else { continue };
            let Some(l) = locked.get_mut(&AgentId::from_stored(row.agent_id.clone())) else { continue };
            if row.status != "pending" || row.held == 0 {
                continue;
            }
            let held = row.held;
            let external_id = format!("expire:{}", row.id);
            self.release(conn, &mut row, l, held, "expire", &external_id, now_ms)?;
            n += 1;
        }
        if n > 0 {
            tracing::info!(count = n, "expired holds voided");
        }
        Ok(n)
    }
}

/// How often an agent's book drops the spends past its horizon.
const PRUNE_EVERY_MS: i64 = 60_000;

/// How long the agent's spends must be kept: the longest window of its own and its cards' limits.
fn horizon(conn: &mut DbConnection, agent: &AgentId) -> Result<Option<i64>> {
    let Some(own) = store::agents::find(conn, agent)? else { return Ok(None) };
    let cards = store::cards::policies_of_agent(conn, agent)?;
    Ok(policy::horizon_ms(std::iter::once(&own.policy).chain(&cards)))
}

fn conflict(code: &'static str, message: String) -> Error {
    Error::Conflict { code, message }
}

/// ⌈amount × num / den⌉ without overflow.
fn scale_up(amount: i64, num: i64, den: i64) -> i64 {
    let (a, n, d) = (i128::from(amount), i128::from(num), i128::from(den));
    i64::try_from((a * n + d - 1) / d).unwrap_or(i64::MAX)
}

/// What the row counts in the card's currency, in proportion to what it counts in the agent's.
fn card_share(row: &AuthorizationRow) -> i64 {
    if row.cap_amount > 0 { scale_up(row.counted, row.card_amount, row.cap_amount) } else { row.counted }
}

fn new_row(
    auth: &Authorize,
    agent_id: &AgentId,
    card: Option<&Card>,
    l: &Locked,
    decision: &Decision,
    trace: Option<String>,
    now_ms: i64,
) -> AuthorizationRow {
    let (cap, card_amount) = decision.amounts.map_or((0, 0), |a| (a.agent.amount, a.card.amount));
    let held = if decision.approved() { cap } else { 0 };
    let req = &auth.request;
    AuthorizationRow {
        id: AuthorizationId::generate().to_string(),
        source: auth.source.to_owned(),
        external_id: auth.external_id.clone(),
        agent_id: agent_id.to_string(),
        card_id: card.map(|c| c.id.to_string()),
        rail: match req.rail {
            crate::domain::authorization::Rail::Card => "card",
            crate::domain::authorization::Rail::Usdc => "usdc",
        }
        .to_owned(),
        status: if decision.approved() { "pending" } else { "declined" }.to_owned(),
        reason: decision.decline.map(|r| r.as_str().to_owned()),
        rule: decision.rule.clone(),
        amount: req.amount,
        currency: req.currency.clone(),
        cap_amount: cap,
        cap_currency: l.currency.code().to_owned(),
        card_amount,
        card_currency: card.map_or(l.currency, |c| c.currency).code().to_owned(),
        fx_rate: decision.fx.as_ref().map(|f| f.rate.clone()),
        fx_date: decision.fx.as_ref().map(|f| f.date.clone()),
        fx_source: decision.fx.as_ref().and_then(|f| f.source).map(|s| s.as_str().to_owned()),
        held,
        posted: 0,
        counted: held,
        counted_card: if decision.approved() { card_amount } else { 0 },
        refunded: 0,
        merchant_id: req.merchant.id.clone(),
        merchant_name: req.merchant.name.clone(),
        mcc: req.merchant.mcc.clone(),
        country: req.merchant.country.clone(),
        trace_id: trace,
        seq: l.ledger.seq,
        authorized_at: now_ms,
        updated_at: now_ms,
        approval_id: decision.allowance.clone(),
    }
}

fn transfer(row: &AuthorizationRow, external_id: &str, kind: &str, amount: i64, now_ms: i64) -> TransferRow {
    TransferRow {
        id: TransferId::generate().to_string(),
        external_id: external_id.to_owned(),
        agent_id: row.agent_id.clone(),
        authorization_id: Some(row.id.clone()),
        card_id: row.card_id.clone(),
        trace_id: row.trace_id.clone(),
        kind: kind.to_owned(),
        amount,
        currency: row.cap_currency.clone(),
        created_at: now_ms,
    }
}

/// What a processor decided on its own, in the agent's and card's currencies.
fn processor_decision(
    verdict: Verdict,
    request: &AuthRequest,
    snap: &Snapshot<'_>,
    now: jiff::Timestamp,
) -> Result<Decision> {
    let rule = Some("processor".to_owned());
    match (verdict, policy::amounts_of(request, snap, now)) {
        (Verdict::Approved, Ok((amounts, fx))) => {
            Ok(Decision { decline: None, rule, amounts: Some(amounts), fx, allowance: None, ask: None })
        }
        (Verdict::Approved, Err(_)) => Err(Error::Unprocessable {
            code: "unsupported_currency",
            message: format!("cannot convert {} to the agent's currency to record the hold", request.currency),
        }),
        (Verdict::Declined, converted) => {
            let (amounts, fx) = converted.map_or((None, None), |(a, fx)| (Some(a), fx));
            Ok(Decision { rule, amounts, fx, ..Decision::decline(DeclineReason::ProcessorDeclined, None) })
        }
    }
}

fn record_event(
    conn: &mut DbConnection,
    row: &AuthorizationRow,
    kind: &str,
    reason: Option<String>,
    data: serde_json::Value,
    now: jiff::Timestamp,
) -> Result<()> {
    let event = Event {
        id: EventId::generate(),
        agent_id: AgentId::from_stored(row.agent_id.clone()),
        card_id: row.card_id.clone().map(CardId::from_stored),
        kind: kind.into(),
        actor: None,
        reason,
        data: Some(data),
        created_at: now,
    };
    store::events::insert(conn, &event)
}

/// Declines show in the card's trail, attempts on frozen cards included.
fn record_decline_event(conn: &mut DbConnection, row: &AuthorizationRow, now: jiff::Timestamp) -> Result<()> {
    let data = serde_json::json!({
        "authorization_id": row.id,
        "reason": row.reason,
        "rule": row.rule,
        "amount": {"amount": row.amount, "currency": row.currency},
        "merchant": {"id": row.merchant_id, "name": row.merchant_name, "mcc": row.mcc, "country": row.country},
        "trace_id": row.trace_id,
        "approval_id": row.approval_id,
    });
    record_event(conn, row, "authorization_declined", row.reason.clone(), data, now)
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc as std_mpsc;
    use std::time::Duration;

    use super::*;

    fn expired(n: usize) -> (Committed, oneshot::Receiver<Result<usize>>) {
        let (reply, answer) = oneshot::channel();
        (
            Committed { answers: vec![(Command::Expire { before_ms: 0, reply }, Reply::Expired(n))], asked: vec![] },
            answer,
        )
    }

    #[test]
    fn nothing_is_answered_before_its_sync_returns() {
        let (open_gate, gate) = std_mpsc::channel::<()>();
        let acknowledger =
            spawn_acknowledger(move || gate.recv().map_err(|_| Error::Internal("gate gone".into())), None);
        let (committed, mut answer) = expired(3);
        acknowledger.send(committed).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert!(answer.try_recv().is_err(), "answered while the sync was still under way");
        open_gate.send(()).unwrap();
        let answered = answer.blocking_recv().unwrap().unwrap();
        assert_eq!(answered, 3);
    }

    #[test]
    fn a_failed_sync_fails_its_batches_and_the_next_sync_decides_for_the_next() {
        let outcomes = std::sync::Mutex::new(vec![Ok(()), Err(Error::StorageUnavailable("disk gone".into()))]);
        let acknowledger = spawn_acknowledger(move || outcomes.lock().unwrap().pop().unwrap_or(Ok(())), None);
        let (first, first_answer) = expired(1);
        acknowledger.send(first).unwrap();
        let failed = first_answer.blocking_recv().unwrap().unwrap_err();
        assert!(matches!(&failed, Error::StorageUnavailable(why) if why.contains("disk gone")), "{failed:?}");
        let (second, second_answer) = expired(2);
        acknowledger.send(second).unwrap();
        assert_eq!(second_answer.blocking_recv().unwrap().unwrap(), 2);
    }
}
