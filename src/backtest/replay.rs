//! The replay: one agent's recorded history run again, link by link, through the policy core and
//! the ledger core, with drafts in place of policies over a range of time.
//!
//! It rebuilds what each decision read as the writer had it: the balance from every funding and
//! movement, the spends that count in windows (with their running totals), single-use cards and
//! approvals used, what people granted and when, each card's and the agent's status and rules as
//! they changed. Before the range (and outside the drafts' targets) the recorded rules apply; in
//! it, the drafts do. A decision the drafts change changes what follows: a decline it adds holds
//! nothing and the movements recorded on it are skipped; an approval it adds is held as asked.
//!
//! Some decisions were not the policy's to make (a processor's own, a decision past its time
//! budget) or read what the replay cannot know (rates when the currency could not be converted,
//! the recipient of a USDC payment recorded before requests kept it): those follow the record and
//! are listed, not compared.

use std::collections::HashMap;

use crate::domain::agent::{Agent, AgentStatus};
use crate::domain::approval::Allowance;
use crate::domain::authorization::{Amounts, AuthRequest, DeclineReason, Merchant, NamedBy, Rail, Recipient};
use crate::domain::card::{Card, CardStatus};
use crate::domain::catalog::Catalog;
use crate::domain::event::Event;
use crate::domain::ledger::{Balance, HoldStatus};
use crate::domain::money::Money;
use crate::domain::policy::Policy;
use crate::ledger::book::Book;
use crate::ledger::core::{self, Hold};
use crate::policy::FxRules;
use crate::policy::fx::RateTable;
use crate::policy::{self, Snapshot};
use crate::store::history::Recorded;
use crate::store::ledger::{AuthorizationRow, TransferRow};

use super::report::{Outcome, Report, Unknowable};

/// How often (in the history's time) the book drops spends past every window, as the writer does.
const PRUNE_EVERY_MS: i64 = 600_000;

/// Policies to replay in place of the recorded ones, over `from_ms..to_ms`.
#[derive(Debug, Clone, Default)]
pub struct Drafts {
    pub agent: Option<Policy>,
    pub cards: HashMap<String, Policy>,
    pub from_ms: i64,
    pub to_ms: i64,
}

/// What decisions read besides the history.
#[derive(Clone, Copy)]
pub struct Context<'a> {
    pub catalog: &'a Catalog,
    pub rates: &'a RateTable,
    pub fx: FxRules,
}

/// The agent and its cards under one set of rules.
#[derive(Clone)]
struct World {
    agent: Agent,
    cards: HashMap<String, Card>,
}

/// A hold as the replay has it, and its row (request and amounts) as the book takes it in.
struct Held {
    hold: Hold,
    row: AuthorizationRow,
}

pub struct Replay<'a> {
    context: Context<'a>,
    drafts: Drafts,
    /// The recorded rules, and the same with the drafts in place.
    recorded: World,
    drafted: World,
    balance: Balance,
    holds: HashMap<String, Held>,
    book: Book,
    /// What people granted so far, and every approval of the agent people granted, by id.
    granted: Vec<Allowance>,
    approvals: HashMap<String, Allowance>,
    /// Authorizations the processor approved after spendgate declined: the reason spendgate gave.
    overridden: HashMap<String, String>,
    /// Bumped whenever rules change: the running totals follow the rules they sum for.
    generation: i64,
    horizon: Option<i64>,
    /// A decision at or after the range's end has been seen: nothing further is compared.
    past_range: bool,
    pub report: Report,
}

