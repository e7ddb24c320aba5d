//! Issuing at the processor. A card issued with `processor: "stripe"` or `"lithic"`, when that
//! processor's API key is set, is created through its REST API: Stripe `POST /v1/issuing/cards`,
//! Lithic `POST /v1/cards`. spendgate decides every authorization the processor asks about; the
//! card's rules are also mirrored into the processor's own controls, which apply when the
//! processor decides alone (a stand-in when spendgate's answer is late). A mirror is never
//! stricter than the policy: what a processor cannot express exactly is left out, and the
//! mirror follows every later change of the card's status and policy.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use serde::Deserialize;

use crate::crypto::Secret;
use crate::domain::card::{CardStatus, Processor};
use crate::domain::catalog::Catalog;
use crate::domain::ids::{AgentId, CardId};
use crate::domain::money::Currency;
use crate::domain::policy::{AllowBlock, OnExceed, Policy, Rail, Scope, Window};
use crate::error::{Error, ErrorCode, Result};

/// Stripe's API version the requests are written for.
const STRIPE_VERSION: &str = super::stripe::DEFAULT_VERSION;
/// Longest processor error message passed on.
const MAX_MESSAGE: usize = 300;

pub struct StripeApi {
    pub api_key: Secret,
    pub base_url: String,
    /// The cardholder (`ich_…`) new cards are issued to.
    pub cardholder: String,
}

pub struct LithicApi {
    pub api_key: Secret,
    pub base_url: String,
}

pub struct IssuingSettings {
    pub stripe: Option<StripeApi>,
    pub lithic: Option<LithicApi>,
    pub timeout: Duration,
}

/// Creates cards at the processors and keeps their status and controls in step.
pub struct Issuer {
    http: reqwest::Client,
    settings: IssuingSettings,
    /// MCC → Stripe category slug.
    categories: &'static HashMap<String, String>,
    catalog: &'static Catalog,
}

/// A card to create at a processor.
pub struct NewCardAt<'a> {
    pub card_id: &'a CardId,
    pub agent_id: &'a AgentId,
    pub label: &'a str,
    pub currency: Currency,
    pub single_use: bool,
    pub policy: &'a Policy,
}

/// What the processor made.
#[derive(Debug, Clone, PartialEq)]
pub struct CardAtProcessor {
    pub id: String,
    pub last4: String,
    pub exp_month: Option<u8>,
    pub exp_year: Option<u16>,
}

/// A card's rules as Stripe's `spending_controls` can hold them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StripeControls {
    pub allowed_categories: Vec<String>,
    pub blocked_categories: Vec<String>,
    pub allowed_merchant_countries: Vec<String>,
    pub blocked_merchant_countries: Vec<String>,
    /// (amount in the card's minor units, interval)
    pub spending_limits: Vec<(i64, &'static str)>,
}

