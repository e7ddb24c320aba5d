use std::sync::Mutex;
use std::time::Duration;

use moka::sync::Cache;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::Admin;
use super::agents::parse_agent_id;
use crate::domain::access::{Permission, Principal, Role};
use crate::domain::ids::KeyId;
use crate::domain::key::{self, ApiKey};
use crate::error::{Error, ErrorCode, Result};
use crate::store::{self, DbConnection};

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    pub role: Role,
    /// Required for (and only for) the `agent` role.
    pub agent_id: Option<String>,
    pub name: Option<String>,
}

/// A key just made: `key` is the secret, shown this once.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedKey {
    #[serde(flatten)]
    pub info: ApiKey,
    pub key: String,
}

fn insert_key(conn: &mut DbConnection, info: &ApiKey, secret: &str) -> Result<()> {
    store::keys::insert(conn, info, &key::hash_secret(secret))
}

fn new_key(role: Role, name: Option<String>, created_by: Option<KeyId>, secret: &str) -> ApiKey {
    ApiKey {
        id: KeyId::generate(),
        name,
        role,
        agent_id: None,
        prefix: key::display_prefix(secret),
        created_by,
        created_at: store::now(),
        revoked_at: None,
    }
}

/// What `ensure_first_key` did, for the operator to be told at start.
#[derive(Debug, PartialEq, Eq)]
pub enum FirstKey {
    /// Keys already exist; nothing was made.
    Existing,
    /// The configured bootstrap key became the first owner key.
    Bootstrapped,
    /// A new owner key was made; its secret must be shown once.
    Created(String),
}

/// How long a live key is believed without asking the database. A key revoked through this
/// process stops at once; one revoked through another process sharing the database, within this.
const LIVE_KEY_TTL: Duration = Duration::from_secs(5);

/// Live keys by the hash of their secret (never the secret), so that a request does not wait on a
/// database read to learn who sent it. Only live keys are kept: a new key works at once anywhere.
pub(super) struct LiveKeys {
    cache: Cache<String, Principal>,
    /// Hashes just found to be no live key: a client retrying a bad key in a loop costs a cache
    /// look-up, not a database read. Bounded in size and age.
    unknown: Cache<String, ()>,
    /// Bumped by every revocation, under the lock that also guards inserts: a key read as live
    /// before a revocation committed is never cached after it.
    generation: Mutex<u64>,
}

impl LiveKeys {
    pub(super) fn new() -> Self {
        LiveKeys {
            cache: Cache::builder().max_capacity(10_000).time_to_live(LIVE_KEY_TTL).build(),
            unknown: Cache::builder().max_capacity(10_000).time_to_live(LIVE_KEY_TTL).build(),
            generation: Mutex::new(0),
        }
    }

    fn generation(&self) -> u64 {
        *self.generation.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn remember(&self, hash: String, principal: &Principal, read_at: u64) {
        let generation = self.generation.lock().unwrap_or_else(|e| e.into_inner());
        if *generation == read_at {
            self.cache.insert(hash, principal.clone());
        }
    }

    /// After a revocation has committed.
    pub(super) fn forget_all(&self) {
        let mut generation = self.generation.lock().unwrap_or_else(|e| e.into_inner());
        *generation += 1;
        self.cache.invalidate_all();
    }
}

impl Admin {
    /// The caller a bearer secret stands for, if it is a live key.
    pub async fn authenticate(&self, secret: &str) -> Result<Option<Principal>> {
        let hash = key::hash_secret(secret);
        if let Some(principal) = self.live_keys.cache.get(&hash) {
            return Ok(Some(principal));
        }
        if self.live_keys.unknown.contains_key(&hash) {
            return Ok(None);
        }
        let read_at = self.live_keys.generation();
        let lookup = hash.clone();
        let found = self.db.read(move |conn| store::keys::principal_by_hash(conn, &lookup)).await?;
        match &found {
            Some(principal) => self.live_keys.remember(hash, principal, read_at),
            None => self.live_keys.unknown.insert(hash, ()),
        }
        Ok(found)
    }

    /// On a database with no key: makes the first owner key from `bootstrap`, or a fresh one.
    pub async fn ensure_first_key(&self, bootstrap: Option<&str>) -> Result<FirstKey> {
        let bootstrap = bootstrap.map(str::to_owned);
        self.db
            .write(move |conn| {
                store::keys::lock_first_key(conn)?;
                if store::keys::count_all(conn)? > 0 {
                    return Ok(FirstKey::Existing);
                }
                match bootstrap {
                    Some(secret) => {
                        insert_key(conn, &new_key(Role::Owner, Some("bootstrap".into()), None, &secret), &secret)?;
                        Ok(FirstKey::Bootstrapped)
                    }
                    None => {
                        let secret = key::generate_secret();
                        insert_key(conn, &new_key(Role::Owner, Some("initial".into()), None, &secret), &secret)?;
                        Ok(FirstKey::Created(secret))
                    }
                }
            })
            .await
    }

