//! CronJob schedules: what Kubernetes accepts (robfig/cron's standard parser: five fields,
//! the `@yearly`..`@hourly` descriptors, `@every <duration>`), evaluated in a time zone, and
//! the time arithmetic of the CronJob controller (the most recent missed time, the next one).
//!
//! The five-field patterns are evaluated by `croner` on jiff zoned times. croner accepts more
//! than Kubernetes (`L`, `W`, `#`, `+`, seconds); those extensions are refused here so that a
//! schedule skiff stores would also be accepted by a Kubernetes API server.

use std::time::Duration;

use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;
use k8s_openapi::jiff::tz::TimeZone;
use k8s_openapi::jiff::{SignedDuration, Timestamp, Zoned};

/// Why a schedule or time zone is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// The pattern cannot be parsed.
    #[error("{0}")]
    Invalid(String),
    /// `TZ=` or `CRON_TZ=` inside the schedule (Kubernetes wants `spec.timeZone`).
    #[error("cannot use TZ or CRON_TZ in schedule, use timeZone field instead")]
    TimeZoneInSchedule,
    /// The time zone is not in the tz database.
    #[error("unknown time zone {0}")]
    UnknownTimeZone(String),
}

/// A parsed schedule.
#[derive(Debug, Clone)]
pub enum Schedule {
    /// A five-field cron pattern.
    Cron(Box<Cron>),
    /// `@every <duration>`: a fixed delay after the previous time.
    Every(Duration),
}

/// Parses a schedule as Kubernetes' `cron.ParseStandard` does.
pub fn parse(schedule: &str) -> Result<Schedule, ScheduleError> {
    let s = schedule.trim();
    if s.starts_with("TZ=") || s.starts_with("CRON_TZ=") {
        return Err(ScheduleError::TimeZoneInSchedule);
    }
    if let Some(every) = s.strip_prefix("@every ") {
        let d = crate::go::parse_duration(every.trim()).ok_or_else(|| {
            ScheduleError::Invalid(format!("failed to parse duration {s}: invalid duration"))
        })?;
        // robfig rounds the delay to whole seconds and runs at least every second.
        let d = Duration::from_secs(d.as_secs().max(1));
        return Ok(Schedule::Every(d));
    }
    let pattern = match s.to_ascii_lowercase().as_str() {
        "@yearly" | "@annually" => "0 0 1 1 *".to_owned(),
        "@monthly" => "0 0 1 * *".to_owned(),
        "@weekly" => "0 0 * * 0".to_owned(),
        "@daily" | "@midnight" => "0 0 * * *".to_owned(),
        "@hourly" => "0 * * * *".to_owned(),
        d if d.starts_with('@') => {
            return Err(ScheduleError::Invalid(format!(
                "unrecognized descriptor: {s}"
            )))
        }
        _ => s.to_owned(),
    };
    let fields: Vec<&str> = pattern.split_whitespace().collect();
    if fields.len() != 5 {
        return Err(ScheduleError::Invalid(format!(
            "expected exactly 5 fields, found {}: [{}]",
            fields.len(),
            fields.join(" ")
        )));
    }
    let names = ["minute", "hour", "day of month", "month", "day of week"];
    let mut normalised = Vec::with_capacity(5);
    for (field, name) in fields.iter().zip(names) {
        check_standard_field(field, name)?;
        // robfig reads `?` as `*` (in any field).
        normalised.push(field.replace('?', "*"));
    }
    let cron = CronParser::builder()
        .seconds(Seconds::Disallowed)
        .year(Year::Disallowed)
        .build()
        .parse(&normalised.join(" "))
        .map_err(|e| ScheduleError::Invalid(e.to_string()))?;
    Ok(Schedule::Cron(Box::new(cron)))
}

