//! Running totals of an agent's spends per limit and scope, so that a decision costs the same
//! however many spends its windows hold. Each total is the very sum `check_limit` would scan for:
//! the same spends (in its window, in its scope, under its filters, still counted), the same
//! amounts; kept exact as spends come, change and leave, and as the window slides. A limit whose
//! amounts would need today's rates is left to the scan, as is any total not yet brought up to the
//! moment of the decision.
//!
//! The ledger owns the totals beside the spends: `prepare` brings the request's totals up to `now`
//! before `evaluate`, `apply` takes in each changed spend, and a policy change or a prune starts
//! them over (they are rebuilt by one scan when next needed).

use std::collections::{HashMap, HashSet};

use jiff::Timestamp;

use super::{Spend, matches_filters, window};
use crate::domain::agent::Agent;
use crate::domain::authorization::{AuthRequest, Rail};
use crate::domain::card::Card;
use crate::domain::catalog::Catalog;
use crate::domain::money::Currency;
use crate::domain::policy::{Limit, Policy, Scope};

/// Most totals kept for one agent (trace-scoped limits make one per trace); past it they start over.
const MAX_TOTALS: usize = 10_000;

/// Which total: whose policy (a card's id, or the agent's), which of its limits, and which card or
/// trace the limit's scope picked (none for the agent).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TotalKey {
    pub card_policy: Option<String>,
    pub limit: usize,
    pub scope: Option<String>,
}

#[derive(Debug, Clone)]
struct Total {
    /// Spends authorized at or after this count.
    start_ms: i64,
    sum: i64,
    count: i64,
    filter: Filter,
}

/// A limit's scope and filters, resolved so that matching needs no catalog.
#[derive(Debug, Clone)]
struct Filter {
    scope: Scope,
    scope_id: Option<String>,
    rails: Vec<Rail>,
    /// The limit's MCCs and its groups' MCCs; None: any MCC.
    mccs: Option<HashSet<String>>,
    merchants: Vec<String>,
    currency: Currency,
    agent_currency: Currency,
}

impl Filter {
    fn new(limit: &Limit, catalog: &Catalog, scope_id: Option<String>, currency: Currency, agent: Currency) -> Self {
        let mccs = (!limit.mcc.is_empty() || !limit.mcc_groups.is_empty()).then(|| {
            let grouped = limit.mcc_groups.iter().filter_map(|g| catalog.groups.get(g)).flat_map(|g| g.mcc.iter());
            limit.mcc.iter().chain(grouped).cloned().collect()
        });
        Filter {
            scope: limit.scope,
            scope_id,
            rails: limit.rails.clone(),
            mccs,
            merchants: limit.merchants.clone(),
            currency,
            agent_currency: agent,
        }
    }

    /// What the spend adds to the total: (amount, 1), (0, 0), or None when counting it would need
    /// a rate (the total cannot be kept exactly).
    fn contribution(&self, s: &Spend, start_ms: i64) -> Option<(i64, i64)> {
        if s.counted <= 0 || s.at_ms < start_ms || !self.matches(s) {
            return Some((0, 0));
        }
        let amount = if s.card_currency == Some(self.currency) {
            s.counted_card
        } else if self.agent_currency == self.currency {
            s.counted
        } else {
            return None;
        };
        Some((amount, 1))
    }

    fn matches(&self, s: &Spend) -> bool {
        let in_scope = match self.scope {
            Scope::Agent => true,
            Scope::Card => s.card_id.as_deref() == self.scope_id.as_deref(),
            Scope::Trace => s.trace_id.is_some() && s.trace_id.as_deref() == self.scope_id.as_deref(),
        };
        if !in_scope || (!self.rails.is_empty() && !self.rails.contains(&s.rail)) {
            return false;
        }
        if let Some(mccs) = &self.mccs
            && !s.mcc.as_deref().is_some_and(|m| mccs.contains(m))
        {
            return false;
        }
        self.merchants.is_empty()
            || self
                .merchants
                .iter()
                .any(|p| s.merchant_id.as_deref() == Some(p.as_str()) || super::glob_match(p, &s.merchant_name))
    }
}

/// One agent's running totals.
#[derive(Debug, Default)]
pub struct Totals {
    entries: HashMap<TotalKey, Total>,
}

/// The policies a decision reads, as `check` orders them: the card's (if any), then the agent's;
/// each with its cap currency and its owner's card id.
fn policies<'a>(
    agent: &'a Agent,
    card: Option<&'a Card>,
) -> impl Iterator<Item = (&'a Policy, Currency, Option<&'a str>)> {
    let card_policy = card.map(|c| (&c.policy, c.currency, Some(c.id.as_str())));
    card_policy.into_iter().chain(std::iter::once((&agent.policy, agent.currency, None)))
}

