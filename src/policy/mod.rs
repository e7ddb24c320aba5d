//! THE policy core: `evaluate(request, snapshot, now) -> Decision`. Pure: no I/O, no clock, no
//! database; everything it needs is in its arguments, so both rails share it and tests can drive
//! every rule directly.
//!
//! The checks run in this order, and the first that fails is the decline:
//! 1. card status: closed, expired, frozen, single-use already used; then agent frozen
//! 2. currency: known, convertible, and (when a conversion is needed) rates not stale
//! 3. MCC allow/block, MCC groups allow/block
//! 4. merchant lock (network id or descriptor pattern), x402 allowed hosts and recipients (USDC rail)
//! 5. country allow/block
//! 6. active hours
//! 7. per-transaction cap, x402 per-call cap (USDC rail)
//! 8. each limit: amount (`limit_exceeded`) and count (`velocity_exceeded`), or `approval_required`
//!    for a limit that asks a person (`on_exceed: ask`)
//! 9. approval threshold (`approval_required`)
//! 10. prepaid balance
//!
//! A person's approval is an allowance in the snapshot: it raises the limit that asked, or lets one
//! authorization past the threshold that asked. The decision names the allowance it used.
//!
//! Where both have the rule, the card's policy is checked before the agent's. The rule that fired
//! is named `<card|agent>.<rule>`, e.g. `card.mcc.allow` or `agent.limit.daily`.

pub mod fx;
pub mod totals;
pub mod usage;
pub mod window;

use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};

use crate::domain::agent::{Agent, AgentStatus};
use crate::domain::approval::{Allowance, Ask, Mandate};
use crate::domain::authorization::{
    Amounts, AuthRequest, Crossed, Decision, DeclineReason, FxUsed, Merchant, NamedBy, Rail,
};
use crate::domain::card::{Card, CardStatus};
use crate::domain::catalog::Catalog;
use crate::domain::money::{Currency, Money};
use crate::domain::policy::{AllowBlock, Limit, OnExceed, Policy, Scope, parse_clock};
use fx::{FxError, RateSource, RateTable};

/// One authorization that still counts against spending windows (a hold or a posted amount).
/// The strings many spends repeat (card, trace, MCC, merchant) are shared: an agent's book holds
/// every spend its longest window still counts.
#[derive(Debug, Clone, PartialEq)]
pub struct Spend {
    pub authorization_id: String,
    pub card_id: Option<Arc<str>>,
    pub card_currency: Option<Currency>,
    pub trace_id: Option<Arc<str>>,
    pub rail: Rail,
    pub mcc: Option<Arc<str>>,
    pub merchant_id: Option<Arc<str>>,
    pub merchant_name: Arc<str>,
    /// Authorization time, Unix milliseconds: windows count spends by when they were authorized.
    pub at_ms: i64,
    /// In the agent's currency.
    pub counted: i64,
    /// In the card's currency.
    pub counted_card: i64,
}

/// How stale rates are treated.
#[derive(Debug, Clone, Copy)]
pub struct FxRules {
    pub max_age: SignedDuration,
    /// Decline a cross-currency authorization when the rates are older than `max_age`.
    pub decline_stale: bool,
    /// Take the table built into the release however old it is (the demo, offline); its decisions
    /// say `source: bundled`.
    pub accept_bundled: bool,
}

/// Everything a decision reads, gathered by the caller.
pub struct Snapshot<'a> {
    pub agent: &'a Agent,
    /// None on the USDC rail.
    pub card: Option<&'a Card>,
    /// The card has approved an authorization before (for single-use cards).
    pub card_used: bool,
    /// The agent's spends that may still count in some window, in time order.
    pub spends: &'a [Spend],
    /// Running totals of those spends per limit, where kept: a limit without one is summed by a scan.
    pub totals: Option<&'a totals::Totals>,
    /// The agent's available balance, in its currency.
    pub available: i64,
    pub rates: &'a RateTable,
    pub fx: FxRules,
    pub catalog: &'a Catalog,
    /// What people have approved for this agent and not yet spent (single-use ones already used are left out).
    pub allowances: &'a [Allowance],
    /// The agent's parent, its parent's parent, …: a freeze of any stops it, and their limits count
    /// the spend of everything under them.
    pub ancestors: &'a [Ancestor<'a>],
}

