//! Shared informers: ONE list+watch and ONE cache per kind (and label selector) for every
//! controller and the scheduler of a process, as client-go's SharedInformerFactory does.
//! Before, each controller ran its own reflectors: an active control plane held ten Pod
//! LIST+WATCH streams on the API server and ten caches of every pod in its own memory.
//!
//! The cache is kube-runtime's [`reflector::Store`]; the fan-out to subscribers is ours rather
//! than kube-runtime's `store_shared`/`reflect_shared` because theirs never passes on a
//! deletion (a subscriber only sees objects still in the store), and the controllers here act
//! on deletions: a ReplicaSet replaces a deleted pod, Endpoints drop it, the scheduler frees its
//! node. Subscribers get every change as [`Change`], or as the touched objects kube-runtime's
//! `Controller::for_shared_stream` / `owns_shared_stream` / `watches_shared_stream` take.
//!
//! The cached objects are trimmed of what no reader uses ([`super::trim`]): a cached Pod is
//! for reading, and pods are written with patches.
//!
//! Each subscriber has an unbounded queue of `Arc`s: the reflector never waits for a slow
//! controller (kube's bounded broadcast would stall every other subscriber behind it) and no
//! change is dropped; the cost of a backlog is a pointer per change. A subscriber that joins
//! after the first list gets the cache's contents first, as client-go replays its store to a
//! handler added late, so no controller misses objects that were listed before it started.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex, MutexGuard};

use futures::{Stream, StreamExt};
use k8s_openapi::NamespaceResourceScope;
use kube::api::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::expectations::Observed;

/// A kind the informers can watch: a typed Kubernetes object.
pub trait Kind:
    Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static
{
}

impl<K> Kind for K where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static
{
}

/// One change of the cache, after it was applied.
#[derive(Debug)]
pub enum Change<K> {
    /// An object was created or changed.
    Applied(Arc<K>),
    /// An object was deleted (its last state).
    Deleted(Arc<K>),
    /// A (re-)list finished: the whole cache, which replaced what was there.
    Listed(Vec<Arc<K>>),
}

impl<K> Change<K> {
    /// The objects this change touched.
    fn touched(self) -> Vec<Arc<K>> {
        match self {
            Change::Applied(obj) | Change::Deleted(obj) => vec![obj],
            Change::Listed(all) => all,
        }
    }
}

/// One kind's cache and its subscribers.
pub struct Informer<K: Kind> {
    store: Store<K>,
    observed: Observed,
    /// Set once the first list is in. Not the store's `wait_until_ready`: that wakes only the
    /// last task to poll it (one oneshot receiver behind it), and a shared store has many.
    listed: watch::Sender<bool>,
    subscribers: Mutex<Vec<mpsc::UnboundedSender<Change<K>>>>,
}

impl<K: Kind> Informer<K> {
    /// The cache (kube-runtime's reader).
    pub fn store(&self) -> Store<K> {
        self.store.clone()
    }

    /// The highest resourceVersion the cache has applied, for [`super::expectations`].
    pub fn observed(&self) -> Observed {
        self.observed.clone()
    }

    /// Whether the first list is in the cache.
    pub fn synced(&self) -> bool {
        *self.listed.borrow()
    }

    /// Resolves once the first list is in the cache.
    pub async fn listed(&self) {
        let _ = self.listed.subscribe().wait_for(|listed| *listed).await;
    }

    /// A flag that turns true once the first list is in.
    pub fn listed_flag(&self) -> watch::Receiver<bool> {
        self.listed.subscribe()
    }

    /// Every change from now on; the cache's contents first if it has been listed.
    pub fn changes(&self) -> impl Stream<Item = Change<K>> + Send + 'static {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut subscribers = self.lock();
        // Under the lock: the driver applies a change to the store before it takes the lock to
        // fan it out, so a change is either in this snapshot or sent after it (or both, which
        // a level-triggered consumer does not mind), never lost in between.
        if self.synced() {
            let _ = tx.send(Change::Listed(self.store.state()));
        }
        subscribers.push(tx);
        tokio_stream::wrappers::UnboundedReceiverStream::new(rx)
    }

    /// The objects every change touches (deleted ones included), for kube-runtime's
    /// `Controller::for_shared_stream`, `owns_shared_stream` and `watches_shared_stream`.
    pub fn objects(&self) -> impl Stream<Item = Arc<K>> + Send + 'static {
        self.changes()
            .flat_map(|change| futures::stream::iter(change.touched()))
    }

    fn lock(&self) -> MutexGuard<'_, Vec<mpsc::UnboundedSender<Change<K>>>> {
        self.subscribers.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish(&self, change: impl Fn() -> Change<K>) {
        self.lock().retain(|tx| tx.send(change()).is_ok());
    }

    fn saw(&self, obj: &K) {
        self.observed.saw(obj.meta().resource_version.as_deref());
    }

    /// Lists and watches `api` into the cache and fans out every change, until `shutdown`.
    async fn drive(
        self: Arc<Self>,
        api: Api<K>,
        config: watcher::Config,
        mut writer: reflector::store::Writer<K>,
        shutdown: CancellationToken,
    ) {
        let mut events = watcher(api, config).default_backoff().boxed();
        loop {
            let event = tokio::select! {
                _ = shutdown.cancelled() => return,
                event = events.next() => event,
            };
            let event = match event {
                None => return,
                Some(Err(e)) => {
                    tracing::warn!(kind = %K::kind(&()), error = %e, "watch failed; retrying");
                    continue;
                }
                Some(Ok(mut event)) => {
                    match &mut event {
                        watcher::Event::Apply(obj)
                        | watcher::Event::Delete(obj)
                        | watcher::Event::InitApply(obj) => super::trim::trim(obj),
                        watcher::Event::Init | watcher::Event::InitDone => {}
                    }
                    event
                }
            };
            writer.apply_watcher_event(&event);
            match event {
                watcher::Event::Apply(obj) => {
                    self.saw(&obj);
                    // The store's own Arc, so subscribers that keep it (the scheduler) share
                    // the cached object instead of holding a second copy.
                    let obj = self
                        .store
                        .get(&ObjectRef::from_obj(&obj))
                        .unwrap_or_else(|| Arc::new(obj));
                    self.publish(|| Change::Applied(obj.clone()));
                }
                watcher::Event::Delete(obj) => {
                    self.saw(&obj);
                    let obj = Arc::new(obj);
                    self.publish(|| Change::Deleted(obj.clone()));
                }
                watcher::Event::InitDone => {
                    let all = self.store.state();
                    for obj in &all {
                        self.saw(obj);
                    }
                    self.listed.send_replace(true);
                    self.publish(|| Change::Listed(all.clone()));
                }
                watcher::Event::Init | watcher::Event::InitApply(_) => {}
            }
        }
    }
}

