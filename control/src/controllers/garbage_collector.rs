//! Garbage collector: deletes objects whose owners are gone, and completes the two deletion
//! modes that wait on dependents.
//!
//! - Background (the default): the owner goes at once; every object whose ownerReferences all
//!   point to objects that no longer exist (by uid) is deleted afterwards. References to owners
//!   that are gone are removed from objects that still have a live owner.
//! - Foreground: the API server gives the owner a deletionTimestamp and the `foregroundDeletion`
//!   finalizer; its dependents are deleted (foreground too), and the finalizer is removed once
//!   no dependent with `blockOwnerDeletion` is left.
//! - Orphan: the owner gets the `orphan` finalizer; its dependents lose their reference to it,
//!   then the finalizer is removed.
//!
//! A watch (reflector) per collected kind keeps a graph of objects by uid; any change schedules
//! a pass over the graph (debounced), and a pass runs at least every `RESYNC`. Before deleting
//! an object for a missing owner the owner is read from the API server, so a lagging cache never
//! causes a deletion.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::{apps, batch, coordination, core, discovery};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, Preconditions};
use kube::runtime::reflector;
use kube::ResourceExt;
use serde_json::json;
use tokio::sync::Notify;

use crate::client::{informers, Context};

/// Finalizer of an owner whose dependents are being deleted first.
pub const FOREGROUND: &str = "foregroundDeletion";
/// Finalizer of an owner whose dependents are being orphaned first.
pub const ORPHAN: &str = "orphan";
const RESYNC: Duration = Duration::from_secs(30);
const DEBOUNCE: Duration = Duration::from_millis(100);

