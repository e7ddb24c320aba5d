//! The policy document: the rules a card (or an agent, across all its cards and rails) spends under.
//! This module parses, normalizes and validates it; the decision core enforces it.
//! Amounts are minor units of the policy's `currency` (the cap currency).

use std::collections::HashSet;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::catalog::Catalog;
use super::money::Currency;

/// A validation failure whose message names the offending field, e.g. `limits[1].amount: …`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError(pub String);

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn fail<T>(field: impl fmt::Display, message: impl fmt::Display) -> Result<T, PolicyError> {
    Err(PolicyError(format!("{field}: {message}")))
}

/// The sections a card rarely has are boxed: every cached card holds a policy, most of them few rules.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// The cap currency. Defaults to the card's currency (USD for an agent policy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<Currency>,
    /// Largest single authorization, in minor units.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_transaction: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub limits: Vec<Limit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcc: Option<Box<AllowBlock>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mcc_groups: Option<Box<AllowBlock>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merchant_lock: Option<Box<MerchantLock>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub countries: Option<Box<AllowBlock>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_hours: Option<Box<ActiveHours>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x402: Option<Box<X402Rules>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<Approval>,
    /// Only in an agent's policy: alerts on its money as a whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alerts: Option<Box<Alerts>>,
    /// Only in an agent's policy: how much its balance may hold and how it is refilled from the treasury.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub funding: Option<Box<Funding>>,
}

/// Either an allow list or a block list, never both.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AllowBlock {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Limit {
    /// Unique within the policy; named in the decline when the limit fires.
    pub id: String,
    pub scope: Scope,
    #[schema(schema_with = window_schema, example = json!({"rolling": "24h"}))]
    pub window: Window,
    /// Most that may be spent in the window, in minor units of the policy currency.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<i64>,
    /// Most authorizations in the window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mcc: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mcc_groups: Vec<String>,
    /// Network merchant ids or descriptor patterns (`*` matches any run of characters).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub merchants: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rails: Vec<Rail>,
    /// What a request that would cross the limit gets: a decline, or a request for a person's
    /// approval (`ask`) that raises the limit for the rest of its window when granted.
    #[serde(default, skip_serializing_if = "OnExceed::is_decline")]
    pub on_exceed: OnExceed,
    /// Percentages of `amount` (1–100, at most five) whose crossing is announced once per window:
    /// an event in the trail (`limit_threshold_crossed`) and `limit.threshold_crossed` to webhooks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alert_at: Vec<u8>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum OnExceed {
    #[default]
    Decline,
    Ask,
}

impl OnExceed {
    fn is_decline(&self) -> bool {
        *self == OnExceed::Decline
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Agent,
    Card,
    Trace,
}

worded! {
    /// Which rail pays: a card, or the agent's USDC wallet.
    pub enum Rail {
        Card = "card",
        Usdc = "usdc",
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CalendarUnit {
    Day,
    Week,
    Month,
}

/// How far back a limit looks: `{"rolling": "24h"}`, `{"calendar": "month", "timezone": "Europe/Berlin"}`
/// or `"lifetime"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Window {
    Rolling { text: String, seconds: i64 },
    Calendar { unit: CalendarUnit, timezone: String },
    Lifetime,
}

/// Rolling windows from one minute to a year: shorter is a velocity check the engine cannot
/// time reliably, longer is better written as a calendar or lifetime window.
const ROLLING_MIN_SECONDS: i64 = 60;
const ROLLING_MAX_SECONDS: i64 = 366 * 86_400;

impl Window {
    fn parse_rolling(text: &str) -> Result<i64, String> {
        let text = text.trim();
        let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
        let (digits, unit) = text.split_at(split);
        let n: i64 =
            digits.parse().map_err(|_| format!("rolling window {text:?} must look like \"30m\", \"24h\" or \"7d\""))?;
        let per = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3_600,
            "d" => 86_400,
            _ => {
                return Err(format!("rolling window {text:?}: the unit must be s, m, h or d"));
            }
        };
        let seconds = n.saturating_mul(per);
        if !(ROLLING_MIN_SECONDS..=ROLLING_MAX_SECONDS).contains(&seconds) {
            return Err(format!("rolling window {text:?} cannot be enforced: it must be between 1m and 366d"));
        }
        Ok(seconds)
    }
}

/// The three ways a window is written, for the API description.
pub(crate) fn window_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, OneOfBuilder, Type};
    let text = |pattern: Option<&str>| ObjectBuilder::new().schema_type(Type::String).pattern(pattern);
    OneOfBuilder::new()
        .item(text(None).enum_values(Some(["lifetime"])))
        .item(
            ObjectBuilder::new()
                .property("rolling", text(Some("^ *[0-9]+[smhd] *$")))
                .required("rolling")
                .additional_properties(Some(AdditionalProperties::FreeForm(false))),
        )
        .item(
            ObjectBuilder::new()
                .property("calendar", text(None).enum_values(Some(["day", "week", "month"])))
                .property("timezone", text(None))
                .required("calendar")
                .additional_properties(Some(AdditionalProperties::FreeForm(false))),
        )
        .description(Some("`\"lifetime\"`, `{\"rolling\": \"24h\"}` (1m to 366d) or `{\"calendar\": \"month\", \"timezone\": \"UTC\"}`"))
        .build()
        .into()
}

