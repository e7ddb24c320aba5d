//! Changing a policy without fear: each card's and agent's versions, a draft saved beside the live
//! one, what it changes (a diff), shadow (evaluated on live decisions, deciding nothing), its
//! promotion (atomic, in the trail), and backtests of drafts over recorded history.
//!
//! A policy is addressed by its owner's id: `agt_…` for an agent's own rules, `card_…` for a card's.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::agents::load_agent;
use super::{Admin, Page, PageQuery, ReasonBody, parse_policy, required_text};
use crate::backtest::replay::{Context, Drafts};
use crate::backtest::report::{Outcome, Report};
use crate::backtest::{self, Part};
use crate::domain::access::{Permission, Principal};
use crate::domain::backtest::{BacktestStatus, PolicyState};
use crate::domain::event::Event;
use crate::domain::ids::{AgentId, BacktestId, CardId, PolicyVersionId};
use crate::domain::money::Currency;
use crate::domain::policy::Policy;
use crate::error::{Error, ErrorCode, Result};
use crate::store::backtests::BacktestRow;
use crate::store::policies::VersionRow;
use crate::store::{self, DbConnection};

/// Whose policy: an agent's own, or one of its cards'.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    Agent(AgentId),
    Card(AgentId, CardId),
}

impl Owner {
    pub fn agent(&self) -> &AgentId {
        match self {
            Owner::Agent(a) | Owner::Card(a, _) => a,
        }
    }

    pub fn card(&self) -> Option<&str> {
        match self {
            Owner::Agent(_) => None,
            Owner::Card(_, c) => Some(c.as_str()),
        }
    }

    /// The id that names the owner: the card's, or the agent's.
    pub fn id(&self) -> &str {
        self.card().unwrap_or(self.agent().as_str())
    }
}

/// The owner's draft, or a 404.
fn draft_of(conn: &mut DbConnection, owner: &Owner) -> Result<VersionRow> {
    store::policies::draft(conn, owner.agent(), owner.card())?.ok_or_else(|| Error::not_found("draft", owner.id()))
}

/// A version as it is now, read back after a change in the same transaction.
fn version(conn: &mut DbConnection, id: &str) -> Result<VersionRow> {
    store::policies::find(conn, id)?.ok_or_else(|| Error::not_found("policy version", id))
}

/// One version of a policy.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PolicyVersion {
    pub id: PolicyVersionId,
    pub agent_id: AgentId,
    /// Absent for the agent's own policy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub card_id: Option<CardId>,
    /// 1, 2, … once live; absent for a draft.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub number: Option<i64>,
    pub state: PolicyState,
    /// A draft in shadow: evaluated on every live decision, deciding nothing.
    pub shadow: bool,
    pub policy: Policy,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The key that wrote it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: jiff::Timestamp,
    /// The key that made it live or discarded it, and when.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<String>,
    #[schema(value_type = Option<String>, format = DateTime)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decided_at: Option<jiff::Timestamp>,
}

impl PolicyVersion {
    fn of(row: VersionRow) -> Result<Self> {
        Ok(PolicyVersion {
            policy: serde_json::from_str(&row.policy).map_err(|_| store::corrupt("policy", &row.id))?,
            id: PolicyVersionId::from_stored(row.id),
            agent_id: AgentId::from_stored(row.agent_id),
            card_id: row.card_id.map(CardId::from_stored),
            number: row.number,
            state: row.state,
            shadow: row.shadow,
            reason: row.reason,
            created_by: row.created_by,
            created_at: store::from_millis(row.created_at)?,
            decided_by: row.decided_by,
            decided_at: row.decided_at.map(store::from_millis).transpose()?,
        })
    }
}

/// A draft to save: the policy document, and why.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewDraft {
    #[schema(value_type = Object)]
    pub policy: Value,
    pub reason: Option<String>,
}

/// A draft beside the live version, and what it changes.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Draft {
    pub draft: PolicyVersion,
    pub live: PolicyVersion,
    /// Each value the draft changes, adds or removes.
    pub diff: Vec<Difference>,
}

/// One value a draft changes: `limits.hourly.count` from 10 to 5 (a limit is named by its id).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Difference {
    pub path: String,
    /// Absent where the draft adds the value.
    #[schema(value_type = Option<Object>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub live: Option<Value>,
    /// Absent where the draft removes the value.
    #[schema(value_type = Option<Object>)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub draft: Option<Value>,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ShadowSwitch {
    pub shadow: bool,
}

