//! Storage: diesel on SQLite (the embedded default) or PostgreSQL, chosen by the URL.
//! diesel is synchronous, so every query runs on tokio's blocking pool, never on a server worker.

pub mod agents;
pub mod cards;
pub mod events;
pub mod keys;
pub mod ledger;
mod schema;

use std::path::Path;
use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::r2d2::{self, ManageConnection, Pool};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

use crate::error::{Error, Result};

const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");
const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");

#[derive(diesel::MultiConnection)]
pub enum DbConnection {
    Postgresql(PgConnection),
    Sqlite(SqliteConnection),
}

/// Where the data lives, parsed from `sqlite://PATH` or `postgres://…`.
#[derive(Debug, Clone)]
enum Target {
    Sqlite(String),
    Postgres(String),
}

impl Target {
    fn parse(url: &str) -> Result<Target> {
        if let Some(path) = url.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err(Error::validation("database URL sqlite:// needs a file path"));
            }
            Ok(Target::Sqlite(path.to_owned()))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Target::Postgres(url.to_owned()))
        } else {
            Err(Error::validation(
                "database URL must start with sqlite:// or postgres:// (e.g. sqlite://data/spendgate.db)",
            ))
        }
    }
}

/// Opens connections of the right variant directly, so a SQLite path is never offered to libpq.
pub struct Manager(Target);

impl ManageConnection for Manager {
    type Connection = DbConnection;
    type Error = r2d2::Error;

    fn connect(&self) -> Result<DbConnection, r2d2::Error> {
        match &self.0 {
            Target::Sqlite(path) => {
                let mut conn = SqliteConnection::establish(path).map_err(r2d2::Error::ConnectionError)?;
                // Per connection: wait for the writer instead of failing, WAL so readers never block it,
                // and FULL sync: a commit is on disk before it is acknowledged, even across a power
                // loss (NORMAL would survive only a process crash).
                conn.batch_execute(
                    "PRAGMA busy_timeout = 5000; PRAGMA journal_mode = WAL; \
                     PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;",
                )
                .map_err(r2d2::Error::QueryError)?;
                Ok(DbConnection::Sqlite(conn))
            }
            Target::Postgres(url) => {
                PgConnection::establish(url).map(DbConnection::Postgresql).map_err(r2d2::Error::ConnectionError)
            }
        }
    }

    fn is_valid(&self, conn: &mut DbConnection) -> Result<(), r2d2::Error> {
        conn.batch_execute("SELECT 1").map_err(r2d2::Error::QueryError)
    }

    fn has_broken(&self, conn: &mut DbConnection) -> bool {
        r2d2::R2D2Connection::is_broken(conn)
    }
}

type DbPool = Pool<Manager>;

/// A handle to the database: cheap to clone, shared by every worker.
#[derive(Clone)]
pub struct Db {
    reader: DbPool,
    /// SQLite allows one writer at a time: a single writer connection queues writes in-process
    /// instead of racing for the file lock. PostgreSQL shares one pool for both.
    writer: DbPool,
}

impl Db {
    /// Connects, creating the SQLite file and its directory if needed. Does not migrate.
    pub fn connect(url: &str, pool_size: u32) -> Result<Db> {
        let target = Target::parse(url)?;
        let build = |size: u32, target: Target| {
            Pool::builder()
                .max_size(size)
                .min_idle(Some(1))
                .connection_timeout(Duration::from_secs(5))
                .build(Manager(target))
                .map_err(|e| Error::StorageUnavailable(format!("cannot open the database: {e}")))
        };
        match &target {
            Target::Sqlite(path) => {
                if let Some(dir) = Path::new(path).parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir)
                        .map_err(|e| Error::StorageUnavailable(format!("cannot create {}: {e}", dir.display())))?;
                }
                let writer = build(1, target.clone())?;
                let reader = build(pool_size.max(1), target)?;
                Ok(Db { reader, writer })
            }
            Target::Postgres(_) => {
                let pool = build(pool_size.max(2), target)?;
                Ok(Db { reader: pool.clone(), writer: pool })
            }
        }
    }

    /// Applies the embedded migrations of this backend. On PostgreSQL an advisory lock keeps
    /// several nodes starting at once from migrating twice.
    pub async fn migrate(&self) -> Result<Vec<String>> {
        self.run(self.writer.clone(), |conn| {
            let applied = match conn {
                DbConnection::Sqlite(c) => c.run_pending_migrations(SQLITE_MIGRATIONS).map(names),
                DbConnection::Postgresql(c) => {
                    c.batch_execute("SELECT pg_advisory_lock(7140021)")?;
                    let result = c.run_pending_migrations(POSTGRES_MIGRATIONS).map(names);
                    c.batch_execute("SELECT pg_advisory_unlock(7140021)")?;
                    result
                }
            };
            applied.map_err(|e| Error::Internal(format!("migration failed: {e}")))
        })
        .await
    }

    /// Runs `f` on a reader connection.
    pub async fn read<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce(&mut DbConnection) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        self.run(self.reader.clone(), f).await
    }

    /// Runs `f` in one transaction on the writer: all of it is stored, or none.
    pub async fn write<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce(&mut DbConnection) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        self.run(self.writer.clone(), |conn| conn.transaction(f)).await
    }

    async fn run<T, F>(&self, pool: DbPool, f: F) -> Result<T>
    where
        F: FnOnce(&mut DbConnection) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        tokio::task::spawn_blocking(move || {
            let mut conn = pool.get()?;
            f(&mut conn)
        })
        .await
        .map_err(|e| Error::Internal(format!("storage task failed: {e}")))?
    }

    /// A connection for the ledger's writer thread (a plain thread, not a tokio task): on SQLite
    /// the one writer connection, which admin writes share between ledger batches.
    pub fn ledger_connection(&self) -> Result<r2d2::PooledConnection<Manager>> {
        Ok(self.writer.get()?)
    }

    /// Whether the database answers a trivial query now (for `/readyz`).
    pub async fn ping(&self) -> Result<()> {
        self.read(|conn| conn.batch_execute("SELECT 1").map_err(Error::from)).await
    }
}

fn names(versions: Vec<diesel::migration::MigrationVersion<'_>>) -> Vec<String> {
    versions.into_iter().map(|v| v.to_string()).collect()
}

/// The current time at the precision it is stored with (milliseconds), so that what a write
/// returns equals what a later read returns.
pub fn now() -> jiff::Timestamp {
    from_millis(jiff::Timestamp::now().as_millisecond()).expect("the clock is within range")
}

/// Milliseconds since the Unix epoch, as stored.
pub(crate) fn to_millis(t: jiff::Timestamp) -> i64 {
    t.as_millisecond()
}

pub(crate) fn from_millis(ms: i64) -> Result<jiff::Timestamp> {
    jiff::Timestamp::from_millisecond(ms).map_err(|e| Error::Internal(format!("stored time {ms}: {e}")))
}

/// For stored values that must parse; a failure means the row was written by something else.
pub(crate) fn corrupt(what: &str, value: &str) -> Error {
    Error::Internal(format!("stored {what} {value:?} is not valid"))
}
