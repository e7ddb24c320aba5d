//! Storage: diesel on SQLite (the embedded default) or PostgreSQL, chosen by the URL.
//! diesel is synchronous, so every query runs on tokio's blocking pool, never on a server worker.
//!
//! Lookups by a unique key use `get_result`, not `first`: `first` binds its LIMIT as a parameter,
//! and SQLite prepares a statement again each time such a parameter is bound.

pub mod agents;
pub mod approvals;
pub mod backtests;
pub mod cards;
pub mod chain;
pub mod deposits;
pub mod events;
pub mod history;
pub mod keys;
pub mod ledger;
pub mod policies;
mod prepared;
pub mod reports;
mod schema;
pub mod treasury;
pub mod wallets;
pub mod webhooks;
mod words;
pub mod x402;

use std::fs::File;
use std::mem::ManuallyDrop;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex, Weak};
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
            Ok(Target::Postgres(with_network_timeouts(url)))
        } else {
            Err(Error::validation(
                "database URL must start with sqlite:// or postgres:// (e.g. sqlite://data/spendgate.db)",
            ))
        }
    }
}

/// libpq's own bounds on a connection that stops answering, unless the URL sets them: a connect
/// that hangs gives up after 5 s, and an established connection whose peer vanished (packets
/// dropped, no reset) is found dead by TCP keepalives and unacknowledged sends within seconds,
/// not after the kernel's default of many minutes.
fn with_network_timeouts(url: &str) -> String {
    let defaults = [
        ("connect_timeout", "5"),
        ("keepalives", "1"),
        ("keepalives_idle", "10"),
        ("keepalives_interval", "5"),
        ("keepalives_count", "3"),
        ("tcp_user_timeout", "15000"),
    ];
    let mut url = url.to_owned();
    for (name, value) in defaults {
        if !url.contains(&format!("{name}=")) {
            let sep = if url.contains('?') { '&' } else { '?' };
            url = format!("{url}{sep}{name}={value}");
        }
    }
    url
}

/// Opens connections of the right variant directly, so a SQLite path is never offered to libpq.
pub struct Manager {
    target: Target,
    /// SQLite page cache in KiB: 4 MiB for the writer, whose batches touch index pages all over the
    /// file; misses are served from the OS's cache, while a larger cache makes commits slower: after
    /// a B-tree split SQLite's commit scans the cache's whole page hash (measured at 5,000/s: 16 MiB
    /// kept it as busy as 64 or 256 MiB, 4 MiB a sixth less busy). SQLite's default (2 MiB) for
    /// readers, which mostly read a row once.
    cache_kib: u32,
    /// SQLite `synchronous`: NORMAL for the writer, whose commits `WalFile::sync` makes durable
    /// before anything is acknowledged; FULL for the rest.
    synchronous: &'static str,
}

impl ManageConnection for Manager {
    type Connection = DbConnection;
    type Error = r2d2::Error;