/// A backtest to run: drafts replayed over the decisions of a range of time.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewBacktest {
    /// Whose policy to replace: an agent (`agt_…`, its own rules) or a card (`card_…`); several
    /// take the same draft (a template over a set of cards), at most 1,000.
    pub targets: Vec<String>,
    /// The draft: a policy document; `"draft"` (each target's saved draft, the default); or
    /// `"recorded"`, the rules as they were at each moment, which reproduces history (a check
    /// that the replay is faithful).
    #[schema(value_type = Option<Object>)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<Value>,
    /// Instead of `policy`: a policy template's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// Instead of `policy`: a stored version's id (a past version, or another target's draft).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_id: Option<String>,
    /// The range replayed; default the seven days until now.
    #[schema(value_type = Option<String>, format = DateTime)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<jiff::Timestamp>,
    #[schema(value_type = Option<String>, format = DateTime)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<jiff::Timestamp>,
}

/// A backtest: how far it has got, and once done, its report.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Backtest {
    pub id: BacktestId,
    pub status: BacktestStatus,
    /// What was asked.
    pub spec: NewBacktest,
    /// Decisions of the range replayed so far, of how many.
    pub replayed: i64,
    pub total: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report: Option<Report>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: jiff::Timestamp,
    #[schema(value_type = Option<String>, format = DateTime)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<jiff::Timestamp>,
}

impl Backtest {
    fn of(row: BacktestRow, with_report: bool) -> Result<Self> {
        let report = match (&row.result, with_report) {
            (Some(text), true) => Some(serde_json::from_str(text).map_err(|_| store::corrupt("backtest", &row.id))?),
            _ => None,
        };
        Ok(Backtest {
            spec: serde_json::from_str(&row.spec).map_err(|_| store::corrupt("backtest", &row.id))?,
            id: BacktestId::from_stored(row.id),
            status: row.status,
            replayed: row.replayed,
            total: row.total,
            report,
            error: row.error,
            created_at: store::from_millis(row.created_at)?,
            finished_at: row.finished_at.map(store::from_millis).transpose()?,
        })
    }
}

/// The backtests this process runs, each with its cancel switch.
#[derive(Default)]
pub struct Running(Mutex<HashMap<String, Arc<AtomicBool>>>);

impl Running {
    /// A place for one more, with its cancel switch; None when `MAX_RUNNING` run already.
    fn reserve(&self, id: &str) -> Option<Arc<AtomicBool>> {
        let mut running = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if running.len() >= MAX_RUNNING {
            return None;
        }
        let cancel = Arc::new(AtomicBool::new(false));
        running.insert(id.to_owned(), cancel.clone());
        Some(cancel)
    }

    fn release(&self, id: &str) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
    }
}

/// At most this many backtests run at once on a node: each takes a reader connection and a core.
const MAX_RUNNING: usize = 2;
const MAX_TARGETS: usize = 1_000;
const SHADOW_LISTED: i64 = 10_000;
const DEFAULT_RANGE_MS: i64 = 7 * 86_400_000;

impl Admin {
    /// The owner an id names, checked against the caller's permission.
    async fn owner(&self, who: &Principal, id: &str, permission: Permission) -> Result<Owner> {
        let owner = if let Some(card) = CardId::parse(id) {
            let found = self.db.read(move |conn| store::cards::find(conn, &card)).await?;
            let card = found.ok_or_else(|| Error::not_found("card", id))?;
            Owner::Card(card.agent_id, card.id)
        } else {
            Owner::Agent(super::agents::parse_agent_id(who, id)?)
        };
        who.check(permission, Some(owner.agent()))?;
        Ok(owner)
    }

    pub async fn policy_versions(&self, who: &Principal, owner: &str, page: PageQuery) -> Result<Page<PolicyVersion>> {
        let owner = self.owner(who, owner, Permission::Read).await?;
        let page = self
            .page(
                page,
                |v: &VersionRow| v.id.clone(),
                move |conn, cursor, n| {
                    load_agent(conn, owner.agent())?;
                    store::policies::list(conn, owner.agent(), owner.card(), cursor, n)
                },
            )
            .await?;
        let data = page.data.into_iter().map(PolicyVersion::of).collect::<Result<_>>()?;
        Ok(Page { data, next_cursor: page.next_cursor })
    }