/// The key of the total a limit reads for this request; None when the limit does not apply or
/// has nothing in scope (no card, no trace).
pub(super) fn key_for(
    index: usize,
    limit: &Limit,
    card_policy: Option<&str>,
    card: Option<&Card>,
    req: &AuthRequest,
) -> Option<TotalKey> {
    let scope = match limit.scope {
        Scope::Agent => None,
        Scope::Card => Some(card?.id.to_string()),
        Scope::Trace => Some(req.trace_id.clone()?),
    };
    Some(TotalKey { card_policy: card_policy.map(str::to_owned), limit: index, scope })
}

impl Totals {
    /// Forgets every total: the policies changed, or spends the windows reached were dropped.
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// The (sum, count) of a total kept up to exactly this window start.
    pub(super) fn get(&self, key: &TotalKey, start_ms: i64) -> Option<(i64, i64)> {
        self.entries.get(key).filter(|t| t.start_ms == start_ms).map(|t| (t.sum, t.count))
    }

    /// Brings the totals this request's limits read up to `now`: slides each window past the
    /// spends that left it, or builds a total by one scan. `spends` must be in time order.
    pub fn prepare(
        &mut self,
        req: &AuthRequest,
        agent: &Agent,
        card: Option<&Card>,
        spends: &[Spend],
        catalog: &Catalog,
        now: Timestamp,
    ) {
        if self.entries.len() > MAX_TOTALS {
            self.entries.clear();
        }
        for (policy, currency, owner) in policies(agent, card) {
            for (index, limit) in policy.limits.iter().enumerate() {
                let m = &req.merchant;
                if !matches_filters(limit, catalog, req.rail, m.mcc.as_deref(), (m.id.as_deref(), &m.name)) {
                    continue;
                }
                let Some(key) = key_for(index, limit, owner, card, req) else { continue };
                // Spends of other cards in other currencies would need today's rates: scanned.
                if currency != agent.currency && !(owner.is_some() && limit.scope == Scope::Card) {
                    continue;
                }
                let start = window::start_ms(&limit.window, now);
                let exact = match self.entries.get_mut(&key) {
                    Some(total) if total.start_ms <= start => slide(total, spends, start),
                    _ => {
                        let filter = Filter::new(limit, catalog, key.scope.clone(), currency, agent.currency);
                        build(filter, spends, start).map(|total| drop(self.entries.insert(key.clone(), total)))
                    }
                };
                if exact.is_none() {
                    self.entries.remove(&key);
                }
            }
        }
    }

    /// Takes in a spend that changed: `before` as it was counted (None if new), `after` as it is
    /// now (None if it no longer counts).
    pub fn apply(&mut self, before: Option<&Spend>, after: Option<&Spend>) {
        self.entries.retain(|_, t| {
            let old = before.map_or(Some((0, 0)), |s| t.filter.contribution(s, t.start_ms));
            let new = after.map_or(Some((0, 0)), |s| t.filter.contribution(s, t.start_ms));
            let (Some((old_sum, old_count)), Some((new_sum, new_count))) = (old, new) else { return false };
            match t.sum.checked_sub(old_sum).and_then(|s| s.checked_add(new_sum)) {
                Some(sum) => {
                    t.sum = sum;
                    t.count += new_count - old_count;
                    true
                }
                None => false,
            }
        });
    }
}

/// A total of the spends at or after `start`, by one scan; None if one needs a rate.
fn build(filter: Filter, spends: &[Spend], start: i64) -> Option<Total> {
    let mut total = Total { start_ms: start, sum: 0, count: 0, filter };
    let from = spends.partition_point(|s| s.at_ms < start);
    for s in &spends[from..] {
        let (sum, count) = total.filter.contribution(s, start)?;
        total.sum = total.sum.checked_add(sum)?;
        total.count += count;
    }
    Some(total)
}

/// Moves the window's start forward to `start`, taking out the spends it passed.
fn slide(total: &mut Total, spends: &[Spend], start: i64) -> Option<()> {
    let from = spends.partition_point(|s| s.at_ms < total.start_ms);
    let to = spends.partition_point(|s| s.at_ms < start);
    for s in &spends[from..to] {
        let (sum, count) = total.filter.contribution(s, total.start_ms)?;
        total.sum -= sum;
        total.count -= count;
    }
    total.start_ms = start;
    Some(())
}

#[cfg(test)]
impl Totals {
    /// Checks every total against one built afresh by a scan of `spends`.
    pub(super) fn assert_exact(&self, spends: &[Spend]) -> usize {
        for (key, total) in &self.entries {
            let fresh = build(total.filter.clone(), spends, total.start_ms).expect("no rates needed");
            assert_eq!((total.sum, total.count), (fresh.sum, fresh.count), "{key:?} drifted");
        }
        self.entries.len()
    }
}
