//! Windows of minimum pool sizes: opened by one cron expression and closed by another, in a
//! time zone, as KEDA's cron scaler does. Pure: the time is given.
//!
//! Cron expressions are read by `croner` (five fields, Vixie cron's syntax with `L`, `W` and
//! `#`), which finds previous as well as next occurrences and handles daylight-saving
//! changes; time zones come from `chrono-tz` (the IANA database compiled in, so the operator
//! image needs no tzdata). Both `chrono` and `chrono-tz` are in the build already (regorus).

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use k8s_openapi::jiff::Timestamp;

/// A parsed window.
#[derive(Clone, Debug)]
pub struct Window {
    /// Its name, or `windows[i]`.
    pub name: String,
    pub start: Cron,
    pub end: Cron,
    pub time_zone: Tz,
    pub min_pool_size: u32,
}

/// Reads a five-field cron expression.
pub fn parse_cron(expression: &str) -> Result<Cron, croner::errors::CronError> {
    CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        .build()
        .parse(expression)
}

/// Reads an IANA time zone name.
pub fn parse_time_zone(name: &str) -> Result<Tz, chrono_tz::ParseError> {
    Tz::from_str(name)
}

impl Window {
    /// Whether the window is open at `now`: its latest `start` at or before `now` is later
    /// than its latest `end` (a start and an end in the same minute leave it closed).
    pub fn is_open(&self, now: Timestamp) -> bool {
        let now = self.local(now);
        let last_start = self.start.find_previous_occurrence(&now, true).ok();
        let last_end = self.end.find_previous_occurrence(&now, true).ok();
        match (last_start, last_end) {
            (Some(start), Some(end)) => start > end,
            (Some(_), None) => true,
            (None, _) => false,
        }
    }

    /// How long until the window next opens or closes, if it ever does.
    pub fn next_change(&self, now: Timestamp) -> Option<Duration> {
        let local = self.local(now);
        [&self.start, &self.end]
            .into_iter()
            .filter_map(|cron| cron.find_next_occurrence(&local, false).ok())
            .filter_map(|at| {
                (at.with_timezone(&Utc) - self.local(now).with_timezone(&Utc))
                    .to_std()
                    .ok()
            })
            .min()
    }

    fn local(&self, now: Timestamp) -> DateTime<Tz> {
        let utc = DateTime::<Utc>::from_timestamp(
            now.as_second(),
            now.subsec_nanosecond().unsigned_abs(),
        )
        .unwrap_or_default();
        self.time_zone.from_utc_datetime(&utc.naive_utc())
    }
}

/// The minimum in force at `now`: the largest of `min_pool_size` and the open windows'
/// minimums, with the window that set it; and how long until a window opens or closes.
pub fn floor(
    min_pool_size: u32,
    windows: &[Window],
    now: Timestamp,
) -> (u32, Option<String>, Option<Duration>) {
    let mut floor = (min_pool_size, None);
    for window in windows.iter().filter(|w| w.is_open(now)) {
        if window.min_pool_size > floor.0 {
            floor = (window.min_pool_size, Some(window.name.clone()));
        }
    }
    let next = windows.iter().filter_map(|w| w.next_change(now)).min();
    (floor.0, floor.1, next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(start: &str, end: &str, zone: &str, min: u32) -> Window {
        Window {
            name: format!("{start} .. {end}"),
            start: parse_cron(start).expect("start"),
            end: parse_cron(end).expect("end"),
            time_zone: parse_time_zone(zone).expect("zone"),
            min_pool_size: min,
        }
    }

    fn at(rfc3339: &str) -> Timestamp {
        rfc3339.parse().expect("a time")
    }

    #[test]
    fn working_hours_are_open_on_weekdays_in_their_time_zone() {
        let hours = window("0 8 * * 1-5", "0 18 * * 1-5", "Europe/Berlin", 5);
        // Thursday 3 December 2026; Berlin is UTC+1 in winter.
        let cases = [
            ("2026-12-03T06:59:00Z", false), // 07:59 in Berlin
            ("2026-12-03T07:00:00Z", true),  // 08:00: opens
            ("2026-12-03T12:00:00Z", true),
            ("2026-12-03T16:59:59Z", true),
            ("2026-12-03T17:00:00Z", false), // 18:00: closes
            ("2026-12-05T10:00:00Z", false), // Saturday
            ("2026-12-07T07:30:00Z", true),  // Monday 08:30
        ];
        for (now, open) in cases {
            assert_eq!(hours.is_open(at(now)), open, "at {now}");
        }
    }

    #[test]
    fn a_window_follows_daylight_saving_time() {
        let hours = window("0 8 * * *", "0 18 * * *", "Europe/Berlin", 1);
        // Summer: Berlin is UTC+2, so 08:00 there is 06:00 UTC.
        assert!(hours.is_open(at("2026-07-01T06:00:00Z")));
        assert!(!hours.is_open(at("2026-07-01T05:59:00Z")));
    }

    #[test]
    fn a_window_may_span_midnight() {
        let night = window("0 22 * * *", "0 6 * * *", "UTC", 2);
        assert!(night.is_open(at("2026-12-03T23:00:00Z")));
        assert!(night.is_open(at("2026-12-04T05:59:00Z")));
        assert!(!night.is_open(at("2026-12-04T06:00:00Z")));
        assert!(!night.is_open(at("2026-12-03T21:00:00Z")));
    }

    #[test]
    fn the_largest_minimum_of_the_open_windows_applies() {
        let windows = [
            window("0 8 * * *", "0 18 * * *", "UTC", 3),
            window("0 9 * * *", "0 10 * * *", "UTC", 7),
            window("0 20 * * *", "0 21 * * *", "UTC", 50),
        ];
        let (min, name, next) = floor(1, &windows, at("2026-12-03T09:30:00Z"));
        assert_eq!(min, 7);
        assert_eq!(name.as_deref(), Some("0 9 * * * .. 0 10 * * *"));
        assert_eq!(next, Some(Duration::from_secs(30 * 60)), "the 10:00 close");
        assert_eq!(floor(4, &windows, at("2026-12-03T12:00:00Z")).0, 4);
        assert_eq!(
            floor(0, &windows, at("2026-12-03T12:00:00Z")).1.as_deref(),
            Some("0 8 * * * .. 0 18 * * *")
        );
        assert_eq!(floor(0, &[], at("2026-12-03T12:00:00Z")), (0, None, None));
    }

    #[test]
    fn expressions_with_seconds_or_years_are_refused() {
        assert!(parse_cron("0 0 8 * * 1-5").is_err());
        assert!(parse_cron("0 8 * *").is_err());
        assert!(parse_cron("0 8 * * 1-5").is_ok());
        assert!(parse_time_zone("Mars/Olympus").is_err());
    }
}
