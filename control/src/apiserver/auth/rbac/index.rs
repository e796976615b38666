//! The RBAC objects in memory, kept current by a store watch, and the decisions read from them.
//!
//! Every request is authorized, so a decision must not touch the store: the four RBAC kinds are
//! listed once and then followed by a watch on their common key prefix. After each batch of
//! events a new immutable [`Snapshot`] is published; a request takes the current one (an `Arc`
//! clone under a read lock held for no longer than that) and decides without locks or awaits.
//!
//! The revision the snapshot has applied is published too, so a writer of an RBAC object can
//! wait ([`RbacIndex::wait_for`]) until its write is visible: a binding created by one request
//! then works for the next, as it does on a single kube-apiserver.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::rules;
use crate::apiserver::auth::authorizer::Decision;
use crate::apiserver::auth::go_format::{aggregate, quote};
use crate::apiserver::auth::request_info::RequestInfo;
use crate::apiserver::auth::user::UserInfo;
use crate::store::{keys, EventKind, ListRequest, SharedStore, StoreError, StoreEvent};

/// The API group of the RBAC kinds, which is also the key prefix of all of them.
pub const GROUP: &str = "rbac.authorization.k8s.io";

/// The store key prefix of every RBAC object.
pub const PREFIX: &str = "rbac.authorization.k8s.io/";

/// How long to wait before listing again after the watch broke.
const RETRY: Duration = Duration::from_millis(500);

/// The four RBAC collections, in the order they are listed.
const COLLECTIONS: [keys::Collection<'static>; 4] = [
    collection("clusterroles", false),
    collection("clusterrolebindings", false),
    collection("roles", true),
    collection("rolebindings", true),
];

const fn collection(plural: &'static str, namespaced: bool) -> keys::Collection<'static> {
    keys::Collection {
        group: GROUP,
        plural,
        namespaced,
    }
}

/// The RBAC objects at one store revision.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    revision: u64,
    cluster_roles: HashMap<String, Arc<ClusterRole>>,
    /// Namespace, then name.
    roles: HashMap<String, HashMap<String, Arc<Role>>>,
    /// By name, so bindings are visited (and reasons chosen) in a stable order.
    cluster_role_bindings: BTreeMap<String, Arc<ClusterRoleBinding>>,
    /// Namespace, then name.
    role_bindings: HashMap<String, BTreeMap<String, Arc<RoleBinding>>>,
}

/// The binding (and its subject) a rule came from, printed as Kubernetes names it in an
/// "allowed by" reason.
struct Source<'a> {
    /// The binding's name and namespace (empty for a ClusterRoleBinding).
    name: &'a str,
    namespace: &'a str,
    role_ref: &'a RoleRef,
    subject: &'a Subject,
}

impl fmt::Display for Source<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "ClusterRoleBinding {}", quote(self.name))?;
        } else {
            write!(
                f,
                "RoleBinding {}",
                quote(&format!("{}/{}", self.name, self.namespace))
            )?;
        }
        write!(
            f,
            " of {} {} to ",
            self.role_ref.kind,
            quote(&self.role_ref.name)
        )?;
        let subject = self.subject;
        if subject.kind == "ServiceAccount" {
            let namespace = match subject.namespace.as_deref() {
                Some(ns) if !ns.is_empty() => ns,
                _ => self.namespace,
            };
            write!(
                f,
                "ServiceAccount {}",
                quote(&format!("{}/{namespace}", subject.name))
            )
        } else {
            write!(f, "{} {}", subject.kind, quote(&subject.name))
        }
    }
}

/// Whether a binding subject names `user`; `namespace` is the binding's (empty for a
/// ClusterRoleBinding), which a ServiceAccount subject without a namespace is in.
fn applies_to(user: &UserInfo, subject: &Subject, namespace: &str) -> bool {
    match subject.kind.as_str() {
        "User" => user.name == subject.name,
        "Group" => user.in_group(&subject.name),
        "ServiceAccount" => {
            let namespace = match subject.namespace.as_deref() {
                Some(ns) if !ns.is_empty() => ns,
                _ => namespace,
            };
            !namespace.is_empty() && user.is_service_account(namespace, &subject.name)
        }
        _ => false,
    }
}