    fn connect(&self) -> Result<DbConnection, r2d2::Error> {
        match &self.target {
            Target::Sqlite(path) => {
                let mut conn = SqliteConnection::establish(path).map_err(r2d2::Error::ConnectionError)?;
                // Per connection: wait for the writer instead of failing, WAL so readers never block it.
                // The writer commits without syncing (NORMAL) and whoever acknowledges a write syncs
                // the WAL first (`WalFile`), so a commit is on disk before it is acknowledged, even
                // across a power loss, while the writer goes on with the next one. No commit
                // checkpoints by itself: that would stall the ledger writer; the checkpointer thread
                // does it instead.
                // A new file gets small pages: a batch touches a leaf of each index per agent, and
                // every touched page is written whole to the WAL and again into the file.
                conn.batch_execute(&format!(
                    "PRAGMA page_size = {PAGE_SIZE}; PRAGMA busy_timeout = 5000; PRAGMA journal_mode = WAL; \
                     PRAGMA synchronous = {}; PRAGMA foreign_keys = ON; PRAGMA wal_autocheckpoint = 0; \
                     PRAGMA journal_size_limit = {SETTLE_BYTES}; PRAGMA cache_size = -{};",
                    self.synchronous, self.cache_kib
                ))
                .map_err(r2d2::Error::QueryError)?;
                Ok(DbConnection::Sqlite(conn))
            }
            Target::Postgres(url) => {
                let mut conn = PgConnection::establish(url).map_err(r2d2::Error::ConnectionError)?;
                // Plan each execution with the table as it is now: a generic plan cached while the
                // authorizations table was small goes on scanning it whole once it is large.
                conn.batch_execute("SET plan_cache_mode = force_custom_plan").map_err(r2d2::Error::QueryError)?;
                Ok(DbConnection::Postgresql(conn))
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
    /// SQLite: how many frames the checkpointer thread last found in the WAL, all copied (see
    /// `settle_wal`). The thread runs while any clone of this handle lives.
    wal_frames: Option<Arc<AtomicI32>>,
    /// How many frames the WAL may hold before the writer lets it start over.
    settle_frames: i32,
    /// SQLite: the writer's commits are durable only once this is synced.
    wal: Option<Arc<WalFile>>,
    /// The longest a request waits for a read or write: past it, 503 `storage_unavailable`.
    timeout: Duration,
}

/// How long `read` and `write` wait unless `with_timeout` says otherwise.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

impl Db {
    /// Connects, creating the SQLite file and its directory if needed. Does not migrate.
    pub fn connect(url: &str, pool_size: u32) -> Result<Db> {
        let target = Target::parse(url)?;
        let build = |size: u32, target: Target, cache_kib: u32, synchronous: &'static str| {
            Pool::builder()
                .max_size(size)
                .min_idle(Some(1))
                // A SQLite file does not go away under an open connection; a PostgreSQL
                // connection may, and is better tested than found broken mid-batch.
                .test_on_check_out(matches!(target, Target::Postgres(_)))
                .connection_timeout(Duration::from_secs(5))
                .build(Manager { target, cache_kib, synchronous })
                .map_err(|e| Error::StorageUnavailable(format!("cannot open the database: {e}")))
        };
        match &target {
            Target::Sqlite(path) => {
                configure_sqlite();
                if let Some(dir) = Path::new(path).parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir)
                        .map_err(|e| Error::StorageUnavailable(format!("cannot create {}: {e}", dir.display())))?;
                }
                let file = path.clone();
                let wal = Arc::new(WalFile::of(&file));
                let writer = build(1, target.clone(), 4 << 10, "NORMAL")?;
                let reader = build(pool_size.max(1), target, 2 << 10, "FULL")?;
                let settle_frames = SETTLE_BYTES / page_size(&writer)?;
                let wal_frames = Arc::new(AtomicI32::new(0));
                spawn_checkpointer(file, Arc::downgrade(&wal_frames));
                let wal = Some(wal);
                Ok(Db { reader, writer, wal_frames: Some(wal_frames), settle_frames, wal, timeout: DEFAULT_TIMEOUT })
            }
            Target::Postgres(_) => {
                let pool = build(pool_size.max(2), target, 0, "FULL")?;
                let (reader, writer) = (pool.clone(), pool);
                Ok(Db { reader, writer, wal_frames: None, settle_frames: 0, wal: None, timeout: DEFAULT_TIMEOUT })
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
                    c.batch_execute(&format!("SELECT pg_advisory_lock({MIGRATIONS_LOCK})"))?;
                    let result = c.run_pending_migrations(POSTGRES_MIGRATIONS).map(names);
                    c.batch_execute(&format!("SELECT pg_advisory_unlock({MIGRATIONS_LOCK})"))?;
                    result
                }
            };
            applied.map_err(|e| Error::Internal(format!("migration failed: {e}")))
        })
        .await
        .and_then(|applied| self.sync_wal().map(|()| applied))
    }

    /// The longest `read` and `write` wait for the database.
    pub fn with_timeout(mut self, timeout: Duration) -> Db {
        self.timeout = timeout;
        self
    }

    /// Runs `f` on a reader connection.
    pub async fn read<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce(&mut DbConnection) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        self.bounded(self.run(self.reader.clone(), f)).await
    }

    /// `work`, or `storage_unavailable` once the timeout has passed. The blocking task goes on
    /// (a thread cannot be stopped): a write that finishes after the timeout still commits, as
    /// after any lost answer.
    async fn bounded<T>(&self, work: impl std::future::Future<Output = Result<T>>) -> Result<T> {
        tokio::time::timeout(self.timeout, work).await.unwrap_or_else(|_| {
            Err(Error::StorageUnavailable(format!("no answer from the database within {:?}", self.timeout)))
        })
    }

    /// The WAL sync failure that stops every write until a restart (SQLite), if there was one.
    pub fn wal_failure(&self) -> Option<String> {
        self.wal.as_ref().and_then(|wal| wal.failure())
    }

    /// Runs `f` in one transaction on the writer: all of it is stored, or none, and on disk
    /// once this returns.
    pub async fn write<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce(&mut DbConnection) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let (db, pool) = (self.clone(), self.writer.clone());
        let work = tokio::task::spawn_blocking(move || {
            let written = {
                let mut pooled = pool.get()?;
                let conn: &mut DbConnection = &mut pooled;
                let written = conn.transaction(f);
                db.settle_wal_on(conn);
                written?
            };
            // Synced with the connection back in the pool: the ledger writer (SQLite's one writer
            // too) goes on with its next batch meanwhile instead of waiting for this disk flush.
            db.sync_wal()?;
            Ok(written)
        });
        self.bounded(async { work.await.map_err(|e| Error::Internal(format!("storage task failed: {e}")))? }).await
    }

    /// SQLite, which one process writes; PostgreSQL may be shared by several nodes.
    pub fn is_sqlite(&self) -> bool {
        self.wal.is_some()
    }

    /// SQLite: the WAL the writer appends to, which must be synced before one of its commits is
    /// acknowledged (see `sync_wal`). None on PostgreSQL, whose commits are durable on return.
    pub fn wal(&self) -> Option<Arc<WalFile>> {
        self.wal.clone()
    }

    /// Makes every commit the writer has made so far durable.
    pub fn sync_wal(&self) -> Result<()> {
        match &self.wal {
            Some(wal) => wal.sync(),
            None => Ok(()),
        }
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

    /// Runs `f` on a reader connection on the calling thread, which must not be a runtime's (a
    /// backtest's: its reads then run at its thread's low priority too).
    pub fn read_here<T>(&self, f: impl FnOnce(&mut DbConnection) -> Result<T>) -> Result<T> {
        let mut conn = self.reader.get()?;
        f(&mut conn)
    }

    /// A connection for the ledger's writer thread (a plain thread, not a tokio task): on SQLite
    /// the one writer connection, which admin writes share between ledger batches.
    pub fn ledger_connection(&self) -> Result<r2d2::PooledConnection<Manager>> {
        Ok(self.writer.get()?)
    }

    /// SQLite, for the one writer to call between two writes once the WAL holds `SETTLE_BYTES`:
    /// the checkpointer thread has copied it up to a moment ago, so a checkpoint here copies only
    /// the pages written since, and with no write under way it gets them all: the next write then
    /// starts the WAL over instead of growing it. This is the one stall checkpoints still cost
    /// the writer (milliseconds, about once per 64 MiB written).
    pub fn settle_wal(&self) {
        if self.settle_due() {
            match self.writer.get() {
                Ok(mut conn) => self.checkpoint_on(&mut conn),
                Err(e) => tracing::warn!(error = %e, "WAL checkpoint skipped"),
            }
        }
    }

    fn settle_wal_on(&self, conn: &mut DbConnection) {
        if self.settle_due() {
            self.checkpoint_on(conn);
        }
    }

    fn settle_due(&self) -> bool {
        let Some(frames) = &self.wal_frames else { return false };
        frames.load(Ordering::Acquire) >= self.settle_frames && frames.swap(0, Ordering::AcqRel) >= self.settle_frames
    }

    fn checkpoint_on(&self, conn: &mut DbConnection) {
        if let DbConnection::Sqlite(c) = conn {
            let started = std::time::Instant::now();
            if let Err(e) = checkpoint(c) {
                tracing::warn!(error = %e, "WAL checkpoint failed");
            }
            metrics::histogram!("spendgate_sqlite_settle_seconds").record(started.elapsed().as_secs_f64());
        }
    }

    /// Whether the database answers a trivial query now (for `/readyz`).
    pub async fn ping(&self) -> Result<()> {
        self.read(|conn| conn.batch_execute("SELECT 1").map_err(Error::from)).await
    }
}