/// An agent above the one that pays, with the spends of its whole subtree.
#[derive(Clone, Copy)]
pub struct Ancestor<'a> {
    pub agent: &'a Agent,
    pub spends: &'a [Spend],
}

/// How an ancestor's rules are named in a decline: `parent.limit.daily`, `grandparent.per_transaction`.
pub const ANCESTORS: [&str; 4] = ["parent", "grandparent", "great_grandparent", "great_great_grandparent"];

/// What the checks noticed on the way besides the verdict.
#[derive(Default)]
struct Trail {
    allowance: Option<String>,
    ask: Option<Ask>,
    /// Alert thresholds the request takes limits past, should it be approved.
    crossed: Vec<Crossed>,
}

type Outcome<T = ()> = Result<T, (DeclineReason, String)>;

fn deny<T>(reason: DeclineReason, rule: impl Into<String>) -> Outcome<T> {
    Err((reason, rule.into()))
}

/// A policy and whose it is, with the amount of the request in that policy's currency.
struct Rules<'a> {
    owner: &'static str,
    policy: &'a Policy,
    amount: i64,
    currency: Currency,
}

/// How long spends must be kept for these policies' limits to see every one that can still
/// count (the longest window reach); None when some limit looks back for ever.
pub fn horizon_ms<'a>(policies: impl IntoIterator<Item = &'a Policy>) -> Option<i64> {
    let mut horizon = 0;
    for limit in policies.into_iter().flat_map(|p| &p.limits) {
        horizon = horizon.max(window::reach_ms(&limit.window)?);
    }
    Some(horizon)
}

pub fn evaluate(req: &AuthRequest, snap: &Snapshot<'_>, now: Timestamp) -> Decision {
    let mut fx = None;
    let amounts = match status(snap, now).and_then(|()| convert(req, snap, now, &mut fx)) {
        Ok(amounts) => amounts,
        Err((reason, rule)) => return Decision { rule: Some(rule), fx, ..Decision::decline(reason, None) },
    };
    Decision { fx, ..decide(req, snap, now, amounts) }
}

/// The decision on a request whose amounts in the agent's and card's currencies are known (a
/// backtest replays them as recorded, not at today's rates): `evaluate` without the conversion.
pub fn evaluate_converted(req: &AuthRequest, snap: &Snapshot<'_>, now: Timestamp, amounts: Amounts) -> Decision {
    let checked = status(snap, now)
        .and_then(|()| if req.amount < 0 { deny(DeclineReason::InternalError, "request.amount") } else { Ok(()) });
    match checked {
        Ok(()) => decide(req, snap, now, amounts),
        Err((reason, rule)) => Decision { rule: Some(rule), ..Decision::decline(reason, None) },
    }
}

/// The rules after the status and the currency, with the mandates that may lift what they refuse.
fn decide(req: &AuthRequest, snap: &Snapshot<'_>, now: Timestamp, amounts: Amounts) -> Decision {
    let mut trail = Trail::default();
    let (mut decline, mut rule) = match check(req, snap, now, amounts, &mut trail, None) {
        Ok(()) => (None, None),
        Err((reason, rule)) => (Some(reason), Some(rule)),
    };
    // What the rules refuse, a mandate a person approved may let through.
    if decline.is_some_and(mandate_may_lift) {
        let covering = snap.allowances.iter().filter_map(|a| Some((a, a.mandate.as_ref()?)));
        for (allowance, mandate) in covering.filter(|(a, m)| covers(a, m, req, amounts, now)) {
            let mut within = Trail::default();
            match check(req, snap, now, amounts, &mut within, Some(mandate)) {
                Ok(()) => {
                    (decline, rule) = (None, None);
                    trail = Trail { allowance: Some(allowance.approval_id.clone()), ..within };
                    break;
                }
                // What stops it inside the mandate (the balance, a lock it does not name) is
                // what would unblock it, not the rule the mandate lifts.
                Err((reason, why)) => (decline, rule, trail) = (Some(reason), Some(why), Trail::default()),
            }
        }
    }
    let (allowance, ask, crossed) = match decline {
        None => (trail.allowance, None, trail.crossed),
        Some(DeclineReason::ApprovalRequired) => (None, trail.ask, Vec::new()),
        Some(_) => (None, None, Vec::new()),
    };
    Decision { decline, rule, amounts: Some(amounts), fx: None, allowance, ask, crossed }
}