/// Refuses croner's extensions that robfig's standard parser does not know.
fn check_standard_field(field: &str, name: &str) -> Result<(), ScheduleError> {
    let bad = |why: &str| {
        Err(ScheduleError::Invalid(format!(
            "{why} in {name} field: {field}"
        )))
    };
    if let Some(c) = field
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '*' | '/' | ',' | '-' | '?')))
    {
        return bad(&format!("unexpected character {c:?}"));
    }
    for item in field.split(',') {
        let upper = item.to_ascii_uppercase();
        let digit_suffix = upper.len() > 1
            && upper.starts_with(|c: char| c.is_ascii_digit())
            && upper.ends_with(['L', 'W']);
        if upper == "L" || upper == "LW" || digit_suffix {
            return bad("L and W are not supported");
        }
    }
    Ok(())
}

/// The time zone of `spec.timeZone` (UTC when unset).
pub fn time_zone(name: Option<&str>) -> Result<TimeZone, ScheduleError> {
    match name {
        None | Some("") => Ok(TimeZone::UTC),
        Some(name) => {
            TimeZone::get(name).map_err(|_| ScheduleError::UnknownTimeZone(name.to_owned()))
        }
    }
}

impl Schedule {
    /// The first scheduled time strictly after `t`.
    pub fn next_after(&self, t: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        match self {
            Schedule::Every(d) => t
                .checked_add(SignedDuration::try_from(*d).ok()?)
                .ok()
                .map(truncate_to_second),
            Schedule::Cron(cron) => {
                let z: Zoned = t.to_zoned(tz.clone());
                cron.find_next_occurrence(&z, false)
                    .ok()
                    .map(|z| z.timestamp())
            }
        }
    }

    /// The latest scheduled time in `(earliest, now]`, and how many there were (counting
    /// stops past 100, where Kubernetes warns about too many missed start times).
    pub fn most_recent(
        &self,
        earliest: Timestamp,
        now: Timestamp,
        tz: &TimeZone,
    ) -> Option<(Timestamp, usize)> {
        let first = self.next_after(earliest, tz)?;
        if first > now {
            return None;
        }
        let mut count = 1;
        let mut latest = first;
        while count <= 100 {
            match self.next_after(latest, tz) {
                Some(t) if t <= now => {
                    latest = t;
                    count += 1;
                }
                _ => return Some((latest, count)),
            }
        }
        // Too many to walk: jump to the last one at or before `now`.
        let last = match self {
            Schedule::Every(d) => {
                let step = d.as_secs().max(1) as i64;
                let missed = (now.as_second() - first.as_second()) / step;
                Timestamp::from_second(first.as_second() + missed * step).ok()?
            }
            Schedule::Cron(cron) => cron
                .find_previous_occurrence(&now.to_zoned(tz.clone()), true)
                .ok()?
                .timestamp(),
        };
        Some((last.max(latest), count))
    }
}

