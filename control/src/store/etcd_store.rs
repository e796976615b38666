//! The etcd backend: objects under a key prefix of an etcd cluster (v3 API), the store that lets
//! several API servers share one cluster state, mapped onto the seam as Kubernetes' etcd3
//! storage maps its own:
//!
//! - **Revisions are etcd's.** An object's resourceVersion is its key's `mod_revision`, set
//!   when it is read (the stored JSON carries none, since a value cannot know the revision its
//!   own write will get); a write answers with its transaction's header revision.
//! - **Writes are transactions with preconditions**: a create puts only if the key has no
//!   `create_revision`; an update or delete puts/deletes only if the key's `mod_revision` is
//!   still the one of the object [`apply`] checked, and otherwise reads the newer object in the
//!   same transaction and checks again (GuaranteedUpdate's loop): an expected revision that is
//!   no longer current is a Conflict, an unconditional write simply applies to the newer one.
//! - **Lists read at a revision**, in chunks of [`CHUNK`] keys (etcd ranges with a limit,
//!   starting after the last key), all at the first chunk's revision; a compacted revision is
//!   [`StoreError::Gone`].
//! - **Watches** come from the same [`WatchCache`] as the embedded stores, fed by one etcd
//!   watch of the whole prefix (`follower.rs`), with `prev_kv` (deletions and
//!   modifications carry the object before) and progress notifications.
//! - **Compaction** runs on a schedule (`compactor.rs`), as kube-apiserver's, coordinated
//!   through etcd so that several servers compact once per interval between them.
//! - **Failures**: an unreachable etcd at start is an error naming the endpoints after retries
//!   for [`EtcdConfig::startup_timeout`]; lost while running, requests fail with
//!   [`StoreError::Unavailable`] (503) and [`Store::health`] reports the broken watch; a value
//!   over etcd's request limit is [`StoreError::TooLarge`] (413).

mod compactor;
mod follower;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, KeyValue,
    KvClient, TlsOptions, Txn, TxnOp, TxnOpResponse, WatchClient,
};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt, TryStreamExt};
use serde_json::value::RawValue;
use serde_json::Value;

use super::window::WatchCache;
use super::{
    apply, set_revision, snapshot, EventKind, EventStream, ListRequest, ListResult, Store,
    StoreError, Write,
};

/// The key prefix when none is given: every object lives under it, so other users of the same
/// etcd (another cluster with another prefix, a kube-apiserver's `/registry/`) are not seen.
pub const DEFAULT_PREFIX: &str = "/registry/skiff/";

/// Keys per range request of a list: bounds each gRPC message (and the memory of one answer)
/// whatever the list's size.
const CHUNK: usize = 500;

/// The largest gRPC message the client accepts (the default, 4 MiB, is less than one chunk of
/// large objects may be; etcd's own values stay under its request limit).
const MAX_MESSAGE_BYTES: usize = 1 << 30;

/// How often a write that lost its compare-and-swap to another writer tries again before it
/// answers Conflict (each attempt reads the newer object in the same transaction; Kubernetes
/// retries without a bound, but a key written this often by others needs a client's backoff).
const MAX_ATTEMPTS: usize = 64;

/// How long a watch waits for the cache to take the events of this store's own last write
/// before it is served from the cache as it is.
const FRESHNESS_WAIT: Duration = Duration::from_secs(3);

/// Client TLS towards etcd (`--etcd-cafile`, `--etcd-certfile`, `--etcd-keyfile`).
#[derive(Debug, Clone, Default)]
pub struct EtcdTls {
    /// The CA that signed etcd's serving certificates.
    pub ca_file: Option<PathBuf>,
    /// The client certificate (with `key_file`), for an etcd with `--client-cert-auth`.
    pub cert_file: Option<PathBuf>,
    /// The client certificate's key.
    pub key_file: Option<PathBuf>,
}

impl EtcdTls {
    fn is_empty(&self) -> bool {
        self.ca_file.is_none() && self.cert_file.is_none() && self.key_file.is_none()
    }
}

/// Where and how to reach etcd.
#[derive(Debug, Clone)]
pub struct EtcdConfig {
    /// Client URLs (`http://host:2379`, or `https://` with TLS).
    pub endpoints: Vec<String>,
    /// Every key is under this prefix (ends with `/`).
    pub prefix: String,
    /// Client TLS.
    pub tls: EtcdTls,
    /// How long [`EtcdStore::connect`] retries an unreachable etcd before it gives up.
    pub startup_timeout: Duration,
    /// The longest one request may take; past it the store counts as unavailable.
    pub request_timeout: Duration,
    /// How often to compact etcd's history (kube-apiserver's `--etcd-compaction-interval`,
    /// 5 minutes); `None` never compacts.
    pub compaction_interval: Option<Duration>,
    /// How many recent events watches can be served from.
    pub window: usize,
}

