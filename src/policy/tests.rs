//! Every rule, window and scope of the policy core, driven directly.

use serde_json::json;

use super::*;
use crate::domain::authorization::Recipient;
use crate::domain::ids::{AgentId, CardId};

fn at(s: &str) -> Timestamp {
    s.parse().unwrap()
}

const NOW: &str = "2026-11-22T12:00:00Z";

fn policy(doc: serde_json::Value, currency: &str) -> Policy {
    let mut p = Policy::from_json(doc).unwrap();
    p.normalize(crate::fixtures::catalog(), Some(currency.parse().unwrap())).unwrap();
    p
}

struct World {
    agent: Agent,
    card: Card,
    card_used: bool,
    spends: Vec<Spend>,
    available: i64,
    rates: RateTable,
    fx: FxRules,
    allowances: Vec<Allowance>,
    /// The agent's parent, with its subtree's spends.
    parent: Option<(Agent, Vec<Spend>)>,
}

impl World {
    fn new() -> World {
        let now = at(NOW);
        let agent = Agent {
            id: AgentId::generate(),
            name: "a".into(),
            department: None,
            status: AgentStatus::Active,
            currency: Currency::USD,
            policy: policy(json!({}), "USD"),
            created_at: now,
            updated_at: now,
            allowances: Vec::new(),
            shadows: Vec::new(),
            deactivated_at: None,
            parent_id: None,
            ancestors: Vec::new(),
        };
        let card = Card {
            id: CardId::generate(),
            agent_id: agent.id.clone(),
            label: "openai".into(),
            currency: Currency::USD,
            last4: "4242".into(),
            exp_month: 12,
            exp_year: 2029,
            expires_at: None,
            single_use: false,
            status: CardStatus::Active,
            processor: crate::domain::card::Processor::Simulator,
            processor_card_id: "x".into(),
            processor_managed: false,
            trace_id: None,
            policy: policy(json!({}), "USD"),
            created_at: now,
            updated_at: now,
        };
        let rates = RateTable::parse_ecb(include_str!("../../fixtures/ecb_rates.xml"), fx::RateSource::Ecb).unwrap();
        let fx =
            FxRules { max_age: SignedDuration::from_hours(24 * 365 * 10), decline_stale: true, accept_bundled: false };
        World {
            agent,
            card,
            card_used: false,
            spends: Vec::new(),
            available: 1_000_000,
            rates,
            fx,
            allowances: Vec::new(),
            parent: None,
        }
    }

    fn card_policy(mut self, doc: serde_json::Value) -> Self {
        self.card.policy = policy(doc, self.card.currency.code());
        self
    }

    fn agent_policy(mut self, doc: serde_json::Value) -> Self {
        self.agent.policy = policy(doc, self.agent.currency.code());
        self
    }

    fn decide_at(&self, req: &AuthRequest, now: &str) -> Decision {
        let ancestors: Vec<Ancestor<'_>> =
            self.parent.iter().map(|(agent, spends)| Ancestor { agent, spends: spends.as_slice() }).collect();
        let snap = Snapshot {
            agent: &self.agent,
            card: Some(&self.card),
            card_used: self.card_used,
            spends: &self.spends,
            available: self.available,
            rates: &self.rates,
            fx: self.fx,
            catalog: crate::fixtures::catalog(),
            allowances: &self.allowances,
            totals: None,
            ancestors: &ancestors,
        };
        let scanned = evaluate(req, &snap, at(now));
        // The running totals, built for this request, decide exactly as the scan does.
        let mut spends = self.spends.clone();
        spends.sort_by_key(|s| s.at_ms);
        let mut totals = crate::policy::totals::Totals::default();
        totals.prepare(req, &self.agent, Some(&self.card), &spends, crate::fixtures::catalog(), at(now));
        let kept = evaluate(req, &Snapshot { spends: &spends, totals: Some(&totals), ..snap }, at(now));
        assert_eq!(kept, scanned, "totals and scan disagree");
        scanned
    }

    fn decide(&self, req: &AuthRequest) -> Decision {
        self.decide_at(req, NOW)
    }

    /// Records an approved request as a spend at `when`.
    fn spent(&mut self, req: &AuthRequest, when: &str) {
        let d = self.decide_at(req, when);
        assert!(d.approved(), "setup spend declined: {d:?}");
        let a = d.amounts.unwrap();
        self.spends.push(Spend {
            authorization_id: format!("auth_{}", self.spends.len()),
            card_id: Some(self.card.id.as_str().into()),
            card_currency: Some(self.card.currency),
            trace_id: req.trace_id.as_deref().map(Into::into),
            rail: req.rail,
            mcc: req.merchant.mcc.as_deref().map(Into::into),
            merchant_id: req.merchant.id.as_deref().map(Into::into),
            merchant_name: req.merchant.name.as_str().into(),
            at_ms: at(when).as_millisecond(),
            counted: a.agent.amount,
            counted_card: a.card.amount,
        });
    }
}

fn req(amount: i64) -> AuthRequest {
    AuthRequest {
        rail: Rail::Card,
        amount,
        currency: "USD".into(),
        merchant: Merchant {
            id: Some("m_openai".into()),
            name: "OPENAI *API".into(),
            mcc: Some("5734".into()),
            country: Some("US".into()),
        },
        trace_id: None,
        max_amount: None,
        recipient: None,
    }
}

fn with(mut r: AuthRequest, f: impl FnOnce(&mut AuthRequest)) -> AuthRequest {
    f(&mut r);
    r
}

fn declined(d: &Decision) -> (DeclineReason, &str) {
    (d.decline.expect("expected a decline"), d.rule.as_deref().unwrap_or(""))
}

#[test]
fn a_plain_request_is_approved_with_its_amounts() {
    let d = World::new().decide(&req(1_250));
    assert!(d.approved());
    assert_eq!(d.amounts.unwrap().agent, Money { amount: 1_250, currency: Currency::USD });
    assert_eq!(d.fx, None);
}