/// A SQLite database's write-ahead log, for syncing what the writer committed with `synchronous =
/// NORMAL`: frames are written to the WAL at commit, and an fdatasync of that file (of any of its
/// descriptors: Linux syncs the file, not the descriptor) makes them durable. Until then a power
/// loss may take the newest commits, never a part of one, so nothing may be acknowledged before.
pub struct WalFile {
    path: PathBuf,
    state: Mutex<WalState>,
}

#[derive(Default)]
struct WalState {
    /// From `open_for_sync`. Opened again should the WAL be a new file (SQLite deletes it when its
    /// last connection closes).
    file: Option<ManuallyDrop<File>>,
    /// Set by a failed fdatasync: the kernel may then have dropped the unsynced pages and report
    /// the next sync as a success, so no later commit can be vouched for until a restart
    /// recovers from what is on disk.
    failed: Option<String>,
}

impl WalFile {
    fn of(database: &str) -> WalFile {
        WalFile { path: PathBuf::from(format!("{database}-wal")), state: Mutex::default() }
    }

    /// Why syncing failed, once it has: no write is acknowledged after that until a restart.
    pub fn failure(&self) -> Option<String> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).failed.clone()
    }

    pub fn sync(&self) -> Result<()> {
        let unsynced =
            |e: &dyn std::fmt::Display| Error::StorageUnavailable(format!("cannot sync {}: {e}", self.path.display()));
        let mut state = self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(failed) = &state.failed {
            return Err(unsynced(failed));
        }
        let current = match std::fs::metadata(&self.path) {
            Ok(m) => m.ino(),
            // SQLite deletes the WAL only after copying all of it into the file, synced.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(unsynced(&e)),
        };
        let file = match state.file.take() {
            Some(f) if f.metadata().is_ok_and(|m| m.ino() == current) => f,
            _ => open_for_sync(&self.path).map_err(|e| unsynced(&e))?,
        };
        let synced = file.sync_data();
        state.file = Some(file);
        synced.map_err(|e| {
            tracing::error!(error = %e, "syncing the WAL failed: every write fails until spendgate restarts");
            state.failed = Some(e.to_string());
            unsynced(&e)
        })
    }
}