fn truncate_to_second(t: Timestamp) -> Timestamp {
    Timestamp::from_second(t.as_second()).unwrap_or(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn next(schedule: &str, from: &str) -> String {
        parse(schedule)
            .unwrap()
            .next_after(at(from), &TimeZone::UTC)
            .unwrap()
            .to_string()
    }

    #[test]
    fn standard_patterns_and_descriptors() {
        assert_eq!(
            next("* * * * *", "2024-05-01T10:00:30Z"),
            "2024-05-01T10:01:00Z"
        );
        assert_eq!(
            next("*/15 9-17 * * 1-5", "2024-05-03T17:50:00Z"),
            "2024-05-06T09:00:00Z",
            "Friday evening -> Monday morning"
        );
        assert_eq!(
            next("0 0 1 JAN *", "2024-05-01T00:00:00Z"),
            "2025-01-01T00:00:00Z"
        );
        assert_eq!(
            next("@hourly", "2024-05-01T10:00:00Z"),
            "2024-05-01T11:00:00Z"
        );
        assert_eq!(
            next("@daily", "2024-05-01T10:00:00Z"),
            "2024-05-02T00:00:00Z"
        );
        assert_eq!(
            next("@weekly", "2024-05-01T10:00:00Z"),
            "2024-05-05T00:00:00Z",
            "the next Sunday"
        );
        assert_eq!(
            next("@monthly", "2024-05-01T10:00:00Z"),
            "2024-06-01T00:00:00Z"
        );
        assert_eq!(
            next("@yearly", "2024-05-01T10:00:00Z"),
            "2025-01-01T00:00:00Z"
        );
        assert_eq!(
            next("@every 90s", "2024-05-01T10:00:00Z"),
            "2024-05-01T10:01:30Z"
        );
        assert_eq!(
            next("@every 1h30m", "2024-05-01T10:00:00Z"),
            "2024-05-01T11:30:00Z"
        );
        assert_eq!(
            next("0 12 ? * *", "2024-05-01T13:00:00Z"),
            "2024-05-02T12:00:00Z"
        );
    }

    #[test]
    fn day_of_month_and_weekday_are_ored_when_both_restricted() {
        // Vixie cron and robfig: the 13th OR any Friday.
        assert_eq!(
            next("0 0 13 * 5", "2024-09-01T00:00:00Z"),
            "2024-09-06T00:00:00Z"
        );
        // One of them `*`: only the other counts.
        assert_eq!(
            next("0 0 13 * *", "2024-09-01T00:00:00Z"),
            "2024-09-13T00:00:00Z"
        );
    }

    #[test]
    fn kubernetes_rejects_what_robfig_rejects() {
        for bad in [
            "",
            "* * * *",
            "0 * * * * *",
            "61 * * * *",
            "* * 32 * *",
            "0 0 L * *",
            "0 0 15W * *",
            "0 0 * * 5#3",
            "@fortnightly",
            "@every soon",
            "not a schedule",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} must be refused");
        }
        assert_eq!(
            parse("TZ=UTC 0 * * * *").unwrap_err(),
            ScheduleError::TimeZoneInSchedule
        );
        assert!(parse("0 0 * JUL MON-FRI").is_ok(), "names are fine");
    }

    #[test]
    fn time_zones_shift_the_wall_clock() {
        let tz = time_zone(Some("Europe/Berlin")).unwrap();
        let s = parse("0 9 * * *").unwrap();
        // 09:00 in Berlin (summer, UTC+2) is 07:00 UTC.
        assert_eq!(
            s.next_after(at("2024-07-01T00:00:00Z"), &tz)
                .unwrap()
                .to_string(),
            "2024-07-01T07:00:00Z"
        );
        assert_eq!(
            time_zone(Some("Mars/Olympus")).unwrap_err(),
            ScheduleError::UnknownTimeZone("Mars/Olympus".into())
        );
        assert_eq!(time_zone(None).unwrap(), TimeZone::UTC);
    }

    #[test]
    fn most_recent_missed_time() {
        let s = parse("*/5 * * * *").unwrap();
        let utc = TimeZone::UTC;
        // Nothing due yet.
        assert_eq!(
            s.most_recent(at("2024-05-01T10:00:00Z"), at("2024-05-01T10:04:59Z"), &utc),
            None
        );
        // Exactly due.
        assert_eq!(
            s.most_recent(at("2024-05-01T10:00:00Z"), at("2024-05-01T10:05:00Z"), &utc),
            Some((at("2024-05-01T10:05:00Z"), 1))
        );
        // Three missed: the latest is run.
        assert_eq!(
            s.most_recent(at("2024-05-01T10:00:00Z"), at("2024-05-01T10:17:00Z"), &utc),
            Some((at("2024-05-01T10:15:00Z"), 3))
        );
        // Far behind: the walk stops counting but still finds the latest time.
        let (latest, count) = s
            .most_recent(at("2024-01-01T00:00:00Z"), at("2024-05-01T10:17:00Z"), &utc)
            .unwrap();
        assert_eq!(latest, at("2024-05-01T10:15:00Z"));
        assert!(count > 100);
        let every = parse("@every 7m").unwrap();
        let (latest, count) = every
            .most_recent(at("2024-01-01T00:00:00Z"), at("2024-01-02T00:00:00Z"), &utc)
            .unwrap();
        assert!(count > 100);
        // 1440 minutes / 7 = 205 whole steps.
        assert_eq!(latest, at("2024-01-01T23:55:00Z"));
    }
}
