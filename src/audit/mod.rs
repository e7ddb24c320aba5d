//! The tamper-evident audit trail: each agent's records form a hash chain (`chain`, linked as they
//! are written by the ledger writer and `store::events::record`); a verification walks every chain
//! against the records and names each chain's first broken link; checkpoints (`checkpoint`) record
//! every chain's head, on a schedule and on request, so that a chain cut short is caught too.

pub mod chain;
pub mod checkpoint;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::domain::access::{Permission, Principal};
use crate::domain::audit::{Break, Problem, RecordKind};
use crate::domain::ids::{AgentId, CheckpointId};
use crate::domain::webhook::EventType;
use crate::error::{Error, Result};
use crate::outbox;
use crate::store::chain::{self as rows, CheckpointRow};
use crate::store::{self, Db, DbConnection};
use chain::{StoredLink, Walk};
use checkpoint::{ChainHead, Checkpoint, CheckpointSigner};

/// Links read per query while walking a chain.
const PAGE: i64 = 1_000;

#[derive(Clone)]
pub struct Audit {
    db: Db,
    signer: Option<Arc<CheckpointSigner>>,
}

/// What a verification found.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Verification {
    /// Every chain is whole, ends where its agent's row says, and passes through the checkpoint.
    pub verified: bool,
    /// Chains walked: each agent's and each treasury's.
    pub agents: u64,
    /// Links walked, and records checked against the last link that wrote them.
    pub links: u64,
    pub records: u64,
    /// The checkpoint the chains were held to: the one given, else the latest the server made.
    pub checkpoint: Option<String>,
    /// Each broken chain's first broken link, by agent id.
    pub broken: Vec<Break>,
}

/// The body of a verification: optionally, a checkpoint kept elsewhere.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    pub checkpoint: Option<Checkpoint>,
}

impl Audit {
    pub fn new(db: Db, signer: Option<CheckpointSigner>) -> Audit {
        Audit { db, signer: signer.map(Arc::new) }
    }

    /// Links the records of agents whose chain has not begun (written before the chain existed),
    /// one agent per transaction. Runs once at start-up, before the ledger writes.
    pub async fn adopt(&self) -> Result<()> {
        let treasuries = self.db.read(store::treasury::unchained).await?;
        for currency in treasuries {
            let linked = self.db.write(move |conn| store::treasury::adopt(conn, &currency)).await?;
            if linked > 0 {
                tracing::info!(%currency, records = linked, "treasury records from before its chain linked into it");
            }
        }
        let agents = self.db.read(rows::unchained_agents).await?;
        for agent in agents {
            let id = agent.clone();
            let linked = self.db.write(move |conn| rows::adopt(conn, &id)).await?;
            if linked > 0 {
                tracing::info!(agent = %agent, records = linked, "records from before the audit chain linked into it");
            }
        }
        Ok(())
    }

    /// Walks every agent's chain; held to `given`, or else to the latest stored checkpoint.
    pub async fn verify(&self, principal: &Principal, given: Option<Checkpoint>) -> Result<Verification> {
        principal.check(Permission::Audit, None)?;
        if let Some(cp) = &given {
            cp.check().map_err(|e| Error::validation(e.to_string()))?;
        }
        let (against, altered) = match given {
            Some(cp) => (Some(cp), None),
            None => match self.db.read(|conn| rows::checkpoints(conn, 1)).await?.into_iter().next().map(stored) {
                None => (None, None),
                Some(Ok(cp)) => (Some(cp), None),
                Some(Err(b)) => (None, Some(b)),
            },
        };
        let held: HashMap<String, ChainHead> =
            against.iter().flat_map(|cp| cp.heads.iter().map(|h| (h.agent_id.clone(), h.clone()))).collect();
        let heads = self.db.read(rows::heads).await?;
        let mut v = Verification {
            verified: true,
            agents: heads.len() as u64,
            links: 0,
            records: 0,
            checkpoint: against.as_ref().map(|cp| cp.id.clone()),
            broken: altered.into_iter().collect(),
        };
        for (agent, ..) in &heads {
            let (id, hold) = (agent.clone(), held.get(agent).cloned());
            let (walk, broken) =
                self.db.read(move |conn| store::snapshot(conn, |conn| walk_agent(conn, &id, hold))).await?;
            v.links += walk.links() as u64;
            v.records += walk.current;
            v.broken.extend(broken);
        }
        // An agent a checkpoint names must still be there.
        for head in held.values().filter(|h| !heads.iter().any(|(a, ..)| *a == h.agent_id)) {
            v.broken.push(Walk::new(&head.agent_id).broken(
                head.length,
                Problem::CheckpointMismatch,
                None,
                "the checkpoint holds this agent's chain, but the agent is gone".into(),
            ));
        }
        v.broken.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
        v.verified = v.broken.is_empty();
        if !v.verified {
            tracing::error!(broken = v.broken.len(), first = ?v.broken.first(), "audit chain verification failed");
        }
        Ok(v)
    }