impl Serialize for Window {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Window::Rolling { text, .. } => serde_json::json!({ "rolling": text }).serialize(s),
            Window::Calendar { unit, timezone } => {
                serde_json::json!({ "calendar": unit, "timezone": timezone }).serialize(s)
            }
            Window::Lifetime => s.serialize_str("lifetime"),
        }
    }
}

impl<'de> Deserialize<'de> for Window {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let value = Value::deserialize(d)?;
        let expected =
            r#"expected "lifetime", {"rolling": "24h"} or {"calendar": "day"|"week"|"month", "timezone": "…"}"#;
        match value {
            Value::String(s) if s == "lifetime" => Ok(Window::Lifetime),
            Value::Object(map) => {
                let keys: Vec<&str> = map.keys().map(String::as_str).collect();
                match (map.get("rolling"), map.get("calendar")) {
                    (Some(Value::String(text)), None) if keys.len() == 1 => {
                        let seconds = Window::parse_rolling(text).map_err(D::Error::custom)?;
                        Ok(Window::Rolling { text: text.trim().to_owned(), seconds })
                    }
                    (None, Some(unit)) if keys.iter().all(|k| *k == "calendar" || *k == "timezone") => {
                        let unit = CalendarUnit::deserialize(unit)
                            .map_err(|_| D::Error::custom("calendar must be \"day\", \"week\" or \"month\""))?;
                        let timezone = match map.get("timezone") {
                            None => "UTC".to_owned(),
                            Some(Value::String(tz)) => tz.clone(),
                            Some(_) => {
                                return Err(D::Error::custom("timezone must be a string such as \"UTC\""));
                            }
                        };
                        Ok(Window::Calendar { unit, timezone })
                    }
                    _ => Err(D::Error::custom(expected)),
                }
            }
            _ => Err(D::Error::custom(expected)),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MerchantLock {
    /// Network merchant ids (card acceptor ids).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ids: Vec<String>,
    /// Descriptor patterns; `*` matches any run of characters, case is ignored.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ActiveHours {
    #[serde(default = "utc")]
    pub timezone: String,
    /// `HH:MM`, inclusive.
    pub from: String,
    /// `HH:MM`, exclusive; earlier than `from` means the span crosses midnight.
    pub to: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub days: Vec<Weekday>,
}

fn utc() -> String {
    "UTC".to_owned()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Weekday {
    Mon,
    Tue,
    Wed,
    Thu,
    Fri,
    Sat,
    Sun,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct X402Rules {
    /// Largest single x402 payment, in minor units of the policy currency.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_call: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_hosts: Vec<String>,
    /// The recipients payments may go to, as CAIP-10 accounts (`eip155:8453:0xAbC…`). Empty: only
    /// recipients the paid server named in the 402 spendgate read from it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pay_to: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Approval {
    /// Authorizations above this amount need a human's approval.
    pub above: i64,
}

/// Announcements about an agent's money as a whole, in its trail and to webhooks; they decline nothing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Alerts {
    /// The available balance falling below this (minor units of the agent's currency) is announced
    /// (`balance_low`), once each time it falls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balance_below: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spend_rate: Option<SpendRate>,
}

/// An agent's balance and the treasury: a ceiling, and a refill when it runs low.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Funding {
    /// The most the available balance may reach (minor units): a funding past it is refused, a
    /// top-up stops at it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_balance: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_up: Option<TopUpRule>,
}

/// When the available balance falls below `below`, bring it back to `to` from the treasury, right
/// after the decision that took it there; at most `max_per_day` and `max_per_month` (UTC days and
/// months) in all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TopUpRule {
    pub below: i64,
    pub to: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_per_day: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_per_month: Option<i64>,
}

/// The last hour's spend against the agent's own hourly average before it (`spend_anomaly`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SpendRate {
    /// How many times the hourly average the last hour must exceed (2 to 1000).
    pub multiple: u32,
    /// The period before the last hour whose hourly average is the baseline: whole hours from
    /// `"1d"` to `"90d"`.
    #[serde(default = "a_week")]
    pub baseline: String,
    /// The least the last hour must spend to be announced, in minor units (a quiet agent's first
    /// purchase is not an anomaly).
    #[serde(default = "one")]
    pub min_amount: i64,
}

