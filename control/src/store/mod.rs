//! The object store: one global revision (the resourceVersion), ACID writes, and watches served
//! from an in-memory window of recent events.
//!
//! Objects are JSON documents keyed by `<group>/<plural>/<namespace>/<name>` (namespace empty
//! for cluster-scoped kinds), so a prefix names a collection. The API server is the only user.
//! The trait is the seam for another backend (etcd for HA): it speaks in keys, revisions and
//! events, not in Kubernetes semantics.

mod redb_store;
mod window;

use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value;

pub use redb_store::RedbStore;
pub use window::{EventKind, StoreEvent, Watch};

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
    /// A watch asked for a revision that has left the event window.
    #[error("too old resource version: {requested} (oldest available {oldest})")]
    Gone {
        /// The revision asked for.
        requested: u64,
        /// The oldest revision a watch can start from.
        oldest: u64,
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

/// The storage backend behind the API server.
pub trait Store: Send + Sync + 'static {
    /// Reads one object.
    fn get(&self, key: &str) -> Result<Option<Value>, StoreError>;
    /// Reads every object whose key starts with `prefix`, after the key `start_after` when given,
    /// at most `limit` of them when given.
    fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: Option<usize>,
    ) -> Result<ListResult, StoreError>;
    /// Stores a new object; its `metadata.resourceVersion` becomes the new revision.
    fn create(&self, key: &str, object: Value) -> Result<Value, StoreError>;
    /// Replaces an object, if `expected` is given only when it is the stored revision.
    fn update(&self, key: &str, expected: Option<u64>, object: Value) -> Result<Value, StoreError>;
    /// Removes an object, if `expected` is given only when it is the stored revision. Returns the
    /// object as it was, with the deletion's revision as its resourceVersion.
    fn delete(&self, key: &str, expected: Option<u64>) -> Result<Value, StoreError>;
    /// Streams the events after revision `from` for keys under `prefix`.
    fn watch(&self, prefix: &str, from: u64) -> Result<Watch, StoreError>;
    /// The newest revision.
    fn revision(&self) -> u64;
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
