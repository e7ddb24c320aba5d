//! The audit chain's rows (see `audit::chain`): the links, each agent's head on its row, what each
//! record's content is when hashed, and the reads a verification walks.
//!
//! A record's content is its stored columns as compact JSON, in the order its row struct declares
//! them (docs/audit.md lists them): what was written is what is hashed, so a record read back hashes
//! the same. A new column changes that content, so it needs a new version of the chain's format.

use std::borrow::Cow;
use std::collections::HashMap;

use diesel::dsl::sql;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Nullable};
use serde::Serialize;

use super::events::EventRow;
use super::ledger::{AuthorizationRow, TransferRow};
use super::prepared::InsertLinks;
use super::schema::{
    agents, audit_checkpoints, authorizations, chain_links, events, transfers, treasuries, treasury_transfers,
};
use super::treasury::TreasuryTransferRow;
use super::{DbConnection, corrupt};
use crate::audit::chain::{Head, Record, StoredLink, from_hex};
use crate::domain::audit::RecordKind;
use crate::domain::ledger::{Balance, TransferKind, treasury_chain};
use crate::error::Result;

/// A row the chain links.
pub trait Chained: Serialize {
    const KIND: RecordKind;
    fn record_id(&self) -> &str;
    /// Whose chain it is in: its agent's, or its treasury's (`treasury:<currency>`).
    fn agent(&self) -> Cow<'_, str>;
    fn chain_n(&self) -> i64;
    fn set_chain_n(&mut self, n: i64);

    /// What the chain hashes.
    fn content(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a row of strings and integers serializes")
    }
}

macro_rules! chained {
    ($($row:ty => $kind:expr),+) => {$(
        impl Chained for $row {
            const KIND: RecordKind = $kind;
            fn record_id(&self) -> &str {
                &self.id
            }
            fn agent(&self) -> Cow<'_, str> {
                Cow::Borrowed(&self.agent_id)
            }
            fn chain_n(&self) -> i64 {
                self.chain_n
            }
            fn set_chain_n(&mut self, n: i64) {
                self.chain_n = n;
            }
        }
    )+};
}

chained!(
    AuthorizationRow => RecordKind::Authorization,
    TransferRow => RecordKind::Transfer,
    EventRow => RecordKind::Event
);

#[derive(Debug, Clone, PartialEq, Eq, Insertable, Queryable, Selectable)]
#[diesel(table_name = chain_links)]
pub struct LinkRow {
    pub agent_id: String,
    pub n: i64,
    pub kind: RecordKind,
    pub record_id: String,
    pub content_hash: String,
    pub hash: String,
}

impl LinkRow {
    fn stored(self) -> StoredLink {
        StoredLink {
            n: self.n,
            kind: self.kind,
            record_id: self.record_id,
            content_hash: self.content_hash,
            hash: self.hash,
        }
    }
}

/// Makes `record` the next link of its agent's chain: it takes the next position, and the link
/// hashes its content with that position in it. The caller writes both.
pub fn link<R: Chained>(head: &mut Head, record: &mut R) -> LinkRow {
    record.set_chain_n(head.next());
    let link = head.append(&record.content());
    LinkRow {
        agent_id: record.agent().into_owned(),
        n: link.n,
        kind: R::KIND,
        record_id: record.record_id().to_owned(),
        content_hash: hex::encode(link.content_hash),
        hash: hex::encode(link.hash),
    }
}

pub fn insert_links(conn: &mut DbConnection, links: &[LinkRow]) -> Result<()> {
    match conn {
        // One round trip for the lot.
        DbConnection::Postgresql(pg) if !links.is_empty() => {
            InsertLinks::new(links).execute(pg)?;
        }
        DbConnection::Postgresql(_) => {}
        // In process, one cached statement per row costs less than parsing a new one per batch.
        DbConnection::Sqlite(lite) => {
            for link in links {
                diesel::insert_into(chain_links::table).values(link).execute(lite)?;
            }
        }
    }
    Ok(())
}

/// The head as the agent's row stores it: `chain_head` is NULL while the chain is empty.
pub fn head_of(agent_id: &str, length: i64, hash: Option<&str>) -> Result<Head> {
    match hash {
        None => Ok(Head::empty(agent_id)),
        Some(h) => Ok(Head { length, hash: from_hex(h).ok_or_else(|| corrupt("chain head", h))? }),
    }
}