#[test]
fn a_parents_limits_count_its_subtree_and_its_freeze_stops_the_child() {
    let mut w = World::new();
    let mut parent = w.agent.clone();
    parent.id = AgentId::generate();
    parent.policy = policy(
        json!({"per_transaction": 5_000, "limits": [{"id": "budget", "scope": "agent", "window": "lifetime", "amount": 10_000}]}),
        "USD",
    );
    // A sibling has spent 9,000 of the parent's budget: it is in the parent's book, not the child's.
    let sibling = Spend {
        authorization_id: "auth_sibling".into(),
        card_id: Some("card_sibling".into()),
        card_currency: Some(Currency::USD),
        trace_id: None,
        rail: Rail::Card,
        mcc: None,
        merchant_id: None,
        merchant_name: "OTHER".into(),
        at_ms: at(NOW).as_millisecond() - 1_000,
        counted: 9_000,
        counted_card: 9_000,
    };
    w.parent = Some((parent, vec![sibling]));
    assert!(w.decide(&req(1_000)).approved());
    assert_eq!(declined(&w.decide(&req(1_001))), (DeclineReason::LimitExceeded, "parent.limit.budget"));
    assert_eq!(declined(&w.decide(&req(6_000))), (DeclineReason::PerTransactionExceeded, "parent.per_transaction"));
    // The child's own rules come first.
    let own = World { parent: w.parent.clone(), ..World::new().agent_policy(json!({"per_transaction": 500})) };
    assert_eq!(declined(&own.decide(&req(1_000))), (DeclineReason::PerTransactionExceeded, "agent.per_transaction"));
    w.parent.as_mut().unwrap().0.status = AgentStatus::Frozen;
    assert_eq!(declined(&w.decide(&req(1))), (DeclineReason::AgentFrozen, "parent.status"));
}

#[test]
fn card_and_agent_status_decline_first() {
    let mut w = World::new().card_policy(json!({"mcc": {"allow": ["7372"]}}));
    w.card.status = CardStatus::Frozen;
    assert_eq!(declined(&w.decide(&req(100))), (DeclineReason::CardFrozen, "card.status"));
    w.card.status = CardStatus::Closed;
    assert_eq!(declined(&w.decide(&req(100))), (DeclineReason::CardClosed, "card.status"));
    w.card.status = CardStatus::Active;
    w.agent.status = AgentStatus::Frozen;
    assert_eq!(declined(&w.decide(&req(100))), (DeclineReason::AgentFrozen, "agent.status"));
    // Status comes before the currency check.
    let bad_currency = with(req(100), |r| r.currency = "ZZZ".into());
    assert_eq!(declined(&w.decide(&bad_currency)).0, DeclineReason::AgentFrozen);
}

#[test]
fn cards_expire_at_their_time_or_after_their_expiry_month() {
    let mut w = World::new();
    w.card.expires_at = Some(at("2026-11-22T12:00:00Z"));
    assert_eq!(declined(&w.decide_at(&req(1), "2026-11-22T12:00:00Z")).0, DeclineReason::CardExpired);
    assert!(w.decide_at(&req(1), "2026-11-22T11:59:59Z").approved());
    w.card.expires_at = None;
    (w.card.exp_month, w.card.exp_year) = (11, 2026);
    assert!(w.decide_at(&req(1), "2026-11-30T23:59:59Z").approved());
    assert_eq!(declined(&w.decide_at(&req(1), "2026-12-01T00:00:00Z")), (DeclineReason::CardExpired, "card.expiry"));
}

#[test]
fn a_single_use_card_declines_once_used() {
    let mut w = World::new();
    w.card.single_use = true;
    assert!(w.decide(&req(1)).approved());
    w.card_used = true;
    assert_eq!(declined(&w.decide(&req(1))), (DeclineReason::CardUsed, "card.single_use"));
}

#[test]
fn mcc_allow_and_block_lists() {
    let w = World::new().card_policy(json!({"mcc": {"allow": ["7372"]}}));
    assert_eq!(declined(&w.decide(&req(1))), (DeclineReason::MccNotAllowed, "card.mcc.allow"));
    assert!(w.decide(&with(req(1), |r| r.merchant.mcc = Some("7372".into()))).approved());
    // A request without an MCC is not on any allow list.
    assert_eq!(declined(&w.decide(&with(req(1), |r| r.merchant.mcc = None))).0, DeclineReason::MccNotAllowed);
    let w = World::new().agent_policy(json!({"mcc": {"block": ["5734"]}}));
    assert_eq!(declined(&w.decide(&req(1))), (DeclineReason::MccNotAllowed, "agent.mcc.block"));
}

#[test]
fn mcc_groups_name_the_group_that_blocked() {
    let w = World::new().agent_policy(json!({"mcc_groups": {"block": ["gambling", "cash"]}}));
    assert!(w.decide(&req(1)).approved());
    let casino = with(req(1), |r| r.merchant.mcc = Some("7995".into()));
    assert_eq!(declined(&w.decide(&casino)), (DeclineReason::MccNotAllowed, "agent.mcc_groups.block.gambling"));
    let w = World::new().card_policy(json!({"mcc_groups": {"allow": ["cloud"]}}));
    assert_eq!(declined(&w.decide(&req(1))), (DeclineReason::MccNotAllowed, "card.mcc_groups.allow"));
}

#[test]
fn merchant_lock_by_network_id_or_descriptor_pattern() {
    let w = World::new().card_policy(json!({"merchant_lock": {"ids": ["m_aws"], "names": ["openai*"]}}));
    assert!(w.decide(&req(1)).approved(), "descriptor pattern matches, ignoring case");
    let other = with(req(1), |r| {
        r.merchant.name = "ANTHROPIC".into();
        r.merchant.id = Some("m_anthropic".into());
    });
    assert_eq!(declined(&w.decide(&other)), (DeclineReason::MerchantNotAllowed, "card.merchant_lock"));
    let aws = with(other, |r| r.merchant.id = Some("m_aws".into()));
    assert!(w.decide(&aws).approved(), "network id matches");
}

#[test]
fn glob_patterns() {
    assert!(glob_match("OPENAI *", "openai *api"));
    assert!(glob_match("*", ""));
    assert!(glob_match("a*b*c", "axxbyyc"));
    assert!(!glob_match("a*b*c", "axxbyy"));
    assert!(glob_match("AWS", "aws"));
    assert!(!glob_match("AWS", "AWS EMEA"));
}

