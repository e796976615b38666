//! The watch cache: the in-memory window of recent events that watches are served from.
//!
//! The backend appends events while holding the window's lock, in commit order, so the window
//! and the broadcast channel see events in revision order and every watcher gets the same order.
//! Events keep objects as their JSON bytes: that is what watchers send, it is a fraction of the
//! memory of a parsed document, and a parse happens at most once per event, only when a watcher
//! needs one (a field selector or a Table).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use futures::StreamExt;
use serde_json::Value;
use tokio::sync::mpsc;

use super::{EventStream, StoreError};

/// What happened to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// The object was created.
    Added,
    /// The object was changed.
    Modified,
    /// The object was removed.
    Deleted,
}

/// One change in the store.
#[derive(Debug)]
pub struct StoreEvent {
    /// The revision of the write.
    pub revision: u64,
    /// What happened.
    pub kind: EventKind,
    /// The key written.
    pub key: String,
    /// The object after the write as JSON (for deletes: as it was, with the deletion's revision).
    pub object: Bytes,
    /// The object before the write, for modifications and deletions.
    pub previous: Option<Bytes>,
    parsed: OnceLock<Option<Value>>,
    parsed_previous: OnceLock<Option<Value>>,
}

impl StoreEvent {
    /// An event.
    pub fn new(
        revision: u64,
        kind: EventKind,
        key: String,
        object: Bytes,
        previous: Option<Bytes>,
    ) -> Self {
        Self {
            revision,
            kind,
            key,
            object,
            previous,
            parsed: OnceLock::new(),
            parsed_previous: OnceLock::new(),
        }
    }

    /// The object, parsed on first use.
    pub fn object_value(&self) -> Option<&Value> {
        self.parsed
            .get_or_init(|| serde_json::from_slice(&self.object).ok())
            .as_ref()
    }

    /// The previous object, parsed on first use.
    pub fn previous_value(&self) -> Option<&Value> {
        self.parsed_previous
            .get_or_init(|| {
                self.previous
                    .as_ref()
                    .and_then(|p| serde_json::from_slice(p).ok())
            })
            .as_ref()
    }
}

/// How many live events a watcher may have waiting before it counts as fallen behind: the
/// largest power of two that fits in the window (at least 16, at most 65 536), so a watcher
/// never holds more of its resource's events than the window keeps of all of them.
fn live_capacity(capacity: usize) -> usize {
    let capacity = capacity.clamp(16, 65_536);
    1 << (usize::BITS - 1 - capacity.leading_zeros())
}

/// The resource part of a key or prefix (`core/pods/` of `core/pods/default/a`), or `""` for a
/// prefix shorter than a resource, which sees every resource's events.
fn resource_of(key: &str) -> &str {
    let mut slashes = key.match_indices('/').map(|(i, _)| i);
    match (slashes.next(), slashes.next()) {
        (Some(_), Some(second)) => &key[..=second],
        _ => "",
    }
}

/// One live watcher's end of the fan-out.
struct Subscriber {
    prefix: String,
    sender: mpsc::Sender<Arc<StoreEvent>>,
    /// Set when the watcher's queue overflowed: its stream reports it fell behind.
    lagged: Arc<AtomicBool>,
}