    /// Records every chain's head now.
    pub async fn make_checkpoint(&self, principal: &Principal) -> Result<Checkpoint> {
        principal.check(Permission::Audit, None)?;
        self.checkpoint(true).await?.ok_or_else(|| Error::Internal("a forced checkpoint was not made".into()))
    }

    /// The stored checkpoints, newest first.
    pub async fn checkpoints(&self, principal: &Principal, limit: i64) -> Result<Vec<Checkpoint>> {
        principal.check(Permission::Read, None)?;
        let limit = limit.clamp(1, 1_000);
        self.db.read(move |conn| rows::checkpoints(conn, limit)).await?.into_iter().map(from_row).collect()
    }

    /// A checkpoint every `every` (the first one `every` after start), when any chain has grown
    /// since the last one.
    pub async fn checkpoint_forever(self, every: Duration) {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = self.checkpoint(false).await {
                tracing::warn!(error = %e, "audit checkpoint failed; trying again at the next interval");
            }
        }
    }

    /// A new checkpoint of every head, unless `force` is false and nothing changed since the last.
    async fn checkpoint(&self, force: bool) -> Result<Option<Checkpoint>> {
        let signer = self.signer.clone();
        let made = self
            .db
            .write(move |conn| {
                let heads: Vec<ChainHead> = rows::heads(conn)?
                    .into_iter()
                    .map(|(agent_id, length, hash)| {
                        let hash = rows::head_of(&agent_id, length, hash.as_deref())?.hash;
                        Ok(ChainHead { agent_id, length, hash: hex::encode(hash) })
                    })
                    .collect::<Result<_>>()?;
                // A last checkpoint that no longer reads (written to behind our back) is no reason to stop.
                let last = rows::checkpoints(conn, 1)?.into_iter().next().and_then(|row| from_row(row).ok());
                if !force && last.is_some_and(|cp| cp.heads == heads) {
                    return Ok(None);
                }
                let now = store::now();
                let cp =
                    Checkpoint::new(CheckpointId::generate().to_string(), now.to_string(), heads, signer.as_deref());
                rows::insert_checkpoint(conn, &to_row(&cp, now.as_millisecond()))?;
                let data = serde_json::to_value(&cp).map_err(|e| Error::Internal(e.to_string()))?;
                outbox::queue_event(conn, cp.id.clone(), EventType::AuditCheckpoint, now.as_millisecond(), data)?;
                Ok(Some(cp))
            })
            .await?;
        if let Some(cp) = &made {
            tracing::info!(
                checkpoint = %cp.id, digest = %cp.digest, agents = cp.heads.len(), signer = cp.signer.as_deref(),
                "audit checkpoint"
            );
        }
        Ok(made)
    }
}

/// One agent's chain, in one snapshot: every link in order with the records they name, the end
/// the agent's row names, the checkpoint's head, every record accounted for, and the balance on
/// the agent's row what those records add up to.
fn walk_agent(conn: &mut DbConnection, agent: &str, hold: Option<ChainHead>) -> Result<(Walk, Option<Break>)> {
    let mut walk = Walk::new(agent);
    let (length, hash) = rows::head(conn, agent)?;
    let mut at_checkpoint: Option<StoredLink> = None;
    let broken = (|| {
        loop {
            let page = rows::links(conn, agent, walk.links(), PAGE)?;
            if page.is_empty() {
                break;
            }
            let mut records = HashMap::new();
            for kind in RecordKind::ALL {
                let ids: Vec<&str> = page.iter().filter(|l| l.kind == *kind).map(|l| l.record_id.as_str()).collect();
                if !ids.is_empty() {
                    records.insert(*kind, rows::records(conn, *kind, &ids)?);
                }
            }
            for link in &page {
                if hold.as_ref().is_some_and(|h| h.length == link.n) {
                    at_checkpoint = Some(link.clone());
                }
                let record = records.get(&link.kind).and_then(|r| r.get(&link.record_id));
                if let Err(b) = walk.step(link, record) {
                    return Ok(Some(b));
                }
            }
        }
        if let Err(b) = walk.finish(length, hash.as_deref()) {
            return Ok(Some(b));
        }
        if let Some(h) = &hold
            && h.length > 0
            && let Err(b) = walk.through(h.length, &h.hash, at_checkpoint.as_ref())
        {
            return Ok(Some(b));
        }
        if rows::count_records(conn, agent)? != walk.current as i64 {
            return unlinked(conn, &walk, agent);
        }
        if let Some(currency) = rows::treasury_of(agent) {
            return Ok(treasury_balanced(conn, &walk, currency)?.err());
        }
        let (_, stored) = store::ledger::balance(conn, &AgentId::from_stored(agent.to_owned()))?
            .ok_or_else(|| Error::not_found("agent", agent))?;
        if let Err(b) = walk.balanced(&stored, &rows::sums(conn, agent)?) {
            return Ok(Some(b));
        }
        Ok::<_, Error>(None)
    })()?;
    Ok((walk, broken))
}