/// The request in the agent's and the card's currencies, for recording what a processor decided on
/// its own: no rule applies, and stale rates still convert (the money has moved either way).
pub fn amounts_of(
    req: &AuthRequest,
    snap: &Snapshot<'_>,
    now: Timestamp,
) -> Result<(Amounts, Option<FxUsed>), DeclineReason> {
    let lenient = Snapshot { fx: FxRules { decline_stale: false, ..snap.fx }, ..*snap };
    let mut fx = None;
    let amounts = convert(req, &lenient, now, &mut fx).map_err(|(reason, _)| reason)?;
    Ok((amounts, fx))
}

/// Card and agent status come first: a frozen card declines even in a currency nobody can convert.
fn status(snap: &Snapshot<'_>, now: Timestamp) -> Outcome {
    if let Some(card) = snap.card {
        if card.status == CardStatus::Closed {
            return deny(DeclineReason::CardClosed, "card.status");
        }
        if card_expired(card, now) {
            return deny(DeclineReason::CardExpired, "card.expiry");
        }
        if card.status == CardStatus::Frozen {
            return deny(DeclineReason::CardFrozen, "card.status");
        }
        if card.single_use && snap.card_used {
            return deny(DeclineReason::CardUsed, "card.single_use");
        }
    }
    if snap.agent.status == AgentStatus::Frozen {
        return deny(DeclineReason::AgentFrozen, "agent.status");
    }
    for (a, owner) in snap.ancestors.iter().zip(ANCESTORS) {
        if a.agent.status == AgentStatus::Frozen {
            return deny(DeclineReason::AgentFrozen, format!("{owner}.status"));
        }
    }
    Ok(())
}

/// A card expires at its `expires_at`, or else after the last day of its expiry month (UTC).
fn card_expired(card: &Card, now: Timestamp) -> bool {
    if let Some(at) = card.expires_at {
        return now >= at;
    }
    let end = jiff::civil::date(card.exp_year as i16, card.exp_month as i8, 1)
        .checked_add(jiff::Span::new().months(1))
        .ok()
        .and_then(|d| d.to_zoned(jiff::tz::TimeZone::UTC).ok());
    end.is_some_and(|end| now >= end.timestamp())
}

/// The request in the agent's and the card's currencies.
fn convert(req: &AuthRequest, snap: &Snapshot<'_>, now: Timestamp, fx_used: &mut Option<FxUsed>) -> Outcome<Amounts> {
    if req.amount < 0 {
        return deny(DeclineReason::InternalError, "request.amount");
    }
    let Ok(from) = req.currency.parse::<Currency>() else {
        return deny(DeclineReason::UnsupportedCurrency, "request.currency");
    };
    let agent_ccy = snap.agent.currency;
    let card_ccy = snap.card.map_or(agent_ccy, |c| c.currency);
    let mut to = |target: Currency| -> Outcome<Money> {
        if target == from {
            return Ok(Money { amount: req.amount, currency: target });
        }
        match snap.rates.convert(req.amount, from, target) {
            Ok(c) => {
                let accepted = c.source == RateSource::Bundled && snap.fx.accept_bundled;
                if snap.fx.decline_stale && !accepted && RateTable::is_stale(c.date, now, snap.fx.max_age) {
                    return deny(DeclineReason::StaleFx, "fx.max_age");
                }
                fx_used.get_or_insert_with(|| FxUsed {
                    rate: c.rate.to_string(),
                    date: c.date.to_string(),
                    source: Some(c.source),
                });
                Ok(Money { amount: c.amount, currency: target })
            }
            Err(FxError::Unknown) => deny(DeclineReason::UnsupportedCurrency, "fx.rates"),
            Err(FxError::Overflow) => deny(DeclineReason::PerTransactionExceeded, "request.amount"),
        }
    };
    // The rate recorded is the one into the card's currency when there is a card, else the agent's.
    let card = to(card_ccy)?;
    let agent = to(agent_ccy)?;
    Ok(Amounts { agent, card })
}