/// A descriptor of one of SQLite's files, only to sync it, never closed: closing any descriptor of
/// the file drops every POSIX lock this process holds on it, SQLite's own included
/// (sqlite.org/howtocorrupt.html, 2.2), so it stays open until exit.
fn open_for_sync(path: &Path) -> std::io::Result<ManuallyDrop<File>> {
    File::options().write(true).open(path).map(ManuallyDrop::new)
}

/// PostgreSQL advisory lock keys, one space per database: the migrations, and the first key.
const MIGRATIONS_LOCK: i64 = 7_140_021;
const FIRST_KEY_LOCK: i64 = 7_140_022;

/// SQLite's process-wide settings, made once, before this process opens its first connection.
/// Each connection is used by one thread at a time (the pool hands it out alone; diesel's
/// connection is not `Sync`), so SQLite's per-call connection mutexes only cost time
/// (`MULTITHREAD`); and its memory statistics, which nothing reads, take a global mutex on every
/// allocation (`MEMSTATUS` off).
fn configure_sqlite() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        use libsqlite3_sys::{SQLITE_CONFIG_MEMSTATUS, SQLITE_CONFIG_MULTITHREAD, SQLITE_OK, sqlite3_config};
        // SAFETY: sqlite3_config changes global settings and must not race with SQLite's own
        // initialization: the Once runs it before any connection this module opens. Should SQLite
        // already be initialized (a connection opened elsewhere first), it answers SQLITE_MISUSE
        // and changes nothing, which is safe: the defaults (serialized, with statistics) stay.
        let codes = unsafe { [sqlite3_config(SQLITE_CONFIG_MULTITHREAD), sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0)] };
        if codes.iter().any(|&code| code != SQLITE_OK) {
            tracing::debug!(?codes, "SQLite was initialized already: its default threading and statistics stay");
        }
    });
}

/// The page size of a new SQLite file (an existing file keeps its own).
const PAGE_SIZE: i32 = 2048;

/// WAL bytes past which the writer lets the WAL start over.
const SETTLE_BYTES: i32 = 64 << 20;

/// Copies committed WAL pages back into the SQLite file, off the writer's path, so that no commit
/// waits for a checkpoint; pages written several times in between are copied once. A PASSIVE
/// checkpoint never blocks the writer, but under steady writes never quite catches up either, and
/// the WAL starts over only once one has: see `Db::settle_wal`.
/// SQLite syncs the file only at the end of a checkpoint that copied the whole WAL; under steady
/// writes that is mostly the writer's settling one, whose sync then flushed every page copied
/// since (measured: 5–50 ms of the writer's time, about once per 64 MiB). So this thread syncs
/// what it copied itself.
fn spawn_checkpointer(path: String, wal_frames: Weak<AtomicI32>) {
    let run = move || {
        let mut conn = match SqliteConnection::establish(&path) {
            Ok(conn) => conn,
            Err(e) => return tracing::error!(error = %e, "the SQLite checkpointer cannot open the database"),
        };
        // Without it the checkpoints still happen; only the writer's settling sync is longer.
        let file = open_for_sync(Path::new(&path))
            .inspect_err(|e| tracing::warn!(error = %e, "the SQLite checkpointer cannot sync the database file"))
            .ok();
        let mut pace = CheckpointPace::default();
        loop {
            std::thread::sleep(pace.pause);
            let Some(frames) = wal_frames.upgrade() else { return };
            let started = std::time::Instant::now();
            match checkpoint(&mut conn) {
                Ok(c) => {
                    let copied = pace.passed(&c);
                    if copied > 0
                        && let Some(file) = &file
                        && let Err(e) = file.sync_data()
                    {
                        tracing::warn!(error = %e, "syncing the SQLite file failed");
                    }
                    if c.complete() {
                        frames.store(c.log, Ordering::Release);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "SQLite checkpoint failed");
                    pace.failed();
                }
            }
            metrics::histogram!("spendgate_sqlite_checkpoint_seconds").record(started.elapsed().as_secs_f64());
        }
    };
    if let Err(e) = std::thread::Builder::new().name("sqlite-checkpoint".into()).spawn(run) {
        tracing::error!(error = %e, "cannot start the SQLite checkpointer");
    }
}

