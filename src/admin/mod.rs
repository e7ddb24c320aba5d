//! The admin operations: issue, freeze, unfreeze, close, set policy, manage keys. Each checks the
//! caller's permission, validates its input, and writes its change and its audit event in one
//! transaction. The HTTP handlers and the demo loader call these; none of them holds a rule.

pub mod agents;
pub mod cards;
pub mod keys;
pub mod ledger;
pub mod policies;
pub mod spendable;
pub mod treasury;

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::cache::Snapshots;
use crate::domain::catalog::Catalog;
use crate::domain::money::Currency;
use crate::domain::policy::Policy;
use crate::error::{Error, Result};
use crate::ledger::Ledger;
use crate::rails::card::issuing::Issuer;
use crate::store::{Db, DbConnection};

#[derive(Clone)]
pub struct Admin {
    db: Db,
    catalog: &'static Catalog,
    simulator_bin: String,
    ledger: Ledger,
    issuer: Arc<Issuer>,
    live_keys: Arc<keys::LiveKeys>,
    backtests: Arc<policies::Running>,
}

impl Admin {
    pub fn new(db: Db, catalog: &'static Catalog, simulator_bin: String, ledger: Ledger, issuer: Issuer) -> Self {
        Admin {
            db,
            catalog,
            simulator_bin,
            ledger,
            issuer: Arc::new(issuer),
            live_keys: Arc::new(keys::LiveKeys::new()),
            backtests: Arc::default(),
        }
    }

    /// The decision path's snapshots, which every write to a card or agent invalidates.
    fn snapshots(&self) -> &Snapshots {
        self.ledger.snapshots()
    }

    pub fn catalog(&self) -> &'static Catalog {
        self.catalog
    }
}

/// `?limit=&cursor=` for lists, oldest first.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    /// 1 to 500, default 100.
    pub limit: Option<i64>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

const DEFAULT_PAGE: i64 = 100;
const MAX_PAGE: i64 = 500;

impl PageQuery {
    pub(crate) fn size(&self) -> Result<i64> {
        match self.limit {
            None => Ok(DEFAULT_PAGE),
            Some(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
            Some(_) => Err(Error::validation(format!("limit must be between 1 and {MAX_PAGE}"))),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Page<T> {
    pub data: Vec<T>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

impl Admin {
    /// Reads one page: `load(conn, cursor, n)` returns up to `n` rows after `cursor`, in id order.
    /// One row more than the page is asked for, to learn whether another page exists.
    async fn page<T, F>(&self, query: PageQuery, cursor_of: fn(&T) -> String, load: F) -> Result<Page<T>>
    where
        T: Send + 'static,
        F: FnOnce(&mut DbConnection, Option<&str>, i64) -> Result<Vec<T>> + Send + 'static,
    {
        let size = query.size()?;
        let mut rows = self.db.read(move |conn| load(conn, query.cursor.as_deref(), size + 1)).await?;
        let more = rows.len() as i64 > size;
        rows.truncate(size as usize);
        let next_cursor = if more { rows.last().map(cursor_of) } else { None };
        Ok(Page { data: rows, next_cursor })
    }
}

/// A policy document from a request body, validated and normalized.
/// `currency` is the card's, which a card policy must use.
pub(crate) fn parse_policy(catalog: &Catalog, doc: serde_json::Value, currency: Option<Currency>) -> Result<Policy> {
    let mut policy = Policy::from_json(doc).map_err(|e| Error::policy("policy", e))?;
    policy.normalize(catalog, currency).map_err(|e| Error::policy("policy", e))?;
    Ok(policy)
}

/// Why a state change was made; required so the audit trail explains itself.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReasonBody {
    pub reason: String,
}

impl ReasonBody {
    fn checked(self) -> Result<String> {
        let reason = self.reason.trim();
        if reason.is_empty() || reason.len() > 500 {
            return Err(Error::validation("reason: give a reason of 1 to 500 characters"));
        }
        Ok(reason.to_owned())
    }
}

/// Trims a required text field and checks its length. The API description says the same of each
/// such field: `min_length = 1`, its `max_length`, and a pattern of some non-space character and
/// no control character.
fn required_text(field: &str, value: &str, max: usize) -> Result<String> {
    let value = value.trim();
    if value.is_empty() || value.chars().count() > max || value.chars().any(char::is_control) {
        return Err(Error::validation(format!("{field}: must be 1 to {max} printable characters")));
    }
    Ok(value.to_owned())
}