/// The first subject of `subjects` that names `user`.
fn first_subject<'a>(
    user: &UserInfo,
    subjects: &'a Option<Vec<Subject>>,
    namespace: &str,
) -> Option<&'a Subject> {
    subjects
        .iter()
        .flatten()
        .find(|s| applies_to(user, s, namespace))
}

impl Snapshot {
    /// The store revision this snapshot reflects.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// The ClusterRole `name`.
    pub fn cluster_role(&self, name: &str) -> Option<&ClusterRole> {
        self.cluster_roles.get(name).map(|r| &**r)
    }

    /// The Role `namespace/name`.
    pub fn role(&self, namespace: &str, name: &str) -> Option<&Role> {
        self.roles.get(namespace)?.get(name).map(|r| &**r)
    }

    /// The rules a binding's roleRef grants; `namespace` is the binding's (empty for a
    /// ClusterRoleBinding). The error is Kubernetes' text for a missing role or an unknown
    /// kind (`clusterrole.rbac.authorization.k8s.io "x" not found`).
    pub fn role_ref_rules(
        &self,
        role_ref: &RoleRef,
        namespace: &str,
    ) -> Result<&[PolicyRule], String> {
        let not_found =
            |singular: &str| format!("{singular}.{GROUP} {} not found", quote(&role_ref.name));
        match role_ref.kind.as_str() {
            "Role" => self
                .role(namespace, &role_ref.name)
                .map(|r| r.rules.as_deref().unwrap_or_default())
                .ok_or_else(|| not_found("role")),
            "ClusterRole" => self
                .cluster_role(&role_ref.name)
                .map(|r| r.rules.as_deref().unwrap_or_default())
                .ok_or_else(|| not_found("clusterrole")),
            other => Err(format!("unsupported role reference kind: {}", quote(other))),
        }
    }

