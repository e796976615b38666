//! The embedded default backend: one redb file, written by one writer thread with group commit.
//!
//! Writes queue to the writer, which applies every write waiting at that moment in one
//! transaction (each with its own precondition and its own revision) and commits once: with
//! many concurrent clients one fsync serves many writes, and a lone write pays one fsync as
//! before. Every write is still atomic and durable when its caller gets the answer.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};

use bytes::Bytes;
use redb::{Database, ReadableTable, TableDefinition};
use serde_json::Value;

use super::window::{EventKind, StoreEvent, Window};
use super::{object_revision, set_revision, ListResult, Store, StoreError, Watch};

const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("objects");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const REVISION_KEY: &str = "revision";

/// How many recent events watches can be served from.
pub const DEFAULT_WINDOW: usize = 20_000;

/// redb's in-process page cache.
const CACHE_BYTES: usize = 32 * 1024 * 1024;

/// Most writes applied in one transaction.
const MAX_BATCH: usize = 512;

enum Op {
    Create(Value),
    Update(Option<u64>, Value),
    Delete(Option<u64>),
}

struct WriteRequest {
    key: String,
    op: Op,
    reply: mpsc::SyncSender<Result<Value, StoreError>>,
}

struct Shared {
    db: Database,
    revision: AtomicU64,
    window: Mutex<Window>,
}

/// A [`Store`] on a redb database file.
pub struct RedbStore {
    shared: Arc<Shared>,
    writer: Mutex<Option<mpsc::Sender<WriteRequest>>>,
    writer_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
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

fn decode(key: &str, bytes: &[u8]) -> Result<Value, StoreError> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Corrupt {
        key: key.to_owned(),
        source,
    })
}

fn encode(key: &str, value: &Value) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|source| StoreError::Corrupt {
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

impl RedbStore {
    /// Opens (or creates) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with_window(path, DEFAULT_WINDOW)
    }

    /// Opens the database keeping `window` recent events for watches.
    pub fn open_with_window(path: &Path, window: usize) -> Result<Self, StoreError> {
        // redb's default page cache is 1 GiB; the OS page cache serves reads beyond this.
        let db = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create(path)?;
        let txn = db.begin_write()?;
        let revision = {
            txn.open_table(OBJECTS)?;
            let meta = txn.open_table(META)?;
            let rev = meta.get(REVISION_KEY)?.map(|v| v.value()).unwrap_or(0);
            rev
        };
        txn.commit()?;
        let shared = Arc::new(Shared {
            db,
            revision: AtomicU64::new(revision),
            window: Mutex::new(Window::new(window, revision)),
        });
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn({
                let shared = shared.clone();
                move || writer_loop(&shared, rx)
            })
            .map_err(|e| StoreError::Database(format!("starting the writer thread: {e}")))?;
        Ok(Self {
            shared,
            writer: Mutex::new(Some(tx)),
            writer_thread: Mutex::new(Some(thread)),
        })
    }

    fn submit(&self, key: &str, op: Op) -> Result<Value, StoreError> {
        let (reply, answer) = mpsc::sync_channel(1);
        {
            let writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
            let writer = writer.as_ref().ok_or(StoreError::Closed)?;
            writer
                .send(WriteRequest {
                    key: key.to_owned(),
                    op,
                    reply,
                })
                .map_err(|_| StoreError::Closed)?;
        }
        answer.recv().map_err(|_| StoreError::Closed)?
    }
}

impl Drop for RedbStore {
    fn drop(&mut self) {
        // Closing the queue ends the writer after it has answered what was queued.
        self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = self
            .writer_thread
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            let _ = t.join();
        }
    }
}

/// Applies one write inside `table`; returns the event parts on success.
fn apply(
    table: &mut redb::Table<&str, &[u8]>,
    key: &str,
    op: Op,
    revision: u64,
) -> Result<(EventKind, Value, Bytes, Option<Bytes>), StoreError> {
    let current_bytes = table.get(key)?.map(|v| Bytes::copy_from_slice(v.value()));
    let current = current_bytes
        .as_deref()
        .map(|b| decode(key, b))
        .transpose()?;
    match op {
        Op::Create(mut object) => {
            if current.is_some() {
                return Err(StoreError::AlreadyExists(key.to_owned()));
            }
            set_revision(&mut object, revision);
            let bytes = encode(key, &object)?;
            table.insert(key, bytes.as_slice())?;
            Ok((EventKind::Added, object, Bytes::from(bytes), None))
        }
        Op::Update(expected, mut object) => {
            let current = current.ok_or_else(|| StoreError::NotFound(key.to_owned()))?;
            check_expected(key, expected, &current)?;
            set_revision(&mut object, revision);
            let bytes = encode(key, &object)?;
            table.insert(key, bytes.as_slice())?;
            Ok((
                EventKind::Modified,
                object,
                Bytes::from(bytes),
                current_bytes,
            ))
        }
        Op::Delete(expected) => {
            let mut current = current.ok_or_else(|| StoreError::NotFound(key.to_owned()))?;
            check_expected(key, expected, &current)?;
            table.remove(key)?;
            set_revision(&mut current, revision);
            let bytes = encode(key, &current)?;
            Ok((
                EventKind::Deleted,
                current,
                Bytes::from(bytes),
                current_bytes,
            ))
        }
    }
}

