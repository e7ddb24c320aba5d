//! The time every record is stamped with, at the precision it is stored with (milliseconds).
//!
//! It is the wall clock, plus an offset that only a simulation moves: a test that needs weeks of
//! recorded history (calendar windows, expiries, backtests over them) makes it in seconds by moving
//! this clock forward between requests. Nothing in the server moves it.

use std::sync::atomic::{AtomicI64, Ordering};

static OFFSET_MS: AtomicI64 = AtomicI64::new(0);

/// Now, in whole milliseconds, so that what a write returns equals what a later read returns.
pub fn now() -> jiff::Timestamp {
    let ms = jiff::Timestamp::now().as_millisecond() + OFFSET_MS.load(Ordering::Relaxed);
    jiff::Timestamp::from_millisecond(ms).expect("the clock is within range")
}

/// Moves this process's clock forward by `ms` (never back: what is recorded stays in time order).
#[doc(hidden)]
pub fn advance(ms: i64) {
    OFFSET_MS.fetch_add(ms.max(0), Ordering::Relaxed);
}
