//! Timestamps as Kubernetes writes them in objects: RFC 3339 in UTC, whole seconds
//! (`metav1.Time`) or microseconds (`metav1.MicroTime`, a Lease's renewTime). Formatting
//! cannot fail, so there is no error type.

use k8s_openapi::jiff::{SignedDuration, Timestamp};

/// `t` as a `metav1.Time`: `2006-01-02T15:04:05Z`.
pub fn format(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// `t` as a `metav1.MicroTime`: `2006-01-02T15:04:05.000000Z`.
pub fn format_micro(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%S.%6fZ").to_string()
}

/// The current time as a `metav1.Time`.
pub fn now() -> String {
    format(Timestamp::now())
}

/// The current time as a `metav1.MicroTime`.
pub fn now_micro() -> String {
    format_micro(Timestamp::now())
}

/// `t` moved by `seconds` (a user's `tolerationSeconds`, `activeDeadlineSeconds`, ...), or
/// `None` when that falls outside the times a timestamp can hold (year 9999): callers read
/// that as "never", since no clock reaches it. jiff's `+` panics there instead.
pub fn add_seconds(t: Timestamp, seconds: i64) -> Option<Timestamp> {
    t.checked_add(SignedDuration::from_secs(seconds)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adding_seconds_past_the_last_timestamp_is_none() {
        let t = Timestamp::from_second(1_700_000_000).unwrap();
        assert_eq!(
            add_seconds(t, 60),
            Some(Timestamp::from_second(1_700_000_060).unwrap())
        );
        assert_eq!(add_seconds(t, i64::MAX), None);
        assert_eq!(add_seconds(t, i64::MIN), None);
    }

    #[test]
    fn seconds_and_microseconds_in_utc() {
        let t: Timestamp = "2026-01-02T03:04:05.123456789+02:00".parse().unwrap();
        assert_eq!(format(t), "2026-01-02T01:04:05Z");
        assert_eq!(format_micro(t), "2026-01-02T01:04:05.123456Z");
        assert!(now().ends_with('Z'));
    }
}
