//! When an agent's last hour is an anomaly: its spend against its own hourly average before it.

use crate::domain::policy::SpendRate;

/// The least history an average is taken over: a younger agent has no baseline to judge by.
pub const MIN_HISTORY_HOURS: i64 = 24;
const HOUR_MS: i64 = 3_600_000;

/// The baseline's period, `[from, to)` in ms, ending where the last hour begins and reaching back
/// `rule.baseline` or to the agent's creation; with its length in whole hours. None when that is
/// under a day.
pub fn baseline(rule: &SpendRate, created_at_ms: i64, now_ms: i64) -> Option<(i64, i64, i64)> {
    let to = now_ms - HOUR_MS;
    let hours = rule.baseline_hours().min((to - created_at_ms).div_euclid(HOUR_MS));
    (hours >= MIN_HISTORY_HOURS).then_some((to - hours * HOUR_MS, to, hours))
}

/// Whether `last_hour` exceeds `rule.multiple` times the hourly average of `baseline_sum` over
/// `hours`, and is at least `rule.min_amount`. Exact: no division.
pub fn anomalous(rule: &SpendRate, last_hour: i64, baseline_sum: i64, hours: i64) -> bool {
    last_hour >= rule.min_amount
        && i128::from(last_hour) * i128::from(hours) > i128::from(rule.multiple) * i128::from(baseline_sum.max(0))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn rule(multiple: u32, baseline: &str, min_amount: i64) -> SpendRate {
        SpendRate { multiple, baseline: baseline.into(), min_amount }
    }

    #[test]
    fn the_last_hour_must_exceed_the_multiple_of_the_average() {
        let r = rule(3, "7d", 1);
        // 168 hours at 10 an hour: the average is 10, three times it 30.
        assert!(!anomalous(&r, 30, 1_680, 168), "equal to the multiple is not over it");
        assert!(anomalous(&r, 31, 1_680, 168));
        let r = rule(3, "7d", 100);
        assert!(!anomalous(&r, 99, 0, 168), "below min_amount, however quiet the agent was");
        assert!(anomalous(&r, 100, 0, 168));
        // No overflow at the extremes.
        assert!(anomalous(&r, i64::MAX, i64::MAX, 2_160));
        assert!(!anomalous(&r, i64::MAX, i64::MAX, 1));
    }

    #[test]
    fn the_baseline_reaches_back_to_the_agents_creation_and_needs_a_day() {
        let now = 1_000 * HOUR_MS;
        let r = rule(3, "7d", 1);
        assert_eq!(baseline(&r, 0, now), Some((now - 169 * HOUR_MS, now - HOUR_MS, 168)));
        assert_eq!(baseline(&r, now - 50 * HOUR_MS - 5, now), Some((now - 50 * HOUR_MS, now - HOUR_MS, 49)));
        assert_eq!(baseline(&r, now - 25 * HOUR_MS, now), Some((now - 25 * HOUR_MS, now - HOUR_MS, 24)));
        assert_eq!(baseline(&r, now - 25 * HOUR_MS + 1, now), None, "under a day of history");
    }

    proptest! {
        #[test]
        fn more_spend_or_a_lower_baseline_never_calms_an_anomaly(
            multiple in 2u32..1_000, min in 1i64..10_000, hours in 24i64..2_160,
            last in 0i64..1_000_000_000, more in 0i64..1_000_000, base in 0i64..1_000_000_000_000, less in 0i64..1_000_000,
        ) {
            let r = rule(multiple, "7d", min);
            if anomalous(&r, last, base, hours) {
                prop_assert!(anomalous(&r, last + more, base, hours));
                prop_assert!(anomalous(&r, last, (base - less).max(0), hours));
            }
        }
    }
}