/// The declines a mandate can lift: spending rules, and locks it may name. Never a freeze, a
/// currency, an MCC, a country, the hours, a recipient, the caller's own ceiling or the balance.
fn mandate_may_lift(reason: DeclineReason) -> bool {
    use DeclineReason::*;
    matches!(
        reason,
        LimitExceeded
            | VelocityExceeded
            | ApprovalRequired
            | PerTransactionExceeded
            | PerCallExceeded
            | HostNotAllowed
            | MerchantNotAllowed
    )
}

/// Whether the request falls inside the mandate: in force, not used up, on its trace, and to a
/// payee it names when it names any (a host for a USDC payment, a merchant for a card purchase).
fn covers(a: &Allowance, m: &Mandate, req: &AuthRequest, amounts: Amounts, now: Timestamp) -> bool {
    let left = a.amount.saturating_sub(m.used);
    let trace = a.trace_id.is_none() || a.trace_id == req.trace_id;
    let payee = (m.hosts.is_empty() && m.merchants.is_empty()) || names_payee(m, req);
    a.until_ms > now.as_millisecond() && amounts.agent.amount <= left && trace && payee
}

/// The mandate names the request's payee: its host on the USDC rail, its merchant on a card.
fn names_payee(m: &Mandate, req: &AuthRequest) -> bool {
    let merchant = &req.merchant;
    match req.rail {
        Rail::Usdc => m.names_host(&merchant.name),
        Rail::Card => {
            m.merchants.iter().any(|p| merchant.id.as_deref() == Some(p.as_str()) || glob_match(p, &merchant.name))
        }
    }
}

