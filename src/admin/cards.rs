use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::agents::{load_agent, parse_agent_id};
use super::{Admin, Page, PageQuery, ReasonBody, parse_policy, required_text};
use crate::domain::access::{Permission, Principal, Role};
use crate::domain::card::{Card, CardAction, CardStatus, Processor, luhn_check_digit};
use crate::domain::catalog::Catalog;
use crate::domain::event::Event;
use crate::domain::ids::{AgentId, CardId, KeyId};
use crate::domain::money::Currency;
use crate::domain::policy::Policy;
use crate::error::{Error, ErrorCode, Result};
use crate::rails::card::issuing::NewCardAt;
use crate::store::{self, DbConnection};

/// How often a status change re-reads a card that a concurrent change moved under it.
const STATUS_ATTEMPTS: usize = 8;

#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewCard {
    /// The service the card pays: `openai`, `aws`, …
    #[schema(
        min_length = 1,
        max_length = 64,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    pub label: String,
    /// The cap currency (ISO 4217); default: the policy's (or template's) `currency`, else USD.
    #[schema(value_type = Option<String>, example = "USD", pattern = "^[A-Za-z]{3}$")]
    pub currency: Option<String>,
    /// A policy document; give this or `template`, not both.
    #[schema(value_type = Option<Object>)]
    pub policy: Option<serde_json::Value>,
    /// The name of a policy template (`GET /v1/policy-templates`).
    pub template: Option<String>,
    #[serde(default)]
    pub single_use: bool,
    /// spendgate declines every authorization after this instant.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<jiff::Timestamp>,
    /// `simulator` (default) issues here. `stripe` or `lithic` with that processor's API key set
    /// and no `processor_card_id` creates the card at the processor; otherwise (and always for
    /// `marqeta`) the card already exists there and is registered with its `processor_card_id`
    /// and `last4`.
    #[schema(pattern = "^(simulator|stripe|lithic|marqeta)$")]
    pub processor: Option<String>,
    #[schema(
        min_length = 1,
        max_length = 128,
        pattern = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
    )]
    pub processor_card_id: Option<String>,
    #[schema(pattern = "^[0-9]{4}$")]
    pub last4: Option<String>,
    /// With `exp_year`, or neither.
    #[schema(minimum = 1, maximum = 12)]
    pub exp_month: Option<u8>,
    /// This year to 20 years on.
    #[schema(minimum = 2000, maximum = 2200)]
    pub exp_year: Option<u16>,
}

/// The issued card; `number` is shown in this response only and never stored.
#[derive(Debug, Serialize, ToSchema)]
pub struct IssuedCard {
    #[serde(flatten)]
    pub card: Card,
    pub number: Option<String>,
}

/// A card's policy: in the card's currency, and without the alerts and funding only an agent's
/// policy has (they are about the agent's balance and spend as a whole).
pub(super) fn card_policy(catalog: &Catalog, doc: serde_json::Value, currency: Currency) -> Result<Policy> {
    let policy = parse_policy(catalog, doc, Some(currency))?;
    if policy.alerts.is_some() {
        return Err(Error::validation("policy.alerts: alerts belong in the agent's policy, not a card's"));
    }
    if policy.funding.is_some() {
        return Err(Error::validation("policy.funding: funding belongs in the agent's policy, not a card's"));
    }
    Ok(policy)
}

fn parse_card_id(id: &str) -> Result<CardId> {
    CardId::parse(id).ok_or_else(|| Error::not_found("card", id))
}

/// Loads a card, and when the route names an agent, checks the card is that agent's.
fn load_card(conn: &mut DbConnection, agent: Option<&AgentId>, id: &CardId) -> Result<Card> {
    match store::cards::find(conn, id)? {
        Some(card) if agent.is_none_or(|a| *a == card.agent_id) => Ok(card),
        _ => Err(Error::not_found("card", id.as_str())),
    }
}

/// A Luhn-valid 16-digit number in `bin`.
fn simulated_number(bin: &str) -> String {
    let mut digits = bin.to_owned();
    while digits.len() < 15 {
        digits.push(char::from(b'0' + rand::random_range(0..10u8)));
    }
    let check = luhn_check_digit(&digits);
    digits.push(char::from(b'0' + check));
    digits
}