    /// Saves the owner's draft (replacing the one it has), validated as the live policy would be.
    pub async fn save_draft(&self, who: &Principal, owner: &str, input: NewDraft) -> Result<Draft> {
        let owner = self.owner(who, owner, Permission::Manage).await?;
        let reason = input.reason.as_deref().map(|r| required_text("reason", r, 500)).transpose()?;
        let currency = self.currency_of(&owner).await?;
        let policy = self.owned_policy(&owner, input.policy, currency)?;
        let row = VersionRow {
            id: PolicyVersionId::generate().to_string(),
            agent_id: owner.agent().to_string(),
            card_id: owner.card().map(str::to_owned),
            number: None,
            state: PolicyState::Draft,
            shadow: false,
            policy: store::agents::policy_json(&policy),
            reason,
            created_by: Some(who.key_id.to_string()),
            created_at: store::now().as_millisecond(),
            decided_by: None,
            decided_at: None,
        };
        let saved = self.db.write(move |conn| store::policies::save_draft(conn, &row)).await?;
        if saved.shadow {
            // Its shadow is evaluated from the agent's snapshot: every node reads it again.
            self.bump(owner.agent()).await?;
        }
        self.get_draft_of(owner).await
    }

    pub async fn get_draft(&self, who: &Principal, owner: &str) -> Result<Draft> {
        let owner = self.owner(who, owner, Permission::Read).await?;
        self.get_draft_of(owner).await
    }

    async fn get_draft_of(&self, owner: Owner) -> Result<Draft> {
        let (draft, live) = self.db.read(move |conn| Ok((draft_of(conn, &owner)?, live_policy(conn, &owner)?))).await?;
        let draft = PolicyVersion::of(draft)?;
        let live = PolicyVersion::of(live)?;
        let diff = diff(&to_value(&live.policy), &to_value(&draft.policy));
        Ok(Draft { draft, live, diff })
    }

    /// Puts the owner's draft away.
    pub async fn discard_draft(&self, who: &Principal, owner: &str, body: ReasonBody) -> Result<PolicyVersion> {
        let owner = self.owner(who, owner, Permission::Manage).await?;
        let reason = body.checked()?;
        let actor = who.key_id.clone();
        let row = self
            .db
            .write(move |conn| {
                let draft = draft_of(conn, &owner)?;
                let now = store::now();
                store::policies::discard(conn, &draft.id, actor.as_str(), now.as_millisecond())?;
                let card = owner.card().map(|c| CardId::from_stored(c.to_owned()));
                let data = serde_json::json!({ "version_id": draft.id });
                let event = Event::new(owner.agent(), card.as_ref(), "policy_draft_discarded", &actor, now);
                store::events::record(conn, &event.reason(Some(reason)).data(data))?;
                if draft.shadow {
                    store::agents::bump_config(conn, owner.agent())?;
                }
                version(conn, &draft.id)
            })
            .await?;
        self.snapshots().invalidate_agent(&AgentId::from_stored(row.agent_id.clone()));
        PolicyVersion::of(row)
    }

