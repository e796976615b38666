//! Expires Events (kube-apiserver's `--event-ttl`, one hour by default). Kubernetes stores each
//! Event in etcd under a lease of that TTL, renewed by every write; skiff's stores have no
//! leases, so this sweep deletes every Event whose last write (the latest of its creation,
//! `lastTimestamp`, `eventTime` and `series.lastObservedTime`) is older than the TTL. It runs
//! in the API server's process on the in-process object operations, like the namespace
//! finalizer, so Events expire also without controllers.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use serde_json::Value;

use crate::apiserver::objects::{DeleteOptions, ListOptions};
use crate::apiserver::ApiState;

/// Events read per page of the sweep.
const PAGE: usize = 500;

/// How often Events are swept for a TTL: a tenth of it, between 1 s and 1 min, so an Event
/// outlives its TTL by at most that.
pub fn period(ttl: Duration) -> Duration {
    (ttl / 10).clamp(Duration::from_secs(1), Duration::from_secs(60))
}

/// The latest write an Event records, if any.
fn last_write(event: &Value) -> Option<Timestamp> {
    [
        "/metadata/creationTimestamp",
        "/lastTimestamp",
        "/eventTime",
        "/series/lastObservedTime",
    ]
    .iter()
    .filter_map(|p| event.pointer(p)?.as_str()?.parse::<Timestamp>().ok())
    .max()
}

/// Deletes the Events last written before `now - ttl`; returns how many.
pub async fn sweep(state: &ApiState, ttl: Duration, now: Timestamp) -> usize {
    let Some(def) = state.registry.find("", "v1", "events") else {
        return 0;
    };
    // A TTL beyond the calendar expires nothing.
    let Some(cutoff) = SignedDuration::try_from(ttl)
        .ok()
        .and_then(|ttl| now.checked_sub(ttl).ok())
    else {
        return 0;
    };
    let mut deleted = 0;
    let mut opts = ListOptions {
        limit: Some(PAGE),
        ..ListOptions::default()
    };
    loop {
        let page = match state.list(&def, None, &opts).await {
            Ok(page) => page,
            Err(e) => {
                tracing::warn!(error = %e, "event expiry: cannot list events");
                return deleted;
            }
        };
        for event in page.values().unwrap_or_default() {
            if last_write(&event).is_none_or(|t| t >= cutoff) {
                continue;
            }
            let (Some(ns), Some(name)) = (
                event.pointer("/metadata/namespace").and_then(Value::as_str),
                event.pointer("/metadata/name").and_then(Value::as_str),
            ) else {
                continue;
            };
            // Only the version read: an Event updated meanwhile was written again.
            let opts = DeleteOptions {
                precondition_resource_version: event
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                ..DeleteOptions::default()
            };
            if state.delete(&def, Some(ns), name, &opts).await.is_ok() {
                deleted += 1;
            }
        }
        match page.continue_token {
            Some(token) => opts.continue_token = Some(token),
            None => return deleted,
        }
    }
}

/// Sweeps every [`period`] until shutdown.
pub async fn run(state: Arc<ApiState>, ttl: Duration) {
    let mut tick = tokio::time::interval(period(ttl));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => return,
            _ = tick.tick() => {
                let n = sweep(&state, ttl, Timestamp::now()).await;
                if n > 0 {
                    tracing::debug!(deleted = n, "expired events deleted");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_latest_write_counts_and_the_period_is_bounded() {
        let event = json!({
            "metadata": {"creationTimestamp": "2026-01-01T00:00:00Z"},
            "lastTimestamp": "2026-01-01T00:30:00Z",
            "eventTime": null,
        });
        assert_eq!(
            last_write(&event),
            Some("2026-01-01T00:30:00Z".parse().unwrap())
        );
        assert_eq!(last_write(&json!({})), None);
        assert_eq!(period(Duration::from_secs(3600)), Duration::from_secs(60));
        assert_eq!(period(Duration::from_secs(5)), Duration::from_secs(1));
    }
}