/// When the checkpointer's next pass comes: once about `FRAMES` new frames wait in the WAL, at the
/// rate the last pass found. The file's sync and the WAL's share the disk, and the WAL sync that a
/// decision waits for queues behind what the pass wrote: small passes keep that wait short. At
/// 5,000 authorizations/s (about 20,000 frames/s), one 30 s run each: a pass every 100 ms gave p99
/// 8.0–8.3 ms, every 10 ms 4.7–5.2 ms, every 2 ms 4.3 ms, for about 40% more bytes written (a page
/// changed in two passes is copied twice) and three times the thread's CPU. Idle, a pass every
/// `MAX` copies nothing and syncs nothing.
struct CheckpointPace {
    pause: Duration,
    /// The WAL frames already in the file after the last pass.
    backfilled: i32,
}

impl CheckpointPace {
    const FRAMES: f64 = 64.0;
    const MIN: Duration = Duration::from_millis(2);
    const MAX: Duration = Duration::from_millis(100);

    /// Takes a pass's result into account; returns how many frames it copied.
    fn passed(&mut self, c: &Checkpointed) -> i32 {
        // -1 while there is no WAL. Fewer than before: the WAL started over in between, and all
        // of it is new (one that started over and outgrew the last count is undercounted once,
        // which only delays the next pass: SQLite syncs the file whenever it has copied all of it).
        let checkpointed = c.checkpointed.max(0);
        let copied = if checkpointed >= self.backfilled { checkpointed - self.backfilled } else { checkpointed };
        self.backfilled = checkpointed;
        self.pause = match copied {
            0 => Self::MAX,
            n => self.pause.mul_f64(Self::FRAMES / f64::from(n)).clamp(Self::MIN, Self::MAX),
        };
        copied
    }

    /// A failed pass is retried at the idle pace: a lasting failure is logged ten times a second,
    /// not 500.
    fn failed(&mut self) {
        self.pause = Self::MAX;
    }
}

impl Default for CheckpointPace {
    fn default() -> Self {
        CheckpointPace { pause: Self::MAX, backfilled: 0 }
    }
}

/// The page size of the SQLite file behind `pool`: what one WAL frame holds.
fn page_size(pool: &DbPool) -> Result<i32> {
    #[derive(diesel::QueryableByName)]
    struct PageSize {
        #[diesel(sql_type = diesel::sql_types::Integer)]
        page_size: i32,
    }
    let mut conn = pool.get()?;
    let size: PageSize = diesel::sql_query("PRAGMA page_size").get_result(&mut *conn)?;
    Ok(size.page_size.max(512))
}

/// The answer of `PRAGMA wal_checkpoint`: frames in the WAL, and how many are in the file.
#[derive(diesel::QueryableByName)]
struct Checkpointed {
    #[diesel(sql_type = diesel::sql_types::Integer)]
    busy: i32,
    #[diesel(sql_type = diesel::sql_types::Integer)]
    log: i32,
    #[diesel(sql_type = diesel::sql_types::Integer)]
    checkpointed: i32,
}

impl Checkpointed {
    /// Every frame in the WAL is now in the database file too.
    fn complete(&self) -> bool {
        self.busy == 0 && self.log == self.checkpointed
    }
}

fn checkpoint(conn: &mut SqliteConnection) -> QueryResult<Checkpointed> {
    diesel::sql_query("PRAGMA wal_checkpoint(PASSIVE)").get_result(conn)
}

fn names(versions: Vec<diesel::migration::MigrationVersion<'_>>) -> Vec<String> {
    versions.into_iter().map(|v| v.to_string()).collect()
}

/// The current time at the precision it is stored with (see `clock`).
pub fn now() -> jiff::Timestamp {
    crate::clock::now()
}

/// Milliseconds since the Unix epoch, as stored.
pub(crate) fn to_millis(t: jiff::Timestamp) -> i64 {
    t.as_millisecond()
}

pub(crate) fn from_millis(ms: i64) -> Result<jiff::Timestamp> {
    jiff::Timestamp::from_millisecond(ms).map_err(|e| Error::Internal(format!("stored time {ms}: {e}")))
}

/// A time a request gives (RFC 3339) as the milliseconds the tables hold, or a 400 naming `field`.
pub(crate) fn query_time(field: &str, value: Option<&str>) -> Result<Option<i64>> {
    value
        .map(|v| {
            v.parse::<jiff::Timestamp>().map(to_millis).map_err(|_| {
                Error::validation(format!("{field} must be an RFC 3339 time such as 2026-11-22T00:00:00Z"))
            })
        })
        .transpose()
}