    /// Visits, in Kubernetes' order (`VisitRulesFor`), the rules of every binding that applies
    /// to `user`: ClusterRoleBindings always, then the RoleBindings of `namespace` if one is
    /// given. A roleRef that does not resolve is visited as its error.
    fn visit<'s>(
        &'s self,
        user: &UserInfo,
        namespace: &str,
        mut visitor: impl FnMut(Result<(Source<'s>, &'s [PolicyRule]), String>) -> ControlFlow<()>,
    ) {
        for (name, binding) in &self.cluster_role_bindings {
            let Some(subject) = first_subject(user, &binding.subjects, "") else {
                continue;
            };
            let item = self.role_ref_rules(&binding.role_ref, "").map(|rules| {
                let source = Source {
                    name,
                    namespace: "",
                    role_ref: &binding.role_ref,
                    subject,
                };
                (source, rules)
            });
            if visitor(item).is_break() {
                return;
            }
        }
        if namespace.is_empty() {
            return;
        }
        let Some((namespace, bindings)) = self.role_bindings.get_key_value(namespace) else {
            return;
        };
        for (name, binding) in bindings {
            let Some(subject) = first_subject(user, &binding.subjects, namespace) else {
                continue;
            };
            let item = self
                .role_ref_rules(&binding.role_ref, namespace)
                .map(|rules| {
                    let source = Source {
                        name,
                        namespace,
                        role_ref: &binding.role_ref,
                        subject,
                    };
                    (source, rules)
                });
            if visitor(item).is_break() {
                return;
            }
        }
    }

    /// Every rule granted to `user` in `namespace` (cluster-wide ones included; only those for
    /// an empty namespace), and the errors of roleRefs that did not resolve.
    pub fn rules_for(&self, user: &UserInfo, namespace: &str) -> (Vec<PolicyRule>, Vec<String>) {
        let (mut granted, mut errors) = (Vec::new(), Vec::new());
        self.visit(user, namespace, |item| {
            match item {
                Ok((_, rules)) => granted.extend_from_slice(rules),
                Err(e) => errors.push(e),
            }
            ControlFlow::Continue(())
        });
        (granted, errors)
    }

    /// Kubernetes' RBAC authorizer: allowed by the first binding with a rule that allows the
    /// request (`RBAC: allowed by ClusterRoleBinding "x" of ClusterRole "y" to User "z"`);
    /// otherwise denied, with the roleRef errors met on the way as the reason (`RBAC:
    /// clusterrole.rbac.authorization.k8s.io "x" not found`), or no reason.
    pub fn authorize(&self, user: &UserInfo, request: &RequestInfo) -> Decision {
        let mut errors = Vec::new();
        let mut allowed_by = None;
        self.visit(user, &request.namespace, |item| match item {
            Ok((source, granted)) if rules::any_allows(granted, request) => {
                allowed_by = Some(source.to_string());
                ControlFlow::Break(())
            }
            Ok(_) => ControlFlow::Continue(()),
            Err(e) => {
                errors.push(e);
                ControlFlow::Continue(())
            }
        });
        match allowed_by {
            Some(source) => Decision::allow(format!("RBAC: allowed by {source}")),
            None if errors.is_empty() => Decision::deny(""),
            None => Decision::deny(format!("RBAC: {}", aggregate(&errors))),
        }
    }

    /// Applies one store event under [`PREFIX`].
    fn apply(&mut self, event: &StoreEvent) {
        self.revision = self.revision.max(event.revision);
        let mut segments = event.key.splitn(4, '/');
        let (Some(_), Some(plural), Some(namespace), Some(name)) = (
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
        ) else {
            return;
        };
        let object = match event.kind {
            EventKind::Deleted => None,
            EventKind::Added | EventKind::Modified => {
                Object::decode(plural, &event.key, &event.object)
            }
        };
        match object {
            Some(object) => self.put(namespace, name, object),
            None => self.remove(plural, namespace, name),
        }
    }

    fn put(&mut self, namespace: &str, name: &str, object: Object) {
        let (ns, name) = (namespace.to_owned(), name.to_owned());
        match object {
            Object::ClusterRole(r) => drop(self.cluster_roles.insert(name, r)),
            Object::ClusterRoleBinding(b) => drop(self.cluster_role_bindings.insert(name, b)),
            Object::Role(r) => drop(self.roles.entry(ns).or_default().insert(name, r)),
            Object::RoleBinding(b) => {
                drop(self.role_bindings.entry(ns).or_default().insert(name, b))
            }
        }
    }

    fn remove(&mut self, plural: &str, namespace: &str, name: &str) {
        match plural {
            "clusterroles" => drop(self.cluster_roles.remove(name)),
            "clusterrolebindings" => drop(self.cluster_role_bindings.remove(name)),
            "roles" => {
                if let Some(roles) = self.roles.get_mut(namespace) {
                    roles.remove(name);
                    if roles.is_empty() {
                        self.roles.remove(namespace);
                    }
                }
            }
            "rolebindings" => {
                if let Some(bindings) = self.role_bindings.get_mut(namespace) {
                    bindings.remove(name);
                    if bindings.is_empty() {
                        self.role_bindings.remove(namespace);
                    }
                }
            }
            _ => {}
        }
    }
}

/// One stored RBAC object, decoded.
enum Object {
    ClusterRole(Arc<ClusterRole>),
    ClusterRoleBinding(Arc<ClusterRoleBinding>),
    Role(Arc<Role>),
    RoleBinding(Arc<RoleBinding>),
}

impl Object {
    /// Decodes the stored JSON of a `plural` object; one that does not parse is logged and
    /// left out, so it grants nothing.
    fn decode(plural: &str, key: &str, bytes: &[u8]) -> Option<Self> {
        fn parse<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Option<Arc<T>> {
            match serde_json::from_slice(bytes) {
                Ok(object) => Some(Arc::new(object)),
                Err(error) => {
                    tracing::warn!(key, %error, "RBAC index: ignoring an object that does not parse");
                    None
                }
            }
        }
        match plural {
            "clusterroles" => parse(key, bytes).map(Self::ClusterRole),
            "clusterrolebindings" => parse(key, bytes).map(Self::ClusterRoleBinding),
            "roles" => parse(key, bytes).map(Self::Role),
            "rolebindings" => parse(key, bytes).map(Self::RoleBinding),
            _ => None,
        }
    }

    fn metadata(&self) -> &ObjectMeta {
        match self {
            Self::ClusterRole(r) => &r.metadata,
            Self::ClusterRoleBinding(b) => &b.metadata,
            Self::Role(r) => &r.metadata,
            Self::RoleBinding(b) => &b.metadata,
        }
    }
}

