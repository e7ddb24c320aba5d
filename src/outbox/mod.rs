//! Events out: endpoints people subscribe, and the outbox that delivers to them.
//!
//! The events come from each agent's audit chain (a decision, a card frozen, an approval decided),
//! read behind a cursor per agent that advances in the same transaction that queues the
//! deliveries: the decision path writes nothing for them, and whatever was committed is delivered,
//! across restarts and kill -9, at least once, under the same event id. Each delivery is signed
//! (Standard Webhooks), sent off every request path, and retried with backoff until a 2xx.

mod events;
mod slack;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::Deserialize;
use utoipa::ToSchema;

use crate::crypto::Secret;
use crate::domain::access::{Permission, Principal};
use crate::domain::ids::{DeliveryId, EndpointId, KeyId};
use crate::domain::webhook::{DeliveryStatus, Endpoint, EndpointFormat, EventType};
use crate::error::{Error, ErrorCode, Result};
use crate::rails::card::signature::StandardWebhooks;
use crate::rails::usdc::destination::{Destinations, refusal_in};
use crate::store::webhooks::{self as rows, DeliveryRow, Due, EndpointRow};
use crate::store::{self, Db, DbConnection, from_millis};
pub use events::Out;

/// Links read from one agent's chain per transaction.
const PAGE: i64 = 500;
/// Agents whose chains are read per transaction.
const AGENTS: i64 = 100;
/// Deliveries attempted per pass, side by side.
const BATCH: i64 = 128;
/// Attempts before a delivery is given up (about a day at the default backoff).
const MAX_ATTEMPTS: i32 = 15;

pub struct OutboxSettings {
    /// Where endpoints may be: public addresses, and the private ones an operator allowed.
    pub destinations: Destinations,
    /// The pause after the first failed attempt; doubled after each, up to an hour.
    pub retry_base: Duration,
    /// The longest one attempt waits for the endpoint.
    pub timeout: Duration,
}

/// What one pass of the queue or the sender did, and whether it left work a next pass can do now.
#[derive(Default)]
struct Pass {
    done: usize,
    more: bool,
}

#[derive(Clone)]
pub struct Outbox {
    db: Db,
    destinations: Arc<Destinations>,
    retry_base: Duration,
    /// How long an attempt holds its delivery: longer than the attempt may take, so no other
    /// sender takes it meanwhile; after a crash, as long as it waits to be attempted again.
    lease: Duration,
    http: reqwest::Client,
}

/// `POST /v1/webhook-endpoints`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewEndpoint {
    /// `https://…` (or `http://`) where deliveries are POSTed; not an internal address unless
    /// `webhook_private_destinations` allows it.
    pub url: String,
    /// The event types to receive (see docs/webhooks.md).
    pub events: Vec<String>,
    pub description: Option<String>,
    /// `standard` (the default): signed JSON. `slack`: a Slack incoming webhook, for alerts only.
    #[serde(default)]
    pub format: Option<EndpointFormat>,
}

impl Outbox {
    pub fn new(db: Db, settings: OutboxSettings) -> anyhow::Result<Outbox> {
        // Like the fetch proxy's: a name that later resolves to an internal address is refused too.
        let http =
            settings.destinations.client(settings.timeout).map_err(|e| anyhow::anyhow!("webhook HTTP client: {e}"))?;
        Ok(Outbox {
            db,
            destinations: Arc::new(settings.destinations),
            retry_base: settings.retry_base,
            lease: settings.timeout + Duration::from_secs(5),
            http,
        })
    }