    /// Replaces the owner key named `name` with a fresh one (for `serve --demo`, which prints it).
    pub async fn replace_named_owner_key(&self, name: &str) -> Result<(Principal, String)> {
        let name = name.to_owned();
        let replaced = self
            .db
            .write(move |conn| {
                let secret = key::generate_secret();
                let info = new_key(Role::Owner, Some(name.clone()), None, &secret);
                store::keys::revoke_named_owners(conn, &name, store::now())?;
                insert_key(conn, &info, &secret)?;
                Ok((Principal { key_id: info.id, role: Role::Owner, agent_id: None }, secret))
            })
            .await;
        self.live_keys.forget_all();
        if let Ok((_, secret)) = &replaced {
            self.live_keys.unknown.invalidate(&key::hash_secret(secret));
        }
        replaced
    }

    pub async fn create_key(&self, who: &Principal, input: NewKey) -> Result<CreatedKey> {
        who.check(Permission::ManageKeys, None)?;
        let name = input.name.as_deref().map(|n| super::required_text("name", n, 100)).transpose()?;
        let agent_id = match (input.role, input.agent_id.as_deref()) {
            (Role::Agent, Some(id)) => Some(
                parse_agent_id(who, id)
                    .map_err(|_| Error::coded(ErrorCode::UnknownAgent, format!("agent {id} does not exist")))?,
            ),
            (Role::Agent, None) => {
                return Err(Error::validation("agent_id: required for the agent role"));
            }
            (_, Some(_)) => {
                return Err(Error::validation("agent_id: only keys of the agent role name an agent"));
            }
            (_, None) => None,
        };
        let secret = key::generate_secret();
        let mut info = new_key(input.role, name, Some(who.key_id.clone()), &secret);
        info.agent_id = agent_id;
        let stored = info.clone();
        let stored_secret = secret.clone();
        self.db
            .write(move |conn| {
                if let Some(agent) = &stored.agent_id
                    && store::agents::find(conn, agent)?.is_none()
                {
                    return Err(Error::coded(ErrorCode::UnknownAgent, format!("agent {agent} does not exist")));
                }
                insert_key(conn, &stored, &stored_secret)
            })
            .await?;
        // A secret is new, so nobody can have tried it; but a key must work the moment it exists.
        self.live_keys.unknown.invalidate(&key::hash_secret(&secret));
        tracing::info!(key = %info.id, role = %info.role, actor = %who.key_id, "API key created");
        Ok(CreatedKey { info, key: secret })
    }

    pub async fn list_keys(&self, who: &Principal) -> Result<Vec<ApiKey>> {
        who.check(Permission::ManageKeys, None)?;
        self.db.read(store::keys::list).await
    }

    /// Revokes a key at once. Revoking twice is a no-op; the last live owner key cannot be revoked.
    pub async fn revoke_key(&self, who: &Principal, id: &str) -> Result<ApiKey> {
        who.check(Permission::ManageKeys, None)?;
        let id = KeyId::parse(id).ok_or_else(|| Error::not_found("key", id))?;
        let key = self
            .db
            .write(move |conn| {
                let mut key = store::keys::find(conn, &id)?.ok_or_else(|| Error::not_found("key", id.as_str()))?;
                if key.revoked_at.is_some() {
                    return Ok(key);
                }
                if key.role == Role::Owner && store::keys::count_live_owners(conn)? <= 1 {
                    return Err(Error::coded(
                        ErrorCode::LastOwnerKey,
                        "this is the last owner key; create another owner key before revoking it",
                    ));
                }
                let now = store::now();
                store::keys::revoke(conn, &id, now)?;
                key.revoked_at = Some(now);
                Ok(key)
            })
            .await?;
        self.live_keys.forget_all();
        tracing::info!(key = %key.id, actor = %who.key_id, "API key revoked");
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal() -> Principal {
        Principal { key_id: KeyId::generate(), role: Role::Operator, agent_id: None }
    }

    /// A key read as live before a revocation committed is not cached after it; one read after
    /// it is.
    #[test]
    fn a_revocation_outruns_a_read_in_flight() {
        let keys = LiveKeys::new();
        let (before, after) = (principal(), principal());
        keys.remember("held".into(), &before, keys.generation());
        assert!(keys.cache.get("held").is_some());

        let read_at = keys.generation();
        keys.forget_all();
        assert!(keys.cache.get("held").is_none(), "a revocation forgets every cached key");
        keys.remember("in-flight".into(), &before, read_at);
        assert!(keys.cache.get("in-flight").is_none(), "read before the revocation: not cached");
        keys.remember("fresh".into(), &after, keys.generation());
        assert_eq!(keys.cache.get("fresh"), Some(after));
    }
}
