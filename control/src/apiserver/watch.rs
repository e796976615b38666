//! `?watch=true`: a chunked stream of `{"type": ..., "object": ...}` lines.
//!
//! A watch from a resourceVersion replays the store's event window after it and then follows
//! live events; without one (or with "0") it starts with ADDED events for every current object.
//! Selectors are applied to both the old and the new state of each change, so an object that
//! stops matching is reported DELETED, as Kubernetes does.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::response::Response;
use futures::{FutureExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::error::ApiError;
use super::objects::ListOptions;
use super::registry::ResourceDef;
use super::selectors::Filter;
use super::table::{table, Column, IncludeObject};
use super::ApiState;
use crate::store::{EventKind, StoreError, StoreEvent};

/// Watches being served, by group-resource, for `/metrics`.
static ACTIVE: std::sync::Mutex<BTreeMap<String, usize>> = std::sync::Mutex::new(BTreeMap::new());

/// Counts one watch in [`ACTIVE`] while it lives.
struct Active(String);

impl Active {
    fn start(resource: String) -> Self {
        *ACTIVE
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(resource.clone())
            .or_default() += 1;
        Self(resource)
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        if let Some(n) = ACTIVE
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(&self.0)
        {
            *n -= 1;
        }
    }
}

/// `GET /metrics`: the open watches per resource, in Prometheus' text format under
/// Kubernetes' name for them (`apiserver_longrunning_requests`), so a benchmark can count the
/// watches a control plane holds.
pub async fn metrics() -> String {
    let active = ACTIVE.lock().unwrap_or_else(|p| p.into_inner());
    let mut out = String::from("# TYPE apiserver_longrunning_requests gauge\n");
    for (resource, n) in active.iter() {
        out.push_str(&format!(
            "apiserver_longrunning_requests{{verb=\"WATCH\",resource=\"{resource}\"}} {n}\n"
        ));
    }
    out
}

/// How often a watch with `allowWatchBookmarks` gets a BOOKMARK.
const BOOKMARK_INTERVAL: Duration = Duration::from_secs(15);
/// The longest a watch lasts when the client gives no timeout (Kubernetes: 30-60 min).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);

/// The most bytes a watcher may have queued and not yet read. A watcher that leaves it full
/// for the send timeout ([`super::limits::Overload`]) is closed and relists, as
/// Kubernetes' cache watchers are, instead of holding ever more events for a client that
/// stopped reading.
pub const WATCH_BYTE_BUDGET: usize = 16 * 1024 * 1024;

/// A line on its way to the client, holding its share of the byte budget until read.
type Queued = (Bytes, Option<tokio::sync::OwnedSemaphorePermit>);

/// Queues `line` within the watcher's byte budget; false when the client is gone or left the
/// budget (or the queue) full for `timeout`.
async fn send_within_budget(
    tx: &mpsc::Sender<Queued>,
    budget: &Arc<tokio::sync::Semaphore>,
    line: Bytes,
    timeout: Duration,
) -> bool {
    let want = u32::try_from(line.len().min(WATCH_BYTE_BUDGET)).unwrap_or(u32::MAX);
    let queued = async {
        let permit = Arc::clone(budget).acquire_many_owned(want).await.ok()?;
        tx.send((line, Some(permit))).await.ok()
    };
    match tokio::time::timeout(timeout, queued).await {
        Ok(sent) => sent.is_some(),
        Err(_) => {
            tracing::info!("closing a watch whose client stopped reading");
            false
        }
    }
}

struct Encoder {
    def: Arc<ResourceDef>,
    table: Option<IncludeObject>,
    /// The kind's Table columns (when `table` is set).
    columns: Vec<Column>,
}

/// An object to encode: stored bytes, with the parsed form when the caller has it.
struct Obj<'a> {
    raw: &'a [u8],
    parsed: Option<&'a Value>,
}

