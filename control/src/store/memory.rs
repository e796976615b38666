//! An in-memory [`Store`]: nothing on disk, no fsync, for fast tests.
//!
//! It keeps a short history of versions per key (an MVCC map, as etcd does) so lists can read
//! at a recent revision; history between [`HISTORY`] and twice that many revisions old is
//! compacted away as writes go on. Watches come from the same [`WatchCache`] the other backends use.

use std::collections::BTreeMap;
use std::sync::Mutex;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use serde_json::Value;

use super::window::WatchCache;
use super::{apply, EventKind, EventStream, ListRequest, ListResult, Store, StoreError, Write};

/// How many revisions of history lists at a revision can reach back.
pub const HISTORY: u64 = 1024;

/// One version of a key: its bytes, or `None` once deleted.
struct Version {
    revision: u64,
    object: Option<Bytes>,
}

#[derive(Default)]
struct State {
    /// Every key's versions, oldest first.
    objects: BTreeMap<String, Vec<Version>>,
    revision: u64,
    /// Lists before this revision are gone.
    compacted: u64,
}

impl State {
    fn newest(&self, key: &str) -> Option<Bytes> {
        self.objects.get(key)?.last()?.object.clone()
    }

    /// Drops the versions no list at `revision` or later can see.
    fn compact(&mut self, revision: u64) {
        if revision <= self.compacted {
            return;
        }
        self.compacted = revision;
        self.objects.retain(|_, versions| {
            // Keep the newest version at or before `revision` and everything after it.
            let seen = versions.partition_point(|v| v.revision <= revision);
            versions.drain(..seen.saturating_sub(1));
            if versions.first().is_some_and(|v| v.object.is_none()) {
                versions.remove(0);
            }
            !versions.is_empty()
        });
    }

    fn list(&self, prefix: &str, request: &ListRequest) -> Result<ListResult, StoreError> {
        let revision = request.revision.unwrap_or(self.revision);
        if revision < self.compacted || revision > self.revision {
            return Err(StoreError::Gone {
                requested: revision,
                oldest: self.compacted,
            });
        }
        let range = match request.start_after.as_deref() {
            Some(after) if after.starts_with(prefix) => self
                .objects
                .range::<str, _>((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded)),
            _ => self.objects.range::<str, _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            )),
        };
        let mut result = ListResult {
            revision,
            ..ListResult::default()
        };
        let mut last_key = None;
        for (key, versions) in range.take_while(|(k, _)| k.starts_with(prefix)) {
            let seen = versions.partition_point(|v| v.revision <= revision);
            let Some(object) = seen.checked_sub(1).and_then(|i| versions[i].object.clone()) else {
                continue;
            };
            if request.limit == Some(result.items.len()) {
                result.continue_after = last_key;
                break;
            }
            last_key = Some(key.clone());
            result.items.push(object);
        }
        Ok(result)
    }
}

/// A [`Store`] in memory.
pub struct MemoryStore {
    state: Mutex<State>,
    cache: WatchCache,
}

impl MemoryStore {
    /// An empty store keeping `window` recent events for watches.
    pub fn new(window: usize) -> Self {
        Self {
            state: Mutex::default(),
            cache: WatchCache::new(window, 0),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn apply_write(&self, key: &str, write: Write) -> BoxFuture<'_, Result<Value, StoreError>> {
        let mut state = self.state();
        let revision = state.revision + 1;
        let result = apply(key, write, state.newest(key), revision).map(|applied| {
            let stored =
                (applied.event.kind != EventKind::Deleted).then(|| applied.event.object.clone());
            state
                .objects
                .entry(key.to_owned())
                .or_default()
                .push(Version {
                    revision,
                    object: stored,
                });
            state.revision = revision;
            // Compacting scans every key: do it once per HISTORY writes, not at every write.
            if revision - state.compacted >= 2 * HISTORY {
                state.compact(revision - HISTORY);
            }
            // Under the state lock, so the cache gets events in revision order.
            self.cache.push([applied.event]);
            applied.answer
        });
        futures::future::ready(result).boxed()
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new(super::redb_store::DEFAULT_WINDOW)
    }
}

impl Store for MemoryStore {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Value>, StoreError>> {
        let value = self
            .state()
            .newest(key)
            .map(|b| super::decode(key, &b))
            .transpose();
        futures::future::ready(value).boxed()
    }

    fn list<'a>(
        &'a self,
        prefix: &'a str,
        request: ListRequest,
    ) -> BoxFuture<'a, Result<ListResult, StoreError>> {
        futures::future::ready(self.state().list(prefix, &request)).boxed()
    }

    fn write<'a>(&'a self, key: &'a str, write: Write) -> BoxFuture<'a, Result<Value, StoreError>> {
        self.apply_write(key, write)
    }

    fn watch<'a>(
        &'a self,
        prefix: &'a str,
        from: u64,
    ) -> BoxFuture<'a, Result<EventStream, StoreError>> {
        futures::future::ready(self.cache.watch(prefix, from)).boxed()
    }

    fn compact(&self, revision: u64) -> BoxFuture<'_, Result<(), StoreError>> {
        let mut state = self.state();
        let revision = revision.min(state.revision);
        state.compact(revision);
        futures::future::ready(Ok(())).boxed()
    }

    fn revision(&self) -> u64 {
        self.state().revision
    }

    fn snapshot(&self) -> BoxFuture<'_, Result<(u64, super::snapshot::Entries), StoreError>> {
        let state = self.state();
        let entries: Vec<Result<(String, Bytes), StoreError>> = state
            .objects
            .iter()
            .filter_map(|(key, versions)| {
                let object = versions.last()?.object.clone()?;
                Some(Ok((key.clone(), object)))
            })
            .collect();
        let revision = state.revision;
        futures::future::ready(Ok((revision, futures::stream::iter(entries).boxed()))).boxed()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use serde_json::json;

    async fn open(window: usize) -> (crate::store::SharedStore, ()) {
        (Arc::new(MemoryStore::new(window)), ())
    }

    crate::store::conformance::suite!(open);

    #[tokio::test]
    async fn history_is_compacted_as_writes_go_on() {
        let store = MemoryStore::new(10);
        store.create("k", json!({"metadata": {}})).await.unwrap();
        while store.revision() < 2 * HISTORY {
            store
                .update("k", None, json!({"metadata": {}}))
                .await
                .unwrap();
        }
        let at = |revision| ListRequest {
            revision: Some(revision),
            ..ListRequest::default()
        };
        assert!(matches!(
            store.list("", at(1)).await,
            Err(StoreError::Gone { .. })
        ));
        assert_eq!(store.list("", at(HISTORY)).await.unwrap().items.len(), 1);
        assert_eq!(store.state().objects["k"].len() as u64, HISTORY + 1);
    }
}