#[test]
fn country_allow_and_block() {
    let w = World::new().agent_policy(json!({"countries": {"allow": ["DE"]}}));
    assert_eq!(declined(&w.decide(&req(1))), (DeclineReason::CountryNotAllowed, "agent.countries.allow"));
    let w = World::new().card_policy(json!({"countries": {"block": ["US"]}}));
    assert_eq!(declined(&w.decide(&req(1))), (DeclineReason::CountryNotAllowed, "card.countries.block"));
    assert!(w.decide(&with(req(1), |r| r.merchant.country = Some("de".into()))).approved());
}

#[test]
fn active_hours_in_a_timezone_including_overnight_spans() {
    // 12:00 UTC on a Sunday is 07:00 in New York (UTC-5).
    let w = World::new()
        .agent_policy(json!({"active_hours": {"timezone": "America/New_York", "from": "08:00", "to": "20:00"}}));
    assert_eq!(declined(&w.decide(&req(1))), (DeclineReason::OutsideActiveHours, "agent.active_hours"));
    assert!(w.decide_at(&req(1), "2026-11-22T13:00:00Z").approved());
    assert!(!w.decide_at(&req(1), "2026-11-23T01:00:00Z").approved(), "20:00 is already outside");
    let night = World::new().agent_policy(json!({"active_hours": {"from": "22:00", "to": "06:00"}}));
    assert!(night.decide_at(&req(1), "2026-11-22T23:00:00Z").approved());
    assert!(night.decide_at(&req(1), "2026-11-22T05:59:00Z").approved());
    assert!(!night.decide_at(&req(1), "2026-11-22T06:00:00Z").approved());
    let weekdays = World::new().agent_policy(
        json!({"active_hours": {"from": "00:00", "to": "23:59", "days": ["mon", "tue", "wed", "thu", "fri"]}}),
    );
    assert!(!weekdays.decide(&req(1)).approved(), "Sunday");
    assert!(weekdays.decide_at(&req(1), "2026-11-23T12:00:00Z").approved(), "Monday");
}

#[test]
fn per_transaction_caps_apply_in_each_policys_currency() {
    let w = World::new().card_policy(json!({"per_transaction": 5_000}));
    assert!(w.decide(&req(5_000)).approved());
    assert_eq!(declined(&w.decide(&req(5_001))), (DeclineReason::PerTransactionExceeded, "card.per_transaction"));
    let w = World::new().agent_policy(json!({"per_transaction": 1_000}));
    assert_eq!(declined(&w.decide(&req(1_001))).1, "agent.per_transaction");
}

#[test]
fn rolling_limits_slide_and_name_the_limit() {
    let mut w = World::new().agent_policy(
        json!({"limits": [{"id": "daily", "scope": "agent", "window": {"rolling": "24h"}, "amount": 10_000}]}),
    );
    w.spent(&req(6_000), "2026-11-21T13:00:00Z");
    w.spent(&req(3_000), "2026-11-22T11:00:00Z");
    assert!(w.decide(&req(1_000)).approved(), "exactly at the cap is allowed");
    assert_eq!(declined(&w.decide(&req(1_001))), (DeclineReason::LimitExceeded, "agent.limit.daily"));
    // An hour later the 60.00 spend has left the window.
    assert!(w.decide_at(&req(7_000), "2026-11-22T13:00:00Z").approved());
    assert!(!w.decide_at(&req(7_001), "2026-11-22T13:00:00Z").approved());
}

/// A limit's alert thresholds are crossed by the approval that takes the window from below one to
/// at or above it: once, whichever authorization that is, and never by a decline.
#[test]
fn an_approval_that_takes_a_limit_past_an_alert_threshold_says_so() {
    let mut w = World::new().agent_policy(json!({"limits": [{"id": "daily", "scope": "agent",
        "window": {"calendar": "day", "timezone": "UTC"}, "amount": 999, "alert_at": [100, 80, 80]}]}));
    let crossed = |d: &Decision| d.crossed.iter().map(|c| (c.percent, c.used)).collect::<Vec<_>>();
    assert_eq!(crossed(&w.decide(&req(799))), [], "80% of 999 is 800 (rounded up)");
    assert_eq!(crossed(&w.decide(&req(800))), [(80, 800)]);
    assert_eq!(crossed(&w.decide(&req(999))), [(80, 999), (100, 999)], "one request may cross both");
    w.spent(&req(800), "2026-11-22T08:00:00Z");
    assert_eq!(crossed(&w.decide(&req(100))), [], "80% was crossed before this one");
    assert_eq!(crossed(&w.decide(&req(200))), [], "a decline crosses nothing");
    let d = w.decide(&req(199));
    let c = &d.crossed[0];
    assert_eq!((c.rule.as_str(), c.percent, c.cap, c.used), ("agent.limit.daily", 100, 999, 999));
    assert_eq!(c.window_start_ms, at("2026-11-22T00:00:00Z").as_millisecond());
    // The next day's window starts from nothing again.
    assert_eq!(crossed(&w.decide_at(&req(800), "2026-11-23T08:00:00Z")), [(80, 800)]);
}

#[test]
fn calendar_limits_reset_at_midnight_in_their_timezone() {
    let mut w = World::new().card_policy(json!({"limits": [
        {"id": "day_la", "scope": "card", "window": {"calendar": "day", "timezone": "America/Los_Angeles"}, "amount": 1_000}]}));
    // 2026-11-22T07:00Z is 23:00 on the 21st in Los Angeles.
    w.spent(&req(1_000), "2026-11-22T07:00:00Z");
    assert_eq!(
        declined(&w.decide_at(&req(1), "2026-11-22T07:59:59Z")),
        (DeclineReason::LimitExceeded, "card.limit.day_la")
    );
    assert!(w.decide_at(&req(1_000), "2026-11-22T08:00:00Z").approved());
}