    pub async fn create(&self, who: &Principal, input: NewEndpoint) -> Result<Endpoint> {
        who.check(Permission::Manage, None)?;
        if input.url.len() > 2_048 {
            return Err(Error::validation("url must be at most 2048 characters"));
        }
        let url = reqwest::Url::parse(input.url.trim())
            .map_err(|_| Error::validation(format!("url {:?} is not a URL", input.url)))?;
        if !matches!(url.scheme(), "https" | "http") || url.host_str().is_none() {
            return Err(Error::validation("url must be an http or https URL with a host"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(Error::validation("url must not carry credentials: verify the signature instead"));
        }
        self.destinations.check_url(&url).map_err(|r| Error::coded(ErrorCode::DestinationForbidden, r.to_string()))?;
        let events = event_types(&input.events)?;
        let format = input.format.unwrap_or(EndpointFormat::Standard);
        if let (EndpointFormat::Slack, Some(other)) = (format, events.iter().find(|e| !e.is_alert())) {
            return Err(Error::validation(format!(
                "events: a slack endpoint takes the alerts only (limit.threshold_crossed, balance.low, spend.anomaly), not {other}"
            )));
        }
        if input.description.as_deref().is_some_and(|d| d.chars().count() > 500) {
            return Err(Error::validation("description must be at most 500 characters"));
        }
        let secret = format!("whsec_{}", BASE64.encode(rand::random::<[u8; 32]>()));
        let now = store::now();
        let row = EndpointRow {
            id: EndpointId::generate().to_string(),
            url: url.to_string(),
            events: events.iter().map(|e| e.as_str()).collect::<Vec<_>>().join(","),
            secret: secret.clone(),
            description: input.description,
            created_by: Some(who.key_id.to_string()),
            created_at: now.as_millisecond(),
            deleted_at: None,
            format,
        };
        let stored = row.clone();
        self.db
            .write(move |conn| {
                let first = rows::endpoints(conn)?.is_empty();
                rows::insert_endpoint(conn, &stored)?;
                if first {
                    rows::skip_to_heads(conn)?;
                }
                Ok(())
            })
            .await?;
        // The host only: a URL's path or query may carry a token.
        let host = url.host_str().unwrap_or_default();
        tracing::info!(endpoint = %row.id, host, actor = %who.key_id, "webhook endpoint created");
        // A Slack endpoint's URL is its credential; it signs nothing.
        let secret = (format == EndpointFormat::Standard).then_some(secret);
        Ok(Endpoint { secret, ..view(row)? })
    }

    pub async fn list(&self, who: &Principal) -> Result<Vec<Endpoint>> {
        who.check(Permission::Read, None)?;
        self.db.read(rows::endpoints).await?.into_iter().map(view).collect()
    }

    pub async fn delete(&self, who: &Principal, id: &str) -> Result<()> {
        who.check(Permission::Manage, None)?;
        let (key, now) = (id.to_owned(), store::now().as_millisecond());
        if !self.db.write(move |conn| rows::delete_endpoint(conn, &key, now)).await? {
            return Err(Error::not_found("webhook endpoint", id));
        }
        tracing::info!(endpoint = %id, actor = %who.key_id, "webhook endpoint deleted");
        Ok(())
    }

    /// An endpoint's latest deliveries, newest first.
    pub async fn deliveries(&self, who: &Principal, id: &str, limit: i64) -> Result<Vec<serde_json::Value>> {
        who.check(Permission::Read, None)?;
        let key = id.to_owned();
        let found = self.db.read(move |conn| rows::deliveries(conn, &key, limit)).await?;
        found.ok_or_else(|| Error::not_found("webhook endpoint", id))?.into_iter().map(delivery_view).collect()
    }

    /// Queues what the chains hold past their cursors, then attempts what is due: again at once
    /// while either has more than a pass takes, else after `every`.
    pub async fn run_forever(self, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            loop {
                let queued = self.queue().await.unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "webhook outbox could not queue events; trying again");
                    Pass::default()
                });
                let sent = self.send().await.unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "webhook outbox could not send; trying again");
                    Pass::default()
                });
                if queued.done > 0 || sent.done > 0 {
                    self.gauge_backlog(queued.more).await;
                }
                if !queued.more && !sent.more {
                    break;
                }
            }
        }
    }

    /// `spendgate_webhook_deliveries_pending` and `spendgate_webhook_chains_behind`.
    async fn gauge_backlog(&self, behind: bool) {
        if let Ok(pending) = self.db.read(rows::pending_count).await {
            metrics::gauge!("spendgate_webhook_deliveries_pending").set(pending as f64);
        }
        let behind =
            if behind { self.db.read(|conn| rows::behind(conn, AGENTS)).await.map_or(0, |b| b.len()) } else { 0 };
        metrics::gauge!("spendgate_webhook_chains_behind").set(behind as f64);
    }

    /// For each agent whose chain has grown: the events of its new links, one delivery per
    /// endpoint subscribed to it (and made before it). The links are read on a reader; one
    /// transaction then moves each cursor past them and queues their deliveries, so the writer
    /// (on SQLite, the ledger's too) is held only for the writing.
    async fn queue(&self) -> Result<Pass> {
        if self.db.read(rows::endpoints).await?.is_empty() {
            return Ok(Pass::default());
        }
        let pages = self
            .db
            .read(|conn| {
                let behind = rows::behind(conn, AGENTS)?;
                let all_read = behind.len() < AGENTS as usize;
                let pages = behind
                    .into_iter()
                    .map(|(agent, cursor)| Ok((rows::linked_after(conn, &agent, cursor, PAGE)?, agent, cursor)))
                    .collect::<Result<Vec<_>>>()?;
                Ok((pages, all_read))
            })
            .await?;
        let (pages, all_read) = pages;
        if pages.is_empty() {
            return Ok(Pass::default());
        }
        self.db
            .write(move |conn| {
                let endpoints = rows::endpoints(conn)?;
                let now_ms = store::now().as_millisecond();
                let mut pass = Pass { done: 0, more: !all_read };
                // In id order, as `behind` gives them: two nodes move cursors in the same order.
                for (page, agent, cursor) in pages {
                    let Some(last) = page.last().map(|(n, _)| *n) else { continue };
                    if !rows::advance_cursor(conn, &agent, cursor, last)? {
                        continue;
                    }
                    pass.more |= page.len() as i64 == PAGE;
                    let deliveries: Vec<DeliveryRow> = page
                        .iter()
                        .flat_map(|(_, linked)| events::of(linked))
                        .flat_map(|out| fan_out(&out, &endpoints, now_ms))
                        .collect();
                    rows::enqueue(conn, &deliveries)?;
                    pass.done += deliveries.len();
                }
                Ok(pass)
            })
            .await
    }

    /// One attempt at each due delivery, all at once, each within the timeout.
    async fn send(&self) -> Result<Pass> {
        let now_ms = store::now().as_millisecond();
        let due = self.db.read(move |conn| rows::due(conn, now_ms, BATCH)).await?;
        if due.is_empty() {
            return Ok(Pass::default());
        }
        let more = due.len() as i64 == BATCH;
        // Nodes sharing a database lease each delivery for its attempt. SQLite has one process,
        // whose one sender is this loop: it leases nothing, and after a crash whatever was due is due.
        let due = if self.db.is_sqlite() {
            due
        } else {
            let lease = now_ms + self.lease.as_millis() as i64;
            self.db
                .write(move |conn| {
                    let mut claimed = Vec::new();
                    for d in due {
                        if rows::claim(conn, &d.delivery, lease)? {
                            claimed.push(d);
                        }
                    }
                    Ok(claimed)
                })
                .await?
        };
        let mut attempts = tokio::task::JoinSet::new();
        for d in due {
            let this = self.clone();
            attempts.spawn(async move {
                let outcome = this.attempt(&d).await;
                (d.delivery, outcome)
            });
        }
        let mut outcomes = Vec::new();
        while let Some(done) = attempts.join_next().await {
            outcomes.extend(done.ok());
        }
        let done = outcomes.len();
        let retry_base = self.retry_base;
        self.db
            .write(move |conn| {
                let now_ms = store::now().as_millisecond();
                let mut delivered = Vec::new();
                for (d, outcome) in outcomes {
                    let why = match outcome {
                        Ok(()) => {
                            delivered.push(d.id);
                            continue;
                        }
                        Err(why) => why,
                    };
                    let attempts = d.attempts + 1;
                    let (status, next) = match attempts >= MAX_ATTEMPTS {
                        true => (DeliveryStatus::Failed, now_ms),
                        false => (DeliveryStatus::Pending, now_ms + backoff(retry_base, attempts)),
                    };
                    rows::attempted(conn, &d.id, attempts, status, next, &why)?;
                    metrics::counter!("spendgate_webhook_attempts_total", "outcome" => status.as_str()).increment(1);
                }
                rows::delivered(conn, &delivered, now_ms)?;
                metrics::counter!("spendgate_webhook_attempts_total", "outcome" => "delivered")
                    .increment(delivered.len() as u64);
                Ok(())
            })
            .await?;
        Ok(Pass { done, more })
    }

    /// POSTs the delivery's payload, signed (or, to Slack, its message); Ok on a 2xx.
    async fn attempt(&self, due: &Due) -> std::result::Result<(), String> {
        let d = &due.delivery;
        let request = self.http.post(&due.url).header("content-type", "application/json");
        let request = match due.format {
            EndpointFormat::Standard => {
                let signer = StandardWebhooks::new(Some(&Secret::new(due.secret.clone())), None)
                    .map_err(|e| format!("the endpoint's secret {e}"))?
                    .ok_or("the endpoint has no secret")?;
                let t = jiff::Timestamp::now().as_second();
                let signature = signer.sign(&d.event_id, t, d.payload.as_bytes());
                request
                    .header("webhook-id", &d.event_id)
                    .header("webhook-timestamp", t.to_string())
                    .header("webhook-signature", signature)
                    .body(d.payload.clone())
            }
            EndpointFormat::Slack => request.body(slack::message(&d.payload)?.to_string()),
        };
        let sent = request.send().await;
        match sent {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(format!("the endpoint answered {}", r.status().as_u16())),
            Err(e) => Err(match refusal_in(&e) {
                Some(refused) => refused.to_string(),
                None if e.is_timeout() => "no answer within the timeout".to_owned(),
                None => "the endpoint could not be reached".to_owned(),
            }),
        }
    }
}