    /// Makes the owner's draft live: in one transaction the card's or agent's policy becomes it,
    /// it takes the next number, the live version is superseded, and the change is in the trail.
    pub async fn promote_draft(&self, who: &Principal, owner: &str, body: ReasonBody) -> Result<PolicyVersion> {
        let owner = self.owner(who, owner, Permission::Manage).await?;
        let reason = body.checked()?;
        let actor = who.key_id.clone();
        let catalog = self.catalog;
        let key = owner.clone();
        let row = self
            .db
            .write(move |conn| {
                let draft = draft_of(conn, &owner)?;
                let now = store::now();
                let document: Value =
                    serde_json::from_str(&draft.policy).map_err(|_| store::corrupt("policy", &draft.id))?;
                let (kind, card, previous, policy) = match &owner {
                    Owner::Agent(agent) => {
                        let current = load_agent(conn, agent)?;
                        // Checked again: the catalog (MCC groups) may have changed since it was saved.
                        let policy = parse_policy(catalog, document, Some(current.currency))?;
                        store::agents::update_policy(conn, agent, &policy, now)?;
                        ("agent_policy_changed", None, current.policy, policy)
                    }
                    Owner::Card(_, card) => {
                        let current =
                            store::cards::find(conn, card)?.ok_or_else(|| Error::not_found("card", card.as_str()))?;
                        if current.status == crate::domain::card::CardStatus::Closed {
                            return Err(Error::coded(ErrorCode::CardClosed, "the card is closed"));
                        }
                        let policy = super::cards::card_policy(catalog, document, current.currency)?;
                        store::cards::update_policy(conn, card, &policy, now)?;
                        ("policy_changed", Some(card.clone()), current.policy, policy)
                    }
                };
                let number =
                    store::policies::promote(conn, &draft, actor.as_str(), Some(&reason), now.as_millisecond())?
                        .ok_or_else(|| {
                            Error::coded(ErrorCode::ConcurrentUpdate, "the draft changed while this ran; retry")
                        })?;
                let data = serde_json::json!({ "previous": previous, "policy": policy, "version": number,
                    "version_id": draft.id, "promoted": true });
                let event = Event::new(owner.agent(), card.as_ref(), kind, &actor, now).reason(Some(reason)).data(data);
                store::events::record(conn, &event)?;
                version(conn, &draft.id)
            })
            .await?;
        match &key {
            Owner::Agent(agent) => self.snapshots().invalidate_agent(agent),
            Owner::Card(agent, card) => {
                self.snapshots().invalidate_card(card);
                self.snapshots().invalidate_agent(agent);
            }
        }
        tracing::info!(agent = %key.agent(), card = key.card(), actor = %who.key_id, version = row.number, "policy promoted");
        PolicyVersion::of(row)
    }

    /// Puts the owner's draft in shadow, or takes it out.
    pub async fn set_shadow(&self, who: &Principal, owner: &str, switch: ShadowSwitch) -> Result<PolicyVersion> {
        let owner = self.owner(who, owner, Permission::Manage).await?;
        let actor = who.key_id.clone();
        let row = self
            .db
            .write(move |conn| {
                let draft = draft_of(conn, &owner)?;
                if draft.shadow != switch.shadow {
                    store::policies::set_shadow(conn, &draft.id, switch.shadow)?;
                    let kind = if switch.shadow { "policy_shadow_started" } else { "policy_shadow_stopped" };
                    let card = owner.card().map(|c| CardId::from_stored(c.to_owned()));
                    let data = serde_json::json!({ "version_id": draft.id });
                    store::events::record(
                        conn,
                        &Event::new(owner.agent(), card.as_ref(), kind, &actor, store::now()).data(data),
                    )?;
                    store::agents::bump_config(conn, owner.agent())?;
                }
                version(conn, &draft.id)
            })
            .await?;
        self.snapshots().invalidate_agent(&AgentId::from_stored(row.agent_id.clone()));
        PolicyVersion::of(row)
    }

    /// What the owner's draft in shadow decided otherwise than the live policy, reported as a
    /// backtest is (the latest 10,000 disagreements; `decisions` counts those).
    pub async fn shadow_report(&self, who: &Principal, owner: &str) -> Result<Report> {
        let owner = self.owner(who, owner, Permission::Read).await?;
        let (found, currency, labels) = self
            .db
            .read(move |conn| {
                let agent = load_agent(conn, owner.agent())?;
                let draft = draft_of(conn, &owner)?;
                let mut found = Vec::new();
                for d in store::policies::disagreements(conn, &draft.id, None, SHADOW_LISTED)? {
                    if let Some(row) = store::ledger::find(conn, &d.authorization_id)? {
                        found.push((d, row));
                    }
                }
                let cards = store::cards::list_for_agent(conn, owner.agent(), None, i64::from(u16::MAX))?;
                let labels: HashMap<String, String> = cards.into_iter().map(|c| (c.id.to_string(), c.label)).collect();
                Ok((found, agent.currency, labels))
            })
            .await?;
        let mut report = Report::default();
        let outcome = |reason: &Option<String>, rule: &Option<String>| match reason {
            None => Outcome::approved(),
            Some(reason) => Outcome::declined(reason, rule.as_deref()),
        };
        for (d, row) in found {
            let service = row.card_id.as_ref().and_then(|c| labels.get(c)).map(String::as_str);
            let (live, shadow) = (outcome(&d.live_reason, &d.live_rule), outcome(&d.shadow_reason, &d.shadow_rule));
            report.disagreed(&row, service, currency, live, shadow);
        }
        Ok(report.finish())
    }