#[test]
fn calendar_weeks_and_months_and_lifetime() {
    let mut w = World::new().agent_policy(json!({"limits": [
        {"id": "week", "scope": "agent", "window": {"calendar": "week"}, "amount": 2_000},
        {"id": "month", "scope": "agent", "window": {"calendar": "month", "timezone": "Europe/Berlin"}, "amount": 3_000},
        {"id": "ever", "scope": "agent", "window": "lifetime", "amount": 4_000}]}));
    w.spent(&req(2_000), "2026-11-22T20:00:00Z"); // Sunday
    assert_eq!(declined(&w.decide_at(&req(1), "2026-11-22T23:59:59Z")).1, "agent.limit.week");
    // Monday: a new week, the same month.
    assert!(w.decide_at(&req(1_000), "2026-11-23T00:00:00Z").approved());
    w.spent(&req(1_000), "2026-11-23T00:00:00Z");
    assert_eq!(declined(&w.decide_at(&req(1), "2026-11-23T00:00:00Z")).1, "agent.limit.month");
    // December in Berlin starts at 23:00 UTC on 30 November; the lifetime cap still counts.
    assert!(!w.decide_at(&req(1), "2026-11-30T22:59:59Z").approved());
    assert!(w.decide_at(&req(1_000), "2026-11-30T23:00:00Z").approved());
    assert_eq!(declined(&w.decide_at(&req(1_001), "2026-11-30T23:00:00Z")).1, "agent.limit.ever");
}

#[test]
fn counts_are_velocity_limits() {
    let mut w = World::new()
        .agent_policy(json!({"limits": [{"id": "burst", "scope": "agent", "window": {"rolling": "10m"}, "count": 2}]}));
    w.spent(&req(1), "2026-11-22T11:55:00Z");
    w.spent(&req(1), "2026-11-22T11:56:00Z");
    assert_eq!(declined(&w.decide(&req(1))), (DeclineReason::VelocityExceeded, "agent.limit.burst"));
    assert!(w.decide_at(&req(1), "2026-11-22T12:05:01Z").approved());
}

#[test]
fn scopes_count_only_their_card_or_trace() {
    let mut w = World::new().agent_policy(json!({"limits": [
        {"id": "per_card", "scope": "card", "window": "lifetime", "amount": 1_000},
        {"id": "per_trace", "scope": "trace", "window": "lifetime", "amount": 500}]}));
    let pr1 = with(req(400), |r| r.trace_id = Some("pr-1".into()));
    w.spent(&pr1, "2026-11-22T10:00:00Z");
    assert_eq!(declined(&w.decide(&with(req(101), |r| r.trace_id = Some("pr-1".into())))).1, "agent.limit.per_trace");
    assert!(w.decide(&with(req(500), |r| r.trace_id = Some("pr-2".into()))).approved());
    assert!(w.decide(&req(600)).approved(), "no trace: the trace limit does not apply");
    assert_eq!(declined(&w.decide(&req(601))).1, "agent.limit.per_card");
    // Another card of the same agent has its own card-scoped count.
    w.card.id = CardId::generate();
    assert!(w.decide(&req(1_000)).approved());
}

#[test]
fn limit_filters_select_what_counts() {
    let mut w = World::new().agent_policy(json!({"limits": [
        {"id": "ai", "scope": "agent", "window": "lifetime", "amount": 1_000, "mcc_groups": ["ai_apis"], "rails": ["card"]},
        {"id": "openai", "scope": "agent", "window": "lifetime", "amount": 1_500, "merchants": ["OPENAI *"]}]}));
    let cloud = with(req(5_000), |r| {
        r.merchant.mcc = Some("4816".into());
        r.merchant.name = "AWS".into();
        r.merchant.id = None;
    });
    w.spent(&cloud, "2026-11-22T10:00:00Z");
    w.spent(&req(1_000), "2026-11-22T10:00:00Z");
    assert_eq!(declined(&w.decide(&req(1))).1, "agent.limit.ai");
    assert!(w.decide(&cloud).approved(), "cloud spend is outside both filters");
    let usdc = with(req(500), |r| {
        r.rail = Rail::Usdc;
        r.recipient = Some(Recipient::new("eip155:8453", PAY_TO, NamedBy::Server));
    });
    assert!(w.decide(&usdc).approved(), "the ai limit covers cards only; openai has room for 500");
    assert_eq!(declined(&w.decide(&with(usdc, |r| r.amount = 501))).1, "agent.limit.openai");
}

#[test]
fn approval_threshold_then_balance() {
    let mut w = World::new().agent_policy(json!({"approval": {"above": 10_000}}));
    assert_eq!(declined(&w.decide(&req(10_001))), (DeclineReason::ApprovalRequired, "agent.approval"));
    w.available = 500;
    assert!(w.decide(&req(500)).approved());
    assert_eq!(declined(&w.decide(&req(501))), (DeclineReason::InsufficientFunds, "agent.balance"));
}

impl World {
    fn allow(&mut self, rule: &str, amount: i64, until: &str, single_use: bool) {
        self.allowances.push(Allowance {
            approval_id: format!("apr_{}", self.allowances.len()),
            rule: rule.into(),
            card_id: Some(self.card.id.clone()),
            trace_id: None,
            amount,
            until_ms: at(until).as_millisecond(),
            single_use,
            mandate: None,
        });
    }

    /// A mandate a person approved: `amount` in all, `used` of it spent already.
    fn mandate(&mut self, amount: i64, used: i64, trace: Option<&str>, hosts: &[&str], merchants: &[&str]) {
        self.allowances.push(Allowance {
            approval_id: format!("apr_m{}", self.allowances.len()),
            rule: crate::domain::approval::MANDATE_RULE.into(),
            card_id: None,
            trace_id: trace.map(Into::into),
            amount,
            until_ms: at("2026-11-23T00:00:00Z").as_millisecond(),
            single_use: false,
            mandate: Some(Mandate {
                hosts: hosts.iter().map(|h| h.to_string()).collect(),
                merchants: merchants.iter().map(|m| m.to_string()).collect(),
                used,
            }),
        });
    }
}

