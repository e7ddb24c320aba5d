//! Backtests as they run and once done: what was asked, how far the replay got, and its report.

use diesel::prelude::*;

use super::DbConnection;
use super::schema::backtests;
use crate::domain::backtest::BacktestStatus;
use crate::error::Result;

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = backtests)]
#[diesel(treat_none_as_default_value = false)]
pub struct BacktestRow {
    pub id: String,
    /// What was asked, as JSON.
    pub spec: String,
    pub status: BacktestStatus,
    pub replayed: i64,
    pub total: i64,
    /// The report, as JSON, once done.
    pub result: Option<String>,
    pub error: Option<String>,
    pub created_by: Option<String>,
    pub created_at: i64,
    pub finished_at: Option<i64>,
}

pub fn insert(conn: &mut DbConnection, row: &BacktestRow) -> Result<()> {
    diesel::insert_into(backtests::table).values(row).execute(conn)?;
    Ok(())
}

pub fn find(conn: &mut DbConnection, id: &str) -> Result<Option<BacktestRow>> {
    Ok(backtests::table.find(id).select(BacktestRow::as_select()).first(conn).optional()?)
}

/// The newest first, after `cursor` (an id) when given.
pub fn list(conn: &mut DbConnection, cursor: Option<&str>, limit: i64) -> Result<Vec<BacktestRow>> {
    let mut query =
        backtests::table.select(BacktestRow::as_select()).order(backtests::id.desc()).limit(limit).into_boxed();
    if let Some(cursor) = cursor {
        query = query.filter(backtests::id.lt(cursor.to_owned()));
    }
    Ok(query.load(conn)?)
}

/// How far a running backtest has got.
pub fn progress(conn: &mut DbConnection, id: &str, replayed: i64, total: i64) -> Result<()> {
    diesel::update(backtests::table.find(id).filter(backtests::status.eq(BacktestStatus::Running)))
        .set((backtests::replayed.eq(replayed), backtests::total.eq(total)))
        .execute(conn)?;
    Ok(())
}

/// Ends a running backtest (done, failed or cancelled); false if it had ended already.
pub fn finish(
    conn: &mut DbConnection,
    id: &str,
    status: BacktestStatus,
    result: Option<&str>,
    error: Option<&str>,
    now_ms: i64,
) -> Result<bool> {
    let changed = diesel::update(backtests::table.find(id).filter(backtests::status.eq(BacktestStatus::Running)))
        .set((
            backtests::status.eq(status),
            backtests::result.eq(result),
            backtests::error.eq(error),
            backtests::finished_at.eq(Some(now_ms)),
        ))
        .execute(conn)?;
    Ok(changed == 1)
}
