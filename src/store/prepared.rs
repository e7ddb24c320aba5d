//! The ledger writer's statements that run in every batch, written out so that the database keeps
//! them prepared. diesel prepares anew, on every execution, each statement it cannot show to be
//! the same SQL every time: every `update()`, `sql()` fragments, `sql_query`, and multi-row
//! inserts (new SQL for each batch size). On PostgreSQL that is a parse per statement per batch
//! (plans are made per execution either way: see `force_custom_plan` in `Manager::connect`).
//! Measured with pgbench (one client, custom plans, `synchronous_commit = off`), one batch's
//! lookup, insert and ledger update: 1.29–1.54 ms unprepared against 1.06–1.18 ms prepared. Each
//! type here has a static `QueryId`, so diesel keeps it by type, and SQL that does not change with
//! the number of rows.

use diesel::pg::Pg;
use diesel::prelude::*;
use diesel::query_builder::{AstPass, QueryFragment, QueryId};
use diesel::sql_types::{Array, BigInt, Bool, Nullable, Text};
use diesel::sqlite::Sqlite;

use super::chain::LinkRow;
use super::ledger::{AgentLedger, AuthorizationRow};
use super::schema::authorizations;
use crate::domain::authorization::NamedBy;
use crate::domain::ids::AgentId;
use crate::domain::ledger::Source;

/// One agent's ledger state written back on SQLite (one statement per agent, each a step of the
/// same prepared statement).
pub(super) struct SaveLedger<'a> {
    pub id: &'a str,
    pub ledger: &'a AgentLedger,
    /// The chain head's hash, in hex.
    pub head: String,
}

impl QueryId for SaveLedger<'_> {
    type QueryId = SaveLedger<'static>;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl QueryFragment<Sqlite> for SaveLedger<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Sqlite>) -> QueryResult<()> {
        let (l, b) = (self.ledger, &self.ledger.balance);
        out.push_sql("UPDATE agents SET ledger_seq = ");
        out.push_bind_param::<BigInt, _>(&l.seq)?;
        for (column, value) in [
            ("funded", &b.funded),
            ("refunded", &b.refunded),
            ("held", &b.held),
            ("spent", &b.spent),
            ("chain_length", &l.chain.length),
        ] {
            out.push_sql(", ");
            out.push_sql(column);
            out.push_sql(" = ");
            out.push_bind_param::<BigInt, _>(value)?;
        }
        out.push_sql(", chain_head = ");
        out.push_bind_param::<Text, _>(&self.head)?;
        out.push_sql(" WHERE id = ");
        out.push_bind_param::<Text, _>(&self.id)
    }
}

impl RunQueryDsl<SqliteConnection> for SaveLedger<'_> {}

/// Every agent's ledger state written back on PostgreSQL in one statement.
pub(super) struct SaveLedgers<'a> {
    ids: Vec<&'a str>,
    /// seq, funded, refunded, held, spent and chain_length, in the order the statement names them.
    columns: [Vec<i64>; 6],
    heads: Vec<String>,
}

impl<'a> SaveLedgers<'a> {
    pub fn new(ledgers: impl Iterator<Item = (&'a AgentId, &'a AgentLedger)>) -> Self {
        let mut save = SaveLedgers { ids: Vec::new(), columns: Default::default(), heads: Vec::new() };
        for (id, l) in ledgers {
            save.ids.push(id.as_str());
            let b = &l.balance;
            let values = [l.seq, b.funded, b.refunded, b.held, b.spent, l.chain.length];
            save.columns.iter_mut().zip(values).for_each(|(column, value)| column.push(value));
            save.heads.push(hex::encode(l.chain.hash));
        }
        save
    }
}