/// What the follower task shares with the index: dropped with the index, which ends the task.
struct Shared {
    snapshot: RwLock<Arc<Snapshot>>,
    /// The revision the published snapshot has applied; `None` until the first list is in.
    applied: watch::Sender<Option<u64>>,
}

impl Shared {
    fn publish(&self, snapshot: Snapshot) {
        let revision = snapshot.revision;
        *self.snapshot.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(snapshot);
        self.applied.send_replace(Some(revision));
    }
}

/// The RBAC objects of a store, followed in memory.
///
/// Created idle ([`RbacIndex::new`]); it starts following the store on [`RbacIndex::start`],
/// or on the first [`ready`](RbacIndex::ready)/[`wait_for`](RbacIndex::wait_for), so owners
/// that may never authorize anything pay nothing. [`RbacIndex::spawn`] does both at once.
pub struct RbacIndex {
    shared: Arc<Shared>,
    store: SharedStore,
    shutdown: CancellationToken,
    started: AtomicBool,
}

impl fmt::Debug for RbacIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RbacIndex")
            .field("applied", &self.revision())
            .finish_non_exhaustive()
    }
}

impl RbacIndex {
    /// An index of `store`'s RBAC objects that is not following the store yet (and holds none).
    pub fn new(store: SharedStore, shutdown: CancellationToken) -> Arc<Self> {
        Arc::new(Self {
            shared: Arc::new(Shared {
                snapshot: RwLock::default(),
                applied: watch::Sender::new(None),
            }),
            store,
            shutdown,
            started: AtomicBool::new(false),
        })
    }

    /// The store the index follows.
    pub fn store(&self) -> &SharedStore {
        &self.store
    }

    /// An index that follows `store` from now until `shutdown` (or until it is dropped).
    /// Must be called within a Tokio runtime.
    pub fn spawn(store: SharedStore, shutdown: CancellationToken) -> Arc<Self> {
        let index = Self::new(store, shutdown);
        index.start();
        index
    }

    /// Starts following the store, once; later calls do nothing. Outside a Tokio runtime it
    /// logs an error and leaves the index idle.
    pub fn start(&self) {
        if self.started.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::error!("RBAC index: no Tokio runtime to follow the store on");
            self.started.store(false, Ordering::Release);
            return;
        };
        let task = follow(
            Arc::downgrade(&self.shared),
            self.store.clone(),
            self.shutdown.clone(),
        );
        runtime.spawn(task);
    }

    /// The current snapshot (empty until the first list is applied).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.shared
            .snapshot
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The store revision the current snapshot has applied; `None` before the first list.
    pub fn revision(&self) -> Option<u64> {
        *self.shared.applied.borrow()
    }

    /// Starts following if needed and waits until the first list is applied. False when
    /// shutdown came first.
    pub async fn ready(&self) -> bool {
        self.wait_until(|applied| applied.is_some()).await
    }

    /// Starts following if needed and waits until the snapshot has applied `revision`, the
    /// revision of an RBAC write (other writes produce no event here, so waiting for one of
    /// theirs lasts until the next RBAC write). False when shutdown came first.
    pub async fn wait_for(&self, revision: u64) -> bool {
        self.wait_until(|applied| applied.is_some_and(|a| a >= revision))
            .await
    }

    async fn wait_until(&self, reached: impl FnMut(&Option<u64>) -> bool) -> bool {
        self.start();
        let mut applied = self.shared.applied.subscribe();
        tokio::select! {
            result = applied.wait_for(reached) => result.is_ok(),
            _ = self.shutdown.cancelled() => false,
        }
    }
}

/// Why following stopped for good.
enum Stop {
    /// The index was dropped.
    Dropped,
    /// The store closed.
    Closed,
}

