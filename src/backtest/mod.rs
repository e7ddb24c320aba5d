//! Backtests: drafts replayed over recorded history (`replay`), and what they would have changed
//! (`report`). A backtest reads the agents' chains page by page on a reader connection and replays
//! them, all on a thread of its own at the lowest CPU priority, so that decisions never wait for it.

pub mod replay;
pub mod report;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::domain::agent::AgentStatus;
use crate::domain::card::CardStatus;
use crate::domain::event::Event;
use crate::domain::ids::AgentId;
use crate::domain::policy::Policy;
use crate::error::{Error, Result};
use crate::store::{self, Db, DbConnection, history};
use replay::{Context, Drafts, Replay};
use report::Report;

/// How many links of a chain one read brings.
const PAGE: i64 = 5_000;

/// One agent's part of a backtest: the drafts that replace its rules (and the range they apply to).
#[derive(Debug, Clone)]
pub struct Part {
    pub agent: AgentId,
    pub drafts: Drafts,
}

/// Replays each part's history from its start; the decisions in the drafts' range are compared.
/// `progress(replayed, total)` is told after each page. None if `cancelled` was set.
/// Runs on the calling thread (not a runtime's), borrowing a reader connection one page at a time.
pub fn run(
    db: &Db,
    context: Context<'_>,
    parts: Vec<Part>,
    cancelled: &AtomicBool,
    progress: &mut dyn FnMut(i64, i64),
) -> Result<Option<Report>> {
    let mut total = 0;
    let mut starts = Vec::with_capacity(parts.len());
    for part in &parts {
        let start = db.read_here(|conn| start_of(conn, &part.agent, &part.drafts))?;
        total += start.decisions;
        starts.push(start);
    }
    let mut report = Report::default();
    let mut replayed = 0;
    progress(0, total);
    for (part, start) in parts.into_iter().zip(starts) {
        let Start { agent, cards, approvals, overridden, .. } = start;
        let Part { agent: id, drafts } = part;
        let mut replay = Replay::new(context, agent, cards, drafts, approvals, overridden);
        let mut after = 0;
        while !replay.past_range() {
            let links = db.read_here(|conn| history::page(conn, &id, after, PAGE))?;
            let Some((last, _)) = links.last() else { break };
            after = *last;
            for (_, record) in links {
                replay.apply(record);
            }
            if cancelled.load(Ordering::Relaxed) {
                return Ok(None);
            }
            progress(replayed + replay.report.decisions as i64, total);
        }
        replayed += replay.report.decisions as i64;
        report.merge(std::mem::take(&mut replay.report));
    }
    progress(replayed, total);
    Ok(Some(report.finish()))
}

/// An agent as its history began, and what the replay looks up on the way.
struct Start {
    agent: crate::domain::agent::Agent,
    cards: Vec<crate::domain::card::Card>,
    approvals: HashMap<String, crate::domain::approval::Allowance>,
    overridden: HashMap<String, String>,
    decisions: i64,
}

/// The agent and its cards with the status and rules they started with (each policy change's
/// event names the policy it replaced), the approvals people granted it, and the processor's
/// overrides of its declines.
fn start_of(conn: &mut DbConnection, id: &AgentId, drafts: &Drafts) -> Result<Start> {
    let mut agent = store::agents::find(conn, id)?.ok_or_else(|| Error::not_found("agent", id.as_str()))?;
    let mut cards = store::cards::list_for_agent(conn, id, None, i64::from(u16::MAX))?;
    let kinds = ["policy_changed", "agent_policy_changed", "authorization_overridden"];
    let events = history::events_of(conn, id, &kinds)?;
    let previous =
        |e: &Event| -> Option<Policy> { serde_json::from_value(e.data.as_ref()?.get("previous")?.clone()).ok() };
    if let Some(first) = events.iter().find(|e| e.kind == "agent_policy_changed").and_then(previous) {
        agent.policy = first;
    }
    agent.status = AgentStatus::Active;
    for card in &mut cards {
        let changed = |e: &&Event| e.kind == "policy_changed" && e.card_id.as_ref() == Some(&card.id);
        if let Some(first) = events.iter().find(changed).and_then(previous) {
            card.policy = first;
        }
        card.status = CardStatus::Active;
    }
    let overridden = events
        .iter()
        .filter(|e| e.kind == "authorization_overridden")
        .filter_map(|e| {
            let data = e.data.as_ref()?;
            Some((
                data.get("authorization_id")?.as_str()?.to_owned(),
                data.get("previous_reason")?.as_str()?.to_owned(),
            ))
        })
        .collect();
    let approvals =
        store::approvals::allowances(conn, id, i64::MIN)?.into_iter().map(|a| (a.approval_id.clone(), a)).collect();
    let decisions = history::decisions_between(conn, id, drafts.from_ms, drafts.to_ms)?;
    Ok(Start { agent, cards, approvals, overridden, decisions })
}

/// Lowers the calling thread's CPU priority as far as it goes. On Linux, the scheduling policy and
/// the nice value are the thread's own, so the server's other threads keep theirs: `SCHED_IDLE`
/// runs it only on a core nothing else wants, and a waking decision thread takes that core at once.
pub fn yield_cpu() {
    #[cfg(target_os = "linux")]
    // SAFETY: both calls read only the parameter passed by reference; 0 is the calling thread.
    unsafe {
        let param = libc::sched_param { sched_priority: 0 };
        if libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) != 0 {
            libc::setpriority(libc::PRIO_PROCESS, 0, 19);
        }
    }
}
