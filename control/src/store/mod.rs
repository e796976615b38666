//! The object store: one global revision (the resourceVersion), ACID writes, lists that can read
//! at a revision, and watches served from a watch cache of recent events.
//!
//! Objects are JSON documents keyed by one scheme ([`keys`]): `<group>/<plural>/<namespace>/<name>`
//! (namespace empty for cluster-scoped kinds), so a prefix names a collection. The API server is
//! the only user. [`Store`] is the seam between the API server and a backend (redb embedded,
//! memory for tests, etcd for several API servers): it speaks in keys, revisions and events, not
//! in Kubernetes semantics, and every implementation passes the same conformance suite
//! (`conformance.rs`).

#[cfg(test)]
mod conformance;
pub mod etcd_store;
pub mod keys;
mod memory;
mod redb_store;
pub mod snapshot;
mod window;

use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use serde_json::Value;

pub use etcd_store::{EtcdConfig, EtcdStore, EtcdTls};
pub use memory::MemoryStore;
pub use redb_store::RedbStore;
pub use window::{EventKind, StoreEvent, WatchCache};

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A create found an object under the key already.
    #[error("object {0} already exists")]
    AlreadyExists(String),
    /// An update or delete found no object under the key.
    #[error("object {0} not found")]
    NotFound(String),
    /// The caller's expected resourceVersion is not the stored one.
    #[error("object {key} has been modified: expected revision {expected}, stored {actual}")]
    Conflict {
        /// The key written.
        key: String,
        /// The revision the caller expected.
        expected: u64,
        /// The revision the store holds.
        actual: u64,
    },
    /// The writer thread is gone (the store is shutting down).
    #[error("the store is closed")]
    Closed,
    /// A watch or a list asked for a revision the store no longer serves (it left the watch
    /// cache, or the snapshot/history for a list was compacted).
    #[error("too old resource version: {requested} (oldest available {oldest})")]
    Gone {
        /// The revision asked for.
        requested: u64,
        /// The oldest revision that can still be asked for.
        oldest: u64,
    },
    /// A watch's reader fell behind the live events and missed some: it must list again.
    #[error("the watcher fell behind after revision {revision}")]
    FellBehind {
        /// The last revision the watcher received.
        revision: u64,
    },
    /// A stored document could not be decoded (corruption or a bug).
    #[error("corrupt object under {key}: {source}")]
    Corrupt {
        /// The key read.
        key: String,
        /// The decoding error.
        source: serde_json::Error,
    },
    /// The database itself failed.
    #[error("database error: {0}")]
    Database(String),
    /// The database file is open in another process (another skiff-control on the same data
    /// directory).
    #[error("{0} is in use by another process")]
    InUse(String),
    /// The backend cannot serve now but may soon: a network store that is unreachable, has no
    /// leader or did not answer in time. The API answers 503 ServiceUnavailable; the write
    /// may or may not have been applied, as with any request whose answer was lost.
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    /// The object is larger than the backend takes in one request (etcd's
    /// `--max-request-bytes`, 1.5 MiB by default). The API answers 413.
    #[error("object {key} is too large for the store: {reason}")]
    TooLarge {
        /// The key written.
        key: String,
        /// What the backend said.
        reason: String,
    },
}

/// What a list reads: a page of a prefix, possibly at an earlier revision.
#[derive(Debug, Clone, Default)]
pub struct ListRequest {
    /// Start after this key (the last key of the previous page).
    pub start_after: Option<String>,
    /// At most this many items.
    pub limit: Option<usize>,
    /// Read at this revision (the first page's, for the next pages of a paged list); `None`
    /// reads the newest state. A revision the store cannot serve any more is
    /// [`StoreError::Gone`].
    pub revision: Option<u64>,
}

/// The result of a list: the objects in key order and the revision they were read at.
#[derive(Debug, Default)]
pub struct ListResult {
    /// Objects as stored (JSON bytes), ordered by key. Lists are served from these bytes
    /// without decoding unless a filter or a Table needs the document.
    pub items: Vec<Bytes>,
    /// The store revision the read saw.
    pub revision: u64,
    /// The key of the last item returned when `limit` cut the list short.
    pub continue_after: Option<String>,
}

/// A started watch: the events after the requested revision, in revision order, then live
/// ones. It ends when the store closes; an error item (e.g. [`StoreError::FellBehind`]) is the
/// last item.
pub type EventStream = BoxStream<'static, Result<Arc<StoreEvent>, StoreError>>;