/// Locks an agent's row for a write outside the ledger writer (which locks it itself) and reads
/// its chain's end; None for an unknown agent.
pub fn lock_head(conn: &mut DbConnection, agent_id: &str) -> Result<Option<Head>> {
    let query = agents::table.find(agent_id).select((agents::chain_length, agents::chain_head));
    let found: Option<(i64, Option<String>)> = match conn {
        // The lock an UPDATE of the row takes: it waits for another writer of the chain, but not
        // for the key-share locks that inserting a card or event (foreign keys) takes, so two such
        // transactions that each hold one cannot deadlock upgrading it.
        DbConnection::Postgresql(pg) => query.for_no_key_update().get_result(pg).optional()?,
        // The one writer connection holds the database for the transaction.
        DbConnection::Sqlite(lite) => query.get_result(lite).optional()?,
    };
    found.map(|(length, hash)| head_of(agent_id, length, hash.as_deref())).transpose()
}

pub fn save_head(conn: &mut DbConnection, agent_id: &str, head: &Head) -> Result<()> {
    diesel::update(agents::table.find(agent_id))
        .set((agents::chain_length.eq(head.length), agents::chain_head.eq(hex::encode(head.hash))))
        .execute(conn)?;
    Ok(())
}

/// Every chain's end as its row stores it, by owner: each agent's (by id), then each treasury's
/// (`treasury:<currency>`).
pub fn heads(conn: &mut DbConnection) -> Result<Vec<(String, i64, Option<String>)>> {
    let mut heads: Vec<(String, i64, Option<String>)> =
        agents::table.select((agents::id, agents::chain_length, agents::chain_head)).order(agents::id).load(conn)?;
    let treasuries: Vec<(String, i64, Option<String>)> = treasuries::table
        .select((treasuries::currency, treasuries::chain_length, treasuries::chain_head))
        .order(treasuries::currency)
        .load(conn)?;
    heads.extend(treasuries.into_iter().map(|(currency, length, head)| (treasury_chain(&currency), length, head)));
    Ok(heads)
}

/// An agent's links after position `after`, in order.
pub fn links(conn: &mut DbConnection, agent_id: &str, after: i64, limit: i64) -> Result<Vec<StoredLink>> {
    let rows: Vec<LinkRow> = chain_links::table
        .filter(chain_links::agent_id.eq(agent_id))
        .filter(chain_links::n.gt(after))
        .order(chain_links::n)
        .limit(limit)
        .select(LinkRow::as_select())
        .load(conn)?;
    Ok(rows.into_iter().map(LinkRow::stored).collect())
}

/// An agent's links at these positions.
pub fn links_at(conn: &mut DbConnection, agent_id: &str, ns: &[i64]) -> Result<Vec<StoredLink>> {
    let rows: Vec<LinkRow> = chain_links::table
        .filter(chain_links::agent_id.eq(agent_id))
        .filter(chain_links::n.eq_any(ns.to_vec()))
        .select(LinkRow::as_select())
        .load(conn)?;
    Ok(rows.into_iter().map(LinkRow::stored).collect())
}

/// One agent's chain end as its row stores it.
pub fn head(conn: &mut DbConnection, owner: &str) -> Result<(i64, Option<String>)> {
    Ok(match treasury_of(owner) {
        Some(currency) => treasuries::table
            .find(currency)
            .select((treasuries::chain_length, treasuries::chain_head))
            .get_result(conn)?,
        None => agents::table.find(owner).select((agents::chain_length, agents::chain_head)).get_result(conn)?,
    })
}

/// The currency of a treasury's chain owner (`treasury:<currency>`); None for an agent.
pub fn treasury_of(owner: &str) -> Option<&str> {
    owner.strip_prefix("treasury:")
}

/// The records the links name, as they are stored now, by id.
pub fn records(conn: &mut DbConnection, kind: RecordKind, ids: &[&str]) -> Result<HashMap<String, Record>> {
    fn by_id<R: Chained>(rows: Vec<R>) -> HashMap<String, Record> {
        rows.into_iter()
            .map(|r| (r.record_id().to_owned(), Record { chain_n: r.chain_n(), content: r.content() }))
            .collect()
    }
    let ids = ids.to_vec();
    Ok(match kind {
        RecordKind::Authorization => by_id(
            authorizations::table
                .filter(authorizations::id.eq_any(ids))
                .select(AuthorizationRow::as_select())
                .load(conn)?,
        ),
        RecordKind::Transfer => {
            by_id(transfers::table.filter(transfers::id.eq_any(ids)).select(TransferRow::as_select()).load(conn)?)
        }
        RecordKind::Event => {
            by_id(events::table.filter(events::id.eq_any(ids)).select(EventRow::as_select()).load(conn)?)
        }
        RecordKind::TreasuryTransfer => by_id(
            treasury_transfers::table
                .filter(treasury_transfers::id.eq_any(ids))
                .select(TreasuryTransferRow::as_select())
                .load(conn)?,
        ),
    })
}