/// Queues an event that is not a record of an agent's chain (an audit checkpoint), in the caller's
/// transaction, for every endpoint subscribed to it.
pub fn queue_event(
    conn: &mut DbConnection,
    id: String,
    event_type: EventType,
    at_ms: i64,
    data: serde_json::Value,
) -> Result<()> {
    let endpoints = rows::endpoints(conn)?;
    let deliveries = fan_out(&events::out(id, event_type, at_ms, data), &endpoints, store::now().as_millisecond());
    rows::enqueue(conn, &deliveries)
}

/// The pause before attempt `attempts + 1`: the base, doubled after each failure, at most an hour.
fn backoff(base: Duration, attempts: i32) -> i64 {
    let doubled = base.as_millis() as i64 * (1_i64 << (attempts - 1).clamp(0, 20));
    doubled.min(3_600_000)
}

/// One delivery of `out` per endpoint that subscribed to its type and existed when it happened.
fn fan_out(out: &Out, endpoints: &[EndpointRow], now_ms: i64) -> Vec<DeliveryRow> {
    endpoints
        .iter()
        .filter(|e| e.created_at <= out.at_ms && e.events.split(',').any(|t| t == out.event_type.as_str()))
        .map(|e| DeliveryRow {
            id: DeliveryId::generate().to_string(),
            endpoint_id: e.id.clone(),
            event_id: out.id.clone(),
            event_type: out.event_type,
            payload: out.payload.clone(),
            status: DeliveryStatus::Pending,
            attempts: 0,
            next_attempt_at: now_ms,
            last_error: None,
            created_at: now_ms,
            delivered_at: None,
        })
        .collect()
}