impl EtcdConfig {
    /// The defaults for `endpoints`.
    pub fn new(endpoints: Vec<String>) -> Self {
        Self {
            endpoints,
            prefix: DEFAULT_PREFIX.to_owned(),
            tls: EtcdTls::default(),
            startup_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(10),
            compaction_interval: Some(Duration::from_secs(300)),
            window: super::redb_store::DEFAULT_WINDOW,
        }
    }
}

/// What the etcd client reported, sorted by what it means for the caller.
enum Failure {
    /// Over etcd's request size limit.
    TooLarge(String),
    /// The revision asked for was compacted away.
    Compacted,
    /// The revision asked for is ahead of etcd's.
    FutureRevision,
    /// etcd cannot be reached or answer now.
    Unavailable(String),
    /// Anything else (a bug, a refused request).
    Other(String),
}

impl Failure {
    fn of(error: &etcd_client::Error) -> Self {
        use etcd_client::Error as E;
        match error {
            E::GRpcStatus(status) => {
                let message = status.message();
                if message.contains("request is too large") || message.contains("larger than max") {
                    Failure::TooLarge(message.to_owned())
                } else if message.contains("required revision has been compacted") {
                    Failure::Compacted
                } else if message.contains("required revision is a future revision") {
                    Failure::FutureRevision
                } else {
                    use tonic::Code;
                    match status.code() {
                        Code::Unavailable
                        | Code::DeadlineExceeded
                        | Code::Cancelled
                        | Code::Aborted
                        | Code::Unknown => Failure::Unavailable(message.to_owned()),
                        _ => Failure::Other(error.to_string()),
                    }
                }
            }
            E::TransportError(_) | E::IoError(_) => Failure::Unavailable(error.to_string()),
            _ => Failure::Other(error.to_string()),
        }
    }

    /// What happened, for a log line.
    fn message(&self) -> String {
        match self {
            Failure::TooLarge(why) | Failure::Unavailable(why) | Failure::Other(why) => why.clone(),
            Failure::Compacted => "the revision has been compacted".into(),
            Failure::FutureRevision => "the revision is ahead of etcd's".into(),
        }
    }

    /// The store error for a request about `key`.
    fn into_error(self, key: &str) -> StoreError {
        match self {
            Failure::TooLarge(reason) => StoreError::TooLarge {
                key: key.to_owned(),
                reason,
            },
            Failure::Unavailable(why) => StoreError::Unavailable(format!("etcd: {why}")),
            Failure::Compacted => StoreError::Gone {
                requested: 0,
                oldest: 0,
            },
            Failure::FutureRevision => StoreError::Database("etcd: a future revision".into()),
            Failure::Other(why) => StoreError::Database(format!("etcd: {why}")),
        }
    }
}

/// The key after every key that starts with `prefix` (etcd's range end for a prefix).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Only 0xff bytes (or nothing): every key from the prefix on.
    vec![0]
}

/// The stored JSON `bytes` with `metadata.resourceVersion` set to `revision`. Only the
/// metadata is parsed; the rest of the document is copied as it is.
fn with_revision(bytes: &[u8], revision: i64) -> Result<Bytes, serde_json::Error> {
    let mut top: std::collections::BTreeMap<String, Box<RawValue>> = serde_json::from_slice(bytes)?;
    let mut metadata: serde_json::Map<String, Value> = match top.get("metadata") {
        Some(raw) => serde_json::from_str(raw.get())?,
        None => serde_json::Map::new(),
    };
    metadata.insert(
        "resourceVersion".into(),
        Value::String(revision.to_string()),
    );
    top.insert(
        "metadata".into(),
        serde_json::value::to_raw_value(&metadata)?,
    );
    Ok(Bytes::from(serde_json::to_vec(&top)?.into_boxed_slice()))
}

/// An object as etcd holds it now: its JSON with the resourceVersion set, and the revision
/// a compare-and-swap checks.
struct Current {
    bytes: Bytes,
    mod_revision: i64,
}

/// What the store, its watch follower and its compactor share.
struct Shared {
    kv: KvClient,
    watch: WatchClient,
    /// Kept for its endpoint list: the kv and watch clients share its balanced channel.
    _client: Client,
    /// The endpoints, for messages.
    endpoints: String,
    prefix: String,
    request_timeout: Duration,
    /// The newest revision seen in any answer.
    revision: AtomicU64,
    /// The revision of this store's newest write: its event is on the way to the cache.
    written: AtomicU64,
    /// The newest revision the cache has taken (events or progress notifications).
    synced: tokio::sync::watch::Sender<u64>,
    /// The cache; replaced when etcd compacted past the follower (see `follower.rs`).
    cache: Mutex<Arc<WatchCache>>,
    window: usize,
    /// Why the store cannot serve now (the watch on etcd is broken), if so.
    failure: Mutex<Option<String>>,
    /// The newest revision etcd was compacted at, as far as this store knows.
    compacted: AtomicU64,
}