impl QueryId for SaveLedgers<'_> {
    type QueryId = SaveLedgers<'static>;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl QueryFragment<Pg> for SaveLedgers<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.push_sql(
            "UPDATE agents AS a SET ledger_seq = v.seq, funded = v.funded, refunded = v.refunded, \
             held = v.held, spent = v.spent, chain_length = v.chain_length, chain_head = v.chain_head FROM unnest(",
        );
        out.push_bind_param::<Array<Text>, _>(&self.ids)?;
        out.push_sql("::text[]");
        for column in &self.columns {
            out.push_sql(", ");
            out.push_bind_param::<Array<BigInt>, _>(column)?;
            out.push_sql("::bigint[]");
        }
        out.push_sql(", ");
        out.push_bind_param::<Array<Text>, _>(&self.heads)?;
        out.push_sql(
            "::text[]) AS v(id, seq, funded, refunded, held, spent, chain_length, chain_head) WHERE a.id = v.id",
        );
        Ok(())
    }
}

impl RunQueryDsl<PgConnection> for SaveLedgers<'_> {}

/// `(external_id, source) IN (SELECT * FROM unnest(ids, sources))`: a filter on authorizations by
/// the pairs of their unique key (so the planner counts on one row per key even before the table
/// has statistics), one statement for any number of keys.
pub(super) struct ByExternalKeys<'a> {
    ids: Vec<&'a str>,
    sources: Vec<&'a str>,
}

impl<'a> ByExternalKeys<'a> {
    pub fn new(keys: &[(Source, &'a str)]) -> Self {
        let (sources, ids) = keys.iter().map(|&(source, id)| (source.as_str(), id)).unzip();
        ByExternalKeys { ids, sources }
    }
}

impl diesel::Expression for ByExternalKeys<'_> {
    type SqlType = Bool;
}

impl diesel::AppearsOnTable<authorizations::table> for ByExternalKeys<'_> {}

impl<GroupBy> diesel::expression::ValidGrouping<GroupBy> for ByExternalKeys<'_> {
    type IsAggregate = diesel::expression::is_aggregate::Never;
}

impl QueryId for ByExternalKeys<'_> {
    type QueryId = ByExternalKeys<'static>;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl QueryFragment<Pg> for ByExternalKeys<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.push_sql("(external_id, source) IN (SELECT * FROM unnest(");
        out.push_bind_param::<Array<Text>, _>(&self.ids)?;
        out.push_sql("::text[], ");
        out.push_bind_param::<Array<Text>, _>(&self.sources)?;
        out.push_sql("::text[]))");
        Ok(())
    }
}

