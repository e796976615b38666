//! The embedded default backend: one redb file, written by one writer thread with group commit.
//!
//! Writes queue to the writer, which applies every write waiting at that moment in one
//! transaction (each with its own precondition and its own revision) and commits once: with
//! many concurrent clients one fsync serves many writes, and a lone write pays one fsync as
//! before. Every write is still atomic and durable when its caller gets the answer. Callers
//! await the answer; no async worker blocks on a commit.
//!
//! Lists at a revision use redb's MVCC: a read transaction is a snapshot, so the first page of
//! a paged list keeps its snapshot (a read-only table, which holds the transaction) and the next
//! pages read from it. redb keeps no history of old versions, so only snapshots pinned that way
//! can be read; they are let go after [`SNAPSHOT_TTL`] (Kubernetes compacts etcd every five
//! minutes, so continue tokens live about as long there) or when more than [`MAX_SNAPSHOTS`]
//! lists are open, since a pinned snapshot keeps the pages it sees from being reused. A
//! revision-indexed history table would serve any recent revision but costs every write an
//! extra insert and a compaction; paging is the only reader of old revisions, so snapshots are
//! the cheaper fit.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use redb::{Database, ReadOnlyTable, ReadableTable, TableDefinition};
use serde_json::Value;
use tokio::sync::oneshot;

use super::snapshot::{self, RESTORE_REVISION_BUMP};
use super::window::WatchCache;
use super::{
    apply, EventKind, EventStream, ListRequest, ListResult, Store, StoreError, StoreEvent, Write,
};

const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("objects");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const REVISION_KEY: &str = "revision";

/// How many recent events watches can be served from.
pub const DEFAULT_WINDOW: usize = 20_000;

/// redb's in-process page cache. Pages beyond it are read from the OS page cache, which the
/// kernel can reclaim and which does not count against the process. With 10 000 pods, 16 MiB
/// instead of 32 took 22 MB off skiff-control's RSS after an idle minute (216 -> 194 MB) and
/// added about 15 ms to a list of all of them (p50 35 -> 51 ms), against a 300 ms target
/// (`cargo xtask bench api`, docs/benchmarks.md).
const CACHE_BYTES: usize = 16 * 1024 * 1024;

/// Most writes applied in one transaction.
const MAX_BATCH: usize = 512;

/// How long a paged list's snapshot stays readable.
pub const SNAPSHOT_TTL: Duration = Duration::from_secs(300);

/// Most snapshots kept for paged lists at once.
pub const MAX_SNAPSHOTS: usize = 32;

type Objects = ReadOnlyTable<&'static str, &'static [u8]>;

struct WriteRequest {
    key: String,
    write: Write,
    reply: oneshot::Sender<Result<Value, StoreError>>,
}

/// A read snapshot kept for the next pages of a list.
struct Snapshot {
    revision: u64,
    taken: Instant,
    objects: Arc<Objects>,
}

/// Snapshots of paged lists, oldest first.
#[derive(Default)]
struct Snapshots {
    pinned: VecDeque<Snapshot>,
    /// Lists before this revision are compacted away.
    compacted: u64,
}

impl Snapshots {
    fn expire(&mut self, now: Instant) {
        while self
            .pinned
            .front()
            .is_some_and(|s| now.duration_since(s.taken) > SNAPSHOT_TTL)
        {
            self.pinned.pop_front();
        }
    }

    fn find(&self, revision: u64) -> Option<Arc<Objects>> {
        self.pinned
            .iter()
            .find(|s| s.revision == revision)
            .map(|s| s.objects.clone())
    }

    fn pin(&mut self, revision: u64, objects: &Arc<Objects>) {
        if revision < self.compacted || self.find(revision).is_some() {
            return;
        }
        if self.pinned.len() == MAX_SNAPSHOTS {
            self.pinned.pop_front();
        }
        self.pinned.push_back(Snapshot {
            revision,
            taken: Instant::now(),
            objects: objects.clone(),
        });
    }

    /// The oldest revision a list can still read at, given the newest.
    fn oldest(&self, newest: u64) -> u64 {
        self.pinned.front().map_or(newest, |s| s.revision)
    }
}