impl Issuer {
    pub fn new(
        settings: IssuingSettings,
        categories: &'static HashMap<String, String>,
        catalog: &'static Catalog,
    ) -> anyhow::Result<Issuer> {
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| anyhow::anyhow!("processor HTTP client: {e}"))?;
        Ok(Issuer { http, settings, categories, catalog })
    }

    /// Whether cards of this processor are created here (its API key is set).
    pub fn issues(&self, processor: Processor) -> bool {
        match processor {
            Processor::Stripe => self.settings.stripe.is_some(),
            Processor::Lithic => self.settings.lithic.is_some(),
            Processor::Simulator | Processor::Marqeta => false,
        }
    }

    pub async fn create(&self, processor: Processor, card: &NewCardAt<'_>) -> Result<CardAtProcessor> {
        let made = self.make(processor, card).await?;
        let last4_ok = made.last4.len() == 4 && made.last4.bytes().all(|b| b.is_ascii_digit());
        if path_segment(&made.id).is_err() || !last4_ok {
            return Err(Error::Upstream(format!("{processor} answered with a card id or last4 spendgate cannot use")));
        }
        Ok(made)
    }

    async fn make(&self, processor: Processor, card: &NewCardAt<'_>) -> Result<CardAtProcessor> {
        match (processor, &self.settings.stripe, &self.settings.lithic) {
            (Processor::Stripe, Some(api), _) => {
                let mut form = vec![
                    ("cardholder".to_owned(), api.cardholder.clone()),
                    ("currency".to_owned(), card.currency.code().to_ascii_lowercase()),
                    ("type".to_owned(), "virtual".to_owned()),
                    ("status".to_owned(), "active".to_owned()),
                    ("metadata[spendgate_card_id]".to_owned(), card.card_id.to_string()),
                    ("metadata[spendgate_agent_id]".to_owned(), card.agent_id.to_string()),
                    ("metadata[label]".to_owned(), card.label.to_owned()),
                ];
                form.extend(stripe_form(&self.stripe_controls(card.policy), false));
                let request = self
                    .stripe_request(api, reqwest::Method::POST, "/v1/issuing/cards")
                    // The same card is never made twice, whatever retries the network makes.
                    .header("Idempotency-Key", card.card_id.as_str());
                let made: StripeCard = self.send(processor, with_form(request, &form)).await?;
                Ok(CardAtProcessor {
                    id: made.id,
                    last4: made.last4,
                    exp_month: Some(made.exp_month),
                    exp_year: Some(made.exp_year),
                })
            }
            (Processor::Lithic, _, Some(api)) => {
                if card.currency != Currency::USD {
                    return Err(Error::coded(
                        ErrorCode::ProcessorCurrencyUnsupported,
                        format!("Lithic issues USD cards; this card's currency is {}", card.currency),
                    ));
                }
                let mut body = serde_json::json!({
                    "type": if card.single_use { "SINGLE_USE" } else { "VIRTUAL" },
                    "memo": card.label,
                    "state": "OPEN",
                });
                if let Some((limit, duration)) = lithic_limit(card.policy) {
                    body["spend_limit"] = limit.into();
                    body["spend_limit_duration"] = duration.into();
                }
                let request = self.lithic_request(api, reqwest::Method::POST, "/v1/cards");
                let made: LithicCard = self.send(processor, request.json(&body)).await?;
                Ok(CardAtProcessor {
                    id: made.token,
                    last4: made.last_four,
                    exp_month: made.exp_month.and_then(|m| m.parse().ok()),
                    exp_year: made.exp_year.and_then(|y| y.parse().ok()),
                })
            }
            _ => Err(Error::Internal(format!("cards are not issued at {processor} here"))),
        }
    }

    /// Sets the card's status and mirrored controls at the processor to what they are here.
    pub async fn update(&self, processor: Processor, id: &str, status: CardStatus, policy: &Policy) -> Result<()> {
        let segment = path_segment(id)?;
        match (processor, &self.settings.stripe, &self.settings.lithic) {
            (Processor::Stripe, Some(api), _) => {
                let status = match status {
                    CardStatus::Active => "active",
                    CardStatus::Frozen => "inactive",
                    CardStatus::Closed => "canceled",
                };
                let mut form = vec![("status".to_owned(), status.to_owned())];
                // A canceled card's controls cannot change, and no longer matter.
                if status != "canceled" {
                    form.extend(stripe_form(&self.stripe_controls(policy), true));
                }
                let path = format!("/v1/issuing/cards/{segment}");
                let request = with_form(self.stripe_request(api, reqwest::Method::POST, &path), &form);
                self.send::<serde::de::IgnoredAny>(processor, request).await.map(|_| ())
            }
            (Processor::Lithic, _, Some(api)) => {
                let state = match status {
                    CardStatus::Active => "OPEN",
                    CardStatus::Frozen => "PAUSED",
                    CardStatus::Closed => "CLOSED",
                };
                let mut body = serde_json::json!({"state": state});
                if status != CardStatus::Closed {
                    // A limit of 0 removes one that an earlier policy set.
                    let (limit, duration) = lithic_limit(policy).unwrap_or((0, "TRANSACTION"));
                    body["spend_limit"] = limit.into();
                    body["spend_limit_duration"] = duration.into();
                }
                let path = format!("/v1/cards/{segment}");
                let request = self.lithic_request(api, reqwest::Method::PATCH, &path).json(&body);
                self.send::<serde::de::IgnoredAny>(processor, request).await.map(|_| ())
            }
            _ => Ok(()),
        }
    }

    fn stripe_controls(&self, policy: &Policy) -> StripeControls {
        stripe_controls(policy, self.catalog, self.categories)
    }

    fn stripe_request(&self, api: &StripeApi, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let url = format!("{}{path}", api.base_url.trim_end_matches('/'));
        self.http.request(method, url).bearer_auth(api.api_key.expose()).header("Stripe-Version", STRIPE_VERSION)
    }

    fn lithic_request(&self, api: &LithicApi, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let url = format!("{}{path}", api.base_url.trim_end_matches('/'));
        // Lithic takes the bare API key, without a scheme.
        self.http.request(method, url).header("Authorization", api.api_key.expose())
    }

    async fn send<T: serde::de::DeserializeOwned>(
        &self,
        processor: Processor,
        request: reqwest::RequestBuilder,
    ) -> Result<T> {
        let response = request
            .send()
            .await
            .map_err(|e| Error::Upstream(format!("{processor} did not answer: {}", e.without_url())))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| Error::Upstream(format!("{processor}'s answer broke off: {}", e.without_url())))?;
        if status.is_success() {
            return serde_json::from_slice(&body)
                .map_err(|e| Error::Upstream(format!("{processor} answered {status} with an unreadable body: {e}")));
        }
        let message = processor_message(&body).unwrap_or_else(|| format!("status {status}"));
        if status.is_client_error() && status.as_u16() != 429 {
            Err(Error::coded(ErrorCode::ProcessorRefused, format!("{processor} refused: {message}")))
        } else {
            Err(Error::Upstream(format!("{processor} failed: {message}")))
        }
    }
}