/// A column's name and how a row gives its value.
type TextColumn = (&'static str, fn(&AuthorizationRow) -> &str);
type NullableTextColumn = (&'static str, fn(&AuthorizationRow) -> Option<&str>);
type BigIntColumn = (&'static str, fn(&AuthorizationRow) -> i64);
type NullableBigIntColumn = (&'static str, fn(&AuthorizationRow) -> Option<i64>);

/// The columns of `authorizations`, by type: every one is inserted.
const TEXT: [TextColumn; 10] = [
    ("id", |r| &r.id),
    ("source", |r| r.source.as_str()),
    ("external_id", |r| &r.external_id),
    ("agent_id", |r| &r.agent_id),
    ("rail", |r| r.rail.as_str()),
    ("status", |r| r.status.as_str()),
    ("currency", |r| &r.currency),
    ("cap_currency", |r| &r.cap_currency),
    ("card_currency", |r| &r.card_currency),
    ("merchant_name", |r| &r.merchant_name),
];
const NULLABLE_TEXT: [NullableTextColumn; 13] = [
    ("card_id", |r| r.card_id.as_deref()),
    ("reason", |r| r.reason.as_deref()),
    ("rule", |r| r.rule.as_deref()),
    ("fx_rate", |r| r.fx_rate.as_deref()),
    ("fx_date", |r| r.fx_date.as_deref()),
    ("merchant_id", |r| r.merchant_id.as_deref()),
    ("mcc", |r| r.mcc.as_deref()),
    ("country", |r| r.country.as_deref()),
    ("trace_id", |r| r.trace_id.as_deref()),
    ("approval_id", |r| r.approval_id.as_deref()),
    ("fx_source", |r| r.fx_source.as_deref()),
    ("recipient", |r| r.recipient.as_deref()),
    ("recipient_named_by", |r| r.recipient_named_by.map(NamedBy::as_str)),
];
const BIGINT: [BigIntColumn; 12] = [
    ("amount", |r| r.amount),
    ("cap_amount", |r| r.cap_amount),
    ("card_amount", |r| r.card_amount),
    ("held", |r| r.held),
    ("posted", |r| r.posted),
    ("counted", |r| r.counted),
    ("counted_card", |r| r.counted_card),
    ("refunded", |r| r.refunded),
    ("seq", |r| r.seq),
    ("authorized_at", |r| r.authorized_at),
    ("updated_at", |r| r.updated_at),
    ("chain_n", |r| r.chain_n),
];
const NULLABLE_BIGINT: [NullableBigIntColumn; 1] = [("max_amount", |r| r.max_amount)];

/// New authorizations inserted on PostgreSQL in one statement, one array per column.
pub(super) struct InsertAuthorizations<'a> {
    text: Vec<Vec<&'a str>>,
    nullable_text: Vec<Vec<Option<&'a str>>>,
    bigint: Vec<Vec<i64>>,
    nullable_bigint: Vec<Vec<Option<i64>>>,
}

impl<'a> InsertAuthorizations<'a> {
    pub fn new(rows: &'a [AuthorizationRow]) -> Self {
        InsertAuthorizations {
            text: TEXT.iter().map(|(_, get)| rows.iter().map(get).collect()).collect(),
            nullable_text: NULLABLE_TEXT.iter().map(|(_, get)| rows.iter().map(get).collect()).collect(),
            bigint: BIGINT.iter().map(|(_, get)| rows.iter().map(get).collect()).collect(),
            nullable_bigint: NULLABLE_BIGINT.iter().map(|(_, get)| rows.iter().map(get).collect()).collect(),
        }
    }
}

impl QueryId for InsertAuthorizations<'_> {
    type QueryId = InsertAuthorizations<'static>;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl QueryFragment<Pg> for InsertAuthorizations<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        let names = TEXT.iter().map(|c| c.0).chain(NULLABLE_TEXT.iter().map(|c| c.0));
        let names = names.chain(BIGINT.iter().map(|c| c.0)).chain(NULLABLE_BIGINT.iter().map(|c| c.0));
        out.push_sql("INSERT INTO authorizations (");
        out.push_sql(&names.collect::<Vec<_>>().join(", "));
        out.push_sql(") SELECT * FROM unnest(");
        let mut separator = "";
        for column in &self.text {
            out.push_sql(separator);
            out.push_bind_param::<Array<Text>, _>(column)?;
            out.push_sql("::text[]");
            separator = ", ";
        }
        for column in &self.nullable_text {
            out.push_sql(separator);
            out.push_bind_param::<Array<Nullable<Text>>, _>(column)?;
            out.push_sql("::text[]");
        }
        for column in &self.bigint {
            out.push_sql(separator);
            out.push_bind_param::<Array<BigInt>, _>(column)?;
            out.push_sql("::bigint[]");
        }
        for column in &self.nullable_bigint {
            out.push_sql(separator);
            out.push_bind_param::<Array<Nullable<BigInt>>, _>(column)?;
            out.push_sql("::bigint[]");
        }
        out.push_sql(")");
        Ok(())
    }
}

impl RunQueryDsl<PgConnection> for InsertAuthorizations<'_> {}

/// New chain links inserted on PostgreSQL in one statement, one array per column.
pub(super) struct InsertLinks<'a> {
    /// agent_id, kind, record_id, content_hash and hash, in the order the statement names them.
    text: [Vec<&'a str>; 5],
    n: Vec<i64>,
}

impl<'a> InsertLinks<'a> {
    pub fn new(links: &'a [LinkRow]) -> Self {
        let mut insert = InsertLinks { text: Default::default(), n: Vec::with_capacity(links.len()) };
        for l in links {
            let values = [l.agent_id.as_str(), l.kind.as_str(), &l.record_id, &l.content_hash, &l.hash];
            insert.text.iter_mut().zip(values).for_each(|(column, value)| column.push(value));
            insert.n.push(l.n);
        }
        insert
    }
}

impl QueryId for InsertLinks<'_> {
    type QueryId = InsertLinks<'static>;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl QueryFragment<Pg> for InsertLinks<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.push_sql(
            "INSERT INTO chain_links (agent_id, kind, record_id, content_hash, hash, n) SELECT * FROM unnest(",
        );
        for column in &self.text {
            out.push_bind_param::<Array<Text>, _>(column)?;
            out.push_sql("::text[], ");
        }
        out.push_bind_param::<Array<BigInt>, _>(&self.n)?;
        out.push_sql("::bigint[])");
        Ok(())
    }
}