#[test]
fn a_mandate_lifts_limits_within_its_scope_and_names_itself() {
    let mut w = World::new().agent_policy(json!({
        "limits": [{"id": "daily", "scope": "agent", "window": {"rolling": "24h"}, "amount": 1_000, "count": 2}],
        "per_transaction": 800, "approval": {"above": 700}}));
    let on = |amount, trace: &str| with(req(amount), |r| r.trace_id = Some(trace.into()));
    assert_eq!(declined(&w.decide(&on(1_500, "PR-1"))).0, DeclineReason::PerTransactionExceeded);
    w.mandate(3_000, 1_000, Some("PR-1"), &[], &["OPENAI*"]);
    let d = w.decide(&on(1_500, "PR-1"));
    assert!(d.approved(), "{d:?}");
    assert_eq!(d.allowance.as_deref(), Some("apr_m0"), "the spend names the mandate");
    // Not past what is left of it, not on another trace, not at another merchant.
    assert_eq!(declined(&w.decide(&on(2_001, "PR-1"))).0, DeclineReason::PerTransactionExceeded);
    assert!(w.decide(&on(2_000, "PR-1")).approved());
    assert_eq!(declined(&w.decide(&on(1_500, "PR-2"))).0, DeclineReason::PerTransactionExceeded);
    let elsewhere = with(on(1_500, "PR-1"), |r| r.merchant = Merchant { name: "AWS".into(), ..r.merchant.clone() });
    assert_eq!(declined(&w.decide(&elsewhere)).0, DeclineReason::PerTransactionExceeded);
    // Spend the rules allow on their own does not use the mandate.
    assert_eq!(w.decide(&on(100, "PR-1")).allowance, None);
    // Never past the balance, a freeze, or a lock it does not name.
    w.available = 1_499;
    assert_eq!(declined(&w.decide(&on(1_500, "PR-1"))), (DeclineReason::InsufficientFunds, "agent.balance"));
    w.available = 1_000_000;
    w.card.policy = policy(json!({"mcc": {"block": ["5734"]}}), "USD");
    assert_eq!(declined(&w.decide(&on(1_500, "PR-1"))).0, DeclineReason::MccNotAllowed);
    w.card.policy = policy(json!({}), "USD");
    w.agent.status = AgentStatus::Frozen;
    assert_eq!(declined(&w.decide(&on(1_500, "PR-1"))).0, DeclineReason::AgentFrozen);
    w.agent.status = AgentStatus::Active;
    // Expired: the rules decide again.
    assert_eq!(
        declined(&w.decide_at(&on(1_500, "PR-1"), "2026-11-23T00:00:00Z")).0,
        DeclineReason::PerTransactionExceeded
    );
}

#[test]
fn a_mandate_lifts_only_the_locks_it_names() {
    let mut w = World::new().agent_policy(json!({"x402": {"allow_hosts": ["api.example.com"]}}));
    w.card.policy = policy(json!({"merchant_lock": {"names": ["OPENAI*"]}}), "USD");
    let call = |host: &str| AuthRequest {
        rail: Rail::Usdc,
        amount: 100,
        currency: "USD".into(),
        merchant: Merchant { id: Some(PAY_TO.into()), name: host.into(), mcc: None, country: None },
        trace_id: None,
        max_amount: None,
        recipient: Some(Recipient::new("eip155:8453", PAY_TO, NamedBy::Server)),
    };
    let aws = with(req(100), |r| r.merchant = Merchant { name: "AWS EMEA".into(), ..r.merchant.clone() });
    w.mandate(1_000, 0, None, &[], &[]);
    assert_eq!(declined(&evaluate(&call("new.example.com"), &snap(&w), at(NOW))).0, DeclineReason::HostNotAllowed);
    assert_eq!(declined(&w.decide(&aws)).0, DeclineReason::MerchantNotAllowed);
    w.allowances.clear();
    w.mandate(1_000, 0, None, &["new.example.com"], &["AWS*"]);
    let d = evaluate(&call("new.example.com"), &snap(&w), at(NOW));
    assert_eq!((d.approved(), d.allowance.as_deref()), (true, Some("apr_m0")));
    assert_eq!(declined(&evaluate(&call("other.example.com"), &snap(&w), at(NOW))).0, DeclineReason::HostNotAllowed);
    assert!(w.decide(&aws).approved(), "the merchant it names");
}

#[test]
fn a_limit_that_asks_declines_with_what_to_ask() {
    let mut w = World::new().card_policy(json!({"limits": [
        {"id": "daily", "scope": "card", "window": {"calendar": "day", "timezone": "UTC"}, "amount": 1_000, "on_exceed": "ask"},
        {"id": "quiet", "scope": "card", "window": {"rolling": "1h"}, "count": 1}]}));
    w.spent(&req(700), "2026-11-22T11:30:00Z");
    let d = w.decide(&req(400));
    assert_eq!(declined(&d), (DeclineReason::ApprovalRequired, "card.limit.daily"));
    let ask = d.ask.expect("an approval_required decline says what to ask");
    assert_eq!((ask.amount, ask.spent, ask.cap, ask.single_use), (400, Some(700), Some(1_000), false));
    assert_eq!(ask.window_end_ms, Some(at("2026-11-23T00:00:00Z").as_millisecond()));
    // A limit without on_exceed declines as before, and says nothing to ask.
    let d = w.decide(&req(100));
    assert_eq!(declined(&d), (DeclineReason::VelocityExceeded, "card.limit.quiet"));
    assert!(d.ask.is_none());
}

#[test]
fn an_allowance_raises_the_limit_that_asked_until_it_ends() {
    let mut w = World::new().card_policy(json!({"limits": [
        {"id": "daily", "scope": "card", "window": {"calendar": "day", "timezone": "UTC"}, "amount": 1_000, "on_exceed": "ask"}]}));
    w.spent(&req(700), "2026-11-22T11:00:00Z");
    w.allow("card.limit.daily", 400, "2026-11-23T00:00:00Z", false);
    let d = w.decide(&req(400));
    assert!(d.approved(), "{d:?}");
    assert_eq!(d.allowance.as_deref(), Some("apr_0"), "the decision names the approval it used");
    w.spent(&req(400), NOW);
    // The limit is 1,400 for the rest of the day: the same purchase again asks again.
    assert_eq!(declined(&w.decide(&req(400))), (DeclineReason::ApprovalRequired, "card.limit.daily"));
    assert!(w.decide(&req(300)).approved());
    // The next day the raise is gone with the window.
    assert_eq!(w.allowances[0].until_ms, at("2026-11-23T00:00:00Z").as_millisecond());
    let d = w.decide_at(&req(1_001), "2026-11-23T00:00:00Z");
    assert_eq!(declined(&d), (DeclineReason::ApprovalRequired, "card.limit.daily"));
    // Another rule's allowance, another card's, or an ended one raises nothing.
    let mut w = World::new().card_policy(json!({"limits": [
        {"id": "daily", "scope": "card", "window": "lifetime", "amount": 100, "on_exceed": "ask"}]}));
    w.allow("card.limit.weekly", 1_000, "2026-11-23T00:00:00Z", false);
    w.allow("card.limit.daily", 1_000, NOW, false);
    w.allow("card.limit.daily", 1_000, "2026-11-23T00:00:00Z", false);
    w.allowances[2].card_id = Some(CardId::generate());
    assert_eq!(declined(&w.decide(&req(101))), (DeclineReason::ApprovalRequired, "card.limit.daily"));
}