impl Admin {
    pub async fn issue_card(&self, who: &Principal, agent_id: &str, mut input: NewCard) -> Result<IssuedCard> {
        let agent_id = parse_agent_id(who, agent_id)?;
        who.check(Permission::Manage, Some(&agent_id))?;
        let label = required_text("label", &input.label, 64)?;
        // Unnamed, the card caps in the currency its policy (or template) names, else USD.
        let named = input.policy.as_ref().and_then(|doc| doc.get("currency")).and_then(|c| c.as_str());
        let templated = input.template.as_deref().and_then(|name| self.catalog.template(name));
        let currency: Currency = match (&input.currency, named, templated.and_then(|t| t.policy.currency)) {
            (Some(code), _, _) => code.parse().map_err(|e| Error::validation(format!("currency: {e}")))?,
            (None, Some(code), _) => code.parse().map_err(|e| Error::validation(format!("policy.currency: {e}")))?,
            (None, None, Some(currency)) => currency,
            (None, None, None) => Currency::USD,
        };
        let processor: Processor = match &input.processor {
            Some(p) => p.parse().map_err(|e| Error::validation(format!("processor: {e}")))?,
            None => Processor::Simulator,
        };
        let policy = match (input.policy.take(), &input.template) {
            (Some(_), Some(_)) => {
                return Err(Error::validation("give policy or template, not both"));
            }
            (Some(doc), None) => card_policy(self.catalog, doc, currency)?,
            (None, Some(name)) => self.template_policy(name, currency)?,
            (None, None) => card_policy(self.catalog, serde_json::json!({}), currency)?,
        };
        let now = store::now();
        if input.expires_at.is_some_and(|at| at <= now) {
            return Err(Error::validation("expires_at: must be in the future"));
        }
        let (mut exp_month, mut exp_year) = expiry_month(&input, now)?;
        let card_id = CardId::generate();
        let issue_there =
            processor != Processor::Simulator && input.processor_card_id.is_none() && self.issuer.issues(processor);
        let (number, processor_card_id, last4) = match processor {
            Processor::Simulator => {
                if input.processor_card_id.is_some() || input.last4.is_some() {
                    return Err(Error::validation(
                        "processor_card_id and last4 are set by the simulator; give them only for an external processor",
                    ));
                }
                let number = simulated_number(&self.simulator_bin);
                let last4 = number[number.len() - 4..].to_owned();
                let id = format!("sim_{}", hex::encode(rand::random::<[u8; 12]>()));
                (Some(number), id, last4)
            }
            _ if issue_there => {
                if input.last4.is_some() {
                    return Err(Error::validation(format!("last4 is set by {processor} when it issues the card")));
                }
                // The agent must exist before the processor makes a card for it.
                let agent = agent_id.clone();
                self.db.read(move |conn| load_agent(conn, &agent)).await?;
                let new = NewCardAt {
                    card_id: &card_id,
                    agent_id: &agent_id,
                    label: &label,
                    currency,
                    single_use: input.single_use,
                    policy: &policy,
                };
                let made = self.issuer.create(processor, &new).await?;
                exp_month = made.exp_month.unwrap_or(exp_month);
                exp_year = made.exp_year.unwrap_or(exp_year);
                (None, made.id, made.last4)
            }
            _ => {
                let id = input.processor_card_id.as_deref().ok_or_else(|| {
                    let hint = match processor {
                        Processor::Stripe => " (or set SPENDGATE_STRIPE_API_KEY to issue it at Stripe)",
                        Processor::Lithic => " (or set SPENDGATE_LITHIC_API_KEY to issue it at Lithic)",
                        _ => "",
                    };
                    Error::validation(format!("processor_card_id: required to register a {processor} card{hint}"))
                })?;
                let id = required_text("processor_card_id", id, 128)?;
                let last4 = match input.last4.as_deref() {
                    Some(l) if l.len() == 4 && l.bytes().all(|b| b.is_ascii_digit()) => l.to_owned(),
                    _ => {
                        return Err(Error::validation("last4: the card's last 4 digits are required"));
                    }
                };
                (None, id, last4)
            }
        };
        let card = Card {
            id: card_id,
            agent_id: agent_id.clone(),
            label,
            currency,
            last4,
            exp_month,
            exp_year,
            expires_at: input.expires_at,
            single_use: input.single_use,
            status: CardStatus::Active,
            processor,
            processor_card_id,
            processor_managed: issue_there,
            trace_id: None,
            policy,
            created_at: now,
            updated_at: now,
        };
        let data = serde_json::json!({ "label": card.label, "template": input.template, "processor": processor,
            "processor_managed": issue_there });
        let event = Event::new(&agent_id, Some(&card.id), "issued", &who.key_id, now).data(data);
        let stored = card.clone();
        let written = self
            .db
            .write(move |conn| {
                load_agent(conn, &stored.agent_id)?;
                if store::cards::exists_for_processor(conn, stored.processor.as_str(), &stored.processor_card_id)? {
                    return Err(Error::coded(
                        ErrorCode::CardExists,
                        format!(
                            "a {} card with processor_card_id {} is already registered",
                            stored.processor, stored.processor_card_id
                        ),
                    ));
                }
                store::cards::insert(conn, &stored)?;
                let by = event.actor.as_ref().map(|k| k.as_str());
                let (agent, card, first) = (&stored.agent_id, Some(stored.id.as_str()), now.as_millisecond());
                store::policies::record_live(conn, agent, card, &stored.policy, by, None, first)?;
                store::events::record(conn, &event)
            })
            .await;
        if let Err(e) = written {
            if issue_there {
                // Not recorded here, so it must not stay usable there.
                let closed = self.issuer.update(processor, &card.processor_card_id, CardStatus::Closed, &card.policy);
                if let Err(close) = closed.await {
                    tracing::error!(processor = %processor, processor_card = %card.processor_card_id, error = %close,
                        "a card made at the processor was not recorded and could not be closed there: close it by hand");
                }
            }
            return Err(e);
        }
        tracing::info!(card = %card.id, agent = %card.agent_id, actor = %who.key_id, "card issued");
        Ok(IssuedCard { card, number })
    }

