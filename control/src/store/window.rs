//! The in-memory window of recent events that watches are served from.
//!
//! The writer appends events while holding the window's lock, in commit order, so the window
//! and the broadcast channel see events in revision order and every watcher gets the same order.
//! Events keep objects as their JSON bytes: that is what watchers send, it is a fraction of the
//! memory of a parsed document, and a parse happens at most once per event, only when a watcher
//! needs one (a field selector or a Table).

use std::collections::VecDeque;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::broadcast;

use super::StoreError;

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

/// A started watch: the backlog from the window, then the live channel.
pub struct Watch {
    /// Events after the requested revision that were already in the window.
    pub backlog: Vec<Arc<StoreEvent>>,
    /// Live events; a lagging receiver means the watcher fell behind and must restart.
    pub live: broadcast::Receiver<Arc<StoreEvent>>,
    /// Only keys under this prefix are of interest.
    pub prefix: String,
}

impl Watch {
    /// Whether an event concerns this watch.
    pub fn wants(&self, event: &StoreEvent) -> bool {
        event.key.starts_with(&self.prefix)
    }
}

/// Recent events, bounded by count.
pub(crate) struct Window {
    events: VecDeque<Arc<StoreEvent>>,
    capacity: usize,
    /// A watch may start from any revision >= this one.
    oldest: u64,
    sender: broadcast::Sender<Arc<StoreEvent>>,
}

impl Window {
    pub(crate) fn new(capacity: usize, current_revision: u64) -> Self {
        let (sender, _) = broadcast::channel(capacity.clamp(16, 65_536));
        Self {
            events: VecDeque::with_capacity(capacity.min(4096)),
            capacity,
            oldest: current_revision,
            sender,
        }
    }

    pub(crate) fn push(&mut self, event: StoreEvent) {
        let event = Arc::new(event);
        if self.events.len() == self.capacity {
            if let Some(evicted) = self.events.pop_front() {
                self.oldest = evicted.revision;
            }
        }
        self.events.push_back(event.clone());
        // No receivers is fine: nobody is watching.
        let _ = self.sender.send(event);
    }

    pub(crate) fn watch(&self, prefix: &str, from: u64, current: u64) -> Result<Watch, StoreError> {
        if from < self.oldest && from < current {
            return Err(StoreError::Gone {
                requested: from,
                oldest: self.oldest,
            });
        }
        let start = self.events.partition_point(|e| e.revision <= from);
        let backlog = self
            .events
            .range(start..)
            .filter(|e| e.key.starts_with(prefix))
            .cloned()
            .collect();
        Ok(Watch {
            backlog,
            live: self.sender.subscribe(),
            prefix: prefix.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(revision: u64, key: &str) -> StoreEvent {
        StoreEvent::new(
            revision,
            EventKind::Added,
            key.into(),
            Bytes::from_static(b"{}"),
            None,
        )
    }

    #[test]
    fn backlog_starts_after_requested_revision_and_filters_prefix() {
        let mut w = Window::new(10, 0);
        w.push(event(1, "a/x"));
        w.push(event(2, "b/y"));
        w.push(event(3, "a/z"));
        let watch = w.watch("a/", 1, 3).unwrap();
        let revs: Vec<u64> = watch.backlog.iter().map(|e| e.revision).collect();
        assert_eq!(revs, vec![3]);
    }

    #[test]
    fn evicted_revisions_are_gone() {
        let mut w = Window::new(2, 0);
        for r in 1..=4 {
            w.push(event(r, "k"));
        }
        assert!(matches!(w.watch("", 1, 4), Err(StoreError::Gone { .. })));
        assert_eq!(w.watch("", 2, 4).unwrap().backlog.len(), 2);
        // Watching from "now" is always possible.
        assert!(w.watch("", 4, 4).unwrap().backlog.is_empty());
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
