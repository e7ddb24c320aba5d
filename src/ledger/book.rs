//! One agent's ledger state in the writer's memory: the spends that count in windows, the cards
//! that have been used, and the ledger_seq it reflects. It is a cache of the database, checked
//! against the locked agent row before every use and caught up from the rows changed since.

use std::collections::{HashMap, HashSet};

use crate::domain::authorization::Rail;
use crate::domain::ids::CardId;
use crate::policy::Spend;
use crate::store::ledger::AuthorizationRow;

#[derive(Debug, Default)]
pub struct Book {
    pub seq: i64,
    spends: Vec<Spend>,
    /// Authorization id -> position in `spends`.
    index: HashMap<String, usize>,
    used_cards: HashSet<String>,
}

impl Book {
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

    /// Takes in an approved authorization as it now stands (new, posted, partly or fully voided).
    pub fn apply(&mut self, row: &AuthorizationRow) {
        if let Some(card) = &row.card_id {
            self.used_cards.insert(card.clone());
        }
        if row.counted > 0 {
            let spend = spend_of(row);
            match self.index.get(&row.id) {
                Some(&i) => self.spends[i] = spend,
                None => {
                    self.index.insert(row.id.clone(), self.spends.len());
                    self.spends.push(spend);
                }
            }
        } else if let Some(i) = self.index.remove(&row.id) {
            self.spends.swap_remove(i);
            if let Some(moved) = self.spends.get(i) {
                self.index.insert(moved.authorization_id.clone(), i);
            }
        }
    }
}

fn spend_of(row: &AuthorizationRow) -> Spend {
    Spend {
        authorization_id: row.id.clone(),
        card_id: row.card_id.clone().map(CardId::from_stored),
        card_currency: row.card_currency.parse().ok(),
        trace_id: row.trace_id.clone(),
        rail: if row.rail == "usdc" { Rail::Usdc } else { Rail::Card },
        mcc: row.mcc.clone(),
        merchant_id: row.merchant_id.clone(),
        merchant_name: row.merchant_name.clone(),
        at_ms: row.authorized_at,
        counted: row.counted,
        counted_card: row.counted_card,
    }
}