/// The event types named, each known, at least one.
fn event_types(names: &[String]) -> Result<Vec<EventType>> {
    if names.is_empty() {
        return Err(Error::validation("events must name at least one event type"));
    }
    let mut types = Vec::new();
    for name in names {
        let t = EventType::parse(name).ok_or_else(|| {
            let known: Vec<&str> = EventType::ALL.iter().map(|t| t.as_str()).collect();
            Error::validation(format!("unknown event type {name:?} (one of {})", known.join(", ")))
        })?;
        if !types.contains(&t) {
            types.push(t);
        }
    }
    Ok(types)
}

fn view(row: EndpointRow) -> Result<Endpoint> {
    let events = row.events.split(',').map(|t| EventType::parse(t).ok_or_else(|| store::corrupt("event type", t)));
    let url = match row.format {
        EndpointFormat::Standard => row.url,
        EndpointFormat::Slack => reqwest::Url::parse(&row.url)
            .map(|u| format!("{}://{}/…", u.scheme(), u.host_str().unwrap_or_default()))
            .map_err(|_| store::corrupt("endpoint url", "a slack URL that does not parse"))?,
    };
    Ok(Endpoint {
        id: EndpointId::from_stored(row.id),
        url,
        format: row.format,
        events: events.collect::<Result<_>>()?,
        description: row.description,
        created_by: row.created_by.map(KeyId::from_stored),
        created_at: from_millis(row.created_at)?,
        secret: None,
    })
}

fn delivery_view(d: DeliveryRow) -> Result<serde_json::Value> {
    let at = |ms: i64| from_millis(ms).map(|t| t.to_string());
    Ok(serde_json::json!({
        "id": d.id,
        "event_id": d.event_id,
        "type": d.event_type,
        "status": d.status,
        "attempts": d.attempts,
        "next_attempt_at": at(d.next_attempt_at)?,
        "last_error": d.last_error,
        "created_at": at(d.created_at)?,
        "delivered_at": d.delivered_at.map(at).transpose()?,
    }))
}