impl Encoder {
    /// One event line. Without a Table the stored bytes are sent as they are.
    fn line(&self, kind: &str, object: Obj<'_>) -> Bytes {
        let mut line = Vec::with_capacity(object.raw.len() + 32);
        line.extend_from_slice(br#"{"type":""#);
        line.extend_from_slice(kind.as_bytes());
        line.extend_from_slice(br#"","object":"#);
        match self.table {
            Some(include) => {
                let owned;
                let value = match object.parsed {
                    Some(v) => v,
                    None => {
                        owned = serde_json::from_slice::<Value>(object.raw).unwrap_or_default();
                        &owned
                    }
                };
                let rv = value
                    .pointer("/metadata/resourceVersion")
                    .cloned()
                    .unwrap_or_default();
                let t = table(
                    &self.columns,
                    &[value],
                    json!({"resourceVersion": rv}),
                    include,
                );
                line.extend_from_slice(&serde_json::to_vec(&t).unwrap_or_default());
            }
            None if self.def.strategy.needs_served_form(object.raw) => {
                // Stored in another version: the object goes out as this version serves it.
                let value = object
                    .parsed
                    .cloned()
                    .or_else(|| serde_json::from_slice::<Value>(object.raw).ok())
                    .unwrap_or_default();
                let value = super::objects::served(&self.def, value);
                line.extend_from_slice(&serde_json::to_vec(&value).unwrap_or_default());
            }
            None => line.extend_from_slice(object.raw),
        }
        line.extend_from_slice(b"}\n");
        Bytes::from(line)
    }

    fn value_line(&self, kind: &str, object: &Value) -> Bytes {
        let mut line =
            serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
        line.push(b'\n');
        Bytes::from(line)
    }

    fn bookmark(&self, revision: u64, initial_end: bool) -> Bytes {
        let mut meta = json!({"resourceVersion": revision.to_string()});
        if initial_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        self.value_line(
            "BOOKMARK",
            &json!({"kind": self.def.kind, "apiVersion": self.def.api_version(), "metadata": meta}),
        )
    }

    fn expired(&self, message: String) -> Bytes {
        self.value_line("ERROR", &ApiError::Gone(message).status())
    }
}

/// How long a watch from a revision ahead of the store waits for it (kube-apiserver's watch
/// cache waits 3 s, `blockTimeout`).
const FRESHNESS_WAIT: Duration = Duration::from_secs(3);

/// Waits until `store` has reached revision `wanted`, for at most [`FRESHNESS_WAIT`]; the
/// "too large resource version" error after that.
async fn wait_until_fresh(store: &dyn crate::store::Store, wanted: u64) -> Result<(), ApiError> {
    let deadline = tokio::time::Instant::now() + FRESHNESS_WAIT;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        let current = store.revision();
        if current >= wanted {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ApiError::TooLargeResourceVersion {
                requested: wanted,
                current,
            });
        }
        tick.tick().await;
    }
}

/// Decides what a store event means to a watcher with these selectors.
fn translate(event: &StoreEvent, opts: &ListOptions) -> Option<&'static str> {
    let filter = Filter {
        labels: &opts.labels,
        fields: &opts.fields,
    };
    let now = filter.matches_raw(&event.object, || event.object_value().map(Cow::Borrowed));
    let before = event
        .previous
        .as_ref()
        .is_some_and(|p| filter.matches_raw(p, || event.previous_value().map(Cow::Borrowed)));
    match event.kind {
        EventKind::Added => now.then_some("ADDED"),
        EventKind::Modified => match (before, now) {
            (true, true) => Some("MODIFIED"),
            (false, true) => Some("ADDED"),
            (true, false) => Some("DELETED"),
            (false, false) => None,
        },
        EventKind::Deleted => before.then_some("DELETED"),
    }
}

fn event_line(encoder: &Encoder, event: &StoreEvent, opts: &ListOptions) -> Option<Bytes> {
    let kind = translate(event, opts)?;
    let parsed = if encoder.table.is_some() {
        event.object_value()
    } else {
        None
    };
    Some(encoder.line(
        kind,
        Obj {
            raw: &event.object,
            parsed,
        },
    ))
}