/// The storage backend behind the API server.
///
/// Async and object-safe (boxed futures) so that `Arc<dyn Store>` serves both an embedded
/// database and a network one. Writes are atomic and durable when their future resolves, each
/// with its own revision, greater than every revision before it. Revisions only increase:
/// the embedded stores happen to number writes one by one, but etcd's revision also counts
/// writes of other clients (other API servers, the compactor's bookkeeping), so nothing may
/// count on a gap-free sequence.
pub trait Store: Send + Sync + 'static {
    /// Reads one object (newest state).
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Value>, StoreError>>;
    /// Reads the objects whose key starts with `prefix`, in key order, as `request` says.
    fn list<'a>(
        &'a self,
        prefix: &'a str,
        request: ListRequest,
    ) -> BoxFuture<'a, Result<ListResult, StoreError>>;
    /// Applies one write (checked with [`apply`]) at a new revision; answers the object
    /// as stored (for deletes: as it was, at the deletion's revision).
    fn write<'a>(&'a self, key: &'a str, write: Write) -> BoxFuture<'a, Result<Value, StoreError>>;
    /// Stores a new object; its `metadata.resourceVersion` becomes the new revision.
    fn create<'a>(
        &'a self,
        key: &'a str,
        object: Value,
    ) -> BoxFuture<'a, Result<Value, StoreError>> {
        self.write(key, Write::Create(object))
    }
    /// Replaces an object, if `expected` is given only when it is the stored revision.
    fn update<'a>(
        &'a self,
        key: &'a str,
        expected: Option<u64>,
        object: Value,
    ) -> BoxFuture<'a, Result<Value, StoreError>> {
        self.write(key, Write::Update(expected, object))
    }
    /// Removes an object, if `expected` is given only when it is the stored revision. Returns the
    /// object as it was, with the deletion's revision as its resourceVersion.
    fn delete<'a>(
        &'a self,
        key: &'a str,
        expected: Option<u64>,
    ) -> BoxFuture<'a, Result<Value, StoreError>> {
        self.write(key, Write::Delete(expected))
    }
    /// Streams the events after revision `from` for keys under `prefix`; [`StoreError::Gone`]
    /// when `from` is older than the store can replay.
    fn watch<'a>(
        &'a self,
        prefix: &'a str,
        from: u64,
    ) -> BoxFuture<'a, Result<EventStream, StoreError>>;
    /// Forgets what lists at revisions before `revision` would need: such lists get
    /// [`StoreError::Gone`] afterwards (etcd's compaction). Watches are not affected.
    fn compact(&self, revision: u64) -> BoxFuture<'_, Result<(), StoreError>>;
    /// The newest revision this store has committed or seen.
    fn revision(&self) -> u64;
    /// Every object, read at one revision (returned with it), for a backup
    /// ([`snapshot::encode`]). The stream does not hold up writes.
    fn snapshot(&self) -> BoxFuture<'_, Result<(u64, snapshot::Entries), StoreError>>;
    /// Whether the store can serve now; the reason when not (a full disk, say). `/readyz`
    /// reports it.
    fn health(&self) -> Result<(), String> {
        Ok(())
    }
}

/// A shared store handle.
pub type SharedStore = Arc<dyn Store>;

/// Reads the resourceVersion of a stored object.
pub fn object_revision(object: &Value) -> u64 {
    object
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Sets the resourceVersion of an object.
pub(crate) fn set_revision(object: &mut Value, revision: u64) {
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert(
            "resourceVersion".into(),
            Value::String(revision.to_string()),
        );
    }
}

/// One write, as a backend applies it to the object it holds under the key. (Clone: a
/// backend whose compare-and-swap can lose a race checks it again against the newer object.)
#[derive(Debug, Clone)]
pub enum Write {
    /// Create the object; the key must be free.
    Create(Value),
    /// Replace the object, only at this revision if one is given.
    Update(Option<u64>, Value),
    /// Remove the object, only at this revision if one is given.
    Delete(Option<u64>),
}

/// A write that passed its preconditions: what to answer, and the event (whose `object` bytes
/// are what to store, unless it is a deletion).
#[derive(Debug)]
pub struct Applied {
    /// The object to answer the writer with.
    pub answer: Value,
    /// The event of the write.
    pub event: StoreEvent,
}

fn decode(key: &str, bytes: &[u8]) -> Result<Value, StoreError> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Corrupt {
        key: key.to_owned(),
        source,
    })
}

fn encode(key: &str, value: &Value) -> Result<Bytes, StoreError> {
    // Exactly as long as the JSON: the watch cache keeps these bytes for thousands of events,
    // and `to_vec`'s doubling growth leaves up to half of each buffer unused.
    serde_json::to_vec(value)
        .map(|json| Bytes::from(json.into_boxed_slice()))
        .map_err(|source| StoreError::Corrupt {
            key: key.to_owned(),
            source,
        })
}

fn check_expected(key: &str, expected: Option<u64>, current: &Value) -> Result<(), StoreError> {
    match expected {
        Some(expected) if expected != object_revision(current) => Err(StoreError::Conflict {
            key: key.to_owned(),
            expected,
            actual: object_revision(current),
        }),
        _ => Ok(()),
    }
}

/// Checks `write` against `current` (the stored bytes under `key`) and builds its outcome at
/// `revision`. Every backend goes through this, so preconditions and the shape of events and
/// answers are the same whichever stores the bytes.
pub fn apply(
    key: &str,
    write: Write,
    current: Option<Bytes>,
    revision: u64,
) -> Result<Applied, StoreError> {
    let stored = current.as_deref().map(|b| decode(key, b)).transpose()?;
    let (kind, answer) = match write {
        Write::Create(mut object) => {
            if stored.is_some() {
                return Err(StoreError::AlreadyExists(key.to_owned()));
            }
            set_revision(&mut object, revision);
            (EventKind::Added, object)
        }
        Write::Update(expected, mut object) => {
            let stored = stored.ok_or_else(|| StoreError::NotFound(key.to_owned()))?;
            check_expected(key, expected, &stored)?;
            set_revision(&mut object, revision);
            (EventKind::Modified, object)
        }
        Write::Delete(expected) => {
            let mut stored = stored.ok_or_else(|| StoreError::NotFound(key.to_owned()))?;
            check_expected(key, expected, &stored)?;
            set_revision(&mut stored, revision);
            (EventKind::Deleted, stored)
        }
    };
    let bytes = encode(key, &answer)?;
    Ok(Applied {
        answer,
        event: StoreEvent::new(revision, kind, key.to_owned(), bytes, current),
    })
}