/// Runs `f` in one transaction that sees the database as of one moment, whatever commits meanwhile
/// (on SQLite any read transaction does; on PostgreSQL, repeatable read).
pub fn snapshot<T>(conn: &mut DbConnection, f: impl FnOnce(&mut DbConnection) -> Result<T>) -> Result<T> {
    conn.transaction(|conn| {
        if let DbConnection::Postgresql(pg) = conn {
            pg.batch_execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")?;
        }
        f(conn)
    })
}

/// For stored values that must parse; a failure means the row was written by something else.
pub(crate) fn corrupt(what: &str, value: &str) -> Error {
    Error::Internal(format!("stored {what} {value:?} is not valid"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The writer commits without syncing and its WAL is synced by `WalFile`; every other
    /// connection keeps SQLite's FULL.
    #[test]
    fn only_the_writer_leaves_syncing_to_the_wal_file() {
        #[derive(diesel::QueryableByName)]
        struct Synchronous {
            #[diesel(sql_type = diesel::sql_types::Integer)]
            synchronous: i32,
        }
        let synchronous = |pool: &DbPool| {
            let s: Synchronous = diesel::sql_query("PRAGMA synchronous").get_result(&mut *pool.get().unwrap()).unwrap();
            s.synchronous
        };
        let dir = tempfile::tempdir().unwrap();
        let db = Db::connect(&format!("sqlite://{}", dir.path().join("sync.db").display()), 1).unwrap();
        assert_eq!((synchronous(&db.writer), synchronous(&db.reader)), (1, 2), "writer NORMAL, readers FULL");
        assert!(db.wal().is_some());
    }

    /// The WAL is synced through a descriptor of the file that is there now: none while there is
    /// no WAL, and a new one once the WAL is a new file.
    #[test]
    fn the_wal_file_follows_the_wal() {
        let dir = tempfile::tempdir().unwrap();
        let database = dir.path().join("follow.db").display().to_string();
        let wal = WalFile::of(&database);
        let inode = |wal: &WalFile| wal.state.lock().unwrap().file.as_ref().map(|f| f.metadata().unwrap().ino());
        wal.sync().unwrap();
        assert_eq!(inode(&wal), None, "nothing to sync without a WAL");

        std::fs::write(format!("{database}-wal"), b"first").unwrap();
        wal.sync().unwrap();
        let first = inode(&wal).unwrap();
        std::fs::remove_file(format!("{database}-wal")).unwrap();
        std::fs::write(format!("{database}-wal.new"), b"second").unwrap();
        std::fs::rename(format!("{database}-wal.new"), format!("{database}-wal")).unwrap();
        wal.sync().unwrap();
        let second = inode(&wal).unwrap();
        assert_ne!(first, second);
        assert_eq!(second, std::fs::metadata(format!("{database}-wal")).unwrap().ino());
    }

    /// The checkpointer's passes come about every `FRAMES` new frames: often under load, seldom
    /// when idle, never faster than `MIN`, and a WAL that started over counts as all new.
    #[test]
    fn checkpoints_are_paced_by_the_wals_growth() {
        let pass = |pace: &mut CheckpointPace, log: i32, checkpointed: i32| {
            pace.passed(&Checkpointed { busy: 0, log, checkpointed })
        };
        let mut pace = CheckpointPace::default();
        assert_eq!(pass(&mut pace, -1, -1), 0, "no WAL yet");
        assert_eq!(pass(&mut pace, 0, 0), 0);
        assert_eq!(pace.pause, CheckpointPace::MAX, "idle");

        // 640 frames in the first 100 ms (6.4 per ms): the next pass in 10 ms, when 64 more wait.
        assert_eq!(pass(&mut pace, 640, 640), 640);
        assert_eq!(pace.pause, Duration::from_millis(10));
        assert_eq!(pass(&mut pace, 704, 704), 64);
        assert_eq!(pace.pause, Duration::from_millis(10), "steady");

        // Ten times the rate: no faster than MIN.
        assert_eq!(pass(&mut pace, 1344, 1344), 640);
        assert_eq!(pace.pause, CheckpointPace::MIN);

        // The WAL started over: its 32 frames are all new, half of what a pass should hold.
        assert_eq!(pass(&mut pace, 32, 32), 32);
        assert_eq!(pace.pause, 2 * CheckpointPace::MIN);
        assert_eq!(pass(&mut pace, 32, 32), 0);
        assert_eq!(pace.pause, CheckpointPace::MAX, "idle again");

        // A failed pass under load: the next one at the idle pace.
        assert_eq!(pass(&mut pace, 672, 672), 640);
        assert_eq!(pace.pause, Duration::from_millis(10));
        pace.failed();
        assert_eq!(pace.pause, CheckpointPace::MAX);
    }

    /// The ledger's rows are checked without a temporary index per row (a constant IN list of more
    /// than two values is one in SQLite), and the checks still refuse what they did.
    #[test]
    fn the_ledgers_checks_build_no_temporary_index() {
        #[derive(diesel::QueryableByName)]
        struct Op {
            #[diesel(sql_type = diesel::sql_types::Text)]
            opcode: String,
        }
        let dir = tempfile::tempdir().unwrap();
        let db = Db::connect(&format!("sqlite://{}", dir.path().join("checks.db").display()), 1).unwrap();
        tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(db.migrate()).unwrap();
        let mut conn = db.writer.get().unwrap();
        let authorization = "INSERT INTO authorizations (id, source, external_id, agent_id, rail, status, amount, \
            currency, cap_amount, cap_currency, card_amount, card_currency, held, posted, counted, counted_card, \
            refunded, merchant_name, seq, authorized_at, updated_at) VALUES ('auth_1', 'native', 'e1', 'agt_none', \
            'card', '{status}', 100, 'USD', 100, 'USD', 100, 'USD', 100, 0, 100, 100, 0, 'm', 1, 0, 0)";
        let transfer = "INSERT INTO transfers (id, external_id, agent_id, kind, amount, currency, created_at) \
            VALUES ('trf_1', 'x', 'agt_none', '{kind}', 1, 'USD', 0)";
        for sql in [
            authorization.replace("{status}", "pending"),
            "UPDATE authorizations SET status = 'posted' WHERE id = 'auth_1'".to_owned(),
            transfer.replace("{kind}", "post"),
        ] {
            let program: Vec<Op> = diesel::sql_query(format!("EXPLAIN {sql}")).load(&mut *conn).unwrap();
            assert!(!program.is_empty());
            assert!(!program.iter().any(|op| op.opcode == "OpenEphemeral"), "a temporary index in {sql}");
        }
        for sql in [authorization.replace("{status}", "settled"), transfer.replace("{kind}", "gift")] {
            let refused = conn.batch_execute(&sql).unwrap_err().to_string();
            assert!(refused.contains("CHECK constraint failed"), "{refused}");
        }
    }

    /// Rebuilding the ledger's tables for those checks keeps their rows, their indexes and the
    /// foreign keys that name them, and leaves foreign keys on.
    #[test]
    fn the_rebuild_for_plain_checks_keeps_the_ledger() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = SqliteConnection::establish(dir.path().join("old.db").to_str().unwrap()).unwrap();
        conn.batch_execute("PRAGMA foreign_keys = ON").unwrap();
        while !conn.pending_migrations(SQLITE_MIGRATIONS).unwrap()[0].name().to_string().ends_with("plain_checks") {
            conn.run_next_migration(SQLITE_MIGRATIONS).unwrap();
        }
        conn.batch_execute(
            "INSERT INTO agents (id, name, status, policy, created_at, updated_at) VALUES ('agt_1', 'a', 'active', '{}', 0, 0);
             INSERT INTO authorizations (id, source, external_id, agent_id, rail, status, amount, currency, cap_amount,
                 cap_currency, card_amount, card_currency, held, posted, counted, counted_card, refunded, merchant_name,
                 seq, authorized_at, updated_at)
                 VALUES ('auth_1', 'native', 'e1', 'agt_1', 'card', 'posted', 100, 'USD', 100, 'USD', 100, 'USD',
                 0, 100, 100, 100, 0, 'm', 1, 5, 5);
             INSERT INTO transfers (id, external_id, agent_id, authorization_id, kind, amount, currency, created_at)
                 VALUES ('trf_1', 'c1', 'agt_1', 'auth_1', 'post', 100, 'USD', 5);",
        )
        .unwrap();

        conn.run_next_migration(SQLITE_MIGRATIONS).unwrap();

        #[derive(diesel::QueryableByName)]
        struct Count {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        let count =
            |conn: &mut SqliteConnection, sql: &str| diesel::sql_query(sql).get_result::<Count>(conn).unwrap().n;
        assert_eq!(
            count(&mut conn, "SELECT count(*) AS n FROM authorizations WHERE status = 'posted' AND posted = 100"),
            1
        );
        assert_eq!(count(&mut conn, "SELECT count(*) AS n FROM transfers WHERE authorization_id = 'auth_1'"), 1);
        assert_eq!(count(&mut conn, "SELECT count(*) AS n FROM pragma_foreign_key_check"), 0);
        assert_eq!(count(&mut conn, "SELECT foreign_keys AS n FROM pragma_foreign_keys"), 1);
        assert_eq!(
            count(
                &mut conn,
                "SELECT count(*) AS n FROM pragma_foreign_key_list('transfers') WHERE \"table\" = 'authorizations'"
            ),
            1
        );
        assert_eq!(
            count(
                &mut conn,
                "SELECT count(*) AS n FROM sqlite_master WHERE tbl_name = 'authorizations' AND name IN \
                 ('authorizations_agent_seq', 'authorizations_agent', 'authorizations_pending')"
            ),
            3
        );
        let orphan = "INSERT INTO transfers (id, external_id, agent_id, authorization_id, kind, amount, currency, created_at) \
            VALUES ('trf_2', 'c2', 'agt_1', 'auth_none', 'post', 1, 'USD', 6)";
        let refused = conn.batch_execute(orphan).unwrap_err().to_string();
        assert!(refused.contains("FOREIGN KEY constraint failed"), "{refused}");
    }

    /// SQLite keeps one index by agent, `(agent_id, id)`: a book's first load, which reads all of
    /// an agent's rows, goes through it instead of the whole table.
    #[test]
    fn a_book_loads_through_the_one_agent_index() {
        #[derive(diesel::QueryableByName)]
        struct Plan {
            #[diesel(sql_type = diesel::sql_types::Text)]
            detail: String,
        }
        #[derive(diesel::QueryableByName)]
        struct Name {
            #[diesel(sql_type = diesel::sql_types::Text)]
            name: String,
        }
        let dir = tempfile::tempdir().unwrap();
        let db = Db::connect(&format!("sqlite://{}", dir.path().join("index.db").display()), 1).unwrap();
        tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(db.migrate()).unwrap();
        let mut conn = db.writer.get().unwrap();
        let indexes: Vec<Name> = diesel::sql_query(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'authorizations' AND sql IS NOT NULL \
             ORDER BY name",
        )
        .load(&mut *conn)
        .unwrap();
        let indexes: Vec<String> = indexes.into_iter().map(|i| i.name).collect();
        assert_eq!(indexes, ["authorizations_agent", "authorizations_pending"]);

        let agent = crate::domain::ids::AgentId::from_stored("agt_1".to_owned());
        let load = ledger::approved_since_on_sqlite(&agent, -1);
        let load = diesel::debug_query::<diesel::sqlite::Sqlite, _>(&load).to_string();
        let sql = load.split(" -- binds").next().unwrap().to_owned();
        let plan: Vec<Plan> = diesel::sql_query(format!("EXPLAIN QUERY PLAN {sql}"))
            .bind::<diesel::sql_types::Text, _>("agt_1")
            .bind::<diesel::sql_types::BigInt, _>(-1)
            .bind::<diesel::sql_types::Text, _>("declined")
            .load(&mut *conn)
            .unwrap();
        let plan: Vec<String> = plan.into_iter().map(|p| p.detail).collect();
        assert!(plan.iter().any(|p| p.contains("USING INDEX authorizations_agent ")), "{plan:?}");
    }

    /// A new file gets the small pages; a file made before keeps its own, and the WAL's settle
    /// mark counts frames of whichever size the file has.
    #[test]
    fn page_size_is_set_on_new_files_only() {
        let dir = tempfile::tempdir().unwrap();
        let fresh = Db::connect(&format!("sqlite://{}", dir.path().join("new.db").display()), 1).unwrap();
        assert_eq!(page_size(&fresh.writer).unwrap(), PAGE_SIZE);
        assert_eq!(fresh.settle_frames, SETTLE_BYTES / PAGE_SIZE);

        let old = dir.path().join("old.db");
        let mut conn = SqliteConnection::establish(old.to_str().unwrap()).unwrap();
        conn.batch_execute("PRAGMA page_size = 4096; PRAGMA journal_mode = WAL; CREATE TABLE t (x INTEGER)").unwrap();
        drop(conn);
        let existing = Db::connect(&format!("sqlite://{}", old.display()), 1).unwrap();
        assert_eq!(page_size(&existing.writer).unwrap(), 4096);
        assert_eq!(existing.settle_frames, SETTLE_BYTES / 4096);
    }

    /// Writes that never pause still let the WAL start over: it holds about what fills it to the
    /// settle mark plus one interval of the checkpointer, not everything ever written.
    #[test]
    fn the_wal_starts_over_under_steady_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal.db");
        let mut db = Db::connect(&format!("sqlite://{}", path.display()), 2).unwrap();
        db.settle_frames = 256;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        let write = |sql: &'static str| runtime.block_on(db.write(move |c| Ok(c.batch_execute(sql)?))).unwrap();
        write("CREATE TABLE filler (data BLOB NOT NULL)");

        let (mut written, started) = (0u64, std::time::Instant::now());
        while started.elapsed() < Duration::from_secs(3) {
            write("INSERT INTO filler (data) VALUES (randomblob(16384))");
            written += 16 << 10;
        }
        let wal = std::fs::metadata(format!("{}-wal", path.display())).unwrap().len();
        assert!(written > 8 * (64 << 10), "the test wrote too little to tell: {written} bytes");
        assert!(wal < written / 2, "the WAL holds {wal} of the {written} bytes written: it never started over");
    }
}