impl<'a> Replay<'a> {
    /// `agent` and `cards` with the status and policies they started with; `approvals` every
    /// approval people granted the agent; `overridden` the previous reasons of the processor's
    /// overrides.
    pub fn new(
        context: Context<'a>,
        agent: Agent,
        cards: Vec<Card>,
        drafts: Drafts,
        approvals: HashMap<String, Allowance>,
        overridden: HashMap<String, String>,
    ) -> Self {
        let recorded = World { agent, cards: cards.into_iter().map(|c| (c.id.to_string(), c)).collect() };
        let mut drafted = recorded.clone();
        if let Some(p) = &drafts.agent {
            drafted.agent.policy = p.clone();
        }
        for (id, p) in &drafts.cards {
            if let Some(card) = drafted.cards.get_mut(id) {
                card.policy = p.clone();
            }
        }
        let mut replay = Replay {
            context,
            drafts,
            recorded,
            drafted,
            balance: Balance::default(),
            holds: HashMap::new(),
            book: Book::default(),
            granted: Vec::new(),
            approvals,
            overridden,
            generation: 0,
            horizon: None,
            past_range: false,
            report: Report::default(),
        };
        replay.rules_changed();
        replay
    }

    /// Whether the history has gone past the range: what follows changes nothing reported.
    pub fn past_range(&self) -> bool {
        self.past_range
    }

    /// Takes in the next link of the history.
    pub fn apply(&mut self, record: Recorded) {
        match record {
            Recorded::Authorization(row) if !self.holds.contains_key(&row.id) => self.decide(*row),
            // A later write of an authorization: what moved is in the transfers that follow it.
            Recorded::Authorization(_) => {}
            Recorded::Transfer(t) => self.transfer(&t),
            Recorded::Event(e) => self.event(&e),
        }
    }

    fn decide(&mut self, row: AuthorizationRow) {
        let now = jiff::Timestamp::from_millisecond(row.authorized_at).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
        let in_range = (self.drafts.from_ms..self.drafts.to_ms).contains(&row.authorized_at);
        self.past_range |= row.authorized_at >= self.drafts.to_ms;
        let then = self.recorded_decision(&row);
        let world = if in_range { &self.drafted } else { &self.recorded };
        let card = row.card_id.as_ref().and_then(|id| world.cards.get(id));
        let request = request_of(&row);
        let amounts = Amounts {
            agent: Money { amount: row.cap_amount, currency: world.agent.currency },
            card: Money { amount: row.card_amount, currency: card.map_or(world.agent.currency, |c| c.currency) },
        };
        let replayed = match then {
            Then::Unknowable(..) => None,
            _ => {
                let generation = self.generation * 2 + i64::from(in_range);
                if self.book.totals_of != Some(generation) {
                    self.book.totals.clear();
                    self.book.totals_of = Some(generation);
                }
                let (spends, totals) = self.book.spends_and_totals();
                totals.prepare(&request, &world.agent, card, spends, self.context.catalog, now);
                let allowances = self.book.allowances(&self.granted);
                let snap = Snapshot {
                    agent: &world.agent,
                    card,
                    card_used: card.is_some_and(|c| self.book.card_used(&c.id)),
                    spends: self.book.spends(),
                    totals: Some(&self.book.totals),
                    available: self.balance.available(),
                    rates: self.context.rates,
                    fx: self.context.fx,
                    catalog: self.context.catalog,
                    allowances: &allowances,
                    // A backtest replays one agent's own history: its parents' are not in it.
                    ancestors: &[],
                };
                let decision = policy::evaluate_converted(&request, &snap, now, amounts);
                if in_range && decision.approved() {
                    let loads = policy::loads(&request, &snap, now, amounts);
                    self.report.loads(loads, row.card_id.as_deref(), world.agent.currency);
                }
                Some(decision)
            }
        };
        if in_range {
            let service = card.map(|c| c.label.as_str());
            self.report.decided(&row, service, world.agent.currency, &then, replayed.as_ref());
        }
        let approve = match (&replayed, &then) {
            (Some(decision), _) => decision.approved(),
            (None, Then::Unknowable(_, approved)) => *approved,
            (None, _) => false,
        };
        let mut row = row;
        if let Some(decision) = &replayed {
            row.approval_id = decision.allowance.clone();
        }
        let hold = if approve {
            Hold::approve(&mut self.balance, row.cap_amount, row.card_amount)
        } else {
            Hold::declined(row.cap_amount, row.card_amount)
        };
        self.keep(row, hold, approve);
        self.prune(now.as_millisecond());
    }

