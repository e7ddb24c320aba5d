//! What a backtest (or a draft in shadow) found: the decisions it would change, grouped by reason,
//! trace and service, the spend it would have stopped, how full each limit got, and what it could
//! not replay. Amounts are minor units of the agent's currency, summed per currency.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::replay::Then;
use crate::domain::authorization::Decision;
use crate::domain::money::Currency;
use crate::policy::Load;
use crate::store::ledger::AuthorizationRow;

/// How many changed decisions (and unreplayed ones) the report lists one by one; all are counted.
pub const LISTED: usize = 1_000;

/// A decision as recorded or replayed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Outcome {
    pub approved: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The rule that declined; absent where history no longer says (a processor overrode it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
}

impl Outcome {
    pub fn approved() -> Self {
        Outcome { approved: true, reason: None, rule: None }
    }

    pub fn declined(reason: &str, rule: Option<&str>) -> Self {
        Outcome { approved: false, reason: Some(reason.to_owned()), rule: rule.map(str::to_owned) }
    }

    pub fn of(decision: &Decision) -> Self {
        match decision.decline {
            None => Outcome::approved(),
            Some(reason) => Outcome::declined(reason.as_str(), decision.rule.as_deref()),
        }
    }

    /// The same decision: the same verdict and reason, and the same rule where both name one.
    fn agrees(&self, other: &Outcome) -> bool {
        let rules = match (&self.rule, &other.rule) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        };
        self.approved == other.approved && self.reason == other.reason && rules
    }
}

/// Why a decision was not replayed: it was not the policy's, or it read what history does not keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Unknowable {
    /// The processor decided on its own (stand-in processing, a forced capture).
    ProcessorDecided,
    /// Declined around the policy: its time budget ran out, or its caller gave up on it.
    OutOfTime,
    /// Declined for the exchange rates of the moment (stale or missing), which are not kept.
    Rates,
    /// A USDC payment recorded before requests kept their recipient.
    RecipientNotRecorded,
}

/// How many, and how much per currency.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Tally {
    pub count: u64,
    /// Minor units, by ISO 4217 code.
    pub amount: BTreeMap<String, i64>,
}

impl Tally {
    fn add(&mut self, amount: i64, currency: Currency) {
        self.count += 1;
        *self.amount.entry(currency.code().to_owned()).or_default() += amount;
    }

    fn merge(&mut self, other: &Tally) {
        self.count += other.count;
        for (currency, amount) in &other.amount {
            *self.amount.entry(currency.clone()).or_default() += amount;
        }
    }
}

/// A group of changed decisions (one reason, trace or service).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Group {
    /// The reason and rule (`velocity_exceeded card.limit.hourly`), the trace, or the service.
    pub key: String,
    #[serde(flatten)]
    pub tally: Tally,
}

/// The fullest a limit got over the range.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Peak {
    /// e.g. `agent.limit.daily`; a card's rule names its card: `card.limit.daily@card_01…`.
    pub rule: String,
    pub currency: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub amount_cap: Option<i64>,
    pub amount: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count_cap: Option<i64>,
    pub count: i64,
    /// The larger of amount/amount_cap and count/count_cap, in percent (rounded down).
    pub percent: i64,
}

/// One decision the replay decided otherwise, or did not replay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Change {
    pub authorization_id: String,
    #[schema(value_type = String, format = DateTime)]
    pub at: jiff::Timestamp,
    pub agent_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub card_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    pub merchant: String,
    /// In the agent's currency.
    pub amount: i64,
    pub currency: String,
    pub recorded: Outcome,
    /// Absent for a decision not replayed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replayed: Option<Outcome>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_replayed: Option<Unknowable>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Report {
    /// Decisions in the range, and how many of them were replayed and compared.
    pub decisions: u64,
    pub compared: u64,
    /// Compared decisions the replay decided otherwise (any verdict, reason or rule).
    pub changed: u64,
    /// Approved in history, declined by the replay: the spend it would have stopped.
    pub newly_declined: Tally,
    /// Declined in history, approved by the replay.
    pub newly_approved: Tally,
    /// Declined in both, for another reason or rule.
    pub otherwise_declined: u64,
    /// The newly declined by the reason and rule the replay gave, by trace and by service (the
    /// card's label; `usdc` for the wallet), largest first.
    pub by_reason: Vec<Group>,
    pub by_trace: Vec<Group>,
    pub by_service: Vec<Group>,
    /// Each limit's fullest moment over the range under the replayed rules, fullest first.
    pub peaks: Vec<Peak>,
    /// Not replayed, by why.
    pub not_replayed: BTreeMap<String, u64>,
    /// The first changed decisions, in time order (up to 1,000; `changed` counts them all).
    pub changes: Vec<Change>,
    /// The first decisions not replayed (up to 1,000).
    pub unreplayed: Vec<Change>,
    #[serde(skip)]
    groups: HashMap<(u8, String), Tally>,
    #[serde(skip)]
    peaks_by_rule: HashMap<String, Peak>,
}

fn change_of(
    row: &AuthorizationRow,
    service: Option<&str>,
    currency: Currency,
    recorded: Outcome,
    replayed: Option<Outcome>,
    not_replayed: Option<Unknowable>,
) -> Change {
    Change {
        authorization_id: row.id.clone(),
        at: jiff::Timestamp::from_millisecond(row.authorized_at).unwrap_or(jiff::Timestamp::UNIX_EPOCH),
        agent_id: row.agent_id.clone(),
        card_id: row.card_id.clone(),
        service: service.map(str::to_owned),
        trace_id: row.trace_id.clone(),
        merchant: row.merchant_name.clone(),
        amount: row.cap_amount,
        currency: currency.code().to_owned(),
        recorded,
        replayed,
        not_replayed,
    }
}