/// Errors of a collection pass.
#[derive(Debug, thiserror::Error)]
pub enum GarbageCollectorError {
    /// The API server refused or failed a request.
    #[error("API request failed: {0}")]
    Kube(#[from] kube::Error),
}

/// A kind the collector watches: its API resource, whether it is namespaced, and the shared
/// informer's cache of it. The collector reads only metadata, so it borrows the typed caches
/// the controllers keep anyway instead of holding a second, untyped copy of every object.
struct Kind {
    resource: ApiResource,
    namespaced: bool,
    cache: Box<dyn Cache>,
}

/// The metadata of a cached kind, as the collector's graph needs it.
trait Cache: Send + Sync {
    /// The objects the collector may act on (those with owners, being deleted, or with
    /// finalizers), reduced to their metadata; the uids of all the others go into `others`,
    /// since they only matter as owners that exist. Copying the metadata of every object on
    /// every pass cost a second of CPU per 10 000-pod burst.
    fn metadata(&self, others: &mut HashSet<String>) -> Vec<Arc<DynamicObject>>;
    /// Resolves once the first list is in.
    fn ready(&self) -> futures::future::BoxFuture<'static, ()>;
}

/// Whether the collector may have to act on an object: it has owners, is being deleted, or
/// has finalizers. The others matter only as owners that exist.
fn acts_on(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> bool {
    meta.owner_references
        .as_ref()
        .is_some_and(|r| !r.is_empty())
        || meta.deletion_timestamp.is_some()
        || meta.finalizers.as_ref().is_some_and(|f| !f.is_empty())
}

impl<K: informers::Kind> Cache for Arc<informers::Informer<K>> {
    fn metadata(&self, others: &mut HashSet<String>) -> Vec<Arc<DynamicObject>> {
        let mut involved = Vec::new();
        for o in self.store().state() {
            let meta = o.meta();
            if acts_on(meta) {
                involved.push(Arc::new(DynamicObject {
                    types: None,
                    metadata: meta.clone(),
                    data: serde_json::Value::Null,
                }));
            } else if let Some(uid) = &meta.uid {
                others.insert(uid.clone());
            }
        }
        involved
    }

    fn ready(&self) -> futures::future::BoxFuture<'static, ()> {
        let informer = self.clone();
        Box::pin(async move { informer.listed().await })
    }
}

/// Every change of the kind rings `dirty`.
fn kind<K: informers::Kind>(
    ctx: &Context,
    namespaced: bool,
    dirty: &Arc<Notify>,
    watches: &mut Vec<tokio::task::JoinHandle<()>>,
) -> Kind {
    let informer = ctx.informers.get::<K>();
    let dirty = dirty.clone();
    watches.push(tokio::spawn(informer.objects().for_each(move |_| {
        dirty.notify_one();
        async {}
    })));
    Kind {
        resource: ApiResource::erase::<K>(&()),
        namespaced,
        cache: Box::new(informer),
    }
}

/// The kinds that own or are owned in skiff.
fn kinds(
    ctx: &Context,
    dirty: &Arc<Notify>,
    watches: &mut Vec<tokio::task::JoinHandle<()>>,
) -> Vec<Kind> {
    vec![
        kind::<core::v1::Pod>(ctx, true, dirty, watches),
        kind::<core::v1::Service>(ctx, true, dirty, watches),
        kind::<core::v1::Endpoints>(ctx, true, dirty, watches),
        kind::<core::v1::ConfigMap>(ctx, true, dirty, watches),
        kind::<core::v1::Secret>(ctx, true, dirty, watches),
        kind::<core::v1::ServiceAccount>(ctx, true, dirty, watches),
        kind::<core::v1::ReplicationController>(ctx, true, dirty, watches),
        kind::<core::v1::Node>(ctx, false, dirty, watches),
        kind::<apps::v1::Deployment>(ctx, true, dirty, watches),
        kind::<apps::v1::ReplicaSet>(ctx, true, dirty, watches),
        kind::<apps::v1::DaemonSet>(ctx, true, dirty, watches),
        kind::<apps::v1::StatefulSet>(ctx, true, dirty, watches),
        kind::<apps::v1::ControllerRevision>(ctx, true, dirty, watches),
        kind::<batch::v1::Job>(ctx, true, dirty, watches),
        kind::<batch::v1::CronJob>(ctx, true, dirty, watches),
        kind::<discovery::v1::EndpointSlice>(ctx, true, dirty, watches),
        kind::<coordination::v1::Lease>(ctx, true, dirty, watches),
    ]
}

struct Collector {
    client: kube::Client,
    /// The kinds of this pass: the built-in ones, then the custom resources served now.
    kinds: Vec<Arc<Kind>>,
}

/// What a pass decided to do (pure, so it can be tested without an API server).
#[derive(Debug, PartialEq)]
pub enum Step {
    /// Delete the object at (kind index, namespace, name, uid) with this propagation policy
    /// (`None` for the default).
    Delete(usize, Option<String>, String, String, Option<&'static str>),
    /// Set the object's ownerReferences to the list.
    SetOwners(usize, Option<String>, String, Vec<OwnerReference>),
    /// Remove a finalizer from the object.
    RemoveFinalizer(usize, Option<String>, String, &'static str),
    /// Before deleting for a missing owner, confirm with the API server that these owners
    /// (apiVersion, kind, namespace, name, uid) are gone.
    DeleteIfOwnersGone(
        usize,
        Option<String>,
        String,
        String,
        Vec<(OwnerReference, Option<String>)>,
    ),
}

fn finalizers(o: &DynamicObject) -> &[String] {
    o.metadata.finalizers.as_deref().unwrap_or_default()
}

/// Decides the steps of one pass over a graph of `(kind index, object)`; `others` are the uids
/// of the objects left out of the graph (alive, with nothing to do).
fn plan(objects: &[(usize, Arc<DynamicObject>)], others: &HashSet<String>) -> Vec<Step> {
    let by_uid: HashMap<&str, &(usize, Arc<DynamicObject>)> = objects
        .iter()
        .filter_map(|e| e.1.metadata.uid.as_deref().map(|u| (u, e)))
        .collect();
    let mut dependents: HashMap<&str, Vec<&(usize, Arc<DynamicObject>)>> = HashMap::new();
    for e in objects {
        for r in e.1.owner_references() {
            dependents.entry(r.uid.as_str()).or_default().push(e);
        }
    }
    let mut steps = Vec::new();
    for (k, o) in objects {
        let ns = o.metadata.namespace.clone();
        let name = o.name_any();
        let uid = o.metadata.uid.clone().unwrap_or_default();
        let deleting = o.metadata.deletion_timestamp.is_some();
        let deps = dependents.get(uid.as_str()).cloned().unwrap_or_default();

        if deleting && finalizers(o).iter().any(|f| f == ORPHAN) {
            for (dk, d) in &deps {
                let refs: Vec<OwnerReference> = d
                    .owner_references()
                    .iter()
                    .filter(|r| r.uid != uid)
                    .cloned()
                    .collect();
                steps.push(Step::SetOwners(
                    *dk,
                    d.metadata.namespace.clone(),
                    d.name_any(),
                    refs,
                ));
            }
            if deps.is_empty() {
                steps.push(Step::RemoveFinalizer(*k, ns.clone(), name.clone(), ORPHAN));
            }
            continue;
        }
        if deleting && finalizers(o).iter().any(|f| f == FOREGROUND) {
            let mut blocking = false;
            for (dk, d) in &deps {
                let blocks = d
                    .owner_references()
                    .iter()
                    .any(|r| r.uid == uid && r.block_owner_deletion == Some(true));
                blocking |= blocks;
                if d.metadata.deletion_timestamp.is_none() {
                    steps.push(Step::Delete(
                        *dk,
                        d.metadata.namespace.clone(),
                        d.name_any(),
                        d.metadata.uid.clone().unwrap_or_default(),
                        Some("Foreground"),
                    ));
                }
            }
            if !blocking {
                steps.push(Step::RemoveFinalizer(
                    *k,
                    ns.clone(),
                    name.clone(),
                    FOREGROUND,
                ));
            }
        }
        if deleting || o.owner_references().is_empty() {
            continue;
        }
        // Owners in the graph with the same uid are alive; the others may be gone.
        let (alive, missing): (Vec<&OwnerReference>, Vec<&OwnerReference>) = o
            .owner_references()
            .iter()
            .partition(|r| by_uid.contains_key(r.uid.as_str()) || others.contains(&r.uid));
        if missing.is_empty() {
            continue;
        }
        // Dependents of a cluster-scoped owner live anywhere; of a namespaced one, beside it.
        let missing = missing
            .into_iter()
            .map(|r| (r.clone(), ns.clone()))
            .collect();
        // With every owner gone the object is deleted, else the dead references are removed
        // (decided after the API server confirms which are gone).
        let _ = alive;
        steps.push(Step::DeleteIfOwnersGone(*k, ns, name, uid, missing));
    }
    steps
}

impl Collector {
    /// The objects to plan for, and the uids of the other objects.
    fn graph(&self) -> (Vec<(usize, Arc<DynamicObject>)>, HashSet<String>) {
        let mut others = HashSet::new();
        let mut graph = Vec::new();
        for (i, k) in self.kinds.iter().enumerate() {
            graph.extend(k.cache.metadata(&mut others).into_iter().map(|o| (i, o)));
        }
        (graph, others)
    }

    fn api(&self, kind: usize, ns: Option<&str>) -> Api<DynamicObject> {
        let k = &self.kinds[kind];
        match (k.namespaced, ns) {
            (true, Some(ns)) => Api::namespaced_with(self.client.clone(), ns, &k.resource),
            _ => Api::all_with(self.client.clone(), &k.resource),
        }
    }

    /// The kind index of an owner reference, if the collector knows the kind: by group and
    /// kind, since an owner may be referred to through any version it is served in.
    fn kind_of(&self, r: &OwnerReference) -> Option<usize> {
        let group = |api_version: &str| {
            api_version
                .split_once('/')
                .map_or("", |(g, _)| g)
                .to_owned()
        };
        let wanted = group(&r.api_version);
        self.kinds
            .iter()
            .position(|k| k.resource.kind == r.kind && group(&k.resource.api_version) == wanted)
    }

    /// Whether the owner still exists with the referenced uid (asked of the API server).
    async fn owner_exists(
        &self,
        r: &OwnerReference,
        ns: Option<&str>,
    ) -> Result<bool, GarbageCollectorError> {
        let Some(k) = self.kind_of(r) else {
            // A kind the collector does not watch: never delete on its account.
            return Ok(true);
        };
        let ns = if self.kinds[k].namespaced { ns } else { None };
        match self.api(k, ns).get_opt(&r.name).await? {
            Some(o) => Ok(o.metadata.uid.as_deref() == Some(r.uid.as_str())),
            None => Ok(false),
        }
    }

    async fn pass(&self) -> Result<(), GarbageCollectorError> {
        let (graph, others) = self.graph();
        for step in plan(&graph, &others) {
            let result = self.apply(step, &graph).await;
            match result {
                Ok(()) => {}
                // Gone or changed meanwhile: the next pass sees the new state.
                Err(GarbageCollectorError::Kube(kube::Error::Api(s)))
                    if s.code == 404 || s.code == 409 => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    async fn apply(
        &self,
        step: Step,
        graph: &[(usize, Arc<DynamicObject>)],
    ) -> Result<(), GarbageCollectorError> {
        match step {
            Step::Delete(k, ns, name, uid, policy) => {
                self.delete(k, ns.as_deref(), &name, &uid, policy).await
            }
            Step::SetOwners(k, ns, name, refs) => {
                // Null removes the field, as Kubernetes shows an object without owners (Go's
                // omitempty): an empty list would read as "has owner references" to some tools.
                let refs = if refs.is_empty() {
                    serde_json::Value::Null
                } else {
                    json!(refs)
                };
                let patch = json!({"metadata": {"ownerReferences": refs}});
                self.api(k, ns.as_deref())
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await?;
                Ok(())
            }
            Step::RemoveFinalizer(k, ns, name, finalizer) => {
                let Some((_, o)) = graph
                    .iter()
                    .find(|(gk, o)| *gk == k && o.name_any() == name && o.metadata.namespace == ns)
                else {
                    return Ok(());
                };
                let rest: Vec<&String> = finalizers(o).iter().filter(|f| *f != finalizer).collect();
                let patch = json!({"metadata": {
                    "finalizers": rest,
                    "resourceVersion": o.metadata.resource_version,
                }});
                self.api(k, ns.as_deref())
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await?;
                Ok(())
            }
            Step::DeleteIfOwnersGone(k, ns, name, uid, missing) => {
                let mut gone = HashSet::new();
                for (r, owner_ns) in &missing {
                    if !self.owner_exists(r, owner_ns.as_deref()).await? {
                        gone.insert(r.uid.clone());
                    }
                }
                if gone.is_empty() {
                    return Ok(());
                }
                let Some((_, o)) = graph
                    .iter()
                    .find(|(gk, o)| *gk == k && o.uid().as_deref() == Some(uid.as_str()))
                else {
                    return Ok(());
                };
                let left: Vec<OwnerReference> = o
                    .owner_references()
                    .iter()
                    .filter(|r| !gone.contains(&r.uid))
                    .cloned()
                    .collect();
                if left.is_empty() {
                    tracing::debug!(kind = %self.kinds[k].resource.kind, %name, "deleting: owners gone");
                    self.delete(k, ns.as_deref(), &name, &uid, None).await
                } else {
                    let patch = json!({"metadata": {
                        "ownerReferences": left,
                        "resourceVersion": o.metadata.resource_version,
                    }});
                    self.api(k, ns.as_deref())
                        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await?;
                    Ok(())
                }
            }
        }
    }

    async fn delete(
        &self,
        k: usize,
        ns: Option<&str>,
        name: &str,
        uid: &str,
        policy: Option<&'static str>,
    ) -> Result<(), GarbageCollectorError> {
        let mut params = match policy {
            Some("Foreground") => DeleteParams::foreground(),
            _ => DeleteParams::background(),
        };
        params.preconditions = Some(Preconditions {
            uid: Some(uid.to_owned()),
            resource_version: None,
        });
        self.api(k, ns).delete(name, &params).await?;
        Ok(())
    }
}

/// Runs the garbage collector until shutdown.
pub async fn run(ctx: Context) {
    let dirty = Arc::new(Notify::new());
    let mut watches = Vec::new();
    let builtins: Vec<Arc<Kind>> = kinds(&ctx, &dirty, &mut watches)
        .into_iter()
        .map(Arc::new)
        .collect();
    for k in &builtins {
        tokio::select! {
            _ = ctx.shutdown.cancelled() => return,
            _ = k.cache.ready() => {}
        }
    }
    let mut custom = CustomKinds::new(&ctx, dirty.clone());
    loop {
        let mut kinds = builtins.clone();
        kinds.extend(custom.refresh());
        let collector = Collector {
            client: ctx.client.clone(),
            kinds,
        };
        if let Err(e) = collector.pass().await {
            tracing::warn!(error = %e, "garbage collection pass failed");
        }
        tokio::select! {
            _ = ctx.shutdown.cancelled() => break,
            _ = dirty.notified() => {
                // Let a burst of changes land before the next pass.
                tokio::time::sleep(DEBOUNCE).await;
            }
            _ = tokio::time::sleep(RESYNC) => {}
        }
    }
    for w in watches {
        w.abort();
    }
    custom.stop();
}

/// The custom resources, followed as their definitions come and go: one watch per
/// established definition (on its preferred served version), whose changes ring `dirty` like
/// the built-in kinds' informers do. A kind joins the passes once its first list is in; until
/// then its objects are neither collected nor reasons to collect (owners of unknown kinds are
/// never taken for gone).
struct CustomKinds {
    client: kube::Client,
    definitions: Arc<informers::Informer<CustomResourceDefinition>>,
    dirty: Arc<Notify>,
    followed: HashMap<String, (ApiResource, Arc<Kind>, tokio::task::JoinHandle<()>)>,
}

/// A custom kind's cache: kube-runtime's reflector store of its objects.
struct DynamicCache {
    store: reflector::Store<DynamicObject>,
    listed: tokio::sync::watch::Receiver<bool>,
}

impl Cache for DynamicCache {
    fn metadata(&self, others: &mut HashSet<String>) -> Vec<Arc<DynamicObject>> {
        let mut involved = Vec::new();
        for o in self.store.state() {
            let meta = &o.metadata;
            if acts_on(meta) {
                involved.push(o);
            } else if let Some(uid) = &meta.uid {
                others.insert(uid.clone());
            }
        }
        involved
    }

    fn ready(&self) -> futures::future::BoxFuture<'static, ()> {
        let mut listed = self.listed.clone();
        Box::pin(async move {
            let _ = listed.wait_for(|l| *l).await;
        })
    }
}

impl CustomKinds {
    fn new(ctx: &Context, dirty: Arc<Notify>) -> Self {
        let definitions = ctx.informers.get::<CustomResourceDefinition>();
        let ring = dirty.clone();
        // A definition's change may add or remove a kind: a pass looks.
        tokio::spawn(definitions.objects().for_each(move |_| {
            ring.notify_one();
            async {}
        }));
        Self {
            client: ctx.client.clone(),
            definitions,
            dirty,
            followed: HashMap::new(),
        }
    }

    /// The resource a definition is followed through, if it is established.
    fn resource_of(crd: &CustomResourceDefinition) -> Option<(ApiResource, bool)> {
        let established = crd.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == "Established" && c.status == "True")
        });
        if !established {
            return None;
        }
        let spec = &crd.spec;
        let mut served: Vec<&str> = spec
            .versions
            .iter()
            .filter(|v| v.served)
            .map(|v| v.name.as_str())
            .collect();
        served.sort_by_key(|v| crate::apiserver::discovery::version_priority(v));
        let version = served.first()?;
        let resource = ApiResource {
            group: spec.group.clone(),
            version: (*version).to_owned(),
            api_version: format!("{}/{version}", spec.group),
            kind: spec.names.kind.clone(),
            plural: spec.names.plural.clone(),
        };
        Some((resource, spec.scope == "Namespaced"))
    }

    /// Follows the established definitions and drops the rest; returns the kinds whose first
    /// list is in.
    fn refresh(&mut self) -> Vec<Arc<Kind>> {
        let mut wanted: HashMap<String, (ApiResource, bool)> = HashMap::new();
        for crd in self.definitions.store().state() {
            if let (Some(name), Some(r)) = (crd.metadata.name.clone(), Self::resource_of(&crd)) {
                wanted.insert(name, r);
            }
        }
        self.followed.retain(|name, (resource, _, task)| {
            let keep = wanted.get(name).is_some_and(|(r, _)| r == resource);
            if !keep {
                task.abort();
            }
            keep
        });
        for (name, (resource, namespaced)) in wanted {
            if self.followed.contains_key(&name) {
                continue;
            }
            let api: Api<DynamicObject> = Api::all_with(self.client.clone(), &resource);
            let writer = reflector::store::Writer::new(resource.clone());
            let store = writer.as_reader();
            let (listed_tx, listed) = tokio::sync::watch::channel(false);
            let dirty = self.dirty.clone();
            let stream = reflector::reflector(
                writer,
                kube::runtime::watcher(api, kube::runtime::watcher::Config::default()),
            );
            let task = tokio::spawn(async move {
                futures::pin_mut!(stream);
                while let Some(event) = stream.next().await {
                    match event {
                        Ok(kube::runtime::watcher::Event::InitDone) => {
                            let _ = listed_tx.send(true);
                            dirty.notify_one();
                        }
                        Ok(_) => dirty.notify_one(),
                        Err(error) => {
                            tracing::debug!(%error, "garbage collector: a custom resource watch failed; it retries");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    }
                }
            });
            let kind = Arc::new(Kind {
                resource: resource.clone(),
                namespaced,
                cache: Box::new(DynamicCache { store, listed }),
            });
            self.followed.insert(name, (resource, kind, task));
        }
        self.followed
            .values()
            .filter(|(_, k, _)| futures::FutureExt::now_or_never(k.cache.ready()).is_some())
            .map(|(_, k, _)| k.clone())
            .collect()
    }

    fn stop(&mut self) {
        for (_, (_, _, task)) in self.followed.drain() {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(
        name: &str,
        uid: &str,
        owners: &[(&str, bool)],
        finalizers: &[&str],
        deleting: bool,
    ) -> (usize, Arc<DynamicObject>) {
        let mut o = DynamicObject {
            types: None,
            metadata: Default::default(),
            data: json!({}),
        };
        o.metadata.name = Some(name.into());
        o.metadata.namespace = Some("default".into());
        o.metadata.uid = Some(uid.into());
        o.metadata.owner_references = Some(
            owners
                .iter()
                .map(|(u, block)| OwnerReference {
                    api_version: "apps/v1".into(),
                    kind: "ReplicaSet".into(),
                    name: format!("owner-{u}"),
                    uid: (*u).into(),
                    controller: Some(true),
                    block_owner_deletion: Some(*block),
                })
                .collect(),
        );
        o.metadata.finalizers = Some(finalizers.iter().map(|f| (*f).to_owned()).collect());
        if deleting {
            o.metadata.deletion_timestamp =
                Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    k8s_openapi::jiff::Timestamp::now(),
                ));
        }
        (0, Arc::new(o))
    }

    #[test]
    fn dependents_of_missing_owners_are_checked_then_deleted() {
        let g = vec![
            obj("rs", "u-rs", &[], &[], false),
            obj("a", "u-a", &[("u-rs", true)], &[], false),
            obj("b", "u-b", &[("u-gone", true)], &[], false),
        ];
        let steps = plan(&g, &HashSet::new());
        assert_eq!(steps.len(), 1);
        assert!(
            matches!(&steps[0], Step::DeleteIfOwnersGone(_, _, name, _, missing) if name == "b" && missing[0].0.uid == "u-gone")
        );
    }

    #[test]
    fn foreground_deletes_dependents_and_waits_for_blocking_ones() {
        let g = vec![
            obj("rs", "u-rs", &[], &[FOREGROUND], true),
            obj("a", "u-a", &[("u-rs", true)], &[], false),
        ];
        let steps = plan(&g, &HashSet::new());
        assert_eq!(
            steps,
            vec![Step::Delete(
                0,
                Some("default".into()),
                "a".into(),
                "u-a".into(),
                Some("Foreground")
            )]
        );
        // Only a non-blocking dependent left: the owner's finalizer goes.
        let g = vec![
            obj("rs", "u-rs", &[], &[FOREGROUND], true),
            obj("a", "u-a", &[("u-rs", false)], &[], true),
        ];
        assert_eq!(
            plan(&g, &HashSet::new()),
            vec![Step::RemoveFinalizer(
                0,
                Some("default".into()),
                "rs".into(),
                FOREGROUND
            )]
        );
    }

    #[test]
    fn orphaning_strips_references_before_the_finalizer_goes() {
        let g = vec![
            obj("rs", "u-rs", &[], &[ORPHAN], true),
            obj("a", "u-a", &[("u-rs", true)], &[], false),
        ];
        assert_eq!(
            plan(&g, &HashSet::new()),
            vec![Step::SetOwners(
                0,
                Some("default".into()),
                "a".into(),
                vec![]
            )]
        );
        let g = vec![obj("rs", "u-rs", &[], &[ORPHAN], true)];
        assert_eq!(
            plan(&g, &HashSet::new()),
            vec![Step::RemoveFinalizer(
                0,
                Some("default".into()),
                "rs".into(),
                ORPHAN
            )]
        );
    }
}