impl Shared {
    fn full(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// The store key of an etcd key under the prefix.
    fn short<'a>(&self, key: &'a [u8]) -> Option<&'a str> {
        std::str::from_utf8(key).ok()?.strip_prefix(&self.prefix)
    }

    fn saw(&self, revision: i64) {
        self.revision
            .fetch_max(u64::try_from(revision).unwrap_or(0), Ordering::SeqCst);
    }

    fn cache(&self) -> Arc<WatchCache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set_failure(&self, why: Option<String>) {
        let mut failure = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        match (&*failure, &why) {
            (None, Some(why)) => tracing::error!(reason = %why, "etcd is unavailable"),
            (Some(_), None) => tracing::info!("etcd is available again"),
            _ => {}
        }
        *failure = why;
    }

    /// Runs one request with the request timeout; a request that takes longer (etcd gone,
    /// or without a leader) is [`Failure::Unavailable`].
    async fn call<T>(
        &self,
        request: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, Failure> {
        match tokio::time::timeout(self.request_timeout, request).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(e)) => Err(Failure::of(&e)),
            Err(_) => Err(Failure::Unavailable(format!(
                "no answer from {} within {:?}",
                self.endpoints, self.request_timeout
            ))),
        }
    }

    /// etcd's current revision (a linearizable read of nothing much).
    async fn current_revision(&self) -> Result<i64, Failure> {
        let answer = self
            .call(
                self.kv.clone().get(
                    self.prefix.as_bytes(),
                    Some(
                        GetOptions::new()
                            .with_range(prefix_end(self.prefix.as_bytes()))
                            .with_count_only(),
                    ),
                ),
            )
            .await?;
        let revision = answer.header().map_or(0, |h| h.revision());
        self.saw(revision);
        Ok(revision)
    }

    fn current(&self, key: &str, kv: &KeyValue) -> Result<Current, StoreError> {
        let bytes =
            with_revision(kv.value(), kv.mod_revision()).map_err(|source| StoreError::Corrupt {
                key: key.to_owned(),
                source,
            })?;
        Ok(Current {
            bytes,
            mod_revision: kv.mod_revision(),
        })
    }

    async fn read(&self, key: &str) -> Result<Option<Current>, StoreError> {
        let answer = self
            .call(self.kv.clone().get(self.full(key), None))
            .await
            .map_err(|f| f.into_error(key))?;
        self.saw(answer.header().map_or(0, |h| h.revision()));
        answer
            .kvs()
            .first()
            .map(|kv| self.current(key, kv))
            .transpose()
    }

    async fn write(&self, key: &str, write: Write) -> Result<Value, StoreError> {
        let full = self.full(key);
        // A create needs no read: its compare is "no such key".
        let mut current = match write {
            Write::Create(_) => None,
            _ => self.read(key).await?,
        };
        for _ in 0..MAX_ATTEMPTS {
            let applied = apply(
                key,
                write.clone(),
                current.as_ref().map(|c| c.bytes.clone()),
                0,
            )?;
            let compare = match &current {
                None => Compare::create_revision(full.as_str(), CompareOp::Equal, 0),
                Some(c) => Compare::mod_revision(full.as_str(), CompareOp::Equal, c.mod_revision),
            };
            let mut answer = applied.answer;
            let operation = if applied.event.kind == EventKind::Deleted {
                TxnOp::delete(full.as_str(), None)
            } else {
                // Stored without a resourceVersion: reads set the key's mod_revision.
                if let Some(meta) = answer.get_mut("metadata").and_then(Value::as_object_mut) {
                    meta.remove("resourceVersion");
                }
                let value = serde_json::to_vec(&answer).map_err(|source| StoreError::Corrupt {
                    key: key.to_owned(),
                    source,
                })?;
                TxnOp::put(full.as_str(), value, None)
            };
            let txn = Txn::new()
                .when([compare])
                .and_then([operation])
                .or_else([TxnOp::get(full.as_str(), None)]);
            let result = self
                .call(self.kv.clone().txn(txn))
                .await
                .map_err(|f| f.into_error(key))?;
            let revision = result.header().map_or(0, |h| h.revision());
            self.saw(revision);
            if result.succeeded() {
                self.written
                    .fetch_max(u64::try_from(revision).unwrap_or(0), Ordering::SeqCst);
                set_revision(&mut answer, u64::try_from(revision).unwrap_or(0));
                return Ok(answer);
            }
            // Another writer came first: check the write against what it left.
            current = match result.op_responses().into_iter().next() {
                Some(TxnOpResponse::Get(found)) => found
                    .kvs()
                    .first()
                    .map(|kv| self.current(key, kv))
                    .transpose()?,
                _ => None,
            };
        }
        Err(StoreError::Conflict {
            key: key.to_owned(),
            expected: current.as_ref().map_or(0, |c| c.mod_revision as u64),
            actual: current.as_ref().map_or(0, |c| c.mod_revision as u64),
        })
    }

    /// Reads up to `limit` objects from `start` (inclusive) to the end of `prefix`, in
    /// chunks, at `revision` (the first chunk's when `None`).
    async fn range(
        &self,
        prefix: &str,
        mut start: Vec<u8>,
        limit: Option<usize>,
        revision: Option<u64>,
    ) -> Result<Page, StoreError> {
        let end = prefix_end(self.full(prefix).as_bytes());
        let mut at = revision.map(|r| i64::try_from(r).unwrap_or(i64::MAX));
        let mut page = Page::default();
        let mut remaining = limit.unwrap_or(usize::MAX);
        loop {
            // etcd takes a limit of 0 as "no limit": a list of no items still reads once,
            // for the revision.
            let chunk = remaining.clamp(1, CHUNK);
            let mut options = GetOptions::new()
                .with_range(end.clone())
                .with_limit(chunk as i64);
            if let Some(revision) = at {
                options = options.with_revision(revision);
            }
            let mut answer = match self
                .call(self.kv.clone().get(start.clone(), Some(options)))
                .await
            {
                Ok(answer) => answer,
                Err(Failure::Compacted | Failure::FutureRevision) => {
                    return Err(StoreError::Gone {
                        requested: at.map_or(0, |r| u64::try_from(r).unwrap_or(0)),
                        oldest: self.compacted.load(Ordering::SeqCst),
                    })
                }
                Err(f) => return Err(f.into_error(prefix)),
            };
            let header = answer.header().map_or(0, |h| h.revision());
            self.saw(header);
            let read_at = *at.get_or_insert(header);
            page.revision = u64::try_from(read_at).unwrap_or(0);
            let more = answer.more();
            let kvs = answer.take_kvs();
            let taken = kvs.len().min(remaining);
            for kv in &kvs[..taken] {
                let key = self.short(kv.key()).unwrap_or_default().to_owned();
                let bytes = self.current(&key, kv)?.bytes;
                page.items.push((key, bytes));
            }
            remaining -= taken;
            match kvs[..taken].last() {
                Some(last) if more || taken < kvs.len() => {
                    if remaining == 0 {
                        page.continue_after = self.short(last.key()).map(str::to_owned);
                        return Ok(page);
                    }
                    start = last.key().to_vec();
                    start.push(0);
                }
                _ => return Ok(page),
            }
        }
    }
}