    /// Starts a backtest in the background; it is fetched (and cancelled) by its id.
    pub async fn start_backtest(&self, who: &Principal, spec: NewBacktest) -> Result<Backtest> {
        if spec.targets.is_empty() || spec.targets.len() > MAX_TARGETS {
            return Err(Error::validation(format!("targets: name 1 to {MAX_TARGETS} agents or cards")));
        }
        let sources = [spec.template.is_some(), spec.version_id.is_some(), spec.policy.is_some()];
        if sources.iter().filter(|s| **s).count() > 1 {
            return Err(Error::validation("give the draft once: policy, template or version_id"));
        }
        let to = spec.to.unwrap_or_else(store::now);
        let from = spec.from.unwrap_or_else(|| to - jiff::SignedDuration::from_millis(DEFAULT_RANGE_MS));
        if from >= to {
            return Err(Error::validation("from must be before to"));
        }
        let mut owners = Vec::with_capacity(spec.targets.len());
        for target in &spec.targets {
            let owner = self.owner(who, target, Permission::Manage).await?;
            if owners.contains(&owner) {
                return Err(Error::validation(format!("targets: {target} is named twice")));
            }
            owners.push(owner);
        }
        let parts = self.parts(&spec, owners, from.as_millisecond(), to.as_millisecond()).await?;
        let id = BacktestId::generate().to_string();
        let cancel = self.backtests.reserve(&id).ok_or_else(|| {
            Error::coded(
                ErrorCode::TooManyBacktests,
                format!("{MAX_RUNNING} backtests already run on this node; wait for one, or cancel one"),
            )
        })?;
        let row = BacktestRow {
            id,
            spec: serde_json::to_string(&NewBacktest { from: Some(from), to: Some(to), ..spec })
                .map_err(|e| Error::Internal(e.to_string()))?,
            status: BacktestStatus::Running,
            replayed: 0,
            total: 0,
            result: None,
            error: None,
            created_by: Some(who.key_id.to_string()),
            created_at: store::now().as_millisecond(),
            finished_at: None,
        };
        let stored = row.clone();
        if let Err(e) = self.db.write(move |conn| store::backtests::insert(conn, &stored)).await {
            self.backtests.release(&row.id);
            return Err(e);
        }
        self.run_in_background(row.id.clone(), parts, cancel);
        tracing::info!(backtest = %row.id, actor = %who.key_id, "backtest started");
        Backtest::of(row, false)
    }

    /// Each agent's drafts for the owners named, from the spec's draft.
    async fn parts(&self, spec: &NewBacktest, owners: Vec<Owner>, from_ms: i64, to_ms: i64) -> Result<Vec<Part>> {
        let mut parts: Vec<Part> = Vec::new();
        for owner in owners {
            let document = self.draft_document(spec, &owner).await?;
            let policy = match document {
                None => None,
                Some(doc) => Some(self.owned_policy(&owner, doc, self.currency_of(&owner).await?)?),
            };
            let at = match parts.iter().position(|p| &p.agent == owner.agent()) {
                Some(at) => at,
                None => {
                    let drafts = Drafts { from_ms, to_ms, ..Drafts::default() };
                    parts.push(Part { agent: owner.agent().clone(), drafts });
                    parts.len() - 1
                }
            };
            let drafts = &mut parts[at].drafts;
            match (&owner, policy) {
                (_, None) => {}
                (Owner::Agent(_), Some(p)) => drafts.agent = Some(p),
                (Owner::Card(_, card), Some(p)) => drop(drafts.cards.insert(card.to_string(), p)),
            }
        }
        Ok(parts)
    }