#[derive(Deserialize)]
struct StripeCard {
    id: String,
    last4: String,
    exp_month: u8,
    exp_year: u16,
}

#[derive(Deserialize)]
struct LithicCard {
    token: String,
    last_four: String,
    exp_month: Option<String>,
    exp_year: Option<String>,
}

/// Stripe's API takes form-encoded bodies.
fn with_form(request: reqwest::RequestBuilder, form: &[(String, String)]) -> reqwest::RequestBuilder {
    let body = serde_urlencoded::to_string(form).expect("string pairs encode");
    request.header("Content-Type", "application/x-www-form-urlencoded").body(body)
}

/// Stripe's `{"error": {"message"}}` or Lithic's `{"message"}`, shortened.
fn processor_message(body: &[u8]) -> Option<String> {
    let doc: serde_json::Value = serde_json::from_slice(body).ok()?;
    let message = doc["error"]["message"].as_str().or_else(|| doc["message"].as_str())?;
    Some(message.chars().take(MAX_MESSAGE).collect())
}

/// A processor's id as one URL path segment: anything else is refused, not sent.
fn path_segment(id: &str) -> Result<&str> {
    let ok =
        !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok { Ok(id) } else { Err(Error::Internal(format!("processor card id {id:?} is not a plain token"))) }
}

/// The MCCs an allow or block list names, directly or through groups.
fn mccs(codes: Option<&AllowBlock>, groups: Option<&AllowBlock>, catalog: &Catalog, allow: bool) -> BTreeSet<String> {
    let pick = |list: Option<&AllowBlock>| -> Vec<String> {
        list.and_then(|l| if allow { l.allow.clone() } else { l.block.clone() }).unwrap_or_default()
    };
    let mut out: BTreeSet<String> = pick(codes).into_iter().collect();
    for group in pick(groups) {
        if let Some(g) = catalog.groups.get(&group) {
            out.extend(g.mcc.iter().cloned());
        }
    }
    out
}