/// Lists and watches until shutdown, the index is dropped or the store closes; listing again
/// whenever the watch breaks (it fell behind, or its revision left the watch cache).
async fn follow(shared: Weak<Shared>, store: SharedStore, shutdown: CancellationToken) {
    loop {
        let result = tokio::select! {
            result = follow_once(&shared, &store) => result,
            _ = shutdown.cancelled() => return,
        };
        match result {
            Ok(Stop::Dropped) => return,
            Ok(Stop::Closed) | Err(StoreError::Closed) => {
                tracing::debug!("RBAC index: the store closed");
                return;
            }
            Err(error) => {
                tracing::warn!(%error, "RBAC index: following the store failed; listing again");
                tokio::select! {
                    _ = tokio::time::sleep(RETRY) => {}
                    _ = shutdown.cancelled() => return,
                }
            }
        }
    }
}

/// One list and the watch after it, publishing a snapshot after the list and after every
/// batch of events (the events that are ready together).
async fn follow_once(shared: &Weak<Shared>, store: &SharedStore) -> Result<Stop, StoreError> {
    let mut snapshot = load(store).await?;
    let mut events = store.watch(PREFIX, snapshot.revision).await?;
    loop {
        let Some(shared) = shared.upgrade() else {
            return Ok(Stop::Dropped);
        };
        shared.publish(snapshot.clone());
        drop(shared);
        let Some(first) = events.next().await else {
            return Ok(Stop::Closed);
        };
        snapshot.apply(&*first?);
        while let Some(Some(next)) = events.next().now_or_never() {
            snapshot.apply(&*next?);
        }
    }
}

/// Lists the four kinds at one revision.
async fn load(store: &SharedStore) -> Result<Snapshot, StoreError> {
    let mut snapshot = Snapshot::default();
    let mut revision = None;
    for collection in COLLECTIONS {
        let prefix = collection.prefix();
        let request = ListRequest {
            revision,
            ..ListRequest::default()
        };
        let listed = store.list(&prefix, request).await?;
        revision = Some(listed.revision);
        snapshot.revision = listed.revision;
        for bytes in &listed.items {
            let Some(object) = Object::decode(collection.plural, &prefix, bytes) else {
                continue;
            };
            let meta = object.metadata();
            let name = meta.name.clone().unwrap_or_default();
            let namespace = meta.namespace.clone().unwrap_or_default();
            snapshot.put(&namespace, &name, object);
        }
    }
    Ok(snapshot)
}

#[cfg(test)]
mod tests {
    use super::super::test_objects::*;
    use super::*;
    use crate::apiserver::auth::request_info::resolve;

    fn user(name: &str, groups: &[&str]) -> UserInfo {
        UserInfo {
            name: name.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            ..UserInfo::default()
        }
    }

    fn request(method: http::Method, path: &str) -> RequestInfo {
        resolve(&method, path, None)
    }

    const PODS_IN_PROD: &str = "/api/v1/namespaces/prod/pods";

    #[tokio::test]
    async fn a_binding_written_after_start_is_honoured_after_wait_for() {
        let store = store();
        let index = RbacIndex::spawn(store.clone(), CancellationToken::new());
        assert!(index.ready().await);
        let alice = user("alice", &["system:authenticated"]);
        let list_pods = request(http::Method::GET, PODS_IN_PROD);
        assert_eq!(
            index.snapshot().authorize(&alice, &list_pods),
            Decision::deny("")
        );

        put_cluster_role(
            &store,
            "pod-reader",
            vec![rule(&["get", "list", "watch"], &[""], &["pods"])],
        )
        .await;
        let revision = put_role_binding(
            &store,
            "prod",
            "read-pods",
            ("ClusterRole", "pod-reader"),
            vec![subject("User", "alice", None)],
        )
        .await;
        assert!(index.wait_for(revision).await);
        assert!(index.revision() >= Some(revision));
        assert_eq!(
            index.snapshot().authorize(&alice, &list_pods),
            Decision::allow(
                r#"RBAC: allowed by RoleBinding "read-pods/prod" of ClusterRole "pod-reader" to User "alice""#
            )
        );
        // Only in that namespace, only those verbs, only that user.
        let snapshot = index.snapshot();
        let elsewhere = request(http::Method::GET, "/api/v1/namespaces/dev/pods");
        assert!(!snapshot.authorize(&alice, &elsewhere).allowed);
        let all_namespaces = request(http::Method::GET, "/api/v1/pods");
        assert!(!snapshot.authorize(&alice, &all_namespaces).allowed);
        let create = request(http::Method::POST, PODS_IN_PROD);
        assert!(!snapshot.authorize(&alice, &create).allowed);
        assert!(!snapshot.authorize(&user("bob", &[]), &list_pods).allowed);

        // Deleting the binding takes the permission away again.
        let deleted = store
            .delete(
                "rbac.authorization.k8s.io/rolebindings/prod/read-pods",
                None,
            )
            .await
            .expect("delete");
        assert!(
            index
                .wait_for(crate::store::object_revision(&deleted))
                .await
        );
        assert!(!index.snapshot().authorize(&alice, &list_pods).allowed);
    }