struct Shared {
    /// The open database; `None` between closing it after an I/O error and reopening it.
    db: RwLock<Option<Arc<Database>>>,
    path: PathBuf,
    revision: AtomicU64,
    cache: WatchCache,
    snapshots: Mutex<Snapshots>,
    /// Why the store cannot work now (an I/O error it has not recovered from), if so.
    failure: Mutex<Option<String>>,
}

impl Shared {
    fn snapshots(&self) -> std::sync::MutexGuard<'_, Snapshots> {
        self.snapshots.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn db(&self) -> Result<Arc<Database>, StoreError> {
        self.db
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| StoreError::Database(self.failure().unwrap_or_default()))
    }

    fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Records that the database failed with `error`. After an I/O error (a full disk, say)
    /// redb refuses every operation until the database is opened again; the writer does that
    /// ([`Shared::reopen`]) once the cause may have gone.
    fn failed(&self, error: &str) {
        let mut failure = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        if failure.is_none() {
            tracing::error!(
                error,
                "the store failed; writes fail until it can be reopened"
            );
        }
        *failure = Some(format!("the store failed and is not writable: {error}"));
    }

    /// Closes and reopens the database after a failure; clears the failure when it works.
    /// What was committed is what redb reopens with (a failed commit left nothing behind), so
    /// the revision and the watch cache stay as they are.
    fn reopen(&self) -> Result<(), StoreError> {
        // Pinned list snapshots hold the old file open (and its lock): they go (their
        // continue tokens then answer 410, and clients list again).
        self.snapshots().pinned.clear();
        let mut slot = self.db.write().unwrap_or_else(|p| p.into_inner());
        drop(slot.take());
        let db = open_database(&self.path)?;
        let txn = db.begin_read()?;
        let revision = txn
            .open_table(META)?
            .get(REVISION_KEY)?
            .map(|v| v.value())
            .unwrap_or(0);
        drop(txn);
        if revision != self.revision.load(Ordering::SeqCst) {
            return Err(StoreError::Database(format!(
                "reopened at revision {revision}, expected {}",
                self.revision.load(Ordering::SeqCst)
            )));
        }
        *slot = Some(Arc::new(db));
        drop(slot);
        *self.failure.lock().unwrap_or_else(|p| p.into_inner()) = None;
        tracing::info!(revision, "the store recovered: reopened after a failure");
        Ok(())
    }

    /// A snapshot of the newest state and its revision.
    fn snapshot(&self) -> Result<(Arc<Objects>, u64), StoreError> {
        let txn = self.db()?.begin_read()?;
        // The revision is read inside the read transaction's snapshot so it matches the items.
        let revision = txn
            .open_table(META)?
            .get(REVISION_KEY)?
            .map(|v| v.value())
            .unwrap_or(0);
        Ok((Arc::new(txn.open_table(OBJECTS)?), revision))
    }

    /// The snapshot to read a list at `revision` from.
    fn snapshot_at(&self, revision: Option<u64>) -> Result<(Arc<Objects>, u64), StoreError> {
        let Some(wanted) = revision else {
            return self.snapshot();
        };
        let pinned = {
            let mut snapshots = self.snapshots();
            snapshots.expire(Instant::now());
            snapshots.find(wanted)
        };
        if let Some(objects) = pinned {
            return Ok((objects, wanted));
        }
        // Nothing written since: the newest state is that revision.
        let (objects, newest) = self.snapshot()?;
        if newest == wanted {
            return Ok((objects, newest));
        }
        Err(StoreError::Gone {
            requested: wanted,
            oldest: self.snapshots().oldest(newest),
        })
    }

    fn list(&self, prefix: &str, request: ListRequest) -> Result<ListResult, StoreError> {
        let (objects, revision) = self.snapshot_at(request.revision)?;
        let mut result = ListResult {
            revision,
            ..ListResult::default()
        };
        let range = match request.start_after.as_deref() {
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
            if let Some(limit) = request.limit {
                if result.items.len() == limit {
                    result.continue_after = last_key.take();
                    break;
                }
                last_key = Some(key.to_owned());
            }
            result.items.push(Bytes::copy_from_slice(value.value()));
        }
        if result.continue_after.is_some() {
            self.snapshots().pin(revision, &objects);
        }
        Ok(result)
    }
}

/// A [`Store`] on a redb database file, with its watch cache.
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