    fn template_policy(&self, name: &str, currency: Currency) -> Result<Policy> {
        let template = self.catalog.template(name).ok_or_else(|| {
            Error::coded(
                ErrorCode::UnknownTemplate,
                format!("no policy template named {name:?} (see GET /v1/policy-templates)"),
            )
        })?;
        // Templates were validated and normalized when the catalog was built.
        let policy = template.policy.clone();
        if policy.currency != Some(currency) {
            return Err(Error::coded(
                ErrorCode::TemplateCurrencyMismatch,
                format!(
                    "template {name} caps in {}, the card's currency is {currency}",
                    policy.currency.unwrap_or(Currency::USD)
                ),
            ));
        }
        Ok(policy)
    }

    pub async fn list_cards(&self, who: &Principal, agent_id: &str, page: PageQuery) -> Result<Page<Card>> {
        let agent_id = parse_agent_id(who, agent_id)?;
        who.check(Permission::Read, Some(&agent_id))?;
        self.page(
            page,
            |c: &Card| c.id.to_string(),
            move |conn, cursor, n| {
                load_agent(conn, &agent_id)?;
                store::cards::list_for_agent(conn, &agent_id, cursor, n)
            },
        )
        .await
    }

    /// `agent_id` is given when the route names the agent; the card must then be that agent's.
    pub async fn get_card(&self, who: &Principal, agent_id: Option<&str>, card_id: &str) -> Result<Card> {
        let agent_id = agent_id.map(|id| parse_agent_id(who, id)).transpose()?;
        let card_id = parse_card_id(card_id)?;
        if let Some(agent) = &agent_id {
            who.check(Permission::Read, Some(agent))?;
        }
        let card = self.db.read(move |conn| load_card(conn, agent_id.as_ref(), &card_id)).await?;
        who.check(Permission::Read, Some(&card.agent_id))?;
        Ok(card)
    }