    #[tokio::test]
    async fn objects_stored_before_start_are_listed() {
        let store = store();
        put_cluster_role(&store, "admin-ish", vec![rule(&["*"], &["*"], &["*"])]).await;
        put_cluster_role_binding(
            &store,
            "ops",
            ("ClusterRole", "admin-ish"),
            vec![subject("Group", "ops", None)],
        )
        .await;
        let index = RbacIndex::new(store.clone(), CancellationToken::new());
        assert_eq!(index.revision(), None, "idle until asked");
        assert!(index.ready().await);
        assert_eq!(index.revision(), Some(store.revision()));
        let decision = index.snapshot().authorize(
            &user("carol", &["ops"]),
            &request(http::Method::DELETE, "/api/v1/nodes/n1"),
        );
        assert_eq!(
            decision,
            Decision::allow(
                r#"RBAC: allowed by ClusterRoleBinding "ops" of ClusterRole "admin-ish" to Group "ops""#
            )
        );
    }

    #[tokio::test]
    async fn unresolved_role_refs_are_reasons_not_denials() {
        let store = store();
        let everyone = vec![subject("Group", "system:authenticated", None)];
        put_cluster_role_binding(
            &store,
            "a-ghost",
            ("ClusterRole", "ghost"),
            everyone.clone(),
        )
        .await;
        put_cluster_role_binding(&store, "b-role", ("Role", "local"), everyone.clone()).await;
        put_cluster_role_binding(&store, "c-odd", ("Thing", "x"), everyone.clone()).await;
        put_role_binding(
            &store,
            "prod",
            "d-missing",
            ("Role", "gone"),
            everyone.clone(),
        )
        .await;
        let index = RbacIndex::spawn(store.clone(), CancellationToken::new());
        assert!(index.ready().await);
        let alice = user("alice", &["system:authenticated"]);
        let list_pods = request(http::Method::GET, PODS_IN_PROD);
        assert_eq!(
            index.snapshot().authorize(&alice, &list_pods),
            Decision::deny(
                r#"RBAC: [clusterrole.rbac.authorization.k8s.io "ghost" not found, role.rbac.authorization.k8s.io "local" not found, unsupported role reference kind: "Thing", role.rbac.authorization.k8s.io "gone" not found]"#
            )
        );
        let (rules, errors) = index.snapshot().rules_for(&alice, "");
        assert!(rules.is_empty());
        assert_eq!(
            errors.len(),
            3,
            "no RoleBindings without a namespace: {errors:?}"
        );

        // Another binding that allows wins regardless of the broken ones.
        put_cluster_role(&store, "reader", vec![rule(&["list"], &[""], &["pods"])]).await;
        let revision = put_role_binding(
            &store,
            "prod",
            "e-read",
            ("ClusterRole", "reader"),
            everyone,
        )
        .await;
        assert!(index.wait_for(revision).await);
        assert_eq!(
            index.snapshot().authorize(&alice, &list_pods),
            Decision::allow(
                r#"RBAC: allowed by RoleBinding "e-read/prod" of ClusterRole "reader" to Group "system:authenticated""#
            )
        );
    }