impl Subscriber {
    /// Hands over `event` if it is under the prefix; false once the watcher is gone or
    /// fell behind (its sender is then dropped, which ends its stream).
    fn offer(&self, event: &Arc<StoreEvent>) -> bool {
        if !event.key.starts_with(&self.prefix) {
            return !self.sender.is_closed();
        }
        match self.sender.try_send(event.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.lagged.store(true, Ordering::Release);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}

/// The most bytes of objects the window keeps, whatever its count: with objects of up to
/// 1.5 MiB, a window of 100 000 events bounded by count alone could hold a hundred gigabytes.
pub const MAX_WINDOW_BYTES: usize = 256 * 1024 * 1024;

/// The bytes an event holds (its object and the previous one; a previous object usually
/// shares the bytes of an earlier event, so this over-counts, which only makes the bound
/// safer).
fn event_bytes(event: &StoreEvent) -> usize {
    event.object.len() + event.previous.as_ref().map_or(0, Bytes::len)
}

/// Recent events, bounded by count and bytes, and the live watchers by resource.
pub(crate) struct Window {
    events: VecDeque<Arc<StoreEvent>>,
    capacity: usize,
    /// The bytes of the events held ([`event_bytes`]), kept under `max_bytes`.
    bytes: usize,
    max_bytes: usize,
    /// A watch may start from any revision >= this one.
    oldest: u64,
    /// Live watchers by the resource they watch (see [`resource_of`]), as Kubernetes keeps one
    /// watch cache per resource: a write wakes only the watchers of its own resource, so 100
    /// pod watchers are not woken for every Event or Lease write.
    subscribers: HashMap<String, Vec<Subscriber>>,
    /// The newest event of each key that has one in the window, unless it is a deletion: its
    /// object is what the key holds now, so the next write's `previous` shares these bytes
    /// instead of keeping a second copy of them for every modification in the window.
    latest: HashMap<String, Arc<StoreEvent>>,
}

impl Window {
    pub(crate) fn new(capacity: usize, current_revision: u64) -> Self {
        Self {
            events: VecDeque::with_capacity(capacity.min(4096)),
            capacity,
            bytes: 0,
            max_bytes: MAX_WINDOW_BYTES,
            oldest: current_revision,
            subscribers: HashMap::new(),
            latest: HashMap::new(),
        }
    }

    pub(crate) fn push(&mut self, event: Arc<StoreEvent>) {
        if event.revision <= self.newest() {
            // Replayed by a backend stream that restarted: already here.
            return;
        }
        let size = event_bytes(&event);
        while self.events.len() >= self.capacity.max(1)
            || (!self.events.is_empty() && self.bytes + size > self.max_bytes)
        {
            if let Some(evicted) = self.events.pop_front() {
                self.bytes -= event_bytes(&evicted);
                self.oldest = evicted.revision;
                if self
                    .latest
                    .get(&evicted.key)
                    .is_some_and(|l| Arc::ptr_eq(l, &evicted))
                {
                    self.latest.remove(&evicted.key);
                }
            }
        }
        if self.capacity > 0 {
            self.bytes += size;
            self.events.push_back(event.clone());
            if event.kind == EventKind::Deleted {
                self.latest.remove(&event.key);
            } else {
                self.latest.insert(event.key.clone(), event.clone());
            }
        } else {
            self.oldest = event.revision;
        }
        for resource in [resource_of(&event.key), ""] {
            if let Some(subscribers) = self.subscribers.get_mut(resource) {
                subscribers.retain(|s| s.offer(&event));
                if subscribers.is_empty() {
                    self.subscribers.remove(resource);
                }
            }
            if resource.is_empty() {
                break;
            }
        }
    }

    /// What `key` holds after the newest event in the window, if that event is in the window
    /// and is not a deletion (`None` says nothing: the key may hold an older value).
    fn latest(&self, key: &str) -> Option<Bytes> {
        self.latest.get(key).map(|e| e.object.clone())
    }

    /// The newest revision the window has seen.
    fn newest(&self) -> u64 {
        self.events.back().map_or(self.oldest, |e| e.revision)
    }

    pub(crate) fn watch(&mut self, prefix: &str, from: u64) -> Result<EventStream, StoreError> {
        if from < self.oldest {
            return Err(StoreError::Gone {
                requested: from,
                oldest: self.oldest,
            });
        }
        let start = self.events.partition_point(|e| e.revision <= from);
        let backlog: Vec<_> = self
            .events
            .range(start..)
            .filter(|e| e.key.starts_with(prefix))
            .cloned()
            .collect();
        let (sender, receiver) = mpsc::channel(live_capacity(self.capacity));
        let lagged = Arc::new(AtomicBool::new(false));
        let subscribers = self
            .subscribers
            .entry(resource_of(prefix).to_owned())
            .or_default();
        // Watchers that ended since the resource's last write leave now.
        subscribers.retain(|s| !s.sender.is_closed());
        subscribers.push(Subscriber {
            prefix: prefix.to_owned(),
            sender,
            lagged: lagged.clone(),
        });
        Ok(event_stream(backlog, receiver, lagged, from))
    }
}

/// What an [`EventStream`] walks through.
struct Cursor {
    backlog: std::vec::IntoIter<Arc<StoreEvent>>,
    live: mpsc::Receiver<Arc<StoreEvent>>,
    lagged: Arc<AtomicBool>,
    /// The last revision handed out.
    last: u64,
    ended: bool,
}

/// The backlog, then the live events (registered in the same critical section as the backlog
/// was read, so none is missed or repeated).
fn event_stream(
    backlog: Vec<Arc<StoreEvent>>,
    live: mpsc::Receiver<Arc<StoreEvent>>,
    lagged: Arc<AtomicBool>,
    from: u64,
) -> EventStream {
    let cursor = Cursor {
        backlog: backlog.into_iter(),
        live,
        lagged,
        last: from,
        ended: false,
    };
    futures::stream::unfold(cursor, |mut c| async move {
        if c.ended {
            return None;
        }
        if let Some(event) = c.backlog.next() {
            c.last = event.revision;
            return Some((Ok(event), c));
        }
        // A cache fed from a backend's stream (etcd) may take an event after the write was
        // answered, so a watch from that write's revision can be registered before its event
        // arrives: what the watcher already has is skipped here, not sent twice.
        let mut received = c.live.recv().await;
        while received.as_ref().is_some_and(|e| e.revision <= c.last) {
            received = c.live.recv().await;
        }
        match received {
            Some(event) => {
                c.last = event.revision;
                Some((Ok(event), c))
            }
            // The queue overflowed and was dropped: events were lost for this reader, which
            // must list again, as after a 410. (Its queued events came first.)
            None if c.lagged.load(Ordering::Acquire) => {
                c.ended = true;
                let revision = c.last;
                Some((Err(StoreError::FellBehind { revision }), c))
            }
            None => None,
        }
    })
    .boxed()
}

/// The watch cache: a window of recent events that watches are served from, in front of any
/// backend.
///
/// A backend feeds it in commit order, either directly ([`WatchCache::push`], from the thread
/// that commits, as redb and memory do) or by handing over its own event stream
/// ([`WatchCache::follow`], as a network backend whose watch is a stream does). Watches from a
/// revision older than the window get [`StoreError::Gone`], as from Kubernetes' watch cache.
pub struct WatchCache {
    window: Mutex<Window>,
}

impl WatchCache {
    /// A cache keeping `capacity` events, starting at `revision` (watches from before it are
    /// gone).
    pub fn new(capacity: usize, revision: u64) -> Self {
        Self {
            window: Mutex::new(Window::new(capacity, revision)),
        }
    }

    fn window(&self) -> std::sync::MutexGuard<'_, Window> {
        self.window.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends committed events, in revision order.
    pub fn push<E: Into<Arc<StoreEvent>>>(&self, events: impl IntoIterator<Item = E>) {
        let mut window = self.window();
        for event in events {
            window.push(event.into());
        }
    }

    /// Feeds the cache from a backend's event stream (a watch of every key from the cache's
    /// start revision) until it ends. An error ends the feed: watches then see no more events
    /// and the backend owner must start a new cache.
    pub fn follow(self: &Arc<Self>, mut events: EventStream) -> tokio::task::JoinHandle<()> {
        let cache = Arc::downgrade(self);
        tokio::spawn(async move {
            while let Some(event) = events.next().await {
                let Some(cache) = cache.upgrade() else { return };
                match event {
                    Ok(event) => cache.window().push(event),
                    Err(e) => {
                        tracing::error!(error = %e, "the watch cache lost its backend stream");
                        return;
                    }
                }
            }
        })
    }

    /// The bytes `key` holds as its newest event in the window wrote them (shared, not
    /// copied), or `None` if that event is not in the window or was a deletion. Only a backend
    /// that pushes every write itself, in commit order, may take this for the current value.
    pub fn latest(&self, key: &str) -> Option<Bytes> {
        self.window().latest(key)
    }

    /// The events after `from` under `prefix`: those in the window, then live ones.
    pub fn watch(&self, prefix: &str, from: u64) -> Result<EventStream, StoreError> {
        self.window().watch(prefix, from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    fn event(revision: u64, key: &str) -> Arc<StoreEvent> {
        StoreEvent::new(
            revision,
            EventKind::Added,
            key.into(),
            Bytes::from_static(b"{}"),
            None,
        )
        .into()
    }

    /// The events a watch has ready at once (its backlog).
    fn backlog(stream: EventStream) -> Vec<Arc<StoreEvent>> {
        let mut stream = stream;
        let mut ready = Vec::new();
        while let Some(Some(event)) = stream.next().now_or_never() {
            ready.push(event.unwrap());
        }
        ready
    }

    #[test]
    fn backlog_starts_after_requested_revision_and_filters_prefix() {
        let mut w = Window::new(10, 0);
        w.push(event(1, "a/x"));
        w.push(event(2, "b/y"));
        w.push(event(3, "a/z"));
        let watch = w.watch("a/", 1).unwrap();
        let revs: Vec<u64> = backlog(watch).iter().map(|e| e.revision).collect();
        assert_eq!(revs, vec![3]);
    }

    #[test]
    fn the_window_is_bounded_in_bytes_too() {
        let mut w = Window::new(100, 0);
        w.max_bytes = 10;
        for r in 1..=10 {
            w.push(event(r, "k"));
        }
        // Two bytes an event: five fit.
        assert_eq!(w.events.len(), 5);
        assert_eq!(w.bytes, 10);
        assert!(matches!(w.watch("", 4), Err(StoreError::Gone { .. })));
        assert_eq!(backlog(w.watch("", 5).unwrap()).len(), 5);
    }

    #[test]
    fn evicted_revisions_are_gone() {
        let mut w = Window::new(2, 0);
        for r in 1..=4 {
            w.push(event(r, "k"));
        }
        assert!(matches!(w.watch("", 1), Err(StoreError::Gone { .. })));
        assert_eq!(backlog(w.watch("", 2).unwrap()).len(), 2);
        // Watching from "now" is always possible.
        assert!(backlog(w.watch("", 4).unwrap()).is_empty());
    }

    #[tokio::test]
    async fn live_events_follow_the_backlog_in_order_without_repeats() {
        let cache = WatchCache::new(10, 0);
        cache.push([event(1, "a/1"), event(2, "b/1")]);
        let mut watch = cache.watch("a/", 0).unwrap();
        cache.push([event(3, "a/2"), event(4, "b/2"), event(5, "a/3")]);
        let mut revs = Vec::new();
        while revs.len() < 3 {
            revs.push(watch.next().await.unwrap().unwrap().revision);
        }
        assert_eq!(revs, vec![1, 3, 5]);
    }

    #[tokio::test]
    async fn live_events_up_to_the_watch_revision_are_skipped() {
        // A watch from revision 3 registered before the cache took events 2 and 3.
        let cache = WatchCache::new(10, 1);
        let mut watch = cache.watch("", 3).unwrap();
        cache.push([event(2, "a"), event(3, "b"), event(4, "c")]);
        assert_eq!(watch.next().await.unwrap().unwrap().revision, 4);
    }

    #[tokio::test]
    async fn a_lagging_watcher_is_told_and_its_stream_ends() {
        let cache = WatchCache::new(16, 0);
        let mut watch = cache.watch("", 0).unwrap();
        cache.push((1..=40).map(|r| event(r, "k")));
        let mut last = None;
        while let Some(item) = watch.next().await {
            last = Some(item);
        }
        assert!(matches!(last, Some(Err(StoreError::FellBehind { .. }))));
    }

    #[tokio::test]
    async fn a_cache_follows_a_backend_stream() {
        let backend = Arc::new(WatchCache::new(10, 0));
        let cache = Arc::new(WatchCache::new(10, 0));
        cache.follow(backend.watch("", 0).unwrap());
        let mut watch = cache.watch("a/", 0).unwrap();
        backend.push([event(1, "a/1"), event(2, "b/1"), event(3, "a/2")]);
        let first = watch.next().await.unwrap().unwrap();
        let second = watch.next().await.unwrap().unwrap();
        assert_eq!((first.revision, second.revision), (1, 3));
        // Late watchers replay what the cache took from the stream.
        let replayed: Vec<u64> = backlog(cache.watch("", 1).unwrap())
            .iter()
            .map(|e| e.revision)
            .collect();
        assert_eq!(replayed, vec![2, 3]);
    }

    #[tokio::test]
    async fn a_watcher_is_woken_only_by_its_resource_and_a_short_prefix_sees_all() {
        assert_eq!(resource_of("core/pods/default/a"), "core/pods/");
        assert_eq!(resource_of("core/pods/"), "core/pods/");
        assert_eq!(resource_of("core/"), "");
        let cache = WatchCache::new(64, 0);
        let mut pods = cache.watch("core/pods/ns1/", 0).unwrap();
        let mut all = cache.watch("", 0).unwrap();
        cache.push([
            event(1, "core/events/ns1/e"),
            event(2, "core/pods/ns2/p"),
            event(3, "core/pods/ns1/p"),
        ]);
        assert_eq!(pods.next().await.unwrap().unwrap().revision, 3);
        assert_eq!(
            cache.window().subscribers.get("core/pods/").map(Vec::len),
            Some(1)
        );
        let mut seen = Vec::new();
        while seen.len() < 3 {
            seen.push(all.next().await.unwrap().unwrap().revision);
        }
        assert_eq!(seen, vec![1, 2, 3]);
        // A watcher that ends leaves at its resource's next write.
        drop(pods);
        cache.push([event(4, "core/pods/ns1/q")]);
        assert!(!cache.window().subscribers.contains_key("core/pods/"));
    }

    #[test]
    fn the_live_channel_keeps_no_more_events_than_the_window() {
        assert_eq!(live_capacity(20_000), 16_384);
        assert_eq!(live_capacity(16_384), 16_384);
        assert_eq!(live_capacity(10), 16);
        assert_eq!(live_capacity(1 << 20), 65_536);
    }

    #[test]
    fn latest_follows_the_newest_event_of_a_key_in_the_window() {
        let ev = |revision: u64, kind: EventKind, key: &str, body: &'static [u8]| {
            Arc::new(StoreEvent::new(
                revision,
                kind,
                key.into(),
                Bytes::from_static(body),
                None,
            ))
        };
        let mut w = Window::new(2, 0);
        w.push(ev(1, EventKind::Added, "a", b"1"));
        w.push(ev(2, EventKind::Modified, "a", b"2"));
        assert_eq!(w.latest("a").as_deref(), Some(&b"2"[..]));
        // Evicting an older event of the key keeps the newest.
        w.push(ev(3, EventKind::Added, "b", b"3"));
        assert_eq!(w.latest("a").as_deref(), Some(&b"2"[..]));
        // Evicting the newest forgets the key: its value must be read from the backend.
        w.push(ev(4, EventKind::Added, "c", b"4"));
        assert_eq!(w.latest("a"), None);
        assert_eq!(w.latest("c").as_deref(), Some(&b"4"[..]));
        // A deletion leaves nothing to share.
        w.push(ev(5, EventKind::Deleted, "c", b"4"));
        assert_eq!(w.latest("c"), None);
        assert_eq!(w.latest("b").as_deref(), None, "evicted");
    }

    #[test]
    fn events_parse_lazily_once() {
        let e = StoreEvent::new(
            1,
            EventKind::Modified,
            "k".into(),
            Bytes::from_static(br#"{"a":1}"#),
            Some(Bytes::from_static(br#"{"a":0}"#)),
        );
        assert_eq!(e.object_value().unwrap()["a"], 1);
        assert_eq!(e.previous_value().unwrap()["a"], 0);
        assert!(std::ptr::eq(
            e.object_value().unwrap(),
            e.object_value().unwrap()
        ));
    }
}