/// How many records a chain's owner has, of every kind.
pub fn count_records(conn: &mut DbConnection, agent_id: &str) -> Result<i64> {
    if let Some(currency) = treasury_of(agent_id) {
        return super::treasury::count(conn, currency);
    }
    let auths: i64 = authorizations::table.filter(authorizations::agent_id.eq(agent_id)).count().get_result(conn)?;
    let moves: i64 = transfers::table.filter(transfers::agent_id.eq(agent_id)).count().get_result(conn)?;
    let events: i64 = events::table.filter(events::agent_id.eq(agent_id)).count().get_result(conn)?;
    Ok(auths + moves + events)
}

/// What an agent's records add up to: its transfers with the treasury, and its authorizations'
/// held, posted (spent) and refunded amounts.
pub fn sums(conn: &mut DbConnection, agent_id: &str) -> Result<Balance> {
    // SUM of a BIGINT is NUMERIC on PostgreSQL: cast back, and NULL (no rows) is 0.
    let total = |column: &str| sql::<Nullable<BigInt>>(&format!("CAST(SUM({column}) AS BIGINT)"));
    let (held, spent, refunded): (Option<i64>, Option<i64>, Option<i64>) = authorizations::table
        .filter(authorizations::agent_id.eq(agent_id))
        .select((total("held"), total("posted"), total("refunded")))
        .get_result(conn)?;
    // Funded: what came from the treasury or a parent, net of what went back or to children.
    let funding = TransferKind::ALL.iter().copied().filter(|k| k.is_funding());
    let moved: Vec<(TransferKind, i64)> = transfers::table
        .filter(transfers::agent_id.eq(agent_id))
        .filter(transfers::kind.eq_any(funding))
        .select((transfers::kind, transfers::amount))
        .load(conn)?;
    let funded = Some(moved.iter().map(|(kind, a)| kind.funding(*a)).sum());
    let or_zero = |v: Option<i64>| v.unwrap_or(0);
    Ok(Balance { funded: or_zero(funded), refunded: or_zero(refunded), held: or_zero(held), spent: or_zero(spent) })
}

/// An agent's records of one kind after id `after`, by id: (id, chain_n).
pub fn positions(
    conn: &mut DbConnection,
    kind: RecordKind,
    agent_id: &str,
    after: &str,
    limit: i64,
) -> Result<Vec<(String, i64)>> {
    macro_rules! of {
        ($table:ident) => {
            $table::table
                .filter($table::agent_id.eq(agent_id))
                .filter($table::id.gt(after))
                .order($table::id)
                .limit(limit)
                .select(($table::id, $table::chain_n))
                .load(conn)?
        };
    }
    Ok(match kind {
        RecordKind::Authorization => of!(authorizations),
        RecordKind::Transfer => of!(transfers),
        RecordKind::Event => of!(events),
        RecordKind::TreasuryTransfer => match treasury_of(agent_id) {
            Some(currency) => treasury_transfers::table
                .filter(treasury_transfers::currency.eq(currency))
                .filter(treasury_transfers::id.gt(after))
                .order(treasury_transfers::id)
                .limit(limit)
                .select((treasury_transfers::id, treasury_transfers::chain_n))
                .load(conn)?,
            None => Vec::new(),
        },
    })
}

/// The agents whose chain is empty: those with records from before the chain existed.
pub fn unchained_agents(conn: &mut DbConnection) -> Result<Vec<String>> {
    Ok(agents::table.filter(agents::chain_length.eq(0)).select(agents::id).order(agents::id).load(conn)?)
}

/// Links one table's unlinked rows of an agent, a page at a time (each page's rows leave the filter).
macro_rules! adopt_table {
    ($conn:ident, $head:ident, $agent:ident, $table:ident, $row:ty) => {
        loop {
            let rows: Vec<$row> = $table::table
                .filter($table::agent_id.eq($agent))
                .filter($table::chain_n.eq(0))
                .order($table::id)
                .limit(1_000)
                .select(<$row>::as_select())
                .load($conn)?;
            if rows.is_empty() {
                break;
            }
            for mut row in rows {
                let link = link(&mut $head, &mut row);
                diesel::update($table::table.find(&row.id)).set($table::chain_n.eq(row.chain_n)).execute($conn)?;
                insert_links($conn, &[link])?;
            }
        }
    };
}

/// Links an agent's records written before the chain existed (`chain_n` 0), in one transaction
/// with the agent's row locked: authorizations, then transfers, then events, each by id. Returns
/// how many it linked; none when the chain has begun.
pub fn adopt(conn: &mut DbConnection, agent_id: &str) -> Result<i64> {
    let Some(mut head) = lock_head(conn, agent_id)? else { return Ok(0) };
    if head.length > 0 {
        return Ok(0);
    }
    adopt_table!(conn, head, agent_id, authorizations, AuthorizationRow);
    adopt_table!(conn, head, agent_id, transfers, TransferRow);
    adopt_table!(conn, head, agent_id, events, EventRow);
    save_head(conn, agent_id, &head)?;
    Ok(head.length)
}