    /// What the card would answer to `request` now, recording nothing.
    pub async fn dry_run(
        &self,
        who: &Principal,
        card_id: &str,
        request: crate::domain::authorization::AuthRequest,
    ) -> Result<crate::ledger::AuthOutcome> {
        let card = self.get_card(who, None, card_id).await?;
        who.check(Permission::DryRun, Some(&card.agent_id))?;
        let auth = crate::ledger::Authorize {
            // Nothing is recorded under a dry run's id: it only needs to be new.
            source: crate::domain::ledger::Source::Native,
            external_id: crate::domain::ids::AuthorizationId::generate().to_string(),
            payer: crate::ledger::Payer::Card(card.id),
            request,
            deferred: None,
            payment: None,
            onchain_short: false,
        };
        self.ledger.dry_run(auth, who.role == Role::Agent).await
    }

    /// Freeze, unfreeze or close. Repeating an action is a no-op; a closed card stays closed (409).
    pub async fn card_action(
        &self,
        who: &Principal,
        agent_id: &str,
        card_id: &str,
        action: CardAction,
        body: ReasonBody,
    ) -> Result<Card> {
        let agent_id = parse_agent_id(who, agent_id)?;
        let card_id = parse_card_id(card_id)?;
        let permission = if action == CardAction::Freeze { Permission::Freeze } else { Permission::Manage };
        who.check(permission, Some(&agent_id))?;
        let reason = body.checked()?;
        let actor = who.key_id.clone();
        let card = self
            .db
            .write(move |conn| {
                // A concurrent change between the read and the compare-and-swap (PostgreSQL, several
                // nodes) is read again and the action applied to what is there now: a close always
                // lands, and nothing reopens a closed card.
                for _ in 0..STATUS_ATTEMPTS {
                    let mut card = load_card(conn, Some(&agent_id), &card_id)?;
                    let next = card
                        .status
                        .apply(action)
                        .map_err(|message| Error::coded(ErrorCode::CardClosed, message.to_owned()))?;
                    if next == card.status {
                        return Ok(card);
                    }
                    let now = store::now();
                    if !store::cards::update_status(conn, &card_id, card.status, next, now)? {
                        continue;
                    }
                    let event = Event::new(&agent_id, Some(&card_id), action.event_kind(), &actor, now)
                        .reason(Some(reason.clone()));
                    store::events::record(conn, &event)?;
                    card.status = next;
                    card.updated_at = now;
                    return Ok(card);
                }
                Err(Error::coded(ErrorCode::ConcurrentUpdate, "the card kept changing while this request ran; retry"))
            })
            .await?;
        self.snapshots().invalidate_card(&card.id);
        tracing::info!(card = %card.id, actor = %who.key_id, status = card.status.as_str(), "card status");
        self.sync_processor(&card, &who.key_id).await;
        Ok(card)
    }

    pub async fn get_card_policy(&self, who: &Principal, agent_id: &str, card_id: &str) -> Result<Policy> {
        Ok(self.get_card(who, Some(agent_id), card_id).await?.policy)
    }

    pub async fn set_card_policy(
        &self,
        who: &Principal,
        agent_id: &str,
        card_id: &str,
        doc: serde_json::Value,
    ) -> Result<Policy> {
        let agent_id = parse_agent_id(who, agent_id)?;
        let card_id = parse_card_id(card_id)?;
        who.check(Permission::Manage, Some(&agent_id))?;
        let catalog = self.catalog;
        let actor = who.key_id.clone();
        let card = self
            .db
            .write(move |conn| {
                let mut card = load_card(conn, Some(&agent_id), &card_id)?;
                if card.status == CardStatus::Closed {
                    return Err(Error::coded(ErrorCode::CardClosed, "the card is closed"));
                }
                let policy = card_policy(catalog, doc, card.currency)?;
                let now = store::now();
                store::cards::update_policy(conn, &card_id, &policy, now)?;
                let (by, at) = (Some(actor.as_str()), now.as_millisecond());
                let (version_id, version) =
                    store::policies::record_live(conn, &agent_id, Some(card_id.as_str()), &policy, by, None, at)?;
                let data = serde_json::json!({ "previous": card.policy, "policy": policy, "version": version,
                    "version_id": version_id });
                store::events::record(
                    conn,
                    &Event::new(&agent_id, Some(&card_id), "policy_changed", &actor, now).data(data),
                )?;
                card.policy = policy;
                Ok(card)
            })
            .await?;
        self.snapshots().invalidate_card(&card.id);
        self.sync_processor(&card, &who.key_id).await;
        Ok(card.policy)
    }