impl RedbStore {
    /// Opens (or creates) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with_window(path, DEFAULT_WINDOW)
    }

    /// Opens the database keeping `window` recent events for watches.
    pub fn open_with_window(path: &Path, window: usize) -> Result<Self, StoreError> {
        // redb's default page cache is 1 GiB; the OS page cache serves reads beyond this.
        let db = open_database(path)?;
        let txn = db.begin_write()?;
        let revision = {
            txn.open_table(OBJECTS)?;
            let meta = txn.open_table(META)?;
            let rev = meta.get(REVISION_KEY)?.map(|v| v.value()).unwrap_or(0);
            rev
        };
        txn.commit()?;
        let shared = Arc::new(Shared {
            db: RwLock::new(Some(Arc::new(db))),
            path: path.to_owned(),
            revision: AtomicU64::new(revision),
            cache: WatchCache::new(window, revision),
            snapshots: Mutex::default(),
            failure: Mutex::default(),
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

    /// Creates the database at `path` (which must not exist yet) holding `snapshot`'s objects,
    /// its revision moved up by [`RESTORE_REVISION_BUMP`]; returns the new revision. Every
    /// object keeps its resourceVersion, so clients' preconditions still hold for objects
    /// unchanged since; a watch from any earlier revision gets 410 and relists.
    pub fn restore(path: &Path, snapshot: snapshot::Snapshot) -> Result<u64, StoreError> {
        if path.exists() {
            return Err(StoreError::Database(format!(
                "{} exists: restore into a path with no store",
                path.display()
            )));
        }
        let revision = snapshot
            .revision
            .checked_add(RESTORE_REVISION_BUMP)
            .ok_or_else(|| StoreError::Database("the snapshot's revision is too large".into()))?;
        let restored = (|| -> Result<(), StoreError> {
            let db = open_database(path)?;
            let txn = db.begin_write()?;
            {
                let mut objects = txn.open_table(OBJECTS)?;
                for (key, object) in &snapshot.objects {
                    objects.insert(key.as_str(), object.as_ref())?;
                }
                txn.open_table(META)?.insert(REVISION_KEY, revision)?;
            }
            txn.commit()?;
            Ok(())
        })();
        if restored.is_err() {
            // Half a store is worse than none: the next attempt starts clean.
            let _ = std::fs::remove_file(path);
        }
        restored.map(|()| revision)
    }

    fn submit<'a>(&'a self, key: &str, write: Write) -> BoxFuture<'a, Result<Value, StoreError>> {
        let (reply, answer) = oneshot::channel();
        let queued = {
            let writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
            writer.as_ref().ok_or(StoreError::Closed).and_then(|w| {
                w.send(WriteRequest {
                    key: key.to_owned(),
                    write,
                    reply,
                })
                .map_err(|_| StoreError::Closed)
            })
        };
        async move {
            queued?;
            answer.await.map_err(|_| StoreError::Closed)?
        }
        .boxed()
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

/// Applies one write inside `table`; returns its outcome on success. `known` is the key's
/// current value if the caller has it as shared bytes (then the table is not read).
fn apply_in(
    table: &mut redb::Table<&str, &[u8]>,
    key: &str,
    write: Write,
    revision: u64,
    known: Option<Option<Bytes>>,
) -> Result<super::Applied, StoreError> {
    let current = match known {
        Some(current) => current,
        None => table.get(key)?.map(|v| Bytes::copy_from_slice(v.value())),
    };
    let applied = apply(key, write, current, revision)?;
    if applied.event.kind == EventKind::Deleted {
        table.remove(key)?;
    } else {
        table.insert(key, applied.event.object.as_ref())?;
    }
    Ok(applied)
}

/// Opens (or creates) the database file at `path`.
fn open_database(path: &Path) -> Result<Database, StoreError> {
    // redb's default page cache is 1 GiB; the OS page cache serves reads beyond this.
    redb::Builder::new()
        .set_cache_size(CACHE_BYTES)
        .create(path)
        .map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => {
                StoreError::InUse(path.display().to_string())
            }
            other => other.into(),
        })
}

/// How often a failed store tries to reopen while no write comes.
const REOPEN_INTERVAL: Duration = Duration::from_secs(1);