fn a_week() -> String {
    "7d".to_owned()
}

fn one() -> i64 {
    1
}

impl SpendRate {
    /// The baseline's length in hours (a normalized policy's is whole and in range).
    pub fn baseline_hours(&self) -> i64 {
        Window::parse_rolling(&self.baseline).map_or(0, |seconds| seconds / 3_600)
    }
}

impl Policy {
    /// Whether the x402 rules let the agent pay (and so contact) `host` (`name` or `name:port`,
    /// as the URL gives it). No list allows every host.
    /// The CAIP-10 recipients the x402 rules list (lowercase); empty when none.
    pub fn x402_pay_to(&self) -> &[String] {
        self.x402.as_ref().map_or(&[], |x| x.pay_to.as_slice())
    }

    pub fn x402_allows_host(&self, host: &str) -> bool {
        self.x402
            .as_ref()
            .is_none_or(|x| x.allow_hosts.is_empty() || x.allow_hosts.iter().any(|h| h.eq_ignore_ascii_case(host)))
    }
}

/// `eip155:<chain id>:0x<40 hex digits>`: the networks spendgate pays on are EVM chains.
fn is_evm_account(account: &str) -> bool {
    let mut parts = account.split(':');
    let (Some("eip155"), Some(chain), Some(address), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let hex = address.strip_prefix("0x").unwrap_or_default();
    (1..=32).contains(&chain.len())
        && chain.bytes().all(|b| b.is_ascii_digit())
        && hex.len() == 40
        && hex.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Minutes since midnight for `HH:MM`.
pub fn parse_clock(s: &str) -> Option<u32> {
    let (h, m) = s.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60).then_some(h * 60 + m)
}

fn is_known_timezone(name: &str) -> bool {
    jiff::tz::TimeZone::get(name).is_ok()
}

fn check_amount(field: &str, amount: Option<i64>) -> Result<(), PolicyError> {
    match amount {
        Some(a) if a <= 0 => fail(field, "must be a positive amount in minor units"),
        _ => Ok(()),
    }
}

fn check_mccs(field: &str, codes: &mut [String], catalog: &Catalog) -> Result<(), PolicyError> {
    for (i, code) in codes.iter_mut().enumerate() {
        *code = code.trim().to_owned();
        if !catalog.is_known_mcc(code) {
            return fail(format!("{field}[{i}]"), format!("unknown MCC {code:?}"));
        }
    }
    Ok(())
}

fn check_groups(field: &str, names: &mut [String], catalog: &Catalog) -> Result<(), PolicyError> {
    for (i, name) in names.iter_mut().enumerate() {
        *name = name.trim().to_ascii_lowercase();
        if !catalog.is_known_group(name) {
            return fail(format!("{field}[{i}]"), format!("unknown MCC group {name:?}"));
        }
    }
    Ok(())
}

/// Returns the single list an allow/block pair carries, after checking there is exactly one.
fn one_list<'a>(field: &str, rule: &'a mut AllowBlock) -> Result<(&'static str, &'a mut Vec<String>), PolicyError> {
    match (&mut rule.allow, &mut rule.block) {
        (Some(_), Some(_)) => fail(field, "give allow or block, not both"),
        (Some(list), None) => Ok(("allow", list)),
        (None, Some(list)) => Ok(("block", list)),
        (None, None) => fail(field, "give an allow or a block list"),
    }
}