/// No money from nowhere: a treasury's row holds what its journal adds up to, and what it granted
/// agents net of what they returned is what the agents of its currency were funded with.
fn treasury_balanced(conn: &mut DbConnection, walk: &Walk, currency: &str) -> Result<std::result::Result<(), Break>> {
    let stored = store::treasury::find(conn, currency)?;
    let summed = store::treasury::sums(conn, currency)?;
    if stored != Some(summed) {
        let detail = format!("the treasury's row holds {stored:?}; its journal adds up to {summed:?}");
        return Ok(Err(walk.broken(walk.links(), Problem::BalanceMismatch, None, detail)));
    }
    let funded = store::treasury::agents_funded(conn, currency)?;
    if funded != summed.granted - summed.returned {
        let detail = format!(
            "the {currency} agents were funded with {funded}, but the treasury granted {} and got {} back",
            summed.granted, summed.returned
        );
        return Ok(Err(walk.broken(walk.links(), Problem::BalanceMismatch, None, detail)));
    }
    Ok(Ok(()))
}

/// The first record (by kind, then id) that the link at its `chain_n` does not name.
fn unlinked(conn: &mut DbConnection, walk: &Walk, agent: &str) -> Result<Option<Break>> {
    for kind in RecordKind::ALL {
        let mut after = String::new();
        loop {
            let page = rows::positions(conn, *kind, agent, &after, PAGE)?;
            let Some((last, _)) = page.last() else { break };
            after = last.clone();
            let ns: Vec<i64> = page.iter().map(|(_, n)| *n).collect();
            let links = rows::links_at(conn, agent, &ns)?;
            let linked = |id: &str, n: i64| links.iter().any(|l| l.n == n && l.kind == *kind && l.record_id == id);
            if let Some((id, n)) = page.iter().find(|(id, n)| !linked(id, *n)) {
                let link = StoredLink {
                    n: *n,
                    kind: *kind,
                    record_id: id.clone(),
                    content_hash: String::new(),
                    hash: String::new(),
                };
                let detail =
                    format!("no link names {kind} {id}: it was written behind spendgate's back, or its link removed");
                return Ok(Some(walk.broken(*n, Problem::RecordUnlinked, Some(&link), detail)));
            }
        }
    }
    Ok(None)
}

/// A stored checkpoint, checked: it is in the database too, so one that no longer checks is a break.
fn stored(row: CheckpointRow) -> std::result::Result<Checkpoint, Break> {
    let id = row.id.clone();
    let checked =
        from_row(row).map_err(|e| e.to_string()).and_then(|cp| cp.check().map(|()| cp).map_err(|e| e.to_string()));
    checked.map_err(|why| Break {
        agent_id: String::new(),
        n: 0,
        problem: Problem::CheckpointMismatch,
        record_kind: None,
        record_id: None,
        detail: format!("the latest stored checkpoint {id} was altered: {why}"),
    })
}

fn to_row(cp: &Checkpoint, created_ms: i64) -> CheckpointRow {
    CheckpointRow {
        id: cp.id.clone(),
        created_at: created_ms,
        heads: serde_json::to_string(&cp.heads).expect("heads serialize"),
        digest: cp.digest.clone(),
        signer: cp.signer.clone(),
        signature: cp.signature.clone(),
    }
}

fn from_row(row: CheckpointRow) -> Result<Checkpoint> {
    let heads = serde_json::from_str(&row.heads).map_err(|_| store::corrupt("checkpoint heads", &row.id))?;
    let created_at = store::from_millis(row.created_at)?.to_string();
    Ok(Checkpoint { id: row.id, created_at, heads, digest: row.digest, signer: row.signer, signature: row.signature })
}
