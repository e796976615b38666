//! The embedded default backend: one redb file, one write transaction per change.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use redb::{Database, ReadableTable, TableDefinition};
use serde_json::Value;

use super::window::{EventKind, StoreEvent, Window};
use super::{object_revision, set_revision, ListResult, Store, StoreError, Watch};

const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("objects");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const REVISION_KEY: &str = "revision";

/// How many recent events watches can be served from.
pub const DEFAULT_WINDOW: usize = 100_000;

/// A [`Store`] on a redb database file.
pub struct RedbStore {
    db: Database,
    revision: AtomicU64,
    /// Serialises writers with the event window so events are appended in revision order.
    window: Mutex<Window>,
}

impl From<redb::Error> for StoreError {
    fn from(e: redb::Error) -> Self {
        StoreError::Database(e.to_string())
    }
}

macro_rules! db_err {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self { StoreError::Database(e.to_string()) }
        }
    )*};
}
db_err!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

impl RedbStore {
    /// Opens (or creates) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with_window(path, DEFAULT_WINDOW)
    }

    /// Opens the database keeping `window` recent events for watches.
    pub fn open_with_window(path: &Path, window: usize) -> Result<Self, StoreError> {
        let db = Database::create(path)?;
        let txn = db.begin_write()?;
        let revision = {
            txn.open_table(OBJECTS)?;
            let meta = txn.open_table(META)?;
            let rev = meta.get(REVISION_KEY)?.map(|v| v.value()).unwrap_or(0);
            rev
        };
        txn.commit()?;
        Ok(Self {
            db,
            revision: AtomicU64::new(revision),
            window: Mutex::new(Window::new(window, revision)),
        })
    }

    fn decode(key: &str, bytes: &[u8]) -> Result<Value, StoreError> {
        serde_json::from_slice(bytes).map_err(|source| StoreError::Corrupt {
            key: key.to_owned(),
            source,
        })
    }

    /// Runs one write transaction: `f` sees the current object and decides the new one
    /// (`None` removes it). The revision, the commit and the event happen under one lock.
    fn write(
        &self,
        key: &str,
        f: impl FnOnce(Option<Value>) -> Result<(EventKind, Option<Value>), StoreError>,
    ) -> Result<Value, StoreError> {
        let mut window = self.window.lock().unwrap_or_else(|p| p.into_inner());
        let txn = self.db.begin_write()?;
        let revision = self.revision.load(Ordering::SeqCst) + 1;
        let (kind, result, previous) = {
            let mut objects = txn.open_table(OBJECTS)?;
            let current = match objects.get(key)? {
                Some(bytes) => Some(Self::decode(key, bytes.value())?),
                None => None,
            };
            let previous = current.clone();
            let (kind, next) = f(current)?;
            let result = match next {
                Some(mut object) => {
                    set_revision(&mut object, revision);
                    let bytes =
                        serde_json::to_vec(&object).map_err(|source| StoreError::Corrupt {
                            key: key.to_owned(),
                            source,
                        })?;
                    objects.insert(key, bytes.as_slice())?;
                    object
                }
                None => {
                    objects.remove(key)?;
                    let mut object = previous
                        .clone()
                        .ok_or_else(|| StoreError::NotFound(key.to_owned()))?;
                    set_revision(&mut object, revision);
                    object
                }
            };
            let mut meta = txn.open_table(META)?;
            meta.insert(REVISION_KEY, revision)?;
            (kind, result, previous)
        };
        txn.commit()?;
        self.revision.store(revision, Ordering::SeqCst);
        window.push(StoreEvent {
            revision,
            kind,
            key: key.to_owned(),
            object: Arc::new(result.clone()),
            previous: previous.map(Arc::new),
        });
        Ok(result)
    }
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

impl Store for RedbStore {
    fn get(&self, key: &str) -> Result<Option<Value>, StoreError> {
        let txn = self.db.begin_read()?;
        let objects = txn.open_table(OBJECTS)?;
        let value = objects.get(key)?;
        value.map(|v| Self::decode(key, v.value())).transpose()
    }

    fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: Option<usize>,
    ) -> Result<ListResult, StoreError> {
        let txn = self.db.begin_read()?;
        // The revision is read inside the read transaction's snapshot so it matches the items.
        let revision = txn
            .open_table(META)?
            .get(REVISION_KEY)?
            .map(|v| v.value())
            .unwrap_or(0);
        let objects = txn.open_table(OBJECTS)?;
        let mut result = ListResult {
            revision,
            ..ListResult::default()
        };
        let range = match start_after {
            Some(after) if after.starts_with(prefix) => objects
                .range::<&str>((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded))?,
            _ => objects.range::<&str>(prefix..)?,
        };
        let mut last_key: Option<String> = None;
        for entry in range {
            let (key, value) = entry?;
            let key = key.value();
            if !key.starts_with(prefix) {
                break;
            }
            if limit.is_some_and(|l| result.items.len() == l) {
                result.continue_after = last_key.take();
                break;
            }
            result.items.push(Self::decode(key, value.value())?);
            last_key = Some(key.to_owned());
        }
        Ok(result)
    }

    fn create(&self, key: &str, object: Value) -> Result<Value, StoreError> {
        self.write(key, |current| match current {
            Some(_) => Err(StoreError::AlreadyExists(key.to_owned())),
            None => Ok((EventKind::Added, Some(object))),
        })
    }

    fn update(&self, key: &str, expected: Option<u64>, object: Value) -> Result<Value, StoreError> {
        self.write(key, |current| {
            let current = current.ok_or_else(|| StoreError::NotFound(key.to_owned()))?;
            check_expected(key, expected, &current)?;
            Ok((EventKind::Modified, Some(object)))
        })
    }

    fn delete(&self, key: &str, expected: Option<u64>) -> Result<Value, StoreError> {
        self.write(key, |current| {
            let current = current.ok_or_else(|| StoreError::NotFound(key.to_owned()))?;
            check_expected(key, expected, &current)?;
            Ok((EventKind::Deleted, None))
        })
    }

    fn watch(&self, prefix: &str, from: u64) -> Result<Watch, StoreError> {
        let window = self.window.lock().unwrap_or_else(|p| p.into_inner());
        window.watch(prefix, from, self.revision.load(Ordering::SeqCst))
    }

    fn revision(&self) -> u64 {
        self.revision.load(Ordering::SeqCst)
    }
}