    /// Brings a card spendgate issued at its processor in step with its status and policy here.
    /// spendgate decides whatever the processor asks about, so a failure here is logged and put
    /// in the card's trail, and the change made here stands.
    pub(super) async fn sync_processor(&self, card: &Card, actor: &KeyId) {
        if !card.processor_managed || !self.issuer.issues(card.processor) {
            return;
        }
        let synced = self.issuer.update(card.processor, &card.processor_card_id, card.status, &card.policy).await;
        if let Err(e) = synced {
            tracing::warn!(card = %card.id, processor = %card.processor, error = %e, "the processor's card is not in step");
            let data = serde_json::json!({"processor": card.processor, "error": e.to_string()});
            let event =
                Event::new(&card.agent_id, Some(&card.id), "processor_sync_failed", actor, store::now()).data(data);
            if let Err(e) = self.db.write(move |conn| store::events::record(conn, &event)).await {
                tracing::warn!(error = %e, "could not record a processor sync failure");
            }
        }
    }

    /// Sets (or with `None` clears) the trace that authorizations on the card are tagged with
    /// when the processor sends none.
    pub async fn set_card_trace(
        &self,
        who: &Principal,
        agent_id: &str,
        card_id: &str,
        trace_id: Option<String>,
    ) -> Result<Card> {
        let agent_id = parse_agent_id(who, agent_id)?;
        let card_id = parse_card_id(card_id)?;
        who.check(Permission::Tag, Some(&agent_id))?;
        let trace_id = trace_id.map(|t| required_text("trace_id", &t, 200)).transpose()?;
        let actor = who.key_id.clone();
        let card = self
            .db
            .write(move |conn| {
                let mut card = load_card(conn, Some(&agent_id), &card_id)?;
                let now = store::now();
                store::cards::set_trace(conn, &card_id, trace_id.as_deref(), now)?;
                let data = serde_json::json!({ "previous": card.trace_id, "trace_id": trace_id });
                store::events::record(
                    conn,
                    &Event::new(&agent_id, Some(&card_id), "trace_changed", &actor, now).data(data),
                )?;
                card.trace_id = trace_id;
                card.updated_at = now;
                Ok(card)
            })
            .await?;
        self.snapshots().invalidate_card(&card.id);
        Ok(card)
    }

    pub async fn card_events(
        &self,
        who: &Principal,
        agent_id: &str,
        card_id: &str,
        page: PageQuery,
    ) -> Result<Page<Event>> {
        let agent_id = parse_agent_id(who, agent_id)?;
        let card_id = parse_card_id(card_id)?;
        who.check(Permission::Read, Some(&agent_id))?;
        self.page(
            page,
            |e: &Event| e.id.to_string(),
            move |conn, cursor, n| {
                load_card(conn, Some(&agent_id), &card_id)?;
                store::events::list_for_card(conn, &agent_id, &card_id, cursor, n)
            },
        )
        .await
    }
}

/// The card's printed expiry: the month of `expires_at`, the given month and year, or three years on.
fn expiry_month(input: &NewCard, now: jiff::Timestamp) -> Result<(u8, u16)> {
    let (month, year) = match (input.exp_month, input.exp_year, input.expires_at) {
        (Some(m), Some(y), _) => (m, y),
        (None, None, Some(at)) => {
            let date = at.to_zoned(jiff::tz::TimeZone::UTC).date();
            (date.month() as u8, date.year() as u16)
        }
        (None, None, None) => {
            let date = now.to_zoned(jiff::tz::TimeZone::UTC).date();
            (date.month() as u8, (date.year() + 3) as u16)
        }
        _ => {
            return Err(Error::validation("exp_month and exp_year: give both or neither"));
        }
    };
    let this_year = now.to_zoned(jiff::tz::TimeZone::UTC).date().year() as u16;
    if !(1..=12).contains(&month) {
        return Err(Error::validation("exp_month: must be 1 to 12"));
    }
    if !(this_year..=this_year + 20).contains(&year) {
        return Err(Error::validation(format!("exp_year: must be between {this_year} and {}", this_year + 20)));
    }
    Ok((month, year))
}
