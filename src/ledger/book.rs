//! One agent's ledger state in the writer's memory: the spends that count in windows, the cards
//! that have been used, and the ledger_seq it reflects. It is a cache of the database, checked
//! against the locked agent row before every use and caught up from the rows changed since.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::domain::approval::Allowance;
use crate::domain::ids::CardId;
use crate::ledger::core::Hold;
use crate::policy::Spend;
use crate::policy::totals::Totals;
use crate::store::ledger::AuthorizationRow;

#[derive(Debug, Default)]
pub struct Book {
    pub seq: i64,
    /// How long spends are kept (`policy::horizon_ms` of the agent's and its cards' policies; None:
    /// for ever), as of the agent's `config_version` in `horizon_of`.
    pub horizon: Option<i64>,
    pub horizon_of: Option<i64>,
    /// When spends past the horizon were last dropped.
    pub pruned_at_ms: i64,
    /// In time order, so a binary search by the row's authorization time (which never changes)
    /// finds a spend again; a spend that no longer counts stays, at 0, until pruned.
    spends: Vec<Spend>,
    /// Running totals of `spends` per limit, as of the agent's `config_version` in `totals_of`.
    pub totals: Totals,
    pub totals_of: Option<i64>,
    used_cards: HashSet<String>,
    /// Single-use approvals some authorization has used.
    used_approvals: HashSet<String>,
    /// What each authorization made under an approval counts now (kept whole, never pruned: a
    /// mandate's use must not forget a spend its window no longer needs), and their sum per approval.
    under_approval: HashMap<String, i64>,
    approval_spent: HashMap<String, i64>,
    /// One copy of each string the spends share (cards, traces, MCCs, merchants).
    strings: HashSet<Arc<str>>,
}

impl Book {
    /// A book of these rows alone (a read of what a limit counts, outside the writer).
    pub fn of(rows: &[AuthorizationRow]) -> Self {
        let mut book = Book::default();
        for row in rows {
            book.apply(row);
        }
        book
    }

    /// A book that has read nothing yet: the first catch-up reads all of the agent's rows.
    pub fn unloaded() -> Self {
        Book { seq: -1, ..Book::default() }
    }

    pub fn spends(&self) -> &[Spend] {
        &self.spends
    }

    pub fn card_used(&self, card: &CardId) -> bool {
        self.used_cards.contains(card.as_str())
    }

    pub fn approval_used(&self, approval_id: &str) -> bool {
        self.used_approvals.contains(approval_id)
    }

    /// What the authorizations made under this approval (a mandate) count now, in the agent's currency.
    pub fn approval_spent(&self, approval_id: &str) -> i64 {
        self.approval_spent.get(approval_id).copied().unwrap_or(0)
    }

    /// What of the approvals people granted is still to spend: single-use ones not yet used, and
    /// each mandate with what has been spent under it.
    pub fn allowances(&self, granted: &[Allowance]) -> Vec<Allowance> {
        granted
            .iter()
            .filter(|a| !(a.single_use && self.approval_used(&a.approval_id)))
            .map(|a| {
                let mut a = a.clone();
                if let Some(mandate) = &mut a.mandate {
                    mandate.used = self.approval_spent(&a.approval_id);
                }
                a
            })
            .collect()
    }

    /// The spends, and the totals to bring up to date over them.
    pub fn spends_and_totals(&mut self) -> (&[Spend], &mut Totals) {
        (&self.spends, &mut self.totals)
    }

    /// Drops the spends authorized before `before_ms` (no window can count them any more) and
    /// those that no longer count; the totals start over.
    pub fn prune(&mut self, before_ms: i64) {
        self.spends.retain(|s| s.at_ms >= before_ms && s.counted > 0);
        self.strings.retain(|s| Arc::strong_count(s) > 1);
        self.totals.clear();
    }

    /// Where the spend of this authorization, authorized at `at_ms`, is in `spends`.
    fn position(&self, id: &str, at_ms: i64) -> Option<usize> {
        let from = self.spends.partition_point(|s| s.at_ms < at_ms);
        self.spends[from..]
            .iter()
            .take_while(|s| s.at_ms == at_ms)
            .position(|s| s.authorization_id == id)
            .map(|i| from + i)
    }

    fn spend_of(&mut self, row: &AuthorizationRow) -> Spend {
        Spend {
            authorization_id: row.id.clone(),
            card_id: row.card_id.as_deref().map(|s| self.shared(s)),
            card_currency: row.card_currency.parse().ok(),
            trace_id: row.trace_id.as_deref().map(|s| self.shared(s)),
            rail: row.rail,
            mcc: row.mcc.as_deref().map(|s| self.shared(s)),
            merchant_id: row.merchant_id.as_deref().map(|s| self.shared(s)),
            merchant_name: self.shared(&row.merchant_name),
            at_ms: row.authorized_at,
            counted: row.counted,
            counted_card: row.counted_card,
        }
    }

    fn shared(&mut self, s: &str) -> Arc<str> {
        match self.strings.get(s) {
            Some(shared) => shared.clone(),
            None => {
                let shared: Arc<str> = Arc::from(s);
                self.strings.insert(shared.clone());
                shared
            }
        }
    }