#[derive(Debug, Clone, PartialEq, Eq, Insertable, Queryable, Selectable)]
#[diesel(table_name = audit_checkpoints)]
pub struct CheckpointRow {
    pub id: String,
    pub created_at: i64,
    /// JSON: `[{"agent_id", "length", "hash"}, …]`.
    pub heads: String,
    pub digest: String,
    pub signer: Option<String>,
    pub signature: Option<String>,
}

pub fn insert_checkpoint(conn: &mut DbConnection, row: &CheckpointRow) -> Result<()> {
    diesel::insert_into(audit_checkpoints::table).values(row).execute(conn)?;
    Ok(())
}

/// The latest checkpoints, newest first.
pub fn checkpoints(conn: &mut DbConnection, limit: i64) -> Result<Vec<CheckpointRow>> {
    Ok(audit_checkpoints::table
        .order(audit_checkpoints::id.desc())
        .limit(limit)
        .select(CheckpointRow::as_select())
        .load(conn)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transfer() -> TransferRow {
        TransferRow {
            id: "trf_1".into(),
            external_id: "cap-1".into(),
            agent_id: "agt_1".into(),
            authorization_id: Some("auth_1".into()),
            card_id: None,
            trace_id: Some("PR-4823".into()),
            kind: TransferKind::Post,
            amount: 2_500,
            currency: "USD".into(),
            created_at: 1_764_979_200_000,
            chain_n: 7,
            actor: None,
            reason: None,
        }
    }

    /// Known answer: what the chain hashes for a transfer. A change here breaks every chain
    /// already written, so it must come with a new version of the format (docs/audit.md).
    #[test]
    fn a_records_content_is_its_row_as_compact_json_in_column_order() {
        assert_eq!(
            String::from_utf8(transfer().content()).unwrap(),
            r#"{"id":"trf_1","external_id":"cap-1","agent_id":"agt_1","authorization_id":"auth_1","card_id":null,"trace_id":"PR-4823","kind":"post","amount":2500,"currency":"USD","created_at":1764979200000,"chain_n":7}"#
        );
    }

    /// docs/audit.md lists each kind's columns in the order the content has them, all of them.
    #[test]
    fn the_documented_columns_are_the_hashed_ones() {
        let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/audit.md")).unwrap();
        let listed = |kind: &str| -> Vec<String> {
            let start = doc.find(&format!("- `{kind}`: ")).unwrap_or_else(|| panic!("{kind} is listed"));
            let rest = &doc[start + kind.len() + 6..];
            let end = rest.find("\n  - ").or_else(|| rest.find("\n- ")).unwrap();
            rest[..end].split(',').map(|c| c.split_whitespace().next().unwrap().to_owned()).collect()
        };
        let keys = |content: Vec<u8>| -> Vec<String> {
            let value: serde_json::Value = serde_json::from_slice(&content).unwrap();
            let text = String::from_utf8(content).unwrap();
            let mut keys: Vec<String> = value.as_object().unwrap().keys().cloned().collect();
            keys.sort_by_key(|k| text.find(&format!("\"{k}\":")).unwrap());
            keys
        };
        assert_eq!(keys(transfer().content()), listed("transfer"));
        let event = EventRow::of(&crate::domain::event::Event::new(
            &crate::domain::ids::AgentId::from_stored("agt_1".into()),
            None,
            "frozen",
            &crate::domain::ids::KeyId::from_stored("key_1".into()),
            jiff::Timestamp::UNIX_EPOCH,
        ));
        assert_eq!(keys(event.content()), listed("event"));
        let authorization = AuthorizationRow {
            id: "auth_1".into(),
            source: crate::domain::ledger::Source::Native,
            external_id: "a-1".into(),
            agent_id: "agt_1".into(),
            card_id: None,
            rail: crate::domain::authorization::Rail::Card,
            status: crate::domain::ledger::HoldStatus::Pending,
            reason: None,
            rule: None,
            amount: 1,
            currency: "USD".into(),
            cap_amount: 1,
            cap_currency: "USD".into(),
            card_amount: 1,
            card_currency: "USD".into(),
            fx_rate: None,
            fx_date: None,
            held: 1,
            posted: 0,
            counted: 1,
            counted_card: 1,
            refunded: 0,
            merchant_id: None,
            merchant_name: "M".into(),
            mcc: None,
            country: None,
            trace_id: None,
            seq: 1,
            authorized_at: 0,
            updated_at: 0,
            approval_id: None,
            fx_source: None,
            chain_n: 1,
            recipient: None,
            recipient_named_by: None,
            max_amount: None,
        };
        assert_eq!(keys(authorization.content()), listed("authorization"));
    }
}