/// What identifies an informer: the kind and the scope and selectors of its watch.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    kind: TypeId,
    namespace: Option<String>,
    labels: Option<String>,
    fields: Option<String>,
}

/// The informers of one process (one leadership term): created on first use, each driven by a
/// task that ends with the term.
#[derive(Clone)]
pub struct Informers {
    client: Client,
    shutdown: CancellationToken,
    started: Arc<Mutex<HashMap<Key, Arc<dyn Any + Send + Sync>>>>,
}

impl Informers {
    /// Informers over `client`, stopped when `shutdown` is cancelled.
    pub fn new(client: Client, shutdown: CancellationToken) -> Self {
        Self {
            client,
            shutdown,
            started: Arc::default(),
        }
    }

    /// The informer of every `K` in the cluster.
    pub fn get<K: Kind>(&self) -> Arc<Informer<K>> {
        self.get_with(watcher::Config::default())
    }

    /// The informer of every `K`, once its first list is in; `None` if the term ends first.
    /// A controller's main kind goes through this: kube-runtime's `Controller` waits for its
    /// store with `Store::wait_until_ready`, which wakes only the last task that polled it,
    /// so two controllers waiting on one shared store before it is listed could hang. After
    /// the list, the wait returns at once.
    pub async fn listed<K: Kind>(&self) -> Option<Arc<Informer<K>>> {
        let informer = self.get::<K>();
        tokio::select! {
            _ = self.shutdown.cancelled() => None,
            _ = informer.listed() => Some(informer),
        }
    }

    /// The informer of the `K`s `config` selects (one per distinct selector).
    pub fn get_with<K: Kind>(&self, config: watcher::Config) -> Arc<Informer<K>> {
        self.start(None, Api::all(self.client.clone()), config)
    }

    /// The informer of the `K`s in namespace `ns`.
    pub fn get_namespaced<K>(&self, ns: &str) -> Arc<Informer<K>>
    where
        K: Kind + Resource<Scope = NamespaceResourceScope>,
    {
        let api = Api::namespaced(self.client.clone(), ns);
        self.start(Some(ns), api, watcher::Config::default())
    }

    /// The informer of the `K`s in namespace `ns` that `config` selects (e.g. one name, or
    /// Secrets of one type).
    pub fn get_namespaced_with<K>(&self, ns: &str, config: watcher::Config) -> Arc<Informer<K>>
    where
        K: Kind + Resource<Scope = NamespaceResourceScope>,
    {
        let api = Api::namespaced(self.client.clone(), ns);
        self.start(Some(ns), api, config)
    }

    fn start<K: Kind>(
        &self,
        ns: Option<&str>,
        api: Api<K>,
        config: watcher::Config,
    ) -> Arc<Informer<K>> {
        let key = Key {
            kind: TypeId::of::<K>(),
            namespace: ns.map(str::to_owned),
            labels: config.label_selector.clone(),
            fields: config.field_selector.clone(),
        };
        let mut started = self.started.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(informer) = started.get(&key) {
            if let Ok(informer) = informer.clone().downcast::<Informer<K>>() {
                return informer;
            }
        }
        let (store, writer) = reflector::store::<K>();
        let informer = Arc::new(Informer {
            store,
            observed: Observed::default(),
            listed: watch::Sender::new(false),
            subscribers: Mutex::default(),
        });
        started.insert(key, informer.clone());
        tokio::spawn(
            informer
                .clone()
                .drive(api, config, writer, self.shutdown.clone()),
        );
        informer
    }
}

/// The owners an orphan (a child without a controller) may be adopted by: those in its
/// namespace that `adopts` it. A child that has a controller reaches it through kube-runtime's
/// ownerReference mapping (`Controller::owns_shared_stream`) instead.
pub fn adopters<K: Kind, C: Resource>(
    owners: &Store<K>,
    child: &C,
    adopts: impl Fn(&K, &C) -> bool,
) -> Vec<ObjectRef<K>> {
    let meta = child.meta();
    let has_controller = meta
        .owner_references
        .iter()
        .flatten()
        .any(|r| r.controller == Some(true));
    if has_controller {
        return Vec::new();
    }
    owners
        .state()
        .iter()
        .filter(|o| o.meta().namespace == meta.namespace)
        .filter(|o| adopts(o, child))
        .map(|o| ObjectRef::from_obj(o.as_ref()))
        .collect()
}