fn writer_loop(shared: &Shared, queue: mpsc::Receiver<WriteRequest>) {
    loop {
        let first = if shared.failure().is_some() {
            // Retried while idle too, so reads and /readyz recover without a write.
            if let Err(e) = shared.reopen() {
                tracing::debug!(error = %e, "the store cannot be reopened yet");
            }
            match queue.recv_timeout(REOPEN_INTERVAL) {
                Ok(first) => first,
                Err(mpsc::RecvTimeoutError::Timeout) => continue,
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
        } else {
            match queue.recv() {
                Ok(first) => first,
                Err(_) => return,
            }
        };
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
    oneshot::Sender<Result<Value, StoreError>>,
    Result<Value, StoreError>,
);

fn write_batch(shared: &Shared, batch: Vec<WriteRequest>) {
    let base = shared.revision.load(Ordering::SeqCst);
    let mut revision = base;
    let mut outcomes: Vec<Outcome> = Vec::with_capacity(batch.len());
    let mut events: Vec<StoreEvent> = Vec::new();
    // What the keys written earlier in this batch hold now (`None`: deleted); the watch cache
    // has what older batches wrote.
    let mut written: HashMap<String, Option<Bytes>> = HashMap::new();
    let committed = (|| -> Result<(), StoreError> {
        let txn = shared.db()?.begin_write()?;
        {
            let mut objects = txn.open_table(OBJECTS)?;
            for req in batch {
                // The current value as the bytes the watch cache already holds, so the event's
                // `previous` shares them rather than being a second copy.
                let known = written
                    .get(&req.key)
                    .cloned()
                    .or_else(|| shared.cache.latest(&req.key).map(Some));
                match apply_in(&mut objects, &req.key, req.write, revision + 1, known) {
                    Ok(applied) => {
                        revision += 1;
                        let now = (applied.event.kind != EventKind::Deleted)
                            .then(|| applied.event.object.clone());
                        written.insert(req.key, now);
                        events.push(applied.event);
                        outcomes.push((req.reply, Ok(applied.answer)));
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
            shared.revision.store(revision, Ordering::SeqCst);
            // Before the answers: a writer that then watches from its revision sees its write.
            shared.cache.push(events);
            shared.snapshots().expire(Instant::now());
        }
        Err(e) => {
            tracing::error!(error = %e, "store commit failed");
            shared.failed(&e.to_string());
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
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Value>, StoreError>> {
        // A point read is a few cached B-tree pages: cheaper inline than a hop to a thread.
        let read = || -> Result<Option<Value>, StoreError> {
            let txn = self.shared.db()?.begin_read()?;
            let objects = txn.open_table(OBJECTS)?;
            let value = objects.get(key)?;
            value.map(|v| super::decode(key, v.value())).transpose()
        };
        futures::future::ready(read()).boxed()
    }

    fn list<'a>(
        &'a self,
        prefix: &'a str,
        request: ListRequest,
    ) -> BoxFuture<'a, Result<ListResult, StoreError>> {
        // A list copies up to a whole collection: off the async workers.
        let shared = self.shared.clone();
        let prefix = prefix.to_owned();
        async move {
            tokio::task::spawn_blocking(move || shared.list(&prefix, request))
                .await
                .map_err(|e| StoreError::Database(format!("list task failed: {e}")))?
        }
        .boxed()
    }

    fn write<'a>(&'a self, key: &'a str, write: Write) -> BoxFuture<'a, Result<Value, StoreError>> {
        self.submit(key, write)
    }

    fn watch<'a>(
        &'a self,
        prefix: &'a str,
        from: u64,
    ) -> BoxFuture<'a, Result<EventStream, StoreError>> {
        futures::future::ready(self.shared.cache.watch(prefix, from)).boxed()
    }

    fn compact(&self, revision: u64) -> BoxFuture<'_, Result<(), StoreError>> {
        let mut snapshots = self.shared.snapshots();
        snapshots.compacted = snapshots.compacted.max(revision);
        snapshots.pinned.retain(|s| s.revision >= revision);
        futures::future::ready(Ok(())).boxed()
    }

    fn revision(&self) -> u64 {
        self.shared.revision.load(Ordering::SeqCst)
    }

    fn health(&self) -> Result<(), String> {
        self.shared.failure().map_or(Ok(()), Err)
    }

    fn snapshot(&self) -> BoxFuture<'_, Result<(u64, snapshot::Entries), StoreError>> {
        // One read transaction: a consistent state that writes go on around (redb's MVCC).
        // Its pages are walked on a blocking thread and handed over in small batches, so a
        // large store is never copied whole into memory.
        let snapshot = self.shared.snapshot();
        async move {
            let (objects, revision) = snapshot?;
            let (tx, mut rx) =
                tokio::sync::mpsc::channel::<Result<(String, Bytes), StoreError>>(64);
            tokio::task::spawn_blocking(move || {
                let walk = || -> Result<(), StoreError> {
                    for entry in objects.iter()? {
                        let (key, value) = entry?;
                        let item = (
                            key.value().to_owned(),
                            Bytes::copy_from_slice(value.value()),
                        );
                        if tx.blocking_send(Ok(item)).is_err() {
                            // The reader went away: stop reading.
                            return Ok(());
                        }
                    }
                    Ok(())
                };
                if let Err(e) = walk() {
                    let _ = tx.blocking_send(Err(e));
                }
            });
            let entries = futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed();
            Ok((revision, entries as snapshot::Entries))
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::object_revision;
    use serde_json::json;

    async fn open(window: usize) -> (crate::store::SharedStore, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open_with_window(&dir.path().join("db"), window).unwrap();
        (Arc::new(store), dir)
    }

    crate::store::conformance::suite!(open);

    #[tokio::test]
    async fn only_revisions_a_page_pinned_can_be_listed_at() {
        let (store, _dir) = open(100).await;
        for k in ["p/a", "p/b", "p/c"] {
            store.create(k, json!({"metadata": {}})).await.unwrap();
        }
        let first = store
            .list(
                "p/",
                ListRequest {
                    limit: Some(1),
                    ..ListRequest::default()
                },
            )
            .await
            .unwrap();
        store.create("p/d", json!({"metadata": {}})).await.unwrap();
        let at = |revision| ListRequest {
            revision: Some(revision),
            ..ListRequest::default()
        };
        // The first page pinned its snapshot: the whole list at that revision is readable.
        assert_eq!(
            store
                .list("p/", at(first.revision))
                .await
                .unwrap()
                .items
                .len(),
            3
        );
        // A revision no page pinned is not.
        assert!(matches!(
            store.list("p/", at(first.revision - 1)).await,
            Err(StoreError::Gone { .. })
        ));
    }

    #[tokio::test]
    async fn concurrent_writers_get_distinct_increasing_revisions() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(RedbStore::open(&dir.path().join("db")).unwrap());
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let store = store.clone();
                std::thread::spawn(move || {
                    (0..50)
                        .map(|i| {
                            object_revision(
                                &futures::executor::block_on(
                                    store.create(&format!("k/{t}/{i}"), json!({"metadata": {}})),
                                )
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
        assert_eq!(
            store
                .list("k/", ListRequest::default())
                .await
                .unwrap()
                .items
                .len(),
            400
        );
    }

    #[tokio::test]
    async fn failed_writes_in_a_batch_do_not_take_revisions() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(&dir.path().join("db")).unwrap();
        store.create("a", json!({"metadata": {}})).await.unwrap();
        assert!(matches!(
            store.create("a", json!({"metadata": {}})).await,
            Err(StoreError::AlreadyExists(_))
        ));
        assert!(matches!(
            store.update("a", Some(7), json!({"metadata": {}})).await,
            Err(StoreError::Conflict { .. })
        ));
        assert!(matches!(
            store.delete("b", None).await,
            Err(StoreError::NotFound(_))
        ));
        assert_eq!(store.revision(), 1);
        let deleted = store.delete("a", Some(1)).await.unwrap();
        assert_eq!(object_revision(&deleted), 2);
        assert!(store.get("a").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn list_pages_with_limit() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(&dir.path().join("db")).unwrap();
        for k in ["p/a", "p/b", "p/c", "q/a"] {
            store
                .create(k, json!({"metadata": {"name": k}}))
                .await
                .unwrap();
        }
        let page = |start_after: Option<String>| ListRequest {
            start_after,
            limit: Some(2),
            revision: None,
        };
        let first = store.list("p/", page(None)).await.unwrap();
        assert_eq!(first.items.len(), 2);
        let next = first.continue_after.unwrap();
        let page = store.list("p/", page(Some(next))).await.unwrap();
        assert_eq!(page.items.len(), 1);
        assert!(page.continue_after.is_none());
    }
}
