//! Where a limit's window starts, as of a moment: rolling (the last N seconds), calendar (the current
//! day, ISO week or month in a timezone, so "this month in Berlin" turns over at midnight Berlin time)
//! or lifetime.

use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};

use crate::domain::policy::{CalendarUnit, Window};

/// The first millisecond that counts: spends authorized at or after it are in the window.
pub fn start_ms(window: &Window, now: Timestamp) -> i64 {
    match window {
        // Exactly `seconds` after its authorization a spend leaves the window.
        Window::Rolling { seconds, .. } => now.as_millisecond() - seconds * 1_000 + 1,
        Window::Calendar { unit, timezone } => {
            // Timezones are checked when the policy is stored; an unknown one here counts from the
            // beginning of time, which can only make the limit stricter.
            let Ok(tz) = TimeZone::get(timezone) else { return i64::MIN };
            calendar_start(*unit, now, tz).unwrap_or(i64::MIN)
        }
        Window::Lifetime => i64::MIN,
    }
}

/// When the current calendar window ends (the next one starts); None for rolling and lifetime
/// windows, which never turn over.
pub fn end_ms(window: &Window, now: Timestamp) -> Option<i64> {
    let Window::Calendar { unit, timezone } = window else { return None };
    let tz = TimeZone::get(timezone).ok()?;
    let today = now.to_zoned(tz.clone()).date();
    let next = match unit {
        CalendarUnit::Day => today.tomorrow().ok()?,
        CalendarUnit::Week => {
            today.checked_add((7 - i64::from(today.weekday().to_monday_zero_offset())).days()).ok()?
        }
        CalendarUnit::Month => today.first_of_month().checked_add(1.month()).ok()?,
    };
    Some(next.to_zoned(tz).ok()?.timestamp().as_millisecond())
}

/// How long after its authorization a spend can still count in the window: None for ever.
/// Calendar windows are bounded generously (a day in any timezone, DST included, lasts at most 25
/// hours): keeping a spend a little longer than needed costs memory, dropping it early a wrong cap.
pub fn reach_ms(window: &Window) -> Option<i64> {
    const DAY: i64 = 86_400_000;
    match window {
        Window::Rolling { seconds, .. } => Some(seconds * 1_000),
        Window::Calendar { unit: CalendarUnit::Day, .. } => Some(2 * DAY),
        Window::Calendar { unit: CalendarUnit::Week, .. } => Some(8 * DAY),
        Window::Calendar { unit: CalendarUnit::Month, .. } => Some(32 * DAY),
        Window::Lifetime => None,
    }
}