    #[tokio::test]
    async fn service_accounts_and_roles_resolve_in_the_binding_namespace() {
        let store = store();
        put_role(
            &store,
            "prod",
            "cm-editor",
            vec![rule(&["update"], &[""], &["configmaps"])],
        )
        .await;
        put_role_binding(
            &store,
            "prod",
            "builders",
            ("Role", "cm-editor"),
            vec![
                subject("ServiceAccount", "builder", None),
                subject("ServiceAccount", "deployer", Some("ci")),
            ],
        )
        .await;
        put_cluster_role(
            &store,
            "node-reader",
            vec![rule(&["get"], &[""], &["nodes"])],
        )
        .await;
        put_cluster_role_binding(
            &store,
            "sa-nodes",
            ("ClusterRole", "node-reader"),
            vec![
                // Without a namespace a ClusterRoleBinding's ServiceAccount subject names nobody.
                subject("ServiceAccount", "builder", None),
                subject("ServiceAccount", "deployer", Some("ci")),
            ],
        )
        .await;
        let index = RbacIndex::spawn(store.clone(), CancellationToken::new());
        assert!(index.ready().await);
        let snapshot = index.snapshot();
        let update = request(http::Method::PUT, "/api/v1/namespaces/prod/configmaps/c");
        let builder = user("system:serviceaccount:prod:builder", &[]);
        assert_eq!(
            snapshot.authorize(&builder, &update),
            Decision::allow(
                r#"RBAC: allowed by RoleBinding "builders/prod" of Role "cm-editor" to ServiceAccount "builder/prod""#
            )
        );
        let deployer = user("system:serviceaccount:ci:deployer", &[]);
        assert_eq!(
            snapshot.authorize(&deployer, &update).reason,
            r#"RBAC: allowed by RoleBinding "builders/prod" of Role "cm-editor" to ServiceAccount "deployer/ci""#
        );
        let get_node = request(http::Method::GET, "/api/v1/nodes/n1");
        assert!(!snapshot.authorize(&builder, &get_node).allowed);
        assert_eq!(
            snapshot.authorize(&deployer, &get_node).reason,
            r#"RBAC: allowed by ClusterRoleBinding "sa-nodes" of ClusterRole "node-reader" to ServiceAccount "deployer/ci""#
        );
        // The same names in another namespace are other accounts.
        let other = user("system:serviceaccount:dev:builder", &[]);
        assert!(!snapshot.authorize(&other, &update).allowed);

        let (rules, errors) = snapshot.rules_for(&deployer, "prod");
        assert!(errors.is_empty());
        assert_eq!(rules.len(), 2, "node-reader's and cm-editor's: {rules:?}");
        assert_eq!(
            snapshot
                .role("prod", "cm-editor")
                .map(|r| r.metadata.name.as_deref()),
            Some(Some("cm-editor"))
        );
        assert!(snapshot.cluster_role("node-reader").is_some());
    }

    #[tokio::test]
    async fn objects_that_do_not_parse_grant_nothing() {
        let store = store();
        let everyone = vec![subject("Group", "system:authenticated", None)];
        put_cluster_role(&store, "fine", vec![rule(&["list"], &[""], &["pods"])]).await;
        put_cluster_role_binding(&store, "fine", ("ClusterRole", "fine"), everyone).await;
        let index = RbacIndex::spawn(store.clone(), CancellationToken::new());
        assert!(index.ready().await);
        let alice = user("alice", &["system:authenticated"]);
        let list_pods = request(http::Method::GET, PODS_IN_PROD);
        assert!(index.snapshot().authorize(&alice, &list_pods).allowed);

        // Rules that are not a list replace the role: it is gone, and the binding says so.
        let key = "rbac.authorization.k8s.io/clusterroles//fine";
        let broken = serde_json::json!({"metadata": {"name": "fine"}, "rules": "everything"});
        let stored = store.update(key, None, broken).await.expect("update");
        assert!(index.wait_for(crate::store::object_revision(&stored)).await);
        assert_eq!(
            index.snapshot().authorize(&alice, &list_pods),
            Decision::deny(r#"RBAC: clusterrole.rbac.authorization.k8s.io "fine" not found"#)
        );
    }

    #[tokio::test]
    async fn waiting_ends_at_shutdown() {
        let shutdown = CancellationToken::new();
        let index = RbacIndex::spawn(store(), shutdown.clone());
        assert!(index.ready().await);
        let far = index.revision().unwrap_or_default() + 100;
        let waiter = tokio::spawn({
            let index = index.clone();
            async move { index.wait_for(far).await }
        });
        shutdown.cancel();
        assert!(!waiter.await.expect("join"));
    }
}