#[test]
fn an_allowance_lets_one_authorization_past_the_threshold() {
    let mut w = World::new().agent_policy(json!({"approval": {"above": 10_000}}));
    let d = w.decide(&req(25_000));
    assert_eq!(declined(&d), (DeclineReason::ApprovalRequired, "agent.approval"));
    let ask = d.ask.unwrap();
    assert_eq!((ask.amount, ask.cap, ask.single_use), (25_000, Some(10_000), true));
    w.allow("agent.approval", 25_000, "2026-11-23T00:00:00Z", true);
    assert_eq!(w.decide(&req(25_000)).allowance.as_deref(), Some("apr_0"));
    assert!(w.decide(&req(20_000)).approved(), "a smaller amount passes too");
    assert_eq!(declined(&w.decide(&req(25_001))), (DeclineReason::ApprovalRequired, "agent.approval"));
    // Balance still applies after an approval.
    w.available = 100;
    assert_eq!(declined(&w.decide(&req(25_000))), (DeclineReason::InsufficientFunds, "agent.balance"));
}

#[test]
fn checks_run_in_the_documented_order() {
    // A request that breaks every rule is declined by the first one.
    let mut w = World::new().agent_policy(json!({
        "mcc": {"allow": ["7372"]}, "merchant_lock": {"names": ["AWS"]}, "countries": {"allow": ["DE"]},
        "active_hours": {"from": "00:00", "to": "00:01"}, "per_transaction": 1,
        "limits": [{"id": "l", "scope": "agent", "window": "lifetime", "amount": 1}], "approval": {"above": 1}}));
    w.available = 0;
    let order = [
        DeclineReason::MccNotAllowed,
        DeclineReason::MerchantNotAllowed,
        DeclineReason::CountryNotAllowed,
        DeclineReason::OutsideActiveHours,
        DeclineReason::PerTransactionExceeded,
        DeclineReason::LimitExceeded,
        DeclineReason::ApprovalRequired,
        DeclineReason::InsufficientFunds,
    ];
    let mut doc = serde_json::to_value(&w.agent.policy).unwrap();
    for expected in order {
        assert_eq!(w.decide(&req(100)).decline, Some(expected));
        let obj = doc.as_object_mut().unwrap();
        match expected {
            DeclineReason::MccNotAllowed => obj.remove("mcc"),
            DeclineReason::MerchantNotAllowed => obj.remove("merchant_lock"),
            DeclineReason::CountryNotAllowed => obj.remove("countries"),
            DeclineReason::OutsideActiveHours => obj.remove("active_hours"),
            DeclineReason::PerTransactionExceeded => obj.remove("per_transaction"),
            DeclineReason::LimitExceeded => obj.remove("limits"),
            DeclineReason::ApprovalRequired => obj.remove("approval"),
            _ => None,
        };
        w.agent.policy = policy(doc.clone(), "USD");
    }
}

#[test]
fn foreign_amounts_convert_up_into_each_cap_currency() {
    let mut w = World::new();
    w.card.currency = "EUR".parse().unwrap();
    w.card.policy = policy(json!({"per_transaction": 880}), "EUR");
    // 10.00 USD is 8.80 EUR (rounded up) on the card and 10.00 USD on the agent.
    let d = w.decide(&req(1_000));
    assert!(d.approved(), "{d:?}");
    let a = d.amounts.unwrap();
    assert_eq!((a.card.amount, a.agent.amount), (880, 1_000));
    assert_eq!(
        d.fx,
        Some(FxUsed { rate: "0.8797395971".into(), date: "2026-09-24".into(), source: Some(fx::RateSource::Ecb) })
    );
    assert_eq!(declined(&w.decide(&req(1_001))).1, "card.per_transaction");
    // JPY (no minor unit) into USD: 1000 JPY = 6.30 USD.
    let yen = with(req(1_000), |r| r.currency = "jpy".into());
    assert_eq!(World::new().decide(&yen).amounts.unwrap().agent.amount, 630);
}

#[test]
fn unknown_and_unrated_currencies_decline() {
    let w = World::new();
    assert_eq!(declined(&w.decide(&with(req(1), |r| r.currency = "ZZZ".into()))).0, DeclineReason::UnsupportedCurrency);
    // BHD is ISO 4217 but not in the ECB table.
    assert_eq!(
        declined(&w.decide(&with(req(1), |r| r.currency = "BHD".into()))),
        (DeclineReason::UnsupportedCurrency, "fx.rates")
    );
}

#[test]
fn stale_rates_decline_only_cross_currency_requests() {
    let mut w = World::new();
    w.fx.max_age = SignedDuration::from_hours(96);
    let eur = with(req(100), |r| r.currency = "EUR".into());
    assert_eq!(declined(&w.decide(&eur)), (DeclineReason::StaleFx, "fx.max_age"));
    assert!(w.decide(&req(100)).approved(), "same currency needs no rate");
    assert!(w.decide_at(&eur, "2026-09-27T12:00:00Z").approved());
    w.fx.decline_stale = false;
    assert!(w.decide(&eur).approved(), "configured to use the last good table");
}

