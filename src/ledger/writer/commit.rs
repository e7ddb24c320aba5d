//! The commit loop: takes what is queued as one batch, applies it in one transaction, and answers
//! only once that transaction is durable (on SQLite, once the WAL holding it is synced, by the
//! acknowledging thread). A batch that fails is retried command by command, so that one bad
//! command cannot fail the others.

use std::time::Instant;

use diesel::Connection;
use tokio::sync::mpsc;

use super::{Command, FollowUp, Reply, Writer};
use crate::error::{Error, Result};

/// A committed batch's answers and the approval requests it made, to be delivered once durable.
pub(super) struct Committed {
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
pub(super) fn spawn_acknowledger(
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

impl Writer {
    pub(super) fn run(&mut self, mut rx: mpsc::Receiver<Command>) {
        let mut batch = Vec::with_capacity(self.max_batch);
        loop {
            // What the last batches left to do goes first, waiting for nothing.
            if self.due.is_empty() {
                let Some(first) = rx.blocking_recv() else { break };
                batch.push(first);
            }
            let mut due = std::mem::take(&mut self.due);
            // One of each per agent; a top-up that crossed the line (and so may announce a short
            // treasury) before one that did not.
            due.sort_by(|a, b| match (a, b) {
                (FollowUp::TopUp { agent_id: x, crossed: p }, FollowUp::TopUp { agent_id: y, crossed: q }) => {
                    x.cmp(y).then(q.cmp(p))
                }
                _ => a.cmp(b),
            });
            due.dedup_by(|later, kept| match (later, kept) {
                (FollowUp::TopUp { agent_id: x, .. }, FollowUp::TopUp { agent_id: y, .. }) => x == y,
                (later, kept) => later == kept,
            });
            batch.extend(due.into_iter().map(Command::FollowUp));
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
                self.due.append(&mut self.follow_ups);
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
                self.disagreements.clear();
                self.links.clear();
                self.asked.clear();
                self.follow_ups.clear();
                if batch.len() > 1 {
                    tracing::warn!(error = %e, size = batch.len(), "ledger batch failed; retrying each command alone");
                    batch.into_iter().for_each(|cmd| self.process(vec![cmd]));
                } else if let Some(cmd) = batch.into_iter().next() {
                    cmd.fail(e);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc as std_mpsc;
    use std::time::Duration;

    use tokio::sync::oneshot;

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