impl RunQueryDsl<PgConnection> for InsertLinks<'_> {}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use diesel::Connection;
    use diesel::connection::{InstrumentationEvent, SimpleConnection};
    use diesel::r2d2::PooledConnection;

    use crate::audit::chain::Head;
    use crate::domain::ids::AgentId;
    use crate::domain::ledger::Source;
    use crate::store::ledger::{self, AgentLedger, AuthorizationRow, Balance};
    use crate::store::{Db, DbConnection, Manager};

    /// Migrates `db` and adds agent `agt_1`; then a writer connection, and the SQL of every
    /// statement it prepares from here on.
    fn recording(db: &Db) -> (PooledConnection<Manager>, Arc<Mutex<Vec<String>>>) {
        tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(db.migrate()).unwrap();
        let mut conn = db.writer.get().unwrap();
        conn.batch_execute(
            "INSERT INTO agents (id, name, status, policy, created_at, updated_at) \
             VALUES ('agt_1', 'a', 'active', '{}', 0, 0)",
        )
        .unwrap();
        let prepared = Arc::new(Mutex::new(Vec::<String>::new()));
        let seen = prepared.clone();
        let record = move |event: InstrumentationEvent<'_>| {
            if let InstrumentationEvent::CacheQuery { sql, .. } = event {
                seen.lock().unwrap().push(sql.to_owned());
            }
        };
        match &mut *conn {
            DbConnection::Sqlite(c) => c.set_instrumentation(record),
            DbConnection::Postgresql(c) => c.set_instrumentation(record),
        }
        (conn, prepared)
    }

    /// The writer saves each agent's ledger in every batch: SQLite prepares that statement once,
    /// and it writes what it is given.
    #[test]
    fn saving_ledgers_prepares_once_and_writes_the_balance() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::connect(&format!("sqlite://{}", dir.path().join("save.db").display()), 1).unwrap();
        let (mut conn, prepared) = recording(&db);
        let agent = AgentId::from_stored("agt_1".to_owned());
        for seq in 1..=3 {
            let ledger = AgentLedger {
                seq,
                children: 0,
                deactivated: false,
                config_version: 0,
                currency: "USD".into(),
                balance: Balance { funded: 1_000 * seq, refunded: 2, held: 3 * seq, spent: 4 },
                chain: Head { length: seq, hash: [seq as u8; 32] },
            };
            ledger::save_ledgers(&mut conn, [(&agent, &ledger)].into_iter()).unwrap();
        }
        let updates = prepared.lock().unwrap().iter().filter(|sql| sql.starts_with("UPDATE agents")).count();
        assert_eq!(updates, 1, "{:?}", prepared.lock().unwrap());
        assert_eq!(
            ledger::balance(&mut conn, &agent).unwrap(),
            Some(("USD".to_owned(), Balance { funded: 3_000, refunded: 2, held: 9, spent: 4 }))
        );
        let locked = ledger::lock_agents(&mut conn, std::slice::from_ref(&agent)).unwrap();
        assert_eq!(locked[0].1.seq, 4, "the stored seq is 3, and a lock numbers the next change");
        assert_eq!(locked[0].1.chain, Head { length: 3, hash: [3; 32] }, "the chain's end as saved");
    }

    fn row(n: i64, optional: bool) -> AuthorizationRow {
        let some = |s: &str| optional.then(|| format!("{s}-{n}"));
        AuthorizationRow {
            id: format!("auth_{n}"),
            source: Source::Native,
            external_id: format!("ext-{n}"),
            agent_id: "agt_1".into(),
            card_id: None,
            rail: crate::domain::authorization::Rail::Card,
            status: crate::domain::ledger::HoldStatus::Pending,
            reason: some("reason"),
            rule: some("rule"),
            amount: 100 + n,
            currency: "EUR".into(),
            cap_amount: 200 + n,
            cap_currency: "USD".into(),
            card_amount: 300 + n,
            card_currency: "GBP".into(),
            fx_rate: some("1.1"),
            fx_date: some("2026-12-01"),
            fx_source: some("ecb"),
            held: 400 + n,
            posted: n,
            counted: 500 + n,
            counted_card: 600 + n,
            refunded: 2 * n,
            merchant_id: some("m"),
            merchant_name: format!("MERCHANT {n}"),
            mcc: some("5734"),
            country: some("US"),
            trace_id: some("trace"),
            seq: 10 + n,
            authorized_at: 1_000 + n,
            updated_at: 2_000 + n,
            approval_id: None,
            chain_n: 20 + n,
            recipient: some("eip155:8453:0xab"),
            recipient_named_by: optional.then_some(crate::domain::authorization::NamedBy::Server),
            max_amount: optional.then_some(700 + n),
        }
    }

    /// On PostgreSQL the writer's insert, lookup and ledger save are each prepared once, whatever
    /// the batch size, and store and find every column as given (a column the insert forgot
    /// would come back NULL or fail the insert).
    #[test]
    fn the_writers_statements_are_prepared_once_on_postgresql() {
        let Some(url) = std::env::var("SPENDGATE_TEST_DATABASE_URL").ok().filter(|u| !u.is_empty()) else {
            assert!(std::env::var_os("CI").is_none(), "CI runs the PostgreSQL tests");
            return;
        };
        let schema = format!("sg_prepared_{}", hex::encode(rand::random::<[u8; 6]>()));
        let admin = Db::connect(&url, 2).unwrap();
        let mut admin_conn = admin.writer.get().unwrap();
        admin_conn.batch_execute(&format!("CREATE SCHEMA {schema}")).unwrap();
        let sep = if url.contains('?') { '&' } else { '?' };
        let db = Db::connect(&format!("{url}{sep}options=-csearch_path%3D{schema}"), 2).unwrap();
        let checked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let (mut conn, prepared) = recording(&db);

            let rows: Vec<_> = (1..=4).map(|n| row(n, n % 2 == 0)).collect();
            let agent = AgentId::from_stored("agt_1".to_owned());
            for (batch, seq) in [(&rows[..1], 1), (&rows[1..], 2)] {
                ledger::insert_authorizations(&mut conn, batch).unwrap();
                let keys: Vec<_> = batch.iter().map(|r| (r.source, r.external_id.as_str())).collect();
                let mut found = ledger::find_by_external(&mut conn, &keys).unwrap();
                found.sort_by(|a, b| a.id.cmp(&b.id));
                assert_eq!(found, batch);
                let balance = Balance { funded: 1_000 * seq, refunded: 2, held: 3 * seq, spent: 4 };
                let chain = Head { length: seq, hash: [seq as u8; 32] };
                let saved = AgentLedger {
                    seq,
                    children: 0,
                    deactivated: false,
                    config_version: 0,
                    currency: "USD".into(),
                    balance,
                    chain,
                };
                ledger::save_ledgers(&mut conn, [(&agent, &saved)].into_iter()).unwrap();
                assert_eq!(ledger::balance(&mut conn, &agent).unwrap(), Some(("USD".to_owned(), balance)));
                let locked = ledger::lock_agents(&mut conn, std::slice::from_ref(&agent)).unwrap();
                assert_eq!(locked[0].1.chain, chain, "the chain's end as saved");
            }
            let prepared = prepared.lock().unwrap();
            for statement in ["INSERT INTO authorizations", "SELECT \"authorizations\"", "UPDATE agents"] {
                let times = prepared.iter().filter(|sql| sql.starts_with(statement)).count();
                assert_eq!(times, 1, "{statement}: {prepared:?}");
            }
        }));
        admin_conn.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")).unwrap();
        checked.unwrap();
    }
}