#[test]
fn usdc_rail_uses_x402_rules_and_agent_policy_only() {
    let mut w = World::new().agent_policy(json!({"x402": {"per_call": 500, "allow_hosts": ["api.example.com"]}}));
    w.card.policy = policy(json!({"per_transaction": 1}), "USD");
    let call = |amount, host: &str| AuthRequest {
        rail: Rail::Usdc,
        amount,
        currency: "USD".into(),
        merchant: Merchant { id: Some(PAY_TO.into()), name: host.into(), mcc: None, country: None },
        trace_id: None,
        max_amount: None,
        recipient: Some(Recipient::new("eip155:8453", PAY_TO, NamedBy::Server)),
    };
    assert!(evaluate(&call(500, "api.example.com"), &snap(&w), at(NOW)).approved());
    let d = evaluate(&call(501, "api.example.com"), &snap(&w), at(NOW));
    assert_eq!(declined(&d), (DeclineReason::PerCallExceeded, "agent.x402.per_call"));
    let d = evaluate(&call(1, "evil.example.com"), &snap(&w), at(NOW));
    assert_eq!(declined(&d), (DeclineReason::HostNotAllowed, "agent.x402.allow_hosts"));
    // The caller's own ceiling, in the agent's currency.
    let capped = |max| AuthRequest { max_amount: Some(max), ..call(300, "api.example.com") };
    assert!(evaluate(&capped(300), &snap(&w), at(NOW)).approved());
    let d = evaluate(&capped(299), &snap(&w), at(NOW));
    assert_eq!(declined(&d), (DeclineReason::PerCallExceeded, "request.max_amount"));
    // x402 rules do not apply to card spend.
    w.card.policy = policy(json!({}), "USD");
    assert!(w.decide(&req(10_000)).approved());
}

const PAY_TO: &str = "0x209693Bc6afc0C5328bA36FaF03C514EF312287C";

/// The snapshot of a USDC payment: the agent's, with no card.
fn snap(w: &World) -> Snapshot<'_> {
    Snapshot {
        agent: &w.agent,
        card: None,
        card_used: false,
        spends: &w.spends,
        available: w.available,
        rates: &w.rates,
        fx: w.fx,
        catalog: crate::fixtures::catalog(),
        allowances: &w.allowances,
        totals: None,
        ancestors: &[],
    }
}

#[test]
fn a_usdc_payment_goes_only_to_a_recipient_the_server_named_or_the_policy_lists() {
    let w = World::new();
    let free = snap(&w);
    let pay = |to: Option<Recipient>| AuthRequest {
        rail: Rail::Usdc,
        amount: 10,
        currency: "USD".into(),
        merchant: Merchant { id: Some(PAY_TO.into()), name: "api.example.com".into(), mcc: None, country: None },
        trace_id: None,
        max_amount: None,
        recipient: to,
    };
    let named = |by| Some(Recipient::new("eip155:8453", PAY_TO, by));
    assert!(evaluate(&pay(named(NamedBy::Server)), &free, at(NOW)).approved());
    // No list: requirements the agent hands in name nobody the operator trusts.
    for to in [named(NamedBy::Agent), None] {
        let d = evaluate(&pay(to), &free, at(NOW));
        assert_eq!(declined(&d), (DeclineReason::RecipientNotAllowed, "request.pay_to"));
    }

    // A list: exactly its accounts, on their network, whoever named them (addresses in any case).
    let listed = World::new().agent_policy(json!({"x402": {"pay_to": [format!("eip155:8453:{PAY_TO}")]}}));
    let snap = snap(&listed);
    for by in [NamedBy::Agent, NamedBy::Server] {
        assert!(evaluate(&pay(named(by)), &snap, at(NOW)).approved());
        let lower = Some(Recipient::new("eip155:8453", &PAY_TO.to_ascii_lowercase(), by));
        assert!(evaluate(&pay(lower), &snap, at(NOW)).approved());
        let other_network = Some(Recipient::new("eip155:84532", PAY_TO, by));
        let other_address = Some(Recipient::new("eip155:8453", "0x000000000000000000000000000000000000dEaD", by));
        for to in [other_network, other_address, None] {
            let d = evaluate(&pay(to), &snap, at(NOW));
            assert_eq!(declined(&d), (DeclineReason::RecipientNotAllowed, "agent.x402.pay_to"));
        }
    }
    // Card spend has no recipient rule.
    assert!(listed.decide(&req(100)).approved());
}

#[test]
fn every_reason_code_round_trips() {
    for r in DeclineReason::ALL {
        assert_eq!(DeclineReason::parse(r.as_str()), Some(r));
        assert_eq!(serde_json::to_value(r).unwrap(), json!(r.as_str()));
    }
}

#[test]
fn the_horizon_is_the_longest_window_or_for_ever() {
    let hourly =
        policy(json!({"limits": [{"id": "h", "scope": "agent", "window": {"rolling": "1h"}, "amount": 1}]}), "USD");
    let monthly = policy(
        json!({"limits": [
            {"id": "d", "scope": "card", "window": {"calendar": "day", "timezone": "UTC"}, "count": 3},
            {"id": "m", "scope": "trace", "window": {"calendar": "month", "timezone": "UTC"}, "amount": 9}
        ]}),
        "USD",
    );
    let forever = policy(json!({"limits": [{"id": "l", "scope": "agent", "window": "lifetime", "amount": 1}]}), "USD");
    let none = policy(json!({}), "USD");
    assert_eq!(horizon_ms([&hourly]), Some(3_600_000));
    assert_eq!(horizon_ms([&hourly, &monthly]), Some(32 * 86_400_000));
    assert_eq!(horizon_ms([&hourly, &forever, &monthly]), None);
    assert_eq!(horizon_ms([&none]), Some(0));
}