    /// The draft document for one owner; None to replay the recorded rules.
    async fn draft_document(&self, spec: &NewBacktest, owner: &Owner) -> Result<Option<Value>> {
        if let Some(name) = &spec.template {
            let template = self.catalog.templates.iter().find(|t| &t.name == name);
            let template =
                template.ok_or_else(|| Error::validation(format!("template: no template named {name:?}")))?;
            return Ok(Some(to_value(&template.policy)));
        }
        if let Some(id) = &spec.version_id {
            let key = id.clone();
            let row = self.db.read(move |conn| store::policies::find(conn, &key)).await?;
            let row = row.ok_or_else(|| Error::not_found("policy version", id))?;
            let value = serde_json::from_str(&row.policy).map_err(|_| store::corrupt("policy", id))?;
            return Ok(Some(value));
        }
        match &spec.policy {
            Some(Value::String(word)) if word == "recorded" => Ok(None),
            None => self.saved_draft(owner).await.map(Some),
            Some(Value::String(word)) if word == "draft" => self.saved_draft(owner).await.map(Some),
            Some(doc @ Value::Object(_)) => Ok(Some(doc.clone())),
            Some(_) => Err(Error::validation(r#"policy: a policy document, "draft" or "recorded""#)),
        }
    }

    async fn saved_draft(&self, owner: &Owner) -> Result<Value> {
        let key = owner.clone();
        let row = self.db.read(move |conn| store::policies::draft(conn, key.agent(), key.card())).await?;
        let row =
            row.ok_or_else(|| Error::validation(format!("{} has no draft: save one, or give the policy", owner.id())))?;
        serde_json::from_str(&row.policy).map_err(|_| store::corrupt("policy", &row.id))
    }

    fn run_in_background(&self, id: String, parts: Vec<Part>, cancel: Arc<AtomicBool>) {
        let (db, catalog, rates, fx) = (self.db.clone(), self.catalog, self.ledger.rates(), self.ledger.fx());
        let running = self.backtests.clone();
        let handle = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            backtest::yield_cpu();
            let context = Context { catalog, rates: &rates, fx };
            let mut last = std::time::Instant::now();
            let mut progress = |replayed: i64, total: i64| {
                // At the start, at the end, and once a second between.
                if last.elapsed() >= std::time::Duration::from_secs(1) || replayed == 0 || replayed == total {
                    last = std::time::Instant::now();
                    let key = id.clone();
                    let saved =
                        handle.block_on(db.write(move |conn| store::backtests::progress(conn, &key, replayed, total)));
                    if let Err(e) = saved {
                        tracing::warn!(backtest = %id, error = %e, "could not save a backtest's progress");
                    }
                }
            };
            let outcome = backtest::run(&db, context, parts, &cancel, &mut progress);
            let (status, result, error) = match outcome {
                Ok(Some(report)) => (BacktestStatus::Done, serde_json::to_string(&report).ok(), None),
                Ok(None) => (BacktestStatus::Cancelled, None, None),
                Err(e) => (BacktestStatus::Failed, None, Some(e.to_string())),
            };
            let key = id.clone();
            let finish = move |conn: &mut DbConnection| {
                store::backtests::finish(
                    conn,
                    &key,
                    status,
                    result.as_deref(),
                    error.as_deref(),
                    store::now().as_millisecond(),
                )
            };
            if let Err(e) = handle.block_on(db.write(finish)) {
                tracing::warn!(backtest = %id, error = %e, "could not save a backtest's result");
            }
            running.release(&id);
            tracing::info!(backtest = %id, status = status.as_str(), "backtest ended");
        });
    }

    pub async fn get_backtest(&self, who: &Principal, id: &str) -> Result<Backtest> {
        who.check(Permission::Read, None)?;
        let key = id.to_owned();
        let row = self.db.read(move |conn| store::backtests::find(conn, &key)).await?;
        Backtest::of(row.ok_or_else(|| Error::not_found("backtest", id))?, true)
    }

    pub async fn list_backtests(&self, who: &Principal, page: PageQuery) -> Result<Page<Backtest>> {
        who.check(Permission::Read, None)?;
        let page = self.page(page, |b: &BacktestRow| b.id.clone(), store::backtests::list).await?;
        let data = page.data.into_iter().map(|row| Backtest::of(row, false)).collect::<Result<_>>()?;
        Ok(Page { data, next_cursor: page.next_cursor })
    }

    /// Stops a running backtest between two pages of history; one that has ended stays as it is.
    pub async fn cancel_backtest(&self, who: &Principal, id: &str) -> Result<Backtest> {
        who.check(Permission::Manage, None)?;
        if let Some(cancel) = self.backtests.0.lock().unwrap_or_else(|e| e.into_inner()).get(id) {
            cancel.store(true, Ordering::Relaxed);
        }
        let key = id.to_owned();
        let now = store::now().as_millisecond();
        // Another node's backtest (or one whose process stopped) ends here; its runner finds it ended.
        self.db
            .write(move |conn| store::backtests::finish(conn, &key, BacktestStatus::Cancelled, None, None, now))
            .await?;
        self.get_backtest(who, id).await
    }