fn calendar_start(unit: CalendarUnit, now: Timestamp, tz: TimeZone) -> Option<i64> {
    let today = now.to_zoned(tz.clone()).date();
    let first = match unit {
        CalendarUnit::Day => today,
        CalendarUnit::Week => today.checked_sub(i64::from(today.weekday().to_monday_zero_offset()).days()).ok()?,
        CalendarUnit::Month => today.first_of_month(),
    };
    // to_zoned resolves a midnight that a DST change skips to the first instant of the day.
    Some(first.to_zoned(tz).ok()?.timestamp().as_millisecond())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn cal(unit: CalendarUnit, tz: &str) -> Window {
        Window::Calendar { unit, timezone: tz.into() }
    }

    fn start(window: &Window, now: &str) -> Timestamp {
        Timestamp::from_millisecond(start_ms(window, at(now))).unwrap()
    }

    #[test]
    fn every_window_starts_within_its_reach() {
        let windows = [
            Window::Rolling { text: "90d".into(), seconds: 90 * 86_400 },
            cal(CalendarUnit::Day, "Pacific/Kiritimati"),
            cal(CalendarUnit::Day, "America/Los_Angeles"),
            cal(CalendarUnit::Week, "Pacific/Pago_Pago"),
            cal(CalendarUnit::Month, "Asia/Kathmandu"),
        ];
        // Late in long months and weeks, and around DST changes, where windows reach furthest back.
        let nows = [
            "2026-01-31T18:00:00Z",
            "2026-01-31T23:59:59Z",
            "2026-03-09T06:59:59Z",
            "2026-11-01T23:59:59Z",
            "2026-12-27T10:00:00Z",
        ];
        for w in &windows {
            let reach = reach_ms(w).unwrap();
            for now in nows {
                let back = at(now).as_millisecond() - start_ms(w, at(now));
                assert!(back <= reach, "{w:?} at {now} looks back {back} ms, past its reach of {reach}");
            }
        }
        assert_eq!(reach_ms(&Window::Lifetime), None);
    }

    #[test]
    fn rolling_windows_slide() {
        let day = Window::Rolling { text: "24h".into(), seconds: 86_400 };
        assert_eq!(start(&day, "2026-11-22T12:00:00Z"), at("2026-11-21T12:00:00.001Z"));
    }

    #[test]
    fn calendar_days_turn_over_at_local_midnight() {
        let day = cal(CalendarUnit::Day, "America/Los_Angeles");
        // 07:59 UTC on the 22nd is 23:59 on the 21st in Los Angeles (UTC-8 in November).
        assert_eq!(start(&day, "2026-11-22T07:59:00Z"), at("2026-11-21T08:00:00Z"));
        assert_eq!(start(&day, "2026-11-22T08:00:00Z"), at("2026-11-22T08:00:00Z"));
    }

    #[test]
    fn calendar_weeks_start_on_monday() {
        // 2026-11-22 is a Sunday; its ISO week began on Monday the 16th.
        assert_eq!(start(&cal(CalendarUnit::Week, "UTC"), "2026-11-22T23:00:00Z"), at("2026-11-16T00:00:00Z"));
        assert_eq!(start(&cal(CalendarUnit::Week, "UTC"), "2026-11-23T00:00:00Z"), at("2026-11-23T00:00:00Z"));
    }

    #[test]
    fn calendar_months_follow_the_timezone_and_daylight_saving() {
        let month = cal(CalendarUnit::Month, "Europe/Berlin");
        // Midnight of 1 November in Berlin is 23:00 UTC on 31 October (CET, UTC+1).
        assert_eq!(start(&month, "2026-10-31T23:30:00Z"), at("2026-10-31T23:00:00Z"));
        assert_eq!(start(&month, "2026-10-31T22:30:00Z"), at("2026-09-30T22:00:00Z"));
        // A day that starts in a DST gap (Santiago moves 00:00 -> 01:00 on 2026-09-06).
        let day = cal(CalendarUnit::Day, "America/Santiago");
        assert_eq!(start(&day, "2026-09-06T12:00:00Z"), at("2026-09-06T04:00:00Z"));
    }

    #[test]
    fn calendar_windows_end_where_the_next_starts() {
        let end = |w: &Window, now: &str| Timestamp::from_millisecond(end_ms(w, at(now)).unwrap()).unwrap();
        assert_eq!(
            end(&cal(CalendarUnit::Day, "America/Los_Angeles"), "2026-11-22T07:59:00Z"),
            at("2026-11-22T08:00:00Z")
        );
        assert_eq!(end(&cal(CalendarUnit::Week, "UTC"), "2026-11-22T23:00:00Z"), at("2026-11-23T00:00:00Z"));
        assert_eq!(end(&cal(CalendarUnit::Week, "UTC"), "2026-11-23T00:00:00Z"), at("2026-11-30T00:00:00Z"));
        assert_eq!(end(&cal(CalendarUnit::Month, "Europe/Berlin"), "2026-10-31T22:30:00Z"), at("2026-10-31T23:00:00Z"));
        assert_eq!(end_ms(&Window::Rolling { text: "24h".into(), seconds: 86_400 }, at("2026-11-22T00:00:00Z")), None);
        assert_eq!(end_ms(&Window::Lifetime, at("2026-11-22T00:00:00Z")), None);
    }

    #[test]
    fn lifetime_counts_everything() {
        assert_eq!(start_ms(&Window::Lifetime, at("2026-11-22T00:00:00Z")), i64::MIN);
    }
}