#[test]
fn running_totals_stay_what_a_scan_would_sum_as_spends_change_and_windows_slide() {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    let mut w = World::new();
    w.agent.policy = policy(
        json!({"limits": [
            {"id": "roll", "scope": "agent", "window": {"rolling": "90s"}, "amount": 40_000},
            {"id": "day", "scope": "agent", "window": {"calendar": "day", "timezone": "Europe/Berlin"},
                "amount": 10_000_000, "count": 1_000_000},
            {"id": "ever", "scope": "agent", "window": "lifetime", "amount": 10_000_000},
            {"id": "ai", "scope": "agent", "window": {"rolling": "1h"}, "amount": 150_000, "mcc_groups": ["ai_apis"]},
            {"id": "trace", "scope": "trace", "window": {"rolling": "5m"}, "amount": 30_000},
            {"id": "openai", "scope": "agent", "window": {"rolling": "10m"}, "count": 120, "merchants": ["OPENAI*"]},
            {"id": "cards", "scope": "agent", "window": {"rolling": "20m"}, "amount": 400_000, "rails": ["card"]}
        ]}),
        "USD",
    );
    w.card.policy = policy(
        json!({"limits": [{"id": "card", "scope": "card", "window": {"rolling": "2m"}, "amount": 25_000, "count": 40}]}),
        "USD",
    );
    let cards = [Some(w.card.id.clone()), Some(CardId::generate()), None];
    let traces = [None, Some("pr-1".to_owned()), Some("pr-2".to_owned())];
    let merchants = [("OPENAI *API", "5734"), ("AWS EMEA", "4816"), ("OPENAI *CHATGPT", "5818")];
    let mut rng = StdRng::seed_from_u64(2026);
    let mut spends: Vec<Spend> = Vec::new();
    let mut totals = crate::policy::totals::Totals::default();
    // From 22:00 UTC, over about two hours: across midnight in Berlin, so the calendar day turns over.
    let mut t = at(NOW).as_millisecond() - 14 * 3_600_000;
    let (mut compared, mut declined) = (0, 0);
    for step in 0..4_000 {
        t += rng.random_range(0..4_000);
        let now = Timestamp::from_millisecond(t).unwrap();
        if rng.random_range(0..10) < 7 {
            let (name, mcc) = merchants[rng.random_range(0..merchants.len())];
            let counted = rng.random_range(1..2_000);
            let spend = Spend {
                authorization_id: format!("auth_{step}"),
                card_id: cards[rng.random_range(0..cards.len())].as_ref().map(|c| c.as_str().into()),
                card_currency: Some(Currency::USD),
                trace_id: traces[rng.random_range(0..traces.len())].as_deref().map(Into::into),
                rail: if rng.random_range(0..4) == 0 { Rail::Usdc } else { Rail::Card },
                mcc: Some(mcc.into()),
                merchant_id: None,
                merchant_name: name.into(),
                // Now and then one from another process, caught up late.
                at_ms: t - if rng.random_range(0..8) == 0 { rng.random_range(0..60_000) } else { 0 },
                counted,
                counted_card: counted,
            };
            totals.apply(None, Some(&spend));
            let at = spends.partition_point(|s| s.at_ms <= spend.at_ms);
            spends.insert(at, spend);
        } else if !spends.is_empty() {
            // A void (partial or whole) or a capture of less.
            let i = rng.random_range(0..spends.len());
            let before = spends[i].clone();
            spends[i].counted = rng.random_range(0..=before.counted);
            spends[i].counted_card = spends[i].counted;
            totals.apply(Some(&before), Some(&spends[i]));
        }
        let (name, mcc) = merchants[rng.random_range(0..merchants.len())];
        let req = AuthRequest {
            rail: Rail::Card,
            amount: rng.random_range(1..3_000),
            currency: "USD".into(),
            merchant: Merchant { id: None, name: name.into(), mcc: Some(mcc.into()), country: Some("US".into()) },
            trace_id: traces[rng.random_range(0..traces.len())].clone(),
            max_amount: None,
            recipient: None,
        };
        totals.prepare(&req, &w.agent, Some(&w.card), &spends, crate::fixtures::catalog(), now);
        compared += totals.assert_exact(&spends);
        let snap = |totals| Snapshot {
            agent: &w.agent,
            card: Some(&w.card),
            card_used: false,
            spends: &spends,
            available: i64::MAX / 4,
            rates: &w.rates,
            fx: w.fx,
            catalog: crate::fixtures::catalog(),
            allowances: &w.allowances,
            totals,
            ancestors: &[],
        };
        let scanned = evaluate(&req, &snap(None), now);
        assert_eq!(evaluate(&req, &snap(Some(&totals)), now), scanned, "step {step}");
        declined += usize::from(!scanned.approved());
    }
    assert!(compared > 10_000, "totals were kept and compared: {compared}");
    assert!((100..3_900).contains(&declined), "the limits bite some of the time: {declined} declines");
}

mod usage_agrees_with_decisions {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// What the usage says remains is exactly what a decision lets through: `remaining` is
        /// approved, one more minor unit is declined by that limit.
        #[test]
        fn remaining_is_what_a_decision_approves(
            cap in 1_000i64..20_000,
            count_cap in 3i64..8,
            spends in proptest::collection::vec((1i64..3_000, 0i64..30, any::<bool>()), 0..9),
            card_scope in any::<bool>(),
        ) {
            let scope = if card_scope { "card" } else { "agent" };
            let limit = json!({"limits": [{"id": "day", "scope": scope, "window": {"rolling": "24h"}, "amount": cap, "count": count_cap}]});
            let mut w = World::new().agent_policy(limit);
            for (amount, hours_ago, on_trace) in spends {
                let when = at(NOW).checked_sub(SignedDuration::from_hours(hours_ago)).unwrap().to_string();
                let r = with(req(amount), |r| r.trace_id = on_trace.then(|| "T".into()));
                if w.decide_at(&r, &when).approved() {
                    w.spent(&r, &when);
                }
            }
            w.spends.sort_by_key(|s| s.at_ms);
            let snap = Snapshot {
                agent: &w.agent, card: card_scope.then_some(&w.card), card_used: false, spends: &w.spends,
                available: w.available, rates: &w.rates, fx: w.fx, catalog: crate::fixtures::catalog(),
                allowances: &w.allowances, totals: None, ancestors: &[],
            };
            let usage = usage::usage(&snap, None, at(NOW));
            prop_assert_eq!(usage.len(), 1);
            let (amount, count) = (usage[0].amount.unwrap(), usage[0].count.unwrap());
            prop_assert_eq!(amount.remaining, (cap - amount.used).max(0));
            prop_assert_eq!(count.remaining, count_cap - count.used);
            if count.remaining > 0 && amount.remaining > 0 {
                prop_assert!(w.decide(&req(amount.remaining)).approved());
            }
            if count.remaining == 0 && amount.remaining > 0 {
                let one = w.decide(&req(1));
                prop_assert_eq!(declined(&one), (DeclineReason::VelocityExceeded, "agent.limit.day"));
            }
            let over = w.decide(&req(amount.remaining + 1));
            prop_assert_eq!(declined(&over), (DeclineReason::LimitExceeded, "agent.limit.day"));
            // A rolling window frees its oldest counted spend 24 hours after it was made.
            let oldest = w.spends.iter().find(|s| s.at_ms > at(NOW).as_millisecond() - 86_400_000).map(|s| s.at_ms);
            prop_assert_eq!(usage[0].frees_at.map(|t| t.as_millisecond()), oldest.map(|ms| ms + 86_400_000));
        }
    }
}