/// The rules, in order; within a mandate (`lifted`), limits, thresholds and per-payment caps pass,
/// and so do the locks it names.
fn check(
    req: &AuthRequest,
    snap: &Snapshot<'_>,
    now: Timestamp,
    amounts: Amounts,
    trail: &mut Trail,
    lifted: Option<&Mandate>,
) -> Outcome {
    // A lock steps aside only for the payee the mandate names.
    let named = lifted.is_some_and(|m| names_payee(m, req));
    let names_merchants = named && req.rail == Rail::Card;
    let names_hosts = named && req.rail == Rail::Usdc;
    let rules = rules_of(snap, amounts);
    let m = &req.merchant;

    for r in &rules {
        if let Some(rule) = &r.policy.mcc {
            let listed = |list: &Vec<String>| m.mcc.as_ref().is_some_and(|mcc| list.contains(mcc));
            allow_block(rule, listed, DeclineReason::MccNotAllowed, r.owner, "mcc")?;
        }
        if let Some(rule) = &r.policy.mcc_groups {
            check_groups(rule, m.mcc.as_deref(), snap.catalog, r.owner)?;
        }
    }
    for r in &rules {
        if let Some(lock) = r.policy.merchant_lock.as_ref().filter(|_| !names_merchants) {
            let by_id = m.id.as_ref().is_some_and(|id| lock.ids.contains(id));
            if !by_id && !lock.names.iter().any(|p| glob_match(p, &m.name)) {
                return deny(DeclineReason::MerchantNotAllowed, format!("{}.merchant_lock", r.owner));
            }
        }
        if req.rail == Rail::Usdc && !names_hosts && !r.policy.x402_allows_host(&m.name) {
            return deny(DeclineReason::HostNotAllowed, format!("{}.x402.allow_hosts", r.owner));
        }
        let listed = r.policy.x402_pay_to();
        if req.rail == Rail::Usdc
            && !listed.is_empty()
            && !req.recipient.as_ref().is_some_and(|to| listed.contains(&to.account))
        {
            return deny(DeclineReason::RecipientNotAllowed, format!("{}.x402.pay_to", r.owner));
        }
    }
    // With no list, a recipient is trusted only when the paid server named it: an agent that hands
    // in requirements could name any address.
    if req.rail == Rail::Usdc
        && rules.iter().all(|r| r.policy.x402_pay_to().is_empty())
        && req.recipient.as_ref().is_none_or(|to| to.named_by != NamedBy::Server)
    {
        return deny(DeclineReason::RecipientNotAllowed, "request.pay_to");
    }
    for r in &rules {
        if let Some(rule) = &r.policy.countries {
            let listed =
                |list: &Vec<String>| m.country.as_ref().is_some_and(|c| list.iter().any(|l| l.eq_ignore_ascii_case(c)));
            allow_block(rule, listed, DeclineReason::CountryNotAllowed, r.owner, "countries")?;
        }
    }
    for r in &rules {
        if let Some(hours) = &r.policy.active_hours
            && !within_hours(hours, now)
        {
            return deny(DeclineReason::OutsideActiveHours, format!("{}.active_hours", r.owner));
        }
    }
    for r in rules.iter().filter(|_| lifted.is_none()) {
        if r.policy.per_transaction.is_some_and(|cap| r.amount > cap) {
            return deny(DeclineReason::PerTransactionExceeded, format!("{}.per_transaction", r.owner));
        }
        if req.rail == Rail::Usdc && r.policy.x402.as_ref().and_then(|x| x.per_call).is_some_and(|cap| r.amount > cap) {
            return deny(DeclineReason::PerCallExceeded, format!("{}.x402.per_call", r.owner));
        }
    }
    if req.max_amount.is_some_and(|max| amounts.agent.amount > max) {
        let reason = match req.rail {
            Rail::Usdc => DeclineReason::PerCallExceeded,
            Rail::Card => DeclineReason::PerTransactionExceeded,
        };
        return deny(reason, "request.max_amount");
    }
    for r in rules.iter().filter(|_| lifted.is_none()) {
        for (index, limit) in r.policy.limits.iter().enumerate() {
            check_limit(index, limit, r, req, snap, now, trail)?;
        }
    }
    // An ancestor's per-transaction cap and limits, over its whole subtree's spend. A mandate is
    // the child's: it lifts none of them.
    for (a, owner) in snap.ancestors.iter().zip(ANCESTORS) {
        let policy = &a.agent.policy;
        let r = Rules { owner, policy, amount: amounts.agent.amount, currency: a.agent.currency };
        if policy.per_transaction.is_some_and(|cap| r.amount > cap) {
            return deny(DeclineReason::PerTransactionExceeded, format!("{owner}.per_transaction"));
        }
        let view = Snapshot { agent: a.agent, card: None, spends: a.spends, totals: None, ancestors: &[], ..*snap };
        for (index, limit) in policy.limits.iter().enumerate() {
            check_limit(index, limit, &r, req, &view, now, trail)?;
        }
    }
    for r in rules.iter().filter(|_| lifted.is_none()) {
        let Some(threshold) = r.policy.approval.as_ref().filter(|a| r.amount > a.above) else { continue };
        let rule = format!("{}.approval", r.owner);
        let card = snap.card.map(|c| &c.id);
        let pass = snap.allowances.iter().find(|a| {
            a.rule == rule
                && a.until_ms > now.as_millisecond()
                && a.amount >= r.amount
                && (r.owner != "card" || a.card_id.as_ref() == card)
        });
        match pass {
            Some(a) => drop(trail.allowance.get_or_insert_with(|| a.approval_id.clone())),
            None => {
                let ask = Ask {
                    amount: r.amount,
                    currency: r.currency,
                    cap: Some(threshold.above),
                    spent: None,
                    window_end_ms: None,
                    single_use: true,
                };
                trail.ask = Some(ask);
                return deny(DeclineReason::ApprovalRequired, rule);
            }
        }
    }
    if amounts.agent.amount > snap.available {
        return deny(DeclineReason::InsufficientFunds, "agent.balance");
    }
    Ok(())
}

