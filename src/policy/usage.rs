//! How much of each limit is used now: what an agent asks before it spends ("what may I still
//! spend, and when does it free up?"). Pure, like `evaluate`, and counted the same way: the same
//! window start, the same filters, the same spends and conversions a decision would count.

use jiff::Timestamp;
use serde::Serialize;
use utoipa::ToSchema;

use super::{Snapshot, counted, window};
use crate::domain::ids::CardId;
use crate::domain::money::Currency;
use crate::domain::policy::{Limit, OnExceed, Policy, Scope, Window};

/// One limit as it stands for one card or trace (where the limit is scoped to them).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct LimitUsage {
    /// The rule a decline would name, e.g. `agent.limit.daily`.
    pub rule: String,
    pub scope: Scope,
    /// The card counted, for a card-scoped limit or a limit of a card's policy.
    #[schema(value_type = Option<String>)]
    pub card_id: Option<CardId>,
    /// The trace counted, for a trace-scoped limit.
    pub trace_id: Option<String>,
    #[schema(schema_with = crate::domain::policy::window_schema)]
    pub window: Window,
    /// The currency of `amount` (the policy's).
    pub currency: Currency,
    pub amount: Option<Used>,
    pub count: Option<Used>,
    /// What a request past the limit gets: a decline, or a request for a person's approval.
    pub on_exceed: OnExceed,
    /// When some of what is used next leaves the window (the oldest spend of a rolling window
    /// ages out, a calendar window turns over); absent when nothing counts or it never will.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub frees_at: Option<Timestamp>,
}

/// A cap and how much of it is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
pub struct Used {
    pub cap: i64,
    /// What people have approved past the cap for this window and is still in force.
    pub approved: i64,
    pub used: i64,
    /// `cap + approved - used`, never below 0.
    pub remaining: i64,
}

impl Used {
    fn new(cap: i64, approved: i64, used: i64) -> Self {
        let remaining = cap.saturating_add(approved).saturating_sub(used).max(0);
        Used { cap, approved, used, remaining }
    }
}

/// The limits counted for one subject: with `snap.card`, the card's (its own policy's, trace-scoped
/// ones for `trace`, and the agent's card-scoped ones); without, the agent's agent-scoped limits, or
/// with `trace` its trace-scoped ones for that trace.
pub fn usage(snap: &Snapshot<'_>, trace: Option<&str>, now: Timestamp) -> Vec<LimitUsage> {
    let mut out = Vec::new();
    let mut add = |owner: &str, policy: &Policy, currency: Currency, keep: &dyn Fn(&Limit) -> bool| {
        for limit in policy.limits.iter().filter(|l| keep(l)) {
            if let Some(u) = one(snap, owner, limit, currency, trace, now) {
                out.push(u);
            }
        }
    };
    match snap.card {
        Some(card) => {
            add("card", &card.policy, card.currency, &|_| true);
            add("agent", &snap.agent.policy, snap.agent.currency, &|l| l.scope == Scope::Card);
        }
        None => {
            let scope = if trace.is_some() { Scope::Trace } else { Scope::Agent };
            add("agent", &snap.agent.policy, snap.agent.currency, &|l| l.scope == scope);
        }
    }
    out
}

fn one(
    snap: &Snapshot<'_>,
    owner: &str,
    limit: &Limit,
    currency: Currency,
    trace: Option<&str>,
    now: Timestamp,
) -> Option<LimitUsage> {
    let card_id = snap.card.map(|c| &c.id);
    let counted_for = match limit.scope {
        Scope::Agent => None,
        Scope::Card => Some(card_id?.as_str()),
        Scope::Trace => Some(trace?),
    };
    let start = window::start_ms(&limit.window, now);
    let sum = counted(limit, currency, snap, start, |s| match limit.scope {
        Scope::Agent => true,
        Scope::Card => s.card_id.as_deref() == counted_for,
        Scope::Trace => s.trace_id.as_deref() == counted_for,
    });
    let rule = format!("{owner}.limit.{}", limit.id);
    let now_ms = now.as_millisecond();
    let granted = snap.agent.allowances.iter().filter(|a| {
        a.rule == rule
            && a.until_ms > now_ms
            && match limit.scope {
                Scope::Agent => true,
                Scope::Card => a.card_id.as_ref() == card_id,
                Scope::Trace => a.trace_id.as_deref() == trace,
            }
    });
    let (approved, approvals) = granted.fold((0i64, 0i64), |(sum, n), a| (sum.saturating_add(a.amount), n + 1));
    let frees_at_ms = match &limit.window {
        _ if sum.count == 0 => None,
        Window::Rolling { seconds, .. } => sum.first_ms.map(|at| at.saturating_add(seconds * 1_000)),
        Window::Calendar { .. } => window::end_ms(&limit.window, now),
        Window::Lifetime => None,
    };
    Some(LimitUsage {
        rule,
        scope: limit.scope,
        card_id: (limit.scope == Scope::Card || owner == "card").then(|| card_id.cloned()).flatten(),
        trace_id: (limit.scope == Scope::Trace).then(|| trace.map(str::to_owned)).flatten(),
        window: limit.window.clone(),
        currency,
        amount: limit.amount.map(|cap| Used::new(cap, approved, sum.amount)),
        count: limit.count.map(|cap| Used::new(cap, approvals, sum.count)),
        on_exceed: limit.on_exceed,
        frees_at: frees_at_ms.and_then(|ms| Timestamp::from_millisecond(ms).ok()),
    })
}