/// Objects read from etcd in key order, with their keys.
#[derive(Default)]
struct Page {
    items: Vec<(String, Bytes)>,
    revision: u64,
    continue_after: Option<String>,
}

impl From<Page> for ListResult {
    fn from(page: Page) -> Self {
        ListResult {
            items: page.items.into_iter().map(|(_, bytes)| bytes).collect(),
            revision: page.revision,
            continue_after: page.continue_after,
        }
    }
}

/// A [`Store`] on etcd.
pub struct EtcdStore {
    shared: Arc<Shared>,
    tasks: Vec<tokio::task::AbortHandle>,
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Reads a TLS file named by a flag.
fn read_file(path: &std::path::Path, flag: &str) -> Result<Vec<u8>, StoreError> {
    std::fs::read(path).map_err(|e| StoreError::Database(format!("{flag} {}: {e}", path.display())))
}

fn connect_options(config: &EtcdConfig) -> Result<ConnectOptions, StoreError> {
    // HTTP/2 pings find a dead connection that sends no reset (a host that vanished).
    let mut options = ConnectOptions::new()
        .with_connect_timeout(config.request_timeout.min(Duration::from_secs(5)))
        .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
    let https = config.endpoints.iter().any(|e| e.starts_with("https://"));
    if config.tls.is_empty() {
        if https {
            return Err(StoreError::Database(
                "--etcd-servers uses https: give the CA of etcd's certificates with --etcd-cafile"
                    .into(),
            ));
        }
        return Ok(options);
    }
    if let Some(plain) = config.endpoints.iter().find(|e| e.starts_with("http://")) {
        return Err(StoreError::Database(format!(
            "TLS files were given, but {plain} is not an https:// URL"
        )));
    }
    let mut tls = TlsOptions::new();
    if let Some(ca) = &config.tls.ca_file {
        tls = tls.ca_certificate(Certificate::from_pem(read_file(ca, "--etcd-cafile")?));
    }
    match (&config.tls.cert_file, &config.tls.key_file) {
        (Some(cert), Some(key)) => {
            tls = tls.identity(Identity::from_pem(
                read_file(cert, "--etcd-certfile")?,
                read_file(key, "--etcd-keyfile")?,
            ));
        }
        (None, None) => {}
        _ => {
            return Err(StoreError::Database(
                "--etcd-certfile and --etcd-keyfile go together".into(),
            ))
        }
    }
    options = options.with_tls(tls);
    Ok(options)
}

impl EtcdStore {
    /// Connects to etcd, retrying for [`EtcdConfig::startup_timeout`] while it cannot be
    /// reached, and starts the watch that feeds the cache (and the compactor, if scheduled).
    pub async fn connect(config: EtcdConfig) -> Result<Self, StoreError> {
        if config.endpoints.is_empty() {
            return Err(StoreError::Database("no etcd endpoints given".into()));
        }
        let mut prefix = config.prefix.clone();
        if !prefix.starts_with('/') {
            return Err(StoreError::Database(format!(
                "the etcd key prefix {prefix:?} must start with /"
            )));
        }
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        let endpoints = config.endpoints.join(", ");
        let options = connect_options(&config)?;
        let client = Client::connect(&config.endpoints, Some(options))
            .await
            .map_err(|e| StoreError::Database(format!("etcd endpoints {endpoints}: {e}")))?;
        let shared = Arc::new(Shared {
            kv: client
                .kv_client()
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
            watch: client
                .watch_client()
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
            _client: client,
            endpoints: endpoints.clone(),
            prefix,
            request_timeout: config.request_timeout,
            revision: AtomicU64::new(0),
            written: AtomicU64::new(0),
            synced: tokio::sync::watch::Sender::new(0),
            cache: Mutex::new(Arc::new(WatchCache::new(config.window, 0))),
            window: config.window,
            failure: Mutex::default(),
            compacted: AtomicU64::new(0),
        });
        let revision = Self::wait_for_etcd(&shared, config.startup_timeout).await?;
        let revision = u64::try_from(revision).unwrap_or(0);
        *shared.cache.lock().unwrap_or_else(|p| p.into_inner()) =
            Arc::new(WatchCache::new(config.window, revision));
        shared.synced.send_replace(revision);
        let mut tasks =
            vec![tokio::spawn(follower::run(shared.clone(), revision + 1)).abort_handle()];
        if let Some(interval) = config.compaction_interval {
            tasks.push(tokio::spawn(compactor::run(shared.clone(), interval)).abort_handle());
        }
        tracing::info!(%endpoints, prefix = %shared.prefix, revision, "connected to etcd");
        Ok(Self { shared, tasks })
    }