    async fn currency_of(&self, owner: &Owner) -> Result<Currency> {
        let owner = owner.clone();
        self.db
            .read(move |conn| match &owner {
                Owner::Agent(agent) => Ok(load_agent(conn, agent)?.currency),
                Owner::Card(_, card) => {
                    Ok(store::cards::find(conn, card)?.ok_or_else(|| Error::not_found("card", card.as_str()))?.currency)
                }
            })
            .await
    }

    /// A policy document as the owner's: a card's is checked as a card policy.
    fn owned_policy(&self, owner: &Owner, doc: Value, currency: Currency) -> Result<Policy> {
        match owner {
            Owner::Agent(_) => parse_policy(self.catalog, doc, Some(currency)),
            Owner::Card(..) => super::cards::card_policy(self.catalog, doc, currency),
        }
    }

    async fn bump(&self, agent: &AgentId) -> Result<()> {
        let key = agent.clone();
        self.db.write(move |conn| store::agents::bump_config(conn, &key)).await?;
        self.snapshots().invalidate_agent(agent);
        Ok(())
    }
}

/// The owner's live version.
fn live_policy(conn: &mut DbConnection, owner: &Owner) -> Result<VersionRow> {
    store::policies::live(conn, owner.agent(), owner.card())?
        .ok_or_else(|| Error::Internal(format!("{} has no live policy version", owner.agent())))
}

fn to_value(policy: &Policy) -> Value {
    serde_json::to_value(policy).unwrap_or(Value::Null)
}

/// Each leaf value `draft` changes in `live`. Lists of objects with an `id` (limits) are matched
/// by id; other lists are compared whole.
pub fn diff(live: &Value, draft: &Value) -> Vec<Difference> {
    let mut out = Vec::new();
    walk("", Some(live), Some(draft), &mut out);
    out
}

fn walk(path: &str, live: Option<&Value>, draft: Option<&Value>, out: &mut Vec<Difference>) {
    let at = |key: &str| if path.is_empty() { key.to_owned() } else { format!("{path}.{key}") };
    match (live, draft) {
        (Some(Value::Object(a)), Some(Value::Object(b))) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            for key in keys {
                walk(&at(key), a.get(key), b.get(key), out);
            }
        }
        (Some(Value::Array(a)), Some(Value::Array(b))) if by_id(a) && by_id(b) => {
            let id = |v: &Value| v.get("id").and_then(Value::as_str).map(str::to_owned);
            let mut ids: Vec<String> = a.iter().chain(b.iter()).filter_map(id).collect();
            ids.dedup();
            let mut seen = std::collections::HashSet::new();
            for key in ids.into_iter().filter(|k| seen.insert(k.clone())) {
                let find = |list: &'_ Vec<Value>| list.iter().find(|v| id(v).as_deref() == Some(key.as_str())).cloned();
                walk(&at(&key), find(a).as_ref(), find(b).as_ref(), out);
            }
        }
        (a, b) if a == b => {}
        (a, b) => out.push(Difference { path: path.to_owned(), live: a.cloned(), draft: b.cloned() }),
    }
}

fn by_id(list: &[Value]) -> bool {
    !list.is_empty() && list.iter().all(|v| v.get("id").is_some_and(Value::is_string))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_diff_names_each_changed_value_and_limits_by_id() {
        let live = json!({"per_transaction": 5000, "limits": [
            {"id": "daily", "scope": "agent", "window": {"rolling": "24h"}, "amount": 10000},
            {"id": "hourly", "scope": "card", "window": {"rolling": "1h"}, "count": 10}],
            "mcc": {"allow": ["5734"]}});
        let draft = json!({"limits": [
            {"id": "hourly", "scope": "card", "window": {"rolling": "1h"}, "count": 5},
            {"id": "daily", "scope": "agent", "window": {"rolling": "24h"}, "amount": 10000}],
            "mcc": {"allow": ["5734", "7372"]}, "countries": {"block": ["RU"]}});
        let found = diff(&live, &draft);
        let paths: Vec<&str> = found.iter().map(|d| d.path.as_str()).collect();
        assert_eq!(paths, ["countries", "limits.hourly.count", "mcc.allow", "per_transaction"]);
        assert_eq!(found[1].live, Some(json!(10)));
        assert_eq!(found[1].draft, Some(json!(5)));
        assert_eq!(found[3].draft, None, "removed");
        assert!(diff(&live, &live).is_empty());
    }
}