    /// What spendgate decided when the request came: the row keeps its request and first
    /// decision, but a processor's later override changes its status, so the override's
    /// recorded reason says what spendgate said.
    fn recorded_decision(&self, row: &AuthorizationRow) -> Then {
        let approved = row.status != HoldStatus::Declined;
        if let Some(reason) = self.overridden.get(&row.id) {
            // A decline that named a reason the policy gives; a timeout was not the policy's.
            return match DeclineReason::parse(reason) {
                Some(DeclineReason::Timeout | DeclineReason::InternalError) => {
                    Then::Unknowable(Unknowable::OutOfTime, false)
                }
                _ => Then::Declined { reason: reason.clone(), rule: None },
            };
        }
        if row.rule.as_deref() == Some("processor") {
            return Then::Unknowable(Unknowable::ProcessorDecided, approved);
        }
        if row.rail == Rail::Usdc && row.recipient.is_none() {
            return Then::Unknowable(Unknowable::RecipientNotRecorded, approved);
        }
        if approved {
            return Then::Approved;
        }
        let reason = row.reason.clone().unwrap_or_default();
        match DeclineReason::parse(&reason) {
            Some(DeclineReason::StaleFx | DeclineReason::UnsupportedCurrency) => {
                Then::Unknowable(Unknowable::Rates, false)
            }
            // Every rule names itself: a decline naming none was given by spendgate around the
            // policy (its time budget ran out, or its caller gave up on it).
            _ if row.rule.is_none() => Then::Unknowable(Unknowable::OutOfTime, false),
            _ => Then::Declined { reason, rule: row.rule.clone() },
        }
    }

    /// Records the replayed hold, and the spend in the book when it holds money.
    fn keep(&mut self, mut row: AuthorizationRow, hold: Hold, counts: bool) {
        crate::ledger::book::set_hold(&mut row, &hold);
        if counts {
            self.book.apply(&row);
        }
        self.holds.insert(row.id.clone(), Held { hold, row });
    }

    fn transfer(&mut self, t: &TransferRow) {
        if core::replay_funding(&mut self.balance, t.kind, t.amount) {
            return;
        }
        let Some(held) = t.authorization_id.as_ref().and_then(|id| self.holds.get_mut(id)) else { return };
        // What the replay declined was never held: what history moved on it did not happen.
        if held.hold.status == HoldStatus::Declined {
            return;
        }
        if held.hold.replay(&mut self.balance, t.kind, t.amount).is_ok() {
            crate::ledger::book::set_hold(&mut held.row, &held.hold);
            self.book.apply(&held.row);
        }
    }

    fn event(&mut self, e: &Event) {
        let card = e.card_id.as_ref().map(ToString::to_string);
        let policy = || e.data.as_ref().and_then(|d| serde_json::from_value::<Policy>(d.get("policy")?.clone()).ok());
        match (e.kind.as_str(), card) {
            ("policy_changed", Some(card)) => {
                if let Some(p) = policy() {
                    let undrafted = !self.drafts.cards.contains_key(&card);
                    for (world, change) in [(&mut self.recorded, true), (&mut self.drafted, undrafted)] {
                        if let (true, Some(c)) = (change, world.cards.get_mut(&card)) {
                            c.policy = p.clone();
                        }
                    }
                    self.rules_changed();
                }
            }
            ("agent_policy_changed", _) => {
                if let Some(p) = policy() {
                    if self.drafts.agent.is_none() {
                        self.drafted.agent.policy = p.clone();
                    }
                    self.recorded.agent.policy = p;
                    self.rules_changed();
                }
            }
            (kind @ ("frozen" | "unfrozen" | "closed"), Some(card)) => {
                let status = match kind {
                    "frozen" => CardStatus::Frozen,
                    "unfrozen" => CardStatus::Active,
                    _ => CardStatus::Closed,
                };
                for world in [&mut self.recorded, &mut self.drafted] {
                    if let Some(c) = world.cards.get_mut(&card) {
                        c.status = status;
                    }
                }
            }
            (kind @ ("agent_frozen" | "agent_unfrozen"), None) => {
                let status = if kind == "agent_frozen" { AgentStatus::Frozen } else { AgentStatus::Active };
                self.recorded.agent.status = status;
                self.drafted.agent.status = status;
            }
            ("approval_granted", _) => {
                let id = e.data.as_ref().and_then(|d| d.get("approval_id")?.as_str());
                if let Some(allowance) = id.and_then(|id| self.approvals.get(id)) {
                    self.granted.push(allowance.clone());
                }
            }
            ("authorization_overridden", _) => self.overridden_now(e),
            _ => {}
        }
    }