    /// Takes in an approved authorization as it now stands (new, posted, partly or fully voided).
    pub fn apply(&mut self, row: &AuthorizationRow) {
        if let Some(card) = &row.card_id {
            self.used_cards.insert(card.clone());
        }
        if let Some(approval) = &row.approval_id {
            self.used_approvals.insert(approval.clone());
            let before = self.under_approval.insert(row.id.clone(), row.counted).unwrap_or(0);
            *self.approval_spent.entry(approval.clone()).or_default() += row.counted - before;
        }
        let spend = self.spend_of(row);
        match self.position(&row.id, row.authorized_at) {
            Some(i) => {
                let before = std::mem::replace(&mut self.spends[i], spend);
                self.totals.apply(Some(&before), Some(&self.spends[i]));
            }
            None if row.counted > 0 => {
                self.totals.apply(None, Some(&spend));
                // In time order: other processes' spends, caught up later, go in near the end.
                let at = self.spends.partition_point(|s| s.at_ms <= spend.at_ms);
                self.spends.insert(at, spend);
            }
            None => {}
        }
    }
}

/// The hold, back on its row.
pub fn set_hold(row: &mut AuthorizationRow, hold: &Hold) {
    let Hold { status, cap_amount, card_amount, held, posted, counted, counted_card, refunded } = *hold;
    row.status = status;
    row.cap_amount = cap_amount;
    row.card_amount = card_amount;
    row.held = held;
    row.posted = posted;
    row.counted = counted;
    row.counted_card = counted_card;
    row.refunded = refunded;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, at_ms: i64, counted: i64) -> AuthorizationRow {
        AuthorizationRow {
            id: id.into(),
            source: crate::domain::ledger::Source::Native,
            external_id: id.into(),
            agent_id: "agt_1".into(),
            card_id: Some("crd_1".into()),
            rail: crate::domain::authorization::Rail::Card,
            status: crate::domain::ledger::HoldStatus::Pending,
            reason: None,
            rule: None,
            amount: counted,
            currency: "USD".into(),
            cap_amount: counted,
            cap_currency: "USD".into(),
            card_amount: counted,
            card_currency: "USD".into(),
            fx_rate: None,
            fx_date: None,
            fx_source: None,
            held: counted,
            posted: 0,
            counted,
            counted_card: counted,
            refunded: 0,
            merchant_id: None,
            merchant_name: "OPENAI".into(),
            mcc: Some("5734".into()),
            country: Some("US".into()),
            trace_id: None,
            seq: 1,
            authorized_at: at_ms,
            updated_at: at_ms,
            approval_id: None,
            chain_n: 1,
            recipient: None,
            recipient_named_by: None,
            max_amount: None,
        }
    }

    fn counted(book: &Book) -> Vec<(String, i64)> {
        let mut all: Vec<_> =
            book.spends().iter().filter(|s| s.counted > 0).map(|s| (s.authorization_id.clone(), s.counted)).collect();
        all.sort();
        all
    }

    #[test]
    fn pruning_drops_old_spends_and_keeps_the_rest_updatable() {
        let mut book = Book::unloaded();
        for (id, at) in [("a", 1_000), ("b", 2_000), ("c", 3_000), ("d", 4_000)] {
            book.apply(&row(id, at, 100));
        }
        book.prune(2_500);
        assert_eq!(counted(&book), [("c".into(), 100), ("d".into(), 100)]);

        // Later changes still land on the right spend, and a pruned one coming back is taken in.
        book.apply(&row("d", 4_000, 40));
        book.apply(&row("c", 3_000, 0));
        book.apply(&row("a", 1_000, 70));
        assert_eq!(counted(&book), [("a".into(), 70), ("d".into(), 40)]);
        assert!(book.card_used(&CardId::from_stored("crd_1".into())));
    }

    #[test]
    fn spends_share_repeated_strings_until_pruned() {
        let mut book = Book::unloaded();
        book.apply(&row("a", 1_000, 100));
        book.apply(&row("b", 2_000, 100));
        let [a, b] = book.spends() else { panic!("two spends") };
        assert!(Arc::ptr_eq(&a.merchant_name, &b.merchant_name));
        assert!(Arc::ptr_eq(a.card_id.as_ref().unwrap(), b.card_id.as_ref().unwrap()));
        assert_eq!(book.strings.len(), 3, "card, MCC and merchant name, once each");
        book.prune(3_000);
        assert!(book.strings.is_empty(), "strings no spend holds are let go");
    }

    #[test]
    fn spends_caught_up_out_of_order_stay_in_time_order_and_updatable() {
        let mut book = Book::unloaded();
        for (id, at) in [("a", 1_000), ("b", 3_000), ("c", 2_000), ("d", 3_000), ("e", 500)] {
            book.apply(&row(id, at, 100));
        }
        let order: Vec<(&str, i64)> = book.spends().iter().map(|s| (s.authorization_id.as_str(), s.at_ms)).collect();
        assert_eq!(order, [("e", 500), ("a", 1_000), ("c", 2_000), ("b", 3_000), ("d", 3_000)]);
        // Each is found again, also among others of the same millisecond.
        book.apply(&row("b", 3_000, 10));
        book.apply(&row("d", 3_000, 20));
        book.apply(&row("e", 500, 0));
        assert_eq!(counted(&book), [("a".into(), 100), ("b".into(), 10), ("c".into(), 100), ("d".into(), 20)]);
        assert_eq!(book.spends().len(), 5, "a spend that stops counting stays, at 0, until pruned");
        book.prune(0);
        assert_eq!(book.spends().len(), 4);
    }
}