/// The card's policy (if a card pays) and the agent's, with the request's amount in each one's currency.
fn rules_of<'a>(snap: &Snapshot<'a>, amounts: Amounts) -> Vec<Rules<'a>> {
    let mut rules = Vec::with_capacity(2);
    if let Some(card) = snap.card {
        rules.push(Rules { owner: "card", policy: &card.policy, amount: amounts.card.amount, currency: card.currency });
    }
    let agent = &snap.agent.policy;
    rules.push(Rules { owner: "agent", policy: agent, amount: amounts.agent.amount, currency: snap.agent.currency });
    rules
}

/// A limit the request falls under, and what its window holds with the request counted, in the
/// limit's policy currency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Load {
    /// e.g. `agent.limit.daily`.
    pub rule: String,
    pub amount: i64,
    pub amount_cap: Option<i64>,
    pub count: i64,
    pub count_cap: Option<i64>,
}

/// How full each limit the request falls under would be with it counted (a backtest's peak
/// utilisation); counted as a decision counts, from the same totals.
pub fn loads(req: &AuthRequest, snap: &Snapshot<'_>, now: Timestamp, amounts: Amounts) -> Vec<Load> {
    let mut out = Vec::new();
    for r in &rules_of(snap, amounts) {
        for (index, limit) in r.policy.limits.iter().enumerate() {
            if let Some((sum, count, _)) = window_total(index, limit, r, req, snap, now) {
                out.push(Load {
                    rule: format!("{}.limit.{}", r.owner, limit.id),
                    amount: sum.saturating_add(r.amount),
                    amount_cap: limit.amount,
                    count: count + 1,
                    count_cap: limit.count,
                });
            }
        }
    }
    out
}

fn allow_block(
    rule: &AllowBlock,
    listed: impl Fn(&Vec<String>) -> bool,
    reason: DeclineReason,
    owner: &str,
    name: &str,
) -> Outcome {
    match (&rule.allow, &rule.block) {
        (Some(allow), _) if !listed(allow) => deny(reason, format!("{owner}.{name}.allow")),
        (_, Some(block)) if listed(block) => deny(reason, format!("{owner}.{name}.block")),
        _ => Ok(()),
    }
}

fn check_groups(rule: &AllowBlock, mcc: Option<&str>, catalog: &Catalog, owner: &str) -> Outcome {
    let in_group =
        |name: &String| mcc.is_some_and(|mcc| catalog.groups.get(name).is_some_and(|g| g.mcc.iter().any(|c| c == mcc)));
    if let Some(allow) = &rule.allow
        && !allow.iter().any(in_group)
    {
        return deny(DeclineReason::MccNotAllowed, format!("{owner}.mcc_groups.allow"));
    }
    if let Some(group) = rule.block.iter().flatten().find(|g| in_group(g)) {
        return deny(DeclineReason::MccNotAllowed, format!("{owner}.mcc_groups.block.{group}"));
    }
    Ok(())
}

fn within_hours(hours: &crate::domain::policy::ActiveHours, now: Timestamp) -> bool {
    let Ok(tz) = jiff::tz::TimeZone::get(&hours.timezone) else { return false };
    let local = now.to_zoned(tz);
    let minute = u32::from(local.hour() as u8) * 60 + u32::from(local.minute() as u8);
    let (Some(from), Some(to)) = (parse_clock(&hours.from), parse_clock(&hours.to)) else { return false };
    let in_time = if from < to { (from..to).contains(&minute) } else { minute >= from || minute < to };
    let day_ok =
        hours.days.is_empty() || hours.days.iter().any(|d| *d as i8 + 1 == local.weekday().to_monday_one_offset());
    in_time && day_ok
}