fn writer_loop(shared: &Shared, queue: mpsc::Receiver<WriteRequest>) {
    while let Ok(first) = queue.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(req) => batch.push(req),
                Err(_) => break,
            }
        }
        write_batch(shared, batch);
    }
}

/// A write's result and where its caller waits for it.
type Outcome = (
    mpsc::SyncSender<Result<Value, StoreError>>,
    Result<Value, StoreError>,
);

fn write_batch(shared: &Shared, batch: Vec<WriteRequest>) {
    let base = shared.revision.load(Ordering::SeqCst);
    let mut revision = base;
    let mut outcomes: Vec<Outcome> = Vec::with_capacity(batch.len());
    let mut events = Vec::new();
    let committed = (|| -> Result<(), StoreError> {
        let txn = shared.db.begin_write()?;
        {
            let mut objects = txn.open_table(OBJECTS)?;
            for req in batch {
                match apply(&mut objects, &req.key, req.op, revision + 1) {
                    Ok((kind, value, bytes, previous)) => {
                        revision += 1;
                        events.push(StoreEvent::new(revision, kind, req.key, bytes, previous));
                        outcomes.push((req.reply, Ok(value)));
                    }
                    Err(e) => outcomes.push((req.reply, Err(e))),
                }
            }
            if revision != base {
                txn.open_table(META)?.insert(REVISION_KEY, revision)?;
            }
        }
        txn.commit()?;
        Ok(())
    })();
    match committed {
        Ok(()) => {
            let mut window = shared.window.lock().unwrap_or_else(|p| p.into_inner());
            shared.revision.store(revision, Ordering::SeqCst);
            for event in events {
                window.push(event);
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "store commit failed");
            for outcome in &mut outcomes {
                if outcome.1.is_ok() {
                    outcome.1 = Err(StoreError::Database(e.to_string()));
                }
            }
        }
    }
    for (reply, result) in outcomes {
        // The caller may have given up; nothing to do then.
        let _ = reply.send(result);
    }
}

impl Store for RedbStore {
    fn get(&self, key: &str) -> Result<Option<Value>, StoreError> {
        let txn = self.shared.db.begin_read()?;
        let objects = txn.open_table(OBJECTS)?;
        let value = objects.get(key)?;
        value.map(|v| decode(key, v.value())).transpose()
    }

    fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: Option<usize>,
    ) -> Result<ListResult, StoreError> {
        let txn = self.shared.db.begin_read()?;
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
            if let Some(limit) = limit {
                if result.items.len() == limit {
                    result.continue_after = last_key.take();
                    break;
                }
                last_key = Some(key.to_owned());
            }
            result.items.push(Bytes::copy_from_slice(value.value()));
        }
        Ok(result)
    }

    fn create(&self, key: &str, object: Value) -> Result<Value, StoreError> {
        self.submit(key, Op::Create(object))
    }

    fn update(&self, key: &str, expected: Option<u64>, object: Value) -> Result<Value, StoreError> {
        self.submit(key, Op::Update(expected, object))
    }

    fn delete(&self, key: &str, expected: Option<u64>) -> Result<Value, StoreError> {
        self.submit(key, Op::Delete(expected))
    }

    fn watch(&self, prefix: &str, from: u64) -> Result<Watch, StoreError> {
        let window = self.shared.window.lock().unwrap_or_else(|p| p.into_inner());
        window.watch(prefix, from, self.shared.revision.load(Ordering::SeqCst))
    }

    fn revision(&self) -> u64 {
        self.shared.revision.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn concurrent_writers_get_distinct_increasing_revisions() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(RedbStore::open(&dir.path().join("db")).unwrap());
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let store = store.clone();
                std::thread::spawn(move || {
                    (0..50)
                        .map(|i| {
                            object_revision(
                                &store
                                    .create(&format!("k/{t}/{i}"), json!({"metadata": {}}))
                                    .unwrap(),
                            )
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<u64> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        all.sort();
        assert_eq!(all, (1..=400).collect::<Vec<_>>());
        assert_eq!(store.revision(), 400);
        assert_eq!(store.list("k/", None, None).unwrap().items.len(), 400);
    }

    #[test]
    fn failed_writes_in_a_batch_do_not_take_revisions() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(&dir.path().join("db")).unwrap();
        store.create("a", json!({"metadata": {}})).unwrap();
        assert!(matches!(
            store.create("a", json!({"metadata": {}})),
            Err(StoreError::AlreadyExists(_))
        ));
        assert!(matches!(
            store.update("a", Some(7), json!({"metadata": {}})),
            Err(StoreError::Conflict { .. })
        ));
        assert!(matches!(
            store.delete("b", None),
            Err(StoreError::NotFound(_))
        ));
        assert_eq!(store.revision(), 1);
        let deleted = store.delete("a", Some(1)).unwrap();
        assert_eq!(object_revision(&deleted), 2);
        assert!(store.get("a").unwrap().is_none());
    }

    #[test]
    fn list_pages_with_limit() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(&dir.path().join("db")).unwrap();
        for k in ["p/a", "p/b", "p/c", "q/a"] {
            store.create(k, json!({"metadata": {"name": k}})).unwrap();
        }
        let page = store.list("p/", None, Some(2)).unwrap();
        assert_eq!(page.items.len(), 2);
        let next = page.continue_after.unwrap();
        let page = store.list("p/", Some(&next), Some(2)).unwrap();
        assert_eq!(page.items.len(), 1);
        assert!(page.continue_after.is_none());
    }
}
