//! Catching up: each locked agent's in-memory book is brought up to date from the rows written
//! since it last looked (by another process sharing the database, or never loaded), and drops
//! the spends no limit can count any more.

use std::collections::HashMap;

use super::{Locked, Writer};
use crate::domain::ids::AgentId;
use crate::error::Result;
use crate::ledger::book::Book;
use crate::policy;
use crate::store::ledger as rows;
use crate::store::{self, DbConnection};

impl Writer {
    /// Brings each locked agent's book up to the state before this batch (`seq - 1`) from the
    /// rows written since it last looked: by another process, or never loaded.
    /// Then drops, once a minute, the spends no limit of the agent or its cards can count any more.
    pub(super) fn catch_up(
        &mut self,
        conn: &mut DbConnection,
        locked: &HashMap<AgentId, Locked>,
        now_ms: i64,
    ) -> Result<()> {
        let mut behind = Vec::new();
        let mut subtrees = Vec::new();
        for (id, l) in locked {
            let book = self.books.entry(id.clone()).or_insert_with(Book::unloaded);
            if book.seq != l.ledger.seq - 1 {
                if l.ledger.children > 0 {
                    subtrees.push(id.clone());
                } else {
                    behind.push((id.clone(), book.seq));
                }
            }
            book.seq = l.ledger.seq;
        }
        for row in rows::approved_since(conn, &behind)? {
            if let Some(book) = self.books.get_mut(&AgentId::from_stored(row.agent_id.clone())) {
                book.apply(&row);
            }
        }
        // A book that spans a subtree holds its descendants' spends, which their own seqs number:
        // behind, it is read again whole. Every change under it locks it, so on one node it never
        // falls behind; it does when another node decided for the subtree since.
        for id in subtrees {
            let mut members: Vec<(AgentId, i64)> = vec![(id.clone(), -1)];
            members.extend(store::agents::descendants(conn, &id)?.into_iter().map(|d| (d, -1)));
            let book = self.books.get_mut(&id).expect("a book for each locked agent");
            let seq = book.seq;
            *book = Book::unloaded();
            book.seq = seq;
            for row in rows::approved_since(conn, &members)? {
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
}

/// How often an agent's book drops the spends past its horizon.
const PRUNE_EVERY_MS: i64 = 60_000;

/// How long the agent's spends must be kept: the longest window of its own and its cards' limits.
fn horizon(conn: &mut DbConnection, agent: &AgentId) -> Result<Option<i64>> {
    let Some(own) = store::agents::find(conn, agent)? else { return Ok(None) };
    let cards = store::cards::policies_of_agent(conn, agent)?;
    Ok(policy::horizon_ms(std::iter::once(&own.policy).chain(&cards)))
}
