//! The alert that watches an agent's spending over time rather than one decision: the last hour's
//! spend against the agent's own hourly average before it (`alerts.spend_rate` in its policy).
//! A limit's thresholds and a low balance are announced by the ledger writer as they happen.
//!
//! Every node checks every minute, off the decision path, from the same ledger tables the spend
//! reports read; an anomaly is recorded in the agent's trail (`spend_anomaly`, which webhooks and
//! Slack receive as `spend.anomaly`) at most once an hour, decided under the agent's lock.

pub mod rate;

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};

use crate::domain::agent::Agent;
use crate::domain::event::Event;
use crate::domain::ids::AgentId;
use crate::domain::policy::SpendRate;
use crate::domain::report::{GroupBy, SpendCell};
use crate::error::Result;
use crate::store::reports::ReportFilter;
use crate::store::{self, Db, DbConnection};

const HOUR_MS: i64 = 3_600_000;
/// The most services and traces an anomaly names.
const TOP: usize = 3;

/// An agent's baseline sum, read at most once an hour (it moves by an hour's spend in a week's).
struct Baseline {
    rule: SpendRate,
    read_at_ms: i64,
    sum: i64,
    hours: i64,
}

pub struct Alerts {
    db: Db,
    baselines: HashMap<AgentId, Baseline>,
}

impl Alerts {
    pub fn new(db: Db) -> Self {
        Alerts { db, baselines: HashMap::new() }
    }

    /// Checks the watched agents every `every`.
    pub async fn run_forever(mut self, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = self.check().await {
                tracing::warn!(error = %e, "spend-rate check failed; trying again");
            }
        }
    }

    /// One pass over the agents whose policy watches their spend rate; the anomalies recorded.
    pub async fn check(&mut self) -> Result<usize> {
        let watched = self.db.read(store::agents::watching_spend_rate).await?;
        self.baselines.retain(|id, _| watched.iter().any(|a| a.id == *id));
        let mut recorded = 0;
        for agent in watched {
            if self.check_agent(agent).await? {
                recorded += 1;
            }
        }
        Ok(recorded)
    }

    async fn check_agent(&mut self, agent: Agent) -> Result<bool> {
        let Some(rule) = agent.policy.alerts.as_ref().and_then(|a| a.spend_rate.clone()) else { return Ok(false) };
        let now_ms = store::now().as_millisecond();
        let Some((from, to, hours)) = rate::baseline(&rule, agent.created_at.as_millisecond(), now_ms) else {
            return Ok(false);
        };
        let fresh = self
            .baselines
            .get(&agent.id)
            .filter(|b| b.rule == rule && b.hours == hours && b.read_at_ms > now_ms - HOUR_MS);
        let baseline_sum = match fresh {
            Some(b) => b.sum,
            None => {
                let filter = in_period(&agent.id, from, to);
                let currency = agent.currency.code();
                let sum = self.db.read(move |conn| spend_of(conn, &filter, &[], currency)).await?.total;
                self.baselines
                    .insert(agent.id.clone(), Baseline { rule: rule.clone(), read_at_ms: now_ms, sum, hours });
                sum
            }
        };
        let filter = in_period(&agent.id, to, now_ms);
        let currency = agent.currency.code();
        let last =
            self.db.read(move |conn| spend_of(conn, &filter, &[GroupBy::Service, GroupBy::Trace], currency)).await?;
        if !rate::anomalous(&rule, last.total, baseline_sum, hours) {
            return Ok(false);
        }
        let money = |amount: i64| json!({"amount": amount, "currency": currency});
        let data = json!({
            "agent_name": agent.name,
            "multiple": rule.multiple,
            "baseline": rule.baseline,
            "last_hour": money(last.total),
            "hourly_baseline": money(baseline_sum / hours),
            "window_start": jiff::Timestamp::from_millisecond(to).map(|t| t.to_string()).ok(),
            "top_services": top(&last.cells, 0, "service", &money),
            "top_traces": top(&last.cells, 1, "trace_id", &money),
        });
        let event = Event::by_spendgate(&agent.id, None, "spend_anomaly", store::now()).data(data);
        let since = now_ms - HOUR_MS;
        let recorded = self.db.write(move |conn| store::events::record_unless_since(conn, &event, since)).await?;
        if recorded {
            tracing::info!(agent = %agent.id, last_hour = last.total, baseline_sum, hours, "spend anomaly");
        }
        Ok(recorded)
    }
}

fn in_period(agent: &AgentId, from_ms: i64, to_ms: i64) -> ReportFilter {
    ReportFilter { agent: Some(agent.clone()), from_ms: Some(from_ms), to_ms: Some(to_ms), ..ReportFilter::default() }
}

/// An agent's spend in a period, in its own currency (its caps': every authorization's cap
/// currency), with the cells it was grouped into.
struct Spent {
    total: i64,
    cells: Vec<SpendCell>,
}

fn spend_of(conn: &mut DbConnection, filter: &ReportFilter, by: &[GroupBy], currency: &str) -> Result<Spent> {
    let cells: Vec<SpendCell> =
        store::reports::spend(conn, filter, by)?.into_iter().filter(|c| c.currency == currency).collect();
    Ok(Spent { total: cells.iter().map(|c| c.totals.spend).sum(), cells })
}

/// The largest spends by the cells' `key`-th dimension, as `[{label: value, "spend": money}]`.
fn top(cells: &[SpendCell], key: usize, label: &str, money: &dyn Fn(i64) -> Value) -> Vec<Value> {
    let mut sums: HashMap<Option<&str>, i64> = HashMap::new();
    for c in cells {
        *sums.entry(c.keys[key].as_deref()).or_default() += c.totals.spend;
    }
    let mut sums: Vec<_> = sums.into_iter().filter(|(_, spend)| *spend > 0).collect();
    sums.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    sums.into_iter().take(TOP).map(|(value, spend)| json!({label: value, "spend": money(spend)})).collect()
}