const BY_REASON: u8 = 0;
const BY_TRACE: u8 = 1;
const BY_SERVICE: u8 = 2;

impl Report {
    /// One decision of the range: as recorded (`then`) and as replayed (None: not replayed).
    pub fn decided(
        &mut self,
        row: &AuthorizationRow,
        service: Option<&str>,
        currency: Currency,
        then: &Then,
        replayed: Option<&Decision>,
    ) {
        self.decisions += 1;
        let (Some(recorded), Some(decision)) = (then.outcome(), replayed) else {
            if let Then::Unknowable(why, approved) = then {
                let word = serde_json::to_value(why).ok().and_then(|v| v.as_str().map(str::to_owned));
                *self.not_replayed.entry(word.unwrap_or_default()).or_default() += 1;
                if self.unreplayed.len() < LISTED {
                    let recorded = if *approved {
                        Outcome::approved()
                    } else {
                        Outcome::declined(row.reason.as_deref().unwrap_or_default(), row.rule.as_deref())
                    };
                    self.unreplayed.push(change_of(row, service, currency, recorded, None, Some(*why)));
                }
            }
            return;
        };
        self.compare(row, service, currency, recorded, Outcome::of(decision));
    }

    /// A live decision a draft in shadow decided otherwise.
    pub fn disagreed(
        &mut self,
        row: &AuthorizationRow,
        service: Option<&str>,
        currency: Currency,
        live: Outcome,
        shadow: Outcome,
    ) {
        self.decisions += 1;
        self.compare(row, service, currency, live, shadow);
    }

    fn compare(
        &mut self,
        row: &AuthorizationRow,
        service: Option<&str>,
        currency: Currency,
        recorded: Outcome,
        now: Outcome,
    ) {
        self.compared += 1;
        if recorded.agrees(&now) {
            return;
        }
        self.changed += 1;
        match (recorded.approved, now.approved) {
            (true, false) => {
                self.newly_declined.add(row.cap_amount, currency);
                let reason = format!("{} {}", now.reason.as_deref().unwrap_or(""), now.rule.as_deref().unwrap_or(""));
                let trace = row.trace_id.clone().unwrap_or_else(|| "(no trace)".to_owned());
                let service = service.unwrap_or("usdc").to_owned();
                for (by, key) in [(BY_REASON, reason.trim().to_owned()), (BY_TRACE, trace), (BY_SERVICE, service)] {
                    self.groups.entry((by, key)).or_default().add(row.cap_amount, currency);
                }
            }
            (false, true) => self.newly_approved.add(row.cap_amount, currency),
            _ => self.otherwise_declined += 1,
        }
        if self.changes.len() < LISTED {
            self.changes.push(change_of(row, service, currency, recorded, Some(now), None));
        }
    }

    /// How full the limits an approved decision fell under got with it (`card_id` names a card's
    /// own rules apart).
    pub fn loads(&mut self, loads: Vec<Load>, card_id: Option<&str>, currency: Currency) {
        for load in loads {
            let percent = |used: i64, cap: Option<i64>| cap.filter(|c| *c > 0).map_or(0, |c| used * 100 / c);
            let percent = percent(load.amount, load.amount_cap).max(percent(load.count, load.count_cap));
            let rule = match card_id {
                Some(card) if load.rule.starts_with("card.") => format!("{}@{card}", load.rule),
                _ => load.rule,
            };
            let peak = self.peaks_by_rule.entry(rule.clone()).or_insert_with(|| Peak {
                rule,
                currency: currency.code().to_owned(),
                amount_cap: load.amount_cap,
                amount: 0,
                count_cap: load.count_cap,
                count: 0,
                percent: 0,
            });
            peak.amount = peak.amount.max(load.amount);
            peak.count = peak.count.max(load.count);
            peak.percent = peak.percent.max(percent);
        }
    }

    /// Another agent's report of the same backtest, added in.
    pub fn merge(&mut self, other: Report) {
        self.decisions += other.decisions;
        self.compared += other.compared;
        self.changed += other.changed;
        self.newly_declined.merge(&other.newly_declined);
        self.newly_approved.merge(&other.newly_approved);
        self.otherwise_declined += other.otherwise_declined;
        for (why, n) in other.not_replayed {
            *self.not_replayed.entry(why).or_default() += n;
        }
        for (key, tally) in other.groups {
            self.groups.entry(key).or_default().merge(&tally);
        }
        self.peaks_by_rule.extend(other.peaks_by_rule);
        self.changes.extend(other.changes);
        self.changes.sort_by_key(|c| c.at);
        self.changes.truncate(LISTED);
        self.unreplayed.extend(other.unreplayed);
        self.unreplayed.truncate(LISTED);
    }

    /// The groups and peaks as sorted lists, largest first.
    pub fn finish(mut self) -> Report {
        let groups = std::mem::take(&mut self.groups);
        let mut lists: [Vec<Group>; 3] = Default::default();
        for ((by, key), tally) in groups {
            lists[usize::from(by)].push(Group { key, tally });
        }
        for list in &mut lists {
            list.sort_by(|a, b| {
                let total = |g: &Group| g.tally.amount.values().sum::<i64>();
                total(b).cmp(&total(a)).then(b.tally.count.cmp(&a.tally.count)).then(a.key.cmp(&b.key))
            });
        }
        let [by_reason, by_trace, by_service] = lists;
        let mut peaks: Vec<Peak> = std::mem::take(&mut self.peaks_by_rule).into_values().collect();
        peaks.sort_by(|a, b| b.percent.cmp(&a.percent).then(a.rule.cmp(&b.rule)));
        Report { by_reason, by_trace, by_service, peaks, ..self }
    }
}