    /// The processor approved what spendgate declined: in history it became a hold after all,
    /// and so it does here, unless the replay approved it already.
    fn overridden_now(&mut self, e: &Event) {
        let data = e.data.as_ref();
        let previous = data.and_then(|d| d.get("previous_reason")?.as_str());
        let id = data.and_then(|d| d.get("authorization_id")?.as_str());
        let (Some(_), Some(id)) = (previous, id) else { return };
        let Some(held) = self.holds.remove(id) else { return };
        if held.hold.status != HoldStatus::Declined {
            self.holds.insert(id.to_owned(), held);
            return;
        }
        let hold = Hold::approve(&mut self.balance, held.row.cap_amount, held.row.card_amount);
        self.keep(held.row, hold, true);
    }

    /// Totals start over under new rules, and the book keeps spends as long as the longest
    /// window of either set of rules needs them.
    fn rules_changed(&mut self) {
        self.generation += 1;
        let policies = |w: &'_ World| {
            std::iter::once(w.agent.policy.clone())
                .chain(w.cards.values().map(|c| c.policy.clone()))
                .collect::<Vec<_>>()
        };
        let all = [policies(&self.recorded), policies(&self.drafted)].concat();
        self.horizon = policy::horizon_ms(all.iter());
    }

    fn prune(&mut self, now_ms: i64) {
        if let Some(horizon) = self.horizon
            && now_ms - self.book.pruned_at_ms >= PRUNE_EVERY_MS
        {
            self.book.prune(now_ms.saturating_sub(horizon));
            self.book.pruned_at_ms = now_ms;
        }
    }
}

/// What was recorded for a decision.
pub enum Then {
    Approved,
    /// The rule is None where a later write replaced it (a processor's override).
    Declined {
        reason: String,
        rule: Option<String>,
    },
    /// Not the policy's to reproduce; whether it was approved.
    Unknowable(Unknowable, bool),
}

impl Then {
    pub fn outcome(&self) -> Option<Outcome> {
        match self {
            Then::Approved => Some(Outcome::approved()),
            Then::Declined { reason, rule } => Some(Outcome::declined(reason, rule.as_deref())),
            Then::Unknowable(..) => None,
        }
    }
}

/// The request as the rail handed it over (its trace as tagged by the card then).
fn request_of(row: &AuthorizationRow) -> AuthRequest {
    AuthRequest {
        rail: row.rail,
        amount: row.amount,
        currency: row.currency.clone(),
        merchant: Merchant {
            id: row.merchant_id.clone(),
            name: row.merchant_name.clone(),
            mcc: row.mcc.clone(),
            country: row.country.clone(),
        },
        trace_id: row.trace_id.clone(),
        max_amount: row.max_amount,
        recipient: row.recipient.as_ref().map(|account| Recipient {
            account: account.clone(),
            named_by: row.recipient_named_by.unwrap_or(NamedBy::Agent),
        }),
    }
}