    /// etcd's revision once it answers; retries with back-off until `budget` has passed.
    async fn wait_for_etcd(shared: &Shared, budget: Duration) -> Result<i64, StoreError> {
        let deadline = tokio::time::Instant::now() + budget;
        let mut delay = Duration::from_millis(100);
        let mut attempts = 0;
        loop {
            attempts += 1;
            let why = match shared.current_revision().await {
                Ok(revision) => return Ok(revision),
                Err(Failure::Unavailable(why)) => why,
                Err(other) => return Err(other.into_error("")),
            };
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(StoreError::Unavailable(format!(
                    "cannot reach etcd at {} ({attempts} attempts in {budget:?}; last error: {why})",
                    shared.endpoints
                )));
            }
            tracing::warn!(endpoints = %shared.endpoints, error = %why, "etcd is not reachable yet; retrying");
            tokio::time::sleep(delay.min(deadline - now)).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }

    /// The key prefix every object is stored under.
    pub fn prefix(&self) -> &str {
        &self.shared.prefix
    }
}

impl Store for EtcdStore {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Value>, StoreError>> {
        async move {
            let Some(current) = self.shared.read(key).await? else {
                return Ok(None);
            };
            let mut value = super::decode(key, &current.bytes)?;
            set_revision(&mut value, u64::try_from(current.mod_revision).unwrap_or(0));
            Ok(Some(value))
        }
        .boxed()
    }