impl Policy {
    /// Checks the document against the catalog and puts it in canonical form (trimmed codes,
    /// upper-case countries, lower-case hosts, currency filled in). `currency` is the card's
    /// currency, which a card policy must use; `None` for agent policies and templates.
    pub fn normalize(&mut self, catalog: &Catalog, currency: Option<Currency>) -> Result<(), PolicyError> {
        match (self.currency, currency) {
            (Some(own), Some(card)) if own != card => {
                return fail(
                    "currency",
                    format!(
                        "must be {card}, not {own}: a card's caps are in its currency, an agent's in its balance's"
                    ),
                );
            }
            (None, expected) => self.currency = Some(expected.unwrap_or(Currency::USD)),
            _ => {}
        }
        check_amount("per_transaction", self.per_transaction)?;

        let mut ids = HashSet::new();
        for (i, limit) in self.limits.iter_mut().enumerate() {
            let at = |f: &str| format!("limits[{i}].{f}");
            limit.id = limit.id.trim().to_owned();
            let id_ok = !limit.id.is_empty()
                && limit.id.len() <= 64
                && limit.id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !id_ok {
                return fail(at("id"), "must be 1-64 letters, digits, '_' or '-'");
            }
            if !ids.insert(limit.id.clone()) {
                return fail(at("id"), format!("duplicate limit id {:?}", limit.id));
            }
            if limit.amount.is_none() && limit.count.is_none() {
                return fail(format!("limits[{i}]"), "give an amount, a count or both");
            }
            check_amount(&at("amount"), limit.amount)?;
            if !limit.alert_at.is_empty() {
                if limit.amount.is_none() {
                    return fail(at("alert_at"), "needs the limit's amount: it is a percentage of it");
                }
                if limit.alert_at.len() > 5 || limit.alert_at.iter().any(|p| !(1..=100).contains(p)) {
                    return fail(at("alert_at"), "at most five percentages, each from 1 to 100");
                }
                limit.alert_at.sort_unstable();
                limit.alert_at.dedup();
            }
            if matches!(limit.count, Some(c) if c <= 0) {
                return fail(at("count"), "must be a positive number of authorizations");
            }
            if let Window::Calendar { timezone, .. } = &limit.window
                && !is_known_timezone(timezone)
            {
                return fail(at("window.timezone"), format!("unknown timezone {timezone:?}"));
            }
            check_mccs(&at("mcc"), &mut limit.mcc, catalog)?;
            check_groups(&at("mcc_groups"), &mut limit.mcc_groups, catalog)?;
            for (j, m) in limit.merchants.iter_mut().enumerate() {
                *m = m.trim().to_owned();
                if m.is_empty() {
                    return fail(format!("{}[{j}]", at("merchants")), "must not be empty");
                }
            }
        }

        if let Some(rule) = &mut self.mcc {
            let (kind, list) = one_list("mcc", rule)?;
            check_mccs(&format!("mcc.{kind}"), list, catalog)?;
        }
        if let Some(rule) = &mut self.mcc_groups {
            let (kind, list) = one_list("mcc_groups", rule)?;
            check_groups(&format!("mcc_groups.{kind}"), list, catalog)?;
        }
        if let Some(rule) = &mut self.countries {
            let (kind, list) = one_list("countries", rule)?;
            for (i, c) in list.iter_mut().enumerate() {
                *c = c.trim().to_ascii_uppercase();
                if !catalog.is_known_country(c) {
                    return fail(
                        format!("countries.{kind}[{i}]"),
                        format!("unknown country {c:?} (expected an ISO 3166 alpha-2 code such as US)"),
                    );
                }
            }
        }
        if let Some(lock) = &mut self.merchant_lock {
            lock.ids.iter_mut().chain(lock.names.iter_mut()).for_each(|s| *s = s.trim().to_owned());
            if lock.ids.iter().chain(&lock.names).any(String::is_empty) {
                return fail("merchant_lock", "ids and names must not be empty strings");
            }
            if lock.ids.is_empty() && lock.names.is_empty() {
                return fail("merchant_lock", "give at least one merchant id or name");
            }
        }
        if let Some(hours) = &self.active_hours {
            if !is_known_timezone(&hours.timezone) {
                return fail("active_hours.timezone", format!("unknown timezone {:?}", hours.timezone));
            }
            let from = parse_clock(&hours.from);
            let to = parse_clock(&hours.to);
            if from.is_none() {
                return fail("active_hours.from", "must be HH:MM, e.g. 08:00");
            }
            if to.is_none() {
                return fail("active_hours.to", "must be HH:MM, e.g. 20:00");
            }
            if from == to {
                return fail("active_hours", "from and to must differ");
            }
        }
        if let Some(x402) = &mut self.x402 {
            check_amount("x402.per_call", x402.per_call)?;
            for (i, host) in x402.allow_hosts.iter_mut().enumerate() {
                *host = host.trim().to_ascii_lowercase();
                let ok = !host.is_empty()
                    && host.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b':');
                if !ok {
                    return fail(format!("x402.allow_hosts[{i}]"), format!("{host:?} is not a host name"));
                }
            }
            for (i, account) in x402.pay_to.iter_mut().enumerate() {
                *account = account.trim().to_ascii_lowercase();
                if !is_evm_account(account) {
                    return fail(
                        format!("x402.pay_to[{i}]"),
                        format!("{account:?} is not a CAIP-10 account such as eip155:8453:0x<40 hex digits>"),
                    );
                }
            }
        }
        if let Some(approval) = &self.approval {
            check_amount("approval.above", Some(approval.above))?;
        }
        if let Some(alerts) = &mut self.alerts {
            check_amount("alerts.balance_below", alerts.balance_below)?;
            if let Some(rate) = &mut alerts.spend_rate {
                if !(2..=1_000).contains(&rate.multiple) {
                    return fail("alerts.spend_rate.multiple", "must be from 2 to 1000");
                }
                rate.baseline = rate.baseline.trim().to_owned();
                let seconds = Window::parse_rolling(&rate.baseline)
                    .map_err(|e| PolicyError(format!("alerts.spend_rate.baseline: {e}")))?;
                if seconds % 3_600 != 0 || !(86_400..=90 * 86_400).contains(&seconds) {
                    return fail("alerts.spend_rate.baseline", "must be whole hours from 1d to 90d, e.g. \"7d\"");
                }
                check_amount("alerts.spend_rate.min_amount", Some(rate.min_amount))?;
            }
        }
        if let Some(funding) = &self.funding {
            check_amount("funding.max_balance", funding.max_balance)?;
            if let Some(rule) = &funding.top_up {
                check_amount("funding.top_up.below", Some(rule.below))?;
                check_amount("funding.top_up.to", Some(rule.to))?;
                check_amount("funding.top_up.max_per_day", rule.max_per_day)?;
                check_amount("funding.top_up.max_per_month", rule.max_per_month)?;
                if rule.to < rule.below {
                    return fail("funding.top_up.to", "must be at least below");
                }
                if funding.max_balance.is_some_and(|max| rule.to > max) {
                    return fail("funding.top_up.to", "must be at most funding.max_balance");
                }
            }
        }
        Ok(())
    }

    /// Parses a JSON policy document, naming the field at fault on error.
    pub fn from_json(value: Value) -> Result<Policy, PolicyError> {
        serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            let message = e.into_inner().to_string();
            if path == "." { PolicyError(message) } else { PolicyError(format!("{path}: {message}")) }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn catalog() -> Catalog {
        crate::fixtures::catalog().clone()
    }

    #[test]
    fn a_policy_keeps_its_rare_sections_out_of_line() {
        // Every cached card holds one (392 bytes when the sections were inline).
        assert!(std::mem::size_of::<Policy>() <= 128, "{} bytes", std::mem::size_of::<Policy>());
    }

    fn check(doc: Value) -> Result<Policy, String> {
        let mut policy = Policy::from_json(doc).map_err(|e| e.0)?;
        policy.normalize(&catalog(), None).map_err(|e| e.0)?;
        Ok(policy)
    }

    #[test]
    fn the_documented_example_is_valid_and_round_trips() {
        let doc = json!({"currency": "usd", "per_transaction": 25000,
            "limits": [{"id": "daily", "scope": "agent", "window": {"rolling": "24h"}, "amount": 50000, "count": 100,
                        "mcc": ["5734"], "mcc_groups": ["ai_apis"], "merchants": ["OPENAI *"], "rails": ["card", "usdc"]},
                       {"id": "monthly", "scope": "card", "window": {"calendar": "month", "timezone": "America/Los_Angeles"}, "amount": 1},
                       {"id": "ever", "scope": "trace", "window": "lifetime", "count": 3}],
            "mcc": {"allow": ["5734", "7372"]}, "mcc_groups": {"block": ["gambling"]},
            "merchant_lock": {"ids": ["m1"], "names": ["OPENAI *"]}, "countries": {"allow": ["us", "DE"]},
            "active_hours": {"timezone": "UTC", "from": "08:00", "to": "20:00", "days": ["mon", "tue"]},
            "x402": {"per_call": 500, "allow_hosts": ["API.example.com"]}, "approval": {"above": 10000}});
        let policy = check(doc).unwrap();
        let out = serde_json::to_value(&policy).unwrap();
        assert_eq!(out["currency"], "USD");
        assert_eq!(out["countries"]["allow"], json!(["US", "DE"]));
        assert_eq!(out["x402"]["allow_hosts"], json!(["api.example.com"]));
        assert_eq!(out["limits"][0]["window"], json!({"rolling": "24h"}));
        assert_eq!(out["limits"][2]["window"], json!("lifetime"));
        assert_eq!(Policy::from_json(out).unwrap(), policy);
    }

    #[test]
    fn alerts_default_to_a_week_and_any_spend() {
        let policy =
            check(json!({"alerts": {"balance_below": 500, "spend_rate": {"multiple": 4, "baseline": " 36h "}}}))
                .unwrap();
        let rate = policy.alerts.as_ref().and_then(|a| a.spend_rate.clone()).unwrap();
        assert_eq!((rate.multiple, rate.baseline_hours(), rate.min_amount), (4, 36, 1));
        let rate: SpendRate = serde_json::from_value(json!({"multiple": 2})).unwrap();
        assert_eq!(rate.baseline_hours(), 168);
    }

    #[test]
    fn each_bad_field_is_named() {
        let cases = [
            (json!({"mcc": {"allow": ["9999"]}}), "mcc.allow[0]: unknown MCC \"9999\""),
            (json!({"mcc_groups": {"allow": ["poker"]}}), "mcc_groups.allow[0]: unknown MCC group"),
            (json!({"currency": "ABC"}), "currency: unknown currency"),
            (json!({"per_transaction": 0}), "per_transaction: must be a positive"),
            (json!({"per_transaction": -5}), "per_transaction: must be a positive"),
            (json!({"mcc": {"allow": ["5734"], "block": ["7995"]}}), "mcc: give allow or block, not both"),
            (json!({"countries": {"allow": ["XX"]}}), "countries.allow[0]: unknown country"),
            (
                json!({"limits": [{"id": "a", "scope": "card", "window": {"calendar": "day", "timezone": "Mars/Base"}, "amount": 1}]}),
                "limits[0].window.timezone: unknown timezone",
            ),
            (
                json!({"active_hours": {"timezone": "Nowhere", "from": "08:00", "to": "09:00"}}),
                "active_hours.timezone: unknown timezone",
            ),
            (
                json!({"limits": [{"id": "a", "scope": "card", "window": "lifetime", "amount": 1},
                               {"id": "a", "scope": "card", "window": "lifetime", "amount": 2}]}),
                "limits[1].id: duplicate limit id",
            ),
            (
                json!({"limits": [{"id": "a", "scope": "card", "window": "lifetime", "count": 3, "alert_at": [80]}]}),
                "limits[0].alert_at: needs the limit's amount",
            ),
            (
                json!({"limits": [{"id": "a", "scope": "card", "window": "lifetime", "amount": 1, "alert_at": [0]}]}),
                "limits[0].alert_at: at most five percentages, each from 1 to 100",
            ),
            (
                json!({"limits": [{"id": "a", "scope": "card", "window": "lifetime", "amount": 1, "alert_at": [101]}]}),
                "limits[0].alert_at: at most five percentages",
            ),
            (
                json!({"limits": [{"id": "a", "scope": "card", "window": {"rolling": "5s"}, "amount": 1}]}),
                "limits[0].window: rolling window \"5s\" cannot be enforced",
            ),
            (
                json!({"limits": [{"id": "a", "scope": "card", "window": {"rolling": "400d"}, "amount": 1}]}),
                "cannot be enforced",
            ),
            (
                json!({"limits": [{"id": "a", "scope": "card", "window": {"calendar": "year"}, "amount": 1}]}),
                "limits[0].window: calendar must be",
            ),
            (
                json!({"limits": [{"id": "a", "scope": "card", "window": "forever", "amount": 1}]}),
                "limits[0].window: expected \"lifetime\"",
            ),
            (
                json!({"limits": [{"id": "a", "scope": "planet", "window": "lifetime", "amount": 1}]}),
                "limits[0].scope: unknown variant",
            ),
            (
                json!({"limits": [{"id": "a", "scope": "card", "window": "lifetime"}]}),
                "limits[0]: give an amount, a count or both",
            ),
            (
                json!({"limits": [{"id": "a", "scope": "card", "window": "lifetime", "amount": 1, "count": 0}]}),
                "limits[0].count",
            ),
            (
                json!({"limits": [{"id": "a", "scope": "card", "window": "lifetime", "amount": 1, "rails": ["wire"]}]}),
                "limits[0].rails[0]: unknown variant",
            ),
            (json!({"active_hours": {"from": "25:00", "to": "09:00"}}), "active_hours.from: must be HH:MM"),
            (json!({"x402": {"per_call": 0}}), "x402.per_call"),
            (json!({"approval": {"above": -1}}), "approval.above"),
            (json!({"merchant_lock": {}}), "merchant_lock: give at least one"),
            (json!({"surprise": 1}), "unknown field `surprise`"),
            (json!({"per_transaction": 1.5}), "per_transaction: invalid type"),
            (json!({"alerts": {"balance_below": 0}}), "alerts.balance_below: must be a positive"),
            (json!({"alerts": {"spend_rate": {"multiple": 1}}}), "alerts.spend_rate.multiple: must be from 2"),
            (
                json!({"alerts": {"spend_rate": {"multiple": 3, "baseline": "90m"}}}),
                "alerts.spend_rate.baseline: must be whole hours",
            ),
            (
                json!({"alerts": {"spend_rate": {"multiple": 3, "baseline": "91d"}}}),
                "alerts.spend_rate.baseline: must be whole hours",
            ),
            (
                json!({"alerts": {"spend_rate": {"multiple": 3, "baseline": "week"}}}),
                "alerts.spend_rate.baseline: rolling window",
            ),
            (json!({"alerts": {"spend_rate": {"multiple": 3, "min_amount": 0}}}), "alerts.spend_rate.min_amount"),
            (json!({"funding": {"max_balance": 0}}), "funding.max_balance: must be a positive"),
            (json!({"funding": {"top_up": {"below": 10, "to": 5}}}), "funding.top_up.to: must be at least below"),
            (
                json!({"funding": {"max_balance": 100, "top_up": {"below": 10, "to": 500}}}),
                "funding.top_up.to: must be at most funding.max_balance",
            ),
            (json!({"funding": {"top_up": {"below": 10, "to": 50, "max_per_day": -1}}}), "funding.top_up.max_per_day"),
            (json!({"funding": {"top_up": {"below": 10}}}), "funding.top_up: missing field `to`"),
        ];
        for (doc, expected) in cases {
            let err = check(doc.clone()).expect_err(&format!("{doc} should be refused"));
            assert!(err.contains(expected), "{doc}: got {err:?}, expected it to contain {expected:?}");
        }
    }

    #[test]
    fn a_card_policy_must_use_the_card_currency() {
        let eur: Currency = "EUR".parse().unwrap();
        let mut policy = Policy::from_json(json!({"per_transaction": 100})).unwrap();
        policy.normalize(&catalog(), Some(eur)).unwrap();
        assert_eq!(policy.currency, Some(eur));
        let mut usd = Policy::from_json(json!({"currency": "USD"})).unwrap();
        let err = usd.normalize(&catalog(), Some(eur)).unwrap_err();
        assert!(err.0.starts_with("currency: must be EUR, not USD"), "{err}");
    }

    #[test]
    fn clock_parsing() {
        assert_eq!(parse_clock("00:00"), Some(0));
        assert_eq!(parse_clock("23:59"), Some(1439));
        assert_eq!(parse_clock("24:00"), None);
        assert_eq!(parse_clock("8:00"), None);
    }
}