/// The card policy as Stripe's spending controls. Never stricter than the policy: an allow list
/// (the union of the MCC and group lists) is mirrored only when every MCC in it has a Stripe
/// category; a block list drops what has none; only limits no approval can raise and Stripe's
/// intervals express exactly (per authorization, all time) are mirrored.
pub fn stripe_controls(policy: &Policy, catalog: &Catalog, categories: &HashMap<String, String>) -> StripeControls {
    let mut controls = StripeControls::default();
    let allowed = mccs(policy.mcc.as_deref(), policy.mcc_groups.as_deref(), catalog, true);
    let slugs: Option<BTreeSet<String>> = allowed.iter().map(|m| categories.get(m).cloned()).collect();
    match slugs {
        Some(slugs) if !allowed.is_empty() => controls.allowed_categories = slugs.into_iter().collect(),
        // Stripe takes an allow list or a block list; inside an allow list spendgate blocks the rest.
        _ if allowed.is_empty() => {
            let blocked = mccs(policy.mcc.as_deref(), policy.mcc_groups.as_deref(), catalog, false);
            let slugs: BTreeSet<String> = blocked.iter().filter_map(|m| categories.get(m).cloned()).collect();
            controls.blocked_categories = slugs.into_iter().collect();
        }
        _ => {}
    }
    if let Some(countries) = &policy.countries {
        controls.allowed_merchant_countries = countries.allow.clone().unwrap_or_default();
        controls.blocked_merchant_countries = countries.block.clone().unwrap_or_default();
    }
    if let Some(cap) = policy.per_transaction.filter(|c| *c > 0) {
        controls.spending_limits.push((cap, "per_authorization"));
    }
    for limit in policy.limits.iter().filter(|l| mirrorable(l) && matches!(l.window, Window::Lifetime)) {
        if let Some(amount) = limit.amount.filter(|a| *a > 0) {
            controls.spending_limits.push((amount, "all_time"));
        }
    }
    controls
}

/// A card limit on every purchase the card makes, that only a new policy changes.
fn mirrorable(limit: &crate::domain::policy::Limit) -> bool {
    limit.scope == Scope::Card
        && limit.on_exceed == OnExceed::Decline
        && limit.mcc.is_empty()
        && limit.mcc_groups.is_empty()
        && limit.merchants.is_empty()
        && (limit.rails.is_empty() || limit.rails.contains(&Rail::Card))
}

/// Lithic holds one spend limit: the per-transaction cap, else a lifetime card limit.
pub fn lithic_limit(policy: &Policy) -> Option<(i64, &'static str)> {
    if let Some(cap) = policy.per_transaction.filter(|c| *c > 0) {
        return Some((cap, "TRANSACTION"));
    }
    policy
        .limits
        .iter()
        .filter(|l| mirrorable(l) && matches!(l.window, Window::Lifetime))
        .find_map(|l| l.amount.filter(|a| *a > 0))
        .map(|a| (a, "FOREVER"))
}