/// `*` matches any run of characters; the comparison ignores ASCII case.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && p[pi] != b'*' && p[pi].eq_ignore_ascii_case(&t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            pi += 1;
            mark = ti;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&b| b == b'*')
}

/// Whether a spend (or the request) falls under the limit's filters.
fn matches_filters(
    limit: &Limit,
    catalog: &Catalog,
    rail: Rail,
    mcc: Option<&str>,
    merchant: (Option<&str>, &str),
) -> bool {
    if !limit.rails.is_empty() && !limit.rails.contains(&rail) {
        return false;
    }
    if !limit.mcc.is_empty() || !limit.mcc_groups.is_empty() {
        let Some(mcc) = mcc else { return false };
        let direct = limit.mcc.iter().any(|c| c == mcc);
        let grouped =
            || limit.mcc_groups.iter().any(|g| catalog.groups.get(g).is_some_and(|g| g.mcc.iter().any(|c| c == mcc)));
        if !direct && !grouped() {
            return false;
        }
    }
    if !limit.merchants.is_empty() {
        let (id, name) = merchant;
        let hit = limit.merchants.iter().any(|p| id == Some(p.as_str()) || glob_match(p, name));
        if !hit {
            return false;
        }
    }
    true
}

fn check_limit(
    index: usize,
    limit: &Limit,
    r: &Rules<'_>,
    req: &AuthRequest,
    snap: &Snapshot<'_>,
    now: Timestamp,
    trail: &mut Trail,
) -> Outcome {
    let Some((sum, count, start)) = window_total(index, limit, r, req, snap, now) else { return Ok(()) };
    let card_id = snap.card.map(|c| &c.id);
    let crosses = |extra_amount: i64, extra_count: i64| {
        if limit.amount.is_some_and(|cap| sum.saturating_add(r.amount) > cap.saturating_add(extra_amount)) {
            Some(DeclineReason::LimitExceeded)
        } else if limit.count.is_some_and(|cap| count + 1 > cap.saturating_add(extra_count)) {
            Some(DeclineReason::VelocityExceeded)
        } else {
            None
        }
    };
    if crosses(0, 0).is_none() {
        trail.crossed.extend(crossed_alerts(limit, r, sum, start));
        return Ok(());
    }
    // People's approvals raise the limit for what they cover: this card, this trace, or the agent.
    let rule = format!("{}.limit.{}", r.owner, limit.id);
    let now_ms = now.as_millisecond();
    let granted: Vec<&Allowance> = snap
        .allowances
        .iter()
        .filter(|a| {
            a.rule == rule
                && a.until_ms > now_ms
                && match limit.scope {
                    Scope::Agent => true,
                    Scope::Card => a.card_id.as_ref() == card_id,
                    Scope::Trace => a.trace_id.is_some() && a.trace_id == req.trace_id,
                }
        })
        .collect();
    let extra = granted.iter().fold(0i64, |sum, a| sum.saturating_add(a.amount));
    let Some(reason) = crosses(extra, granted.len() as i64) else {
        trail.allowance.get_or_insert_with(|| granted[0].approval_id.clone());
        trail.crossed.extend(crossed_alerts(limit, r, sum, start));
        return Ok(());
    };
    if limit.on_exceed == OnExceed::Ask {
        trail.ask = Some(Ask {
            amount: r.amount,
            currency: r.currency,
            cap: limit.amount.map(|cap| cap.saturating_add(extra)),
            spent: Some(sum),
            window_end_ms: window::end_ms(&limit.window, now),
            single_use: false,
        });
        return deny(DeclineReason::ApprovalRequired, rule);
    }
    deny(reason, rule)
}

