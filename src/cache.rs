//! Card and agent snapshots for the decision path, in moka. Each entry carries the agent's
//! `config_version` as it was before the entry was read; the ledger compares it with the locked
//! agent row and reloads a stale entry, so a rule changed on another node is never decided on.
//! Admin writes on this node also invalidate the entry at once.

use std::sync::Arc;

use moka::sync::Cache;

use crate::domain::agent::Agent;
use crate::domain::card::Card;
use crate::domain::ids::{AgentId, CardId};
use crate::error::Result;
use crate::store::{self, Db, DbConnection};

#[derive(Debug)]
pub struct Versioned<T> {
    pub value: T,
    pub version: i64,
}

#[derive(Clone)]
pub struct Snapshots {
    cards: Cache<CardId, Arc<Versioned<Card>>>,
    agents: Cache<AgentId, Arc<Versioned<Agent>>>,
    /// (processor, processor card id) → card: fixed once a card is registered, so never invalidated.
    by_processor: Cache<(&'static str, String), CardId>,
}

impl Snapshots {
    pub fn new(capacity: u64) -> Self {
        Snapshots {
            cards: Cache::new(capacity),
            agents: Cache::new(capacity / 10 + 1_000),
            by_processor: Cache::new(capacity),
        }
    }

    /// The card a processor knows by `processor_card_id`. A miss is not remembered: the card may be
    /// registered a moment later.
    pub async fn card_for_processor(&self, db: &Db, processor: &'static str, id: &str) -> Result<Option<CardId>> {
        let key = (processor, id.to_owned());
        if let Some(card) = self.by_processor.get(&key) {
            return Ok(Some(card));
        }
        let pid = key.1.clone();
        let found = db.read(move |conn| store::cards::id_for_processor(conn, processor, &pid)).await?;
        if let Some(card) = &found {
            self.by_processor.insert(key, card.clone());
        }
        Ok(found)
    }

    /// The card and its agent, from the cache or else the database. `None` if the card does not exist.
    pub async fn card(&self, db: &Db, id: &CardId) -> Result<Option<(Arc<Versioned<Card>>, Arc<Versioned<Agent>>)>> {
        let card = match self.cards.get(id) {
            Some(card) => card,
            None => {
                let key = id.clone();
                let Some(card) = db.read(move |conn| load_card(conn, &key)).await? else { return Ok(None) };
                let card = Arc::new(card);
                self.cards.insert(id.clone(), card.clone());
                card
            }
        };
        let Some(agent) = self.agent(db, &card.value.agent_id).await? else { return Ok(None) };
        Ok(Some((card, agent)))
    }

    pub async fn agent(&self, db: &Db, id: &AgentId) -> Result<Option<Arc<Versioned<Agent>>>> {
        if let Some(agent) = self.agents.get(id) {
            return Ok(Some(agent));
        }
        let key = id.clone();
        let Some(agent) = db.read(move |conn| load_agent(conn, &key)).await? else { return Ok(None) };
        let agent = Arc::new(agent);
        self.agents.insert(id.clone(), agent.clone());
        Ok(Some(agent))
    }

    /// The agent if the cache holds it, without reading the database.
    pub fn cached_agent(&self, id: &AgentId) -> Option<Arc<Versioned<Agent>>> {
        self.agents.get(id)
    }

    /// Replaces entries with ones read inside the ledger's transaction.
    pub fn put_card(&self, card: Arc<Versioned<Card>>) {
        self.cards.insert(card.value.id.clone(), card);
    }

    pub fn put_agent(&self, agent: Arc<Versioned<Agent>>) {
        self.agents.insert(agent.value.id.clone(), agent);
    }

    pub fn invalidate_card(&self, id: &CardId) {
        self.cards.invalidate(id);
    }

    pub fn invalidate_agent(&self, id: &AgentId) {
        self.agents.invalidate(id);
    }

    pub fn card_count(&self) -> u64 {
        self.cards.run_pending_tasks();
        self.cards.entry_count()
    }
}

/// The version is read first: the rows that follow are at least that new, so an entry can be
/// older than its content but never newer, and a stale-looking entry is only reloaded.
pub fn load_card(conn: &mut DbConnection, id: &CardId) -> Result<Option<Versioned<Card>>> {
    let agent_id = store::cards::agent_of(conn, id)?;
    let Some(agent_id) = agent_id else { return Ok(None) };
    let Some(version) = store::ledger::config_version(conn, &agent_id)? else { return Ok(None) };
    Ok(store::cards::find(conn, id)?.map(|value| Versioned { value, version }))
}

pub fn load_agent(conn: &mut DbConnection, id: &AgentId) -> Result<Option<Versioned<Agent>>> {
    let Some(version) = store::ledger::config_version(conn, id)? else { return Ok(None) };
    let Some(mut value) = store::agents::find(conn, id)? else { return Ok(None) };
    value.allowances = store::approvals::allowances(conn, id, store::now().as_millisecond())?;
    value.shadows = store::policies::shadows(conn, id)?;
    if value.parent_id.is_some() {
        value.ancestors = store::agents::ancestors(conn, id)?;
    }
    Ok(Some(Versioned { value, version }))
}