    fn list<'a>(
        &'a self,
        prefix: &'a str,
        request: ListRequest,
    ) -> BoxFuture<'a, Result<ListResult, StoreError>> {
        async move {
            let start = match request.start_after.as_deref() {
                Some(after) if after.starts_with(prefix) => {
                    let mut start = self.shared.full(after).into_bytes();
                    start.push(0);
                    start
                }
                _ => self.shared.full(prefix).into_bytes(),
            };
            if request.limit == Some(0) {
                // Nothing to read but the revision the answer is at.
                let page = self
                    .shared
                    .range(prefix, start, Some(1), request.revision)
                    .await?;
                return Ok(ListResult {
                    revision: page.revision,
                    ..ListResult::default()
                });
            }
            let page = self
                .shared
                .range(prefix, start, request.limit, request.revision)
                .await?;
            Ok(page.into())
        }
        .boxed()
    }

    fn write<'a>(&'a self, key: &'a str, write: Write) -> BoxFuture<'a, Result<Value, StoreError>> {
        self.shared.write(key, write).boxed()
    }

    fn watch<'a>(
        &'a self,
        prefix: &'a str,
        from: u64,
    ) -> BoxFuture<'a, Result<EventStream, StoreError>> {
        async move {
            // This store's writes were answered before their events reached the cache: wait
            // for them, so a watch after a write sees the window as that write left it (and a
            // too old revision is Gone as surely as on the embedded stores).
            let written = self.shared.written.load(Ordering::SeqCst);
            let mut synced = self.shared.synced.subscribe();
            let _ = tokio::time::timeout(FRESHNESS_WAIT, synced.wait_for(|r| *r >= written)).await;
            self.shared.cache().watch(prefix, from)
        }
        .boxed()
    }

    fn compact(&self, revision: u64) -> BoxFuture<'_, Result<(), StoreError>> {
        async move {
            let revision = revision.min(self.shared.revision.load(Ordering::SeqCst));
            compactor::compact(&self.shared, i64::try_from(revision).unwrap_or(i64::MAX))
                .await
                .map_err(|f| f.into_error(""))
        }
        .boxed()
    }

    fn revision(&self) -> u64 {
        self.shared.revision.load(Ordering::SeqCst)
    }

    fn snapshot(&self) -> BoxFuture<'_, Result<(u64, snapshot::Entries), StoreError>> {
        async move {
            // Page by page at the first page's revision: one consistent state, never the whole
            // store in memory at once.
            let first = self
                .shared
                .range("", self.shared.full("").into_bytes(), Some(CHUNK), None)
                .await?;
            let revision = first.revision;
            let shared = self.shared.clone();
            let entries = futures::stream::try_unfold(Some(first), move |page| {
                let shared = shared.clone();
                async move {
                    let Some(page) = page else {
                        return Ok::<_, StoreError>(None);
                    };
                    let next = match &page.continue_after {
                        Some(after) => {
                            let mut start = shared.full(after).into_bytes();
                            start.push(0);
                            let next = shared
                                .range("", start, Some(CHUNK), Some(page.revision))
                                .await?;
                            Some(next)
                        }
                        None => None,
                    };
                    let items = page.items.into_iter().map(Ok::<_, StoreError>);
                    Ok(Some((futures::stream::iter(items), next)))
                }
            })
            .try_flatten()
            .boxed();
            Ok((revision, entries as snapshot::Entries))
        }
        .boxed()
    }

    fn health(&self) -> Result<(), String> {
        self.shared.failure().map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;
    use skiff_test_support::{etcd::free_port, eventually, TestEtcd};

    use super::*;
    use crate::store::{object_revision, SharedStore};

    fn config(etcd: &TestEtcd, window: usize) -> EtcdConfig {
        EtcdConfig {
            window,
            compaction_interval: None,
            startup_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            ..EtcdConfig::new(vec![etcd.url()])
        }
    }

    async fn open(window: usize) -> (SharedStore, TestEtcd) {
        let etcd = TestEtcd::start();
        let store = EtcdStore::connect(config(&etcd, window)).await.unwrap();
        (Arc::new(store), etcd)
    }

    crate::store::conformance::suite!(open);

    fn at(revision: u64) -> ListRequest {
        ListRequest {
            revision: Some(revision),
            ..ListRequest::default()
        }
    }

    #[test]
    fn the_revision_is_set_in_the_metadata_and_the_rest_is_kept() {
        let stored = br#"{"kind":"ConfigMap","metadata":{"name":"a","uid":"u"},"data":{"k":"v"}}"#;
        let patched: Value = serde_json::from_slice(&with_revision(stored, 42).unwrap()).unwrap();
        assert_eq!(
            patched,
            json!({"kind": "ConfigMap", "metadata": {"name": "a", "uid": "u",
                   "resourceVersion": "42"}, "data": {"k": "v"}})
        );
        assert!(with_revision(b"not json", 1).is_err());
    }

    #[test]
    fn a_prefix_ends_before_the_next_key() {
        assert_eq!(prefix_end(b"/a/"), b"/a0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), b"\0");
    }

    #[tokio::test]
    async fn the_scheduled_compactor_makes_old_revisions_gone() {
        let etcd = TestEtcd::start();
        let store = EtcdStore::connect(EtcdConfig {
            compaction_interval: Some(Duration::from_millis(200)),
            ..config(&etcd, 100)
        })
        .await
        .unwrap();
        let base = store.revision();
        for key in ["p/a", "p/b"] {
            store.create(key, json!({"metadata": {}})).await.unwrap();
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
        assert_eq!(first.continue_after.as_deref(), Some("p/a"));
        // The first round only claims the interval; a later one compacts past the page.
        eventually("etcd compacted past the first page", || async {
            matches!(
                store.list("p/", at(first.revision)).await,
                Err(StoreError::Gone { requested, .. }) if requested == first.revision
            )
            .then_some(())
        })
        .await;
        let newest = store.list("p/", at(store.revision())).await.unwrap();
        assert_eq!(newest.items.len(), 2);
        // Compaction does not touch the watch cache: its window still replays.
        let mut watch = store.watch("p/", base).await.unwrap();
        let event = watch.next().await.unwrap().unwrap();
        assert_eq!(event.key, "p/a");
    }

    #[tokio::test]
    async fn an_object_over_etcds_request_limit_is_too_large() {
        let (store, _etcd) = open(100).await;
        // etcd's default --max-request-bytes is 1.5 MiB.
        let big = json!({"metadata": {"name": "big"}, "data": "x".repeat(2 * 1024 * 1024)});
        match store.create("t/big", big.clone()).await {
            Err(StoreError::TooLarge { key, .. }) => assert_eq!(key, "t/big"),
            other => panic!("expected TooLarge, got {other:?}"),
        }
        store
            .create("t/big", json!({"metadata": {"name": "big"}}))
            .await
            .unwrap();
        assert!(matches!(
            store.update("t/big", None, big).await,
            Err(StoreError::TooLarge { .. })
        ));
    }

    #[tokio::test]
    async fn etcd_lost_fails_health_and_writes_then_both_recover() {
        let mut etcd = TestEtcd::start();
        let store = EtcdStore::connect(config(&etcd, 100)).await.unwrap();
        let written = store
            .create("t/a", json!({"metadata": {"name": "a"}}))
            .await
            .unwrap();
        let mut watch = store.watch("t/", object_revision(&written)).await.unwrap();
        assert_eq!(store.health(), Ok(()));
        etcd.kill();
        let why = eventually("health to fail", || async { store.health().err() }).await;
        assert!(why.contains(&etcd.url()), "{why}");
        match store
            .create("t/b", json!({"metadata": {"name": "b"}}))
            .await
        {
            Err(StoreError::Unavailable(_)) => {}
            other => panic!("expected Unavailable, got {other:?}"),
        }
        assert!(matches!(
            store.get("t/a").await,
            Err(StoreError::Unavailable(_))
        ));
        etcd.restart();
        eventually("health to recover", || async { store.health().ok() }).await;
        let after = eventually("a write to work again", || async {
            store
                .create("t/c", json!({"metadata": {"name": "c"}}))
                .await
                .ok()
        })
        .await;
        // The watch opened before etcd went away goes on with what happened since.
        let event = tokio::time::timeout(Duration::from_secs(10), watch.next())
            .await
            .expect("the event of the write after the restart")
            .unwrap()
            .unwrap();
        assert_eq!(event.key, "t/c");
        assert_eq!(event.revision, object_revision(&after));
    }

    #[tokio::test]
    async fn an_unreachable_etcd_at_start_is_an_error_naming_the_endpoints() {
        let url = format!("http://127.0.0.1:{}", free_port());
        let started = std::time::Instant::now();
        let result = EtcdStore::connect(EtcdConfig {
            startup_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_millis(500),
            ..EtcdConfig::new(vec![url.clone()])
        })
        .await;
        let Err(StoreError::Unavailable(message)) = result else {
            panic!("expected Unavailable");
        };
        assert!(message.contains(&url), "{message}");
        assert!(message.contains("cannot reach etcd"), "{message}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "retries are bounded"
        );
    }

    #[tokio::test]
    async fn bad_settings_are_refused_before_connecting() {
        let https = EtcdConfig::new(vec!["https://127.0.0.1:1".into()]);
        let Err(StoreError::Database(message)) = EtcdStore::connect(https).await else {
            panic!("https without a CA must be refused");
        };
        assert!(message.contains("--etcd-cafile"), "{message}");
        let prefix = EtcdConfig {
            prefix: "registry".into(),
            ..EtcdConfig::new(vec!["http://127.0.0.1:1".into()])
        };
        assert!(EtcdStore::connect(prefix).await.is_err());
    }

    #[tokio::test]
    async fn two_stores_on_one_etcd_see_each_others_writes() {
        let etcd = TestEtcd::start();
        let a = EtcdStore::connect(config(&etcd, 100)).await.unwrap();
        let b = EtcdStore::connect(config(&etcd, 100)).await.unwrap();
        let other = EtcdStore::connect(EtcdConfig {
            prefix: "/other/".into(),
            ..config(&etcd, 100)
        })
        .await
        .unwrap();
        let mut watch = b.watch("t/", b.revision()).await.unwrap();
        let created = a
            .create("t/x", json!({"metadata": {"name": "x"}}))
            .await
            .unwrap();
        let event = tokio::time::timeout(Duration::from_secs(10), watch.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(
            (event.kind, event.revision),
            (EventKind::Added, object_revision(&created))
        );
        assert_eq!(b.get("t/x").await.unwrap(), Some(created.clone()));
        // b updates; a's update from the older revision conflicts.
        b.update(
            "t/x",
            Some(object_revision(&created)),
            json!({"metadata": {"name": "x"}}),
        )
        .await
        .unwrap();
        assert!(matches!(
            a.update(
                "t/x",
                Some(object_revision(&created)),
                json!({"metadata": {}})
            )
            .await,
            Err(StoreError::Conflict { .. })
        ));
        // Another prefix is another store.
        assert!(other.get("t/x").await.unwrap().is_none());
        assert!(other
            .list("", ListRequest::default())
            .await
            .unwrap()
            .items
            .is_empty());
    }

    #[tokio::test]
    async fn a_snapshot_reads_every_object_at_one_revision() {
        let (store, _etcd) = open(100).await;
        for i in 0..(CHUNK + 3) {
            let key = format!("s/{i:04}");
            store
                .create(&key, json!({"metadata": {"name": key}}))
                .await
                .unwrap();
        }
        let (revision, entries) = store.snapshot().await.unwrap();
        assert_eq!(revision, store.revision());
        let entries: Vec<_> = entries.map(Result::unwrap).collect().await;
        assert_eq!(entries.len(), CHUNK + 3);
        assert_eq!(entries[0].0, "s/0000");
        let first: Value = serde_json::from_slice(&entries[0].1).unwrap();
        assert_eq!(first["metadata"]["name"], "s/0000");
        assert!(object_revision(&first) > 0);
    }

    /// A CA, a serving certificate for 127.0.0.1 and a client certificate, as PEM files.
    fn tls_files(dir: &std::path::Path) -> (skiff_test_support::etcd::EtcdTlsFiles, EtcdTls) {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair, SanType,
        };
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.distinguished_name.push(DnType::CommonName, "etcd-ca");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::from_ca_cert_pem(&ca_cert.pem(), ca_key).unwrap();
        let leaf = |name: &str, usage: ExtendedKeyUsagePurpose| {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.distinguished_name.push(DnType::CommonName, name);
            params.extended_key_usages = vec![usage];
            params
                .subject_alt_names
                .push(SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
            let cert = params.signed_by(&key, &issuer).unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let write = |name: &str, pem: &str| {
            let path = dir.join(name);
            std::fs::write(&path, pem).unwrap();
            path
        };
        let (server_cert, server_key) = leaf("etcd", ExtendedKeyUsagePurpose::ServerAuth);
        let (client_cert, client_key) = leaf("skiff", ExtendedKeyUsagePurpose::ClientAuth);
        let ca = write("ca.pem", &ca_cert.pem());
        let files = skiff_test_support::etcd::EtcdTlsFiles {
            cert: write("server.pem", &server_cert),
            key: write("server-key.pem", &server_key),
            ca: ca.clone(),
        };
        let client = EtcdTls {
            ca_file: Some(ca),
            cert_file: Some(write("client.pem", &client_cert)),
            key_file: Some(write("client-key.pem", &client_key)),
        };
        (files, client)
    }

    #[tokio::test]
    async fn client_certificates_reach_an_etcd_that_asks_for_them() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let (files, client) = tls_files(dir.path());
        let etcd = TestEtcd::start_tls(files);
        assert!(etcd.url().starts_with("https://"));
        let store = EtcdStore::connect(EtcdConfig {
            tls: client.clone(),
            ..config(&etcd, 100)
        })
        .await
        .unwrap();
        let created = store
            .create("t/a", json!({"metadata": {"name": "a"}}))
            .await
            .unwrap();
        assert_eq!(store.get("t/a").await.unwrap(), Some(created));
        // Without a client certificate etcd refuses the connection.
        let refused = EtcdStore::connect(EtcdConfig {
            tls: EtcdTls {
                cert_file: None,
                key_file: None,
                ..client
            },
            startup_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_millis(500),
            ..config(&etcd, 100)
        })
        .await;
        assert!(matches!(refused, Err(StoreError::Unavailable(_))));
    }

    #[tokio::test]
    async fn a_follower_etcd_compacted_past_starts_a_new_cache_and_watchers_relist() {
        let etcd = TestEtcd::start();
        let store = EtcdStore::connect(config(&etcd, 100)).await.unwrap();
        let base = store.revision();
        store.create("t/a", json!({"metadata": {}})).await.unwrap();
        let mut watch = store.watch("t/", base).await.unwrap();
        assert_eq!(watch.next().await.unwrap().unwrap().key, "t/a");
        store.create("t/b", json!({"metadata": {}})).await.unwrap();
        store.compact(store.revision()).await.unwrap();
        // A follower that fell behind (as after an outage while other servers wrote and
        // compacted): etcd no longer has its events.
        let behind = tokio::spawn(follower::run(store.shared.clone(), base + 1));
        let ended = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(Ok(_)) = watch.next().await {}
        })
        .await;
        behind.abort();
        assert!(ended.is_ok(), "the old cache's watchers end");
        assert!(matches!(
            store.watch("t/", base).await,
            Err(StoreError::Gone { .. })
        ));
        // From the new cache's start on, watches work.
        let mut fresh = store.watch("t/", store.revision()).await.unwrap();
        let c = store.create("t/c", json!({"metadata": {}})).await.unwrap();
        let event = tokio::time::timeout(Duration::from_secs(10), fresh.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(event.revision, object_revision(&c));
    }
}
