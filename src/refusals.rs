//! Refused requests (unknown keys, forged or stale signatures, forged links, forbidden fetches)
//! are logged in summary: at most one line per cause per interval, counting the refusals since the
//! cause's last line, so a flood of bad requests cannot fill the disk. (`/metrics` counts each
//! refused webhook one by one.)

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

/// The longest a cause stays silent while refusals keep coming.
const EVERY: Duration = Duration::from_secs(10);

static LOG: LazyLock<RefusalLog> = LazyLock::new(|| RefusalLog::new(EVERY));

/// Logs a refusal of `cause` (a fixed text) of a request for `what` (a path, a host); `why` and
/// `who` (a peer address, an agent) describe this one.
pub fn refused(cause: &'static str, what: &str, who: &str, why: &str) {
    if let Some(count) = LOG.record(cause) {
        tracing::warn!(target: "security", cause, what, who, why, refused = count,
            "request refused (one line per cause every {} s at most; `refused` counts them since the last)",
            EVERY.as_secs());
    }
}

struct RefusalLog {
    every: Duration,
    causes: Mutex<HashMap<&'static str, Tally>>,
}

#[derive(Default)]
struct Tally {
    /// Refusals not yet counted in a line.
    unlogged: u64,
    last_line: Option<Instant>,
}

impl RefusalLog {
    fn new(every: Duration) -> Self {
        RefusalLog { every, causes: Mutex::new(HashMap::new()) }
    }

    /// Some(refusals to report) when a line is due now, None while the cause is quiet.
    fn record(&self, cause: &'static str) -> Option<u64> {
        let mut causes = self.causes.lock().unwrap_or_else(|e| e.into_inner());
        let tally = causes.entry(cause).or_default();
        tally.unlogged += 1;
        let due = tally.last_line.is_none_or(|at| at.elapsed() >= self.every);
        if !due {
            return None;
        }
        tally.last_line = Some(Instant::now());
        Some(std::mem::take(&mut tally.unlogged))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_one_line_per_cause_per_interval_and_nothing_is_lost_from_the_count() {
        let log = RefusalLog::new(Duration::from_millis(100));
        assert_eq!(log.record("unknown key"), Some(1), "the first is logged at once");
        assert_eq!((0..10_000).filter_map(|_| log.record("unknown key")).count(), 0);
        assert_eq!(log.record("forged signature"), Some(1), "causes are counted apart");
        std::thread::sleep(Duration::from_millis(110));
        assert_eq!(log.record("unknown key"), Some(10_001), "the next line counts the quiet ones");
    }
}