/// Starts a watch and returns the streaming response.
pub async fn serve(
    state: Arc<ApiState>,
    def: Arc<ResourceDef>,
    namespace: Option<String>,
    opts: ListOptions,
    query: &HashMap<String, String>,
    as_table: bool,
) -> Result<Response, ApiError> {
    let include = IncludeObject::parse(query.get("includeObject").map(String::as_str));
    let encoder = Encoder {
        def: def.clone(),
        table: as_table.then_some(include),
        columns: if as_table {
            def.strategy.columns()
        } else {
            Vec::new()
        },
    };
    let bookmarks = query
        .get("allowWatchBookmarks")
        .is_some_and(|b| b == "true" || b == "1");
    let send_initial = query.get("sendInitialEvents").is_some_and(|b| b == "true");
    let timeout = match query.get("timeoutSeconds") {
        Some(t) => Duration::from_secs(
            t.parse()
                .map_err(|_| ApiError::BadRequest(format!("invalid timeoutSeconds {t:?}")))?,
        ),
        None => DEFAULT_TIMEOUT,
    };
    let requested = match query.get("resourceVersion").map(String::as_str) {
        None | Some("") | Some("0") => None,
        Some(rv) => Some(
            rv.parse::<u64>()
                .map_err(|_| ApiError::BadRequest(format!("invalid resourceVersion {rv:?}")))?,
        ),
    };
    let prefix = def.namespace_prefix(namespace.as_deref());
    let (tx, rx) = mpsc::channel::<Queued>(256);
    let budget = Arc::new(tokio::sync::Semaphore::new(WATCH_BYTE_BUDGET));
    let send_timeout = state.overload.watch_send_timeout();

    // Initial state, then the watch from the revision it was read at.
    let mut initial = Vec::new();
    let start = match requested {
        Some(rv) if !send_initial => rv,
        _ => {
            let page = state
                .list(
                    &def,
                    namespace.as_deref(),
                    &ListOptions {
                        limit: None,
                        continue_token: None,
                        ..opts.clone()
                    },
                )
                .await?;
            initial = page.items;
            page.revision
        }
    };
    // A watch from a revision the store has not reached yet (a client that talked to another
    // server, or to this one before a restore) waits a moment for it, then gets the error
    // Kubernetes' watch cache gives, rather than silently missing the events up to there.
    let ahead = match requested {
        Some(rv) if !send_initial => wait_until_fresh(&*state.store, rv).await.err(),
        _ => None,
    };
    let watch = if let Some(error) = ahead {
        let _ = tx.try_send((encoder.value_line("ERROR", &error.status()), None));
        None
    } else {
        match state.store.watch(&prefix, start).await {
            Ok(w) => Some(w),
            Err(StoreError::Gone { requested, oldest }) => {
                let _ = tx.try_send((
                    encoder.expired(format!("{requested} (oldest available {oldest})")),
                    None,
                ));
                None
            }
            Err(e) => return Err(ApiError::from_store(e, &def.group_resource(), "")),
        }
    };

    if let Some(mut watch) = watch {
        let shutdown = state.shutdown.clone();
        let active = Active::start(def.group_resource());
        tokio::spawn(async move {
            let _active = active;
            let send = |b: Bytes| send_within_budget(&tx, &budget, b, send_timeout);
            for object in &initial {
                if !send(encoder.line(
                    "ADDED",
                    Obj {
                        raw: object,
                        parsed: None,
                    },
                ))
                .await
                {
                    return;
                }
            }
            let mut last_revision = start;
            if send_initial && bookmarks && !send(encoder.bookmark(start, true)).await {
                return;
            }
            // Too slow to keep up: the client must re-list, as after a 410.
            let fell_behind = |last: u64| encoder.expired(format!("{last} (watcher fell behind)"));
            // The replayed events are ready at once: they go out before the timers start.
            loop {
                let line = match watch.next().now_or_never() {
                    None => break,
                    Some(None) => return,
                    Some(Some(Err(_))) => {
                        let _ = send(fell_behind(last_revision)).await;
                        return;
                    }
                    Some(Some(Ok(event))) => {
                        last_revision = event.revision;
                        event_line(&encoder, &event, &opts)
                    }
                };
                if let Some(line) = line {
                    if !send(line).await {
                        return;
                    }
                }
            }
            let deadline = tokio::time::sleep(timeout);
            tokio::pin!(deadline);
            let mut ticker = tokio::time::interval(BOOKMARK_INTERVAL);
            ticker.tick().await;
            loop {
                let line = tokio::select! {
                    _ = &mut deadline => return,
                    _ = shutdown.cancelled() => return,
                    _ = tx.closed() => return,
                    _ = ticker.tick(), if bookmarks => Some(encoder.bookmark(last_revision, false)),
                    received = watch.next() => match received {
                        Some(Ok(event)) => {
                            last_revision = event.revision;
                            event_line(&encoder, &event, &opts)
                        }
                        Some(Err(_)) => {
                            let _ = send(fell_behind(last_revision)).await;
                            return;
                        }
                        None => return,
                    },
                };
                if let Some(line) = line {
                    if !send(line).await {
                        return;
                    }
                }
            }
        });
    }

    // A line's permit goes back to the budget once the body hands the line over.
    let body = Body::from_stream(
        ReceiverStream::new(rx).map(|(line, _permit)| Ok::<_, std::io::Error>(line)),
    );
    Response::builder()
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::CACHE_CONTROL, "no-cache, private")
        .body(body)
        .map_err(|e| ApiError::Internal(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_k8s::labels::LabelSelector;

    fn event(kind: EventKind, prev: Option<Value>, now: Value) -> StoreEvent {
        let bytes = |v: &Value| Bytes::from(serde_json::to_vec(v).unwrap());
        StoreEvent::new(1, kind, "k".into(), bytes(&now), prev.as_ref().map(bytes))
    }

    #[test]
    fn leaving_the_selector_is_a_delete_and_entering_an_add() {
        let opts = ListOptions {
            labels: LabelSelector::parse("app=a").unwrap(),
            ..Default::default()
        };
        let a = json!({"metadata": {"labels": {"app": "a"}}});
        let b = json!({"metadata": {"labels": {"app": "b"}}});
        let t = |e: &StoreEvent| translate(e, &opts);
        assert_eq!(
            t(&event(EventKind::Modified, Some(a.clone()), b.clone())),
            Some("DELETED")
        );
        assert_eq!(
            t(&event(EventKind::Modified, Some(b.clone()), a.clone())),
            Some("ADDED")
        );
        assert_eq!(
            t(&event(EventKind::Modified, Some(a.clone()), a.clone())),
            Some("MODIFIED")
        );
        assert_eq!(
            t(&event(EventKind::Modified, Some(b.clone()), b.clone())),
            None
        );
        assert_eq!(
            t(&event(EventKind::Deleted, Some(a.clone()), a.clone())),
            Some("DELETED")
        );
        assert_eq!(t(&event(EventKind::Added, None, b)), None);
    }
}