/// What the limit's window holds before the request (sum in the policy currency, count) and when
/// the window starts; None when the request is not under the limit (its filters or scope).
fn window_total(
    index: usize,
    limit: &Limit,
    r: &Rules<'_>,
    req: &AuthRequest,
    snap: &Snapshot<'_>,
    now: Timestamp,
) -> Option<(i64, i64, i64)> {
    let m: &Merchant = &req.merchant;
    if !matches_filters(limit, snap.catalog, req.rail, m.mcc.as_deref(), (m.id.as_deref(), &m.name)) {
        return None;
    }
    let in_scope: Box<dyn Fn(&Spend) -> bool> = match limit.scope {
        Scope::Agent => Box::new(|_| true),
        Scope::Card => {
            let id = &snap.card?.id;
            Box::new(move |s: &Spend| s.card_id.as_deref() == Some(id.as_str()))
        }
        Scope::Trace => {
            let trace = req.trace_id.as_ref()?;
            Box::new(move |s: &Spend| s.trace_id.as_deref() == Some(trace.as_str()))
        }
    };
    let start = window::start_ms(&limit.window, now);
    let owner = if r.owner == "card" { snap.card.map(|c| c.id.as_str()) } else { None };
    let kept =
        snap.totals.zip(totals::key_for(index, limit, owner, snap.card, req)).and_then(|(t, k)| t.get(&k, start));
    let (sum, count) = kept.unwrap_or_else(|| {
        let c = counted(limit, r.currency, snap, start, in_scope);
        (c.amount, c.count)
    });
    Some((sum, count, start))
}

/// What a limit's window counts from `start_ms` on, among the spends `in_scope`.
struct Counted {
    /// In the limit's policy currency.
    amount: i64,
    count: i64,
    /// When the oldest spend counted was authorized.
    first_ms: Option<i64>,
}

fn counted(
    limit: &Limit,
    currency: Currency,
    snap: &Snapshot<'_>,
    start_ms: i64,
    in_scope: impl Fn(&Spend) -> bool,
) -> Counted {
    let mut c = Counted { amount: 0, count: 0, first_ms: None };
    for s in snap.spends {
        if s.at_ms >= start_ms
            && s.counted > 0
            && in_scope(s)
            && matches_filters(
                limit,
                snap.catalog,
                s.rail,
                s.mcc.as_deref(),
                (s.merchant_id.as_deref(), &s.merchant_name),
            )
        {
            c.amount = c.amount.saturating_add(spend_in(s, currency, snap));
            c.count += 1;
            c.first_ms.get_or_insert(s.at_ms);
        }
    }
    c
}

/// The limit's alert thresholds that the request takes its window from below to at or above.
fn crossed_alerts(limit: &Limit, r: &Rules<'_>, sum: i64, window_start_ms: i64) -> Vec<Crossed> {
    let Some(cap) = limit.amount else { return Vec::new() };
    let used = sum.saturating_add(r.amount);
    limit
        .alert_at
        .iter()
        .filter_map(|&percent| {
            // The threshold in minor units, rounded up: 80% of 999 is reached at 800.
            let at = ((i128::from(cap) * i128::from(percent) + 99) / 100) as i64;
            (sum < at && used >= at).then(|| Crossed {
                rule: format!("{}.limit.{}", r.owner, limit.id),
                percent,
                cap,
                used,
                currency: r.currency,
                window_start_ms,
            })
        })
        .collect()
}

/// A spend in `currency`: recorded amounts where they are in it, else converted (rounded up).
fn spend_in(s: &Spend, currency: Currency, snap: &Snapshot<'_>) -> i64 {
    if s.card_currency == Some(currency) {
        return s.counted_card;
    }
    let agent = snap.agent.currency;
    if agent == currency {
        return s.counted;
    }
    // Counting in a currency the table cannot reach would undercount: count it as the cap.
    snap.rates.convert(s.counted, agent, currency).map_or(i64::MAX / 4, |c| c.amount)
}

#[cfg(test)]
mod tests;