/// Stripe's form encoding of the controls. `clear`: an update, where an empty list must be sent
/// as empty to remove what an earlier policy set.
fn stripe_form(c: &StripeControls, clear: bool) -> Vec<(String, String)> {
    let mut form = Vec::new();
    let mut list = |name: &str, values: &[String]| {
        if values.is_empty() {
            if clear {
                form.push((format!("spending_controls[{name}]"), String::new()));
            }
            return;
        }
        for (i, v) in values.iter().enumerate() {
            form.push((format!("spending_controls[{name}][{i}]"), v.clone()));
        }
    };
    list("allowed_categories", &c.allowed_categories);
    list("blocked_categories", &c.blocked_categories);
    list("allowed_merchant_countries", &c.allowed_merchant_countries);
    list("blocked_merchant_countries", &c.blocked_merchant_countries);
    if c.spending_limits.is_empty() {
        if clear {
            form.push(("spending_controls[spending_limits]".into(), String::new()));
        }
    } else {
        for (i, (amount, interval)) in c.spending_limits.iter().enumerate() {
            form.push((format!("spending_controls[spending_limits][{i}][amount]"), amount.to_string()));
            form.push((format!("spending_controls[spending_limits][{i}][interval]"), (*interval).to_owned()));
        }
    }
    form
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;

    fn policy(doc: serde_json::Value) -> Policy {
        crate::admin::parse_policy(fixtures::catalog(), doc, Some(Currency::USD)).expect("valid policy")
    }

    fn controls(doc: serde_json::Value) -> StripeControls {
        stripe_controls(&policy(doc), fixtures::catalog(), fixtures::stripe_categories())
    }

    #[test]
    fn allow_lists_become_stripe_categories_only_when_every_mcc_has_one() {
        let c = controls(serde_json::json!({"mcc": {"allow": ["5734", "7372"]}}));
        assert_eq!(c.allowed_categories, ["computer_programming", "computer_software_stores"]);
        assert!(c.blocked_categories.is_empty());
        // Some MCCs have no Stripe category (the government lottery ones in `gambling`): an allow
        // list naming one would be stricter than the policy if sent without it, so none is sent.
        let unknown = fixtures::catalog()
            .groups
            .values()
            .flat_map(|g| g.mcc.iter())
            .find(|m| !fixtures::stripe_categories().contains_key(*m))
            .expect("some group MCC has no Stripe category");
        let c = controls(serde_json::json!({"mcc": {"allow": ["5734", unknown]}}));
        assert!(c.allowed_categories.is_empty(), "{c:?}");
    }

    #[test]
    fn block_lists_keep_what_stripe_can_name_and_limits_only_what_it_expresses_exactly() {
        let c = controls(serde_json::json!({
            "mcc_groups": {"block": ["gambling"]},
            "countries": {"allow": ["US", "IE"]},
            "per_transaction": 2_500,
            "limits": [
                {"id": "ever", "scope": "card", "window": "lifetime", "amount": 90_000},
                {"id": "asks", "scope": "card", "window": "lifetime", "amount": 10_000, "on_exceed": "ask"},
                {"id": "day", "scope": "card", "window": {"rolling": "24h"}, "amount": 5_000},
                {"id": "agent", "scope": "agent", "window": "lifetime", "amount": 1_000},
                {"id": "only_ai", "scope": "card", "window": "lifetime", "amount": 500, "mcc": ["5734"]}
            ]
        }));
        assert!(c.blocked_categories.contains(&"betting_casino_gambling".to_owned()), "{c:?}");
        assert!(c.allowed_categories.is_empty());
        assert_eq!(c.allowed_merchant_countries, ["US", "IE"]);
        assert_eq!(c.spending_limits, [(2_500, "per_authorization"), (90_000, "all_time")]);
        assert_eq!(lithic_limit(&policy(serde_json::json!({"per_transaction": 2_500}))), Some((2_500, "TRANSACTION")));
        let lifetime =
            serde_json::json!({"limits": [{"id": "ever", "scope": "card", "window": "lifetime", "amount": 700}]});
        assert_eq!(lithic_limit(&policy(lifetime)), Some((700, "FOREVER")));
        assert_eq!(lithic_limit(&policy(serde_json::json!({}))), None);
    }

    #[test]
    fn updates_clear_what_an_earlier_policy_set() {
        let empty = StripeControls::default();
        assert!(stripe_form(&empty, false).is_empty());
        let cleared = stripe_form(&empty, true);
        assert!(cleared.contains(&("spending_controls[allowed_categories]".into(), String::new())));
        assert!(cleared.contains(&("spending_controls[spending_limits]".into(), String::new())));
        let set = stripe_form(&StripeControls { spending_limits: vec![(100, "per_authorization")], ..empty }, true);
        assert!(set.contains(&("spending_controls[spending_limits][0][amount]".into(), "100".into())));
        assert!(set.contains(&("spending_controls[spending_limits][0][interval]".into(), "per_authorization".into())));
    }

    #[test]
    fn only_plain_tokens_go_into_a_path() {
        assert!(path_segment("ic_1Pgag5B7WZ01zgkW").is_ok());
        assert!(path_segment("7f687fe6-8e5b-4c8b-a3c5-2f3a9d7c1b11").is_ok());
        assert!(path_segment("../v1/accounts").is_err());
        assert!(path_segment("").is_err());
    }
}
