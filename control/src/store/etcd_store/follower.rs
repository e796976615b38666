//! The watch that feeds the etcd store's watch cache: one etcd watch of the whole key prefix,
//! from the revision after the last event the cache took, with `prev_kv` (so modifications and
//! deletions carry the object before, as the embedded stores' events do) and progress
//! notifications, asked for every [`PROGRESS_INTERVAL`] (etcd's own come every 10 minutes),
//! which move the store's revision on while the prefix is quiet and show the stream is alive.
//!
//! A broken stream (etcd killed, the network gone, no answer to a progress request within
//! [`STALL`]) is reported through [`super::Shared::set_failure`], so `/readyz` fails, and the
//! watch is opened again from the same revision with back-off; etcd replays what happened in
//! between. If etcd compacted past that revision, the events are lost for good: the cache is
//! replaced by a new one starting at etcd's current revision, which ends every watcher of the
//! old one (their clients watch again, get 410 for their old revision, and list again), as
//! Kubernetes' cacher does when its etcd watch is compacted.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Event, EventType, WatchOptions};

use super::{prefix_end, with_revision, Failure, Shared};
use crate::store::{EventKind, StoreEvent, WatchCache};

/// How often a progress notification is asked for.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(2);

/// How long the stream may stay silent after a progress request before it counts as broken.
const STALL: Duration = Duration::from_secs(10);

/// The longest wait between two attempts to open the watch again.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Why one watch stream ended.
enum Ended {
    /// etcd no longer has the events from the revision asked for.
    Compacted(i64),
    /// The stream failed; it can be opened again from where it stopped.
    Broken(String),
}

/// Follows etcd from revision `from` on, for as long as the store lives (the store aborts
/// the task when it is dropped).
pub(super) async fn run(shared: Arc<Shared>, mut from: u64) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let before = from;
        match follow(&shared, &mut from).await {
            Ended::Compacted(compacted) => {
                tracing::warn!(
                    from,
                    compacted,
                    "etcd compacted past the watch cache: starting a new cache; watchers relist"
                );
                match shared.current_revision().await {
                    Ok(revision) => {
                        let revision = u64::try_from(revision).unwrap_or(0);
                        *shared.cache.lock().unwrap_or_else(|p| p.into_inner()) =
                            Arc::new(WatchCache::new(shared.window, revision));
                        shared.synced.send_replace(revision);
                        from = revision + 1;
                        continue;
                    }
                    Err(f) => shared.set_failure(Some(describe(&shared, &f))),
                }
            }
            Ended::Broken(why) => shared.set_failure(Some(format!(
                "the watch on etcd at {} failed: {why}",
                shared.endpoints
            ))),
        }
        if from > before {
            // It made progress before it broke: try again soon.
            backoff = Duration::from_millis(100);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

fn describe(shared: &Shared, failure: &Failure) -> String {
    format!(
        "etcd at {} cannot be read: {}",
        shared.endpoints,
        failure.message()
    )
}

/// One watch stream, until it ends; `from` moves past every event the cache took.
async fn follow(shared: &Shared, from: &mut u64) -> Ended {
    let options = WatchOptions::new()
        .with_range(prefix_end(shared.prefix.as_bytes()))
        .with_start_revision(i64::try_from(*from).unwrap_or(i64::MAX))
        .with_prev_key()
        .with_progress_notify();
    let stream = match shared
        .call(
            shared
                .watch
                .clone()
                .watch(shared.prefix.as_bytes(), Some(options)),
        )
        .await
    {
        Ok(stream) => stream,
        Err(f) => return Ended::Broken(describe(shared, &f)),
    };
    let (mut requests, mut responses) = stream.split();
    let mut ticker = tokio::time::interval(PROGRESS_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_answer = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                if last_answer.elapsed() > STALL {
                    return Ended::Broken(format!("no answer for {STALL:?}"));
                }
                if let Err(e) = requests.request_progress().await {
                    return Ended::Broken(e.to_string());
                }
            }
            message = responses.message() => {
                let response = match message {
                    Ok(Some(response)) => response,
                    Ok(None) => return Ended::Broken("etcd ended the watch".into()),
                    Err(e) => return Ended::Broken(e.to_string()),
                };
                last_answer = tokio::time::Instant::now();
                if response.compact_revision() > 0 {
                    return Ended::Compacted(response.compact_revision());
                }
                if response.canceled() {
                    return Ended::Broken(format!(
                        "etcd cancelled the watch: {}",
                        response.cancel_reason()
                    ));
                }
                if response.created() {
                    shared.set_failure(None);
                }
                let events: Vec<StoreEvent> = response
                    .events()
                    .iter()
                    .filter_map(|e| convert(shared, e))
                    .collect();
                if let Some(last) = response.events().last().and_then(|e| e.kv()) {
                    *from = u64::try_from(last.mod_revision()).unwrap_or(0) + 1;
                }
                let header = response.header().map_or(0, |h| h.revision());
                shared.saw(header);
                // Events carry their own revisions; a response without any is a progress
                // notification: everything up to its header revision has been sent.
                let reached = if response.events().is_empty() {
                    header
                } else {
                    i64::try_from(from.saturating_sub(1)).unwrap_or(0)
                };
                shared.cache().push(events);
                shared.synced.send_if_modified(|synced| {
                    let reached = u64::try_from(reached).unwrap_or(0);
                    (reached > *synced).then(|| *synced = reached).is_some()
                });
            }
        }
    }
}

/// The store event of an etcd event; `None` (logged) for what cannot be one.
fn convert(shared: &Shared, event: &Event) -> Option<StoreEvent> {
    let kv = event.kv()?;
    let key = shared.short(kv.key())?.to_owned();
    let revision = kv.mod_revision();
    let previous = match event.prev_kv() {
        Some(prev) => match with_revision(prev.value(), prev.mod_revision()) {
            Ok(bytes) => Some(bytes),
            Err(e) => {
                tracing::error!(%key, error = %e, "a previous value in etcd is not JSON");
                None
            }
        },
        None => None,
    };
    let (kind, object) = match event.event_type() {
        EventType::Put => {
            let kind = if kv.create_revision() == revision {
                EventKind::Added
            } else {
                EventKind::Modified
            };
            (kind, with_revision(kv.value(), revision))
        }
        EventType::Delete => {
            // A deletion's object is the object as it was, at the deletion's revision.
            let Some(prev) = event.prev_kv() else {
                tracing::error!(%key, revision, "etcd sent a deletion without the deleted object");
                return None;
            };
            (EventKind::Deleted, with_revision(prev.value(), revision))
        }
    };
    match object {
        Ok(object) => Some(StoreEvent::new(
            u64::try_from(revision).unwrap_or(0),
            kind,
            key,
            object,
            previous,
        )),
        Err(e) => {
            tracing::error!(%key, revision, error = %e, "a value in etcd is not JSON: skipped");
            None
        }
    }
}
