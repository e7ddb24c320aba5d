use diesel::connection::SimpleConnection;
use diesel::prelude::*;

use super::schema::api_keys;
use super::{DbConnection, FIRST_KEY_LOCK, corrupt, from_millis, to_millis};
use crate::domain::access::{Principal, Role};
use crate::domain::ids::{AgentId, KeyId};
use crate::domain::key::ApiKey;
use crate::error::Result;

#[derive(Queryable, Selectable, Insertable)]
#[diesel(table_name = api_keys)]
struct KeyRow {
    id: String,
    name: Option<String>,
    role: String,
    agent_id: Option<String>,
    key_hash: String,
    prefix: String,
    created_by: Option<String>,
    created_at: i64,
    revoked_at: Option<i64>,
}

impl KeyRow {
    fn into_domain(self) -> Result<ApiKey> {
        Ok(ApiKey {
            role: self.role.parse::<Role>().map_err(|_| corrupt("key role", &self.role))?,
            id: KeyId::from_stored(self.id),
            name: self.name,
            agent_id: self.agent_id.map(AgentId::from_stored),
            prefix: self.prefix,
            created_by: self.created_by.map(KeyId::from_stored),
            created_at: from_millis(self.created_at)?,
            revoked_at: self.revoked_at.map(from_millis).transpose()?,
        })
    }
}

pub fn insert(conn: &mut DbConnection, key: &ApiKey, key_hash: &str) -> Result<()> {
    let row = KeyRow {
        id: key.id.to_string(),
        name: key.name.clone(),
        role: key.role.as_str().to_owned(),
        agent_id: key.agent_id.as_ref().map(ToString::to_string),
        key_hash: key_hash.to_owned(),
        prefix: key.prefix.clone(),
        created_by: key.created_by.as_ref().map(ToString::to_string),
        created_at: to_millis(key.created_at),
        revoked_at: None,
    };
    diesel::insert_into(api_keys::table).values(&row).execute(conn)?;
    Ok(())
}

/// The caller a live (not revoked) key stands for.
pub fn principal_by_hash(conn: &mut DbConnection, key_hash: &str) -> Result<Option<Principal>> {
    let row: Option<(String, String, Option<String>)> = api_keys::table
        .filter(api_keys::key_hash.eq(key_hash))
        .filter(api_keys::revoked_at.is_null())
        .select((api_keys::id, api_keys::role, api_keys::agent_id))
        .get_result(conn)
        .optional()?;
    row.map(|(id, role, agent_id)| {
        Ok(Principal {
            role: role.parse().map_err(|_| corrupt("key role", &role))?,
            key_id: KeyId::from_stored(id),
            agent_id: agent_id.map(AgentId::from_stored),
        })
    })
    .transpose()
}

pub fn find(conn: &mut DbConnection, id: &KeyId) -> Result<Option<ApiKey>> {
    api_keys::table
        .find(id.as_str())
        .select(KeyRow::as_select())
        .get_result(conn)
        .optional()?
        .map(KeyRow::into_domain)
        .transpose()
}

pub fn list(conn: &mut DbConnection) -> Result<Vec<ApiKey>> {
    api_keys::table
        .select(KeyRow::as_select())
        .order(api_keys::id)
        .load(conn)?
        .into_iter()
        .map(KeyRow::into_domain)
        .collect()
}

/// Makes nodes starting at once on one PostgreSQL check for the first key one after another
/// (each would find none and insert its own) until this transaction ends. A SQLite file has one
/// writing process, whose writes are serialized already.
pub fn lock_first_key(conn: &mut DbConnection) -> Result<()> {
    if let DbConnection::Postgresql(c) = conn {
        c.batch_execute(&format!("SELECT pg_advisory_xact_lock({FIRST_KEY_LOCK})"))?;
    }
    Ok(())
}

pub fn count_all(conn: &mut DbConnection) -> Result<i64> {
    Ok(api_keys::table.count().get_result(conn)?)
}

pub fn count_live_owners(conn: &mut DbConnection) -> Result<i64> {
    Ok(api_keys::table
        .filter(api_keys::role.eq(Role::Owner.as_str()))
        .filter(api_keys::revoked_at.is_null())
        .count()
        .get_result(conn)?)
}

pub fn revoke(conn: &mut DbConnection, id: &KeyId, now: jiff::Timestamp) -> Result<()> {
    diesel::update(api_keys::table.find(id.as_str()))
        .set(api_keys::revoked_at.eq(Some(to_millis(now))))
        .execute(conn)?;
    Ok(())
}

/// Revokes every live key of an agent; returns how many.
pub fn revoke_for_agent(conn: &mut DbConnection, agent: &AgentId, now: jiff::Timestamp) -> Result<usize> {
    Ok(diesel::update(
        api_keys::table.filter(api_keys::agent_id.eq(agent.as_str())).filter(api_keys::revoked_at.is_null()),
    )
    .set(api_keys::revoked_at.eq(Some(to_millis(now))))
    .execute(conn)?)
}

/// Revokes live owner keys with this name (used by `serve --demo` to replace its own key).
pub fn revoke_named_owners(conn: &mut DbConnection, name: &str, now: jiff::Timestamp) -> Result<usize> {
    Ok(diesel::update(
        api_keys::table
            .filter(api_keys::name.eq(name))
            .filter(api_keys::role.eq(Role::Owner.as_str()))
            .filter(api_keys::revoked_at.is_null()),
    )
    .set(api_keys::revoked_at.eq(Some(to_millis(now))))
    .execute(conn)?)
}
