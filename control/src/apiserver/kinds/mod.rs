//! Per-kind behaviour of the API server, one [`Strategy`] per kind (Kubernetes'
//! `pkg/registry/<group>/<kind>/strategy.go` and its printers): everything the generic code in
//! `objects.rs`, `handlers.rs`, `table.rs`, `discovery.rs` and `patch.rs` would otherwise decide
//! by matching on a kind's name.
//!
//! Every hook has a default that does nothing special, so a kind implements only what differs.
//! Adding a built-in kind: a new file here with a `resources()` function and one line in
//! [`builtins!`].

use futures::future::BoxFuture;
use serde_json::Value;

use super::auth::UserInfo;
use super::error::{ApiError, FieldError};
use super::objects::{DeleteOptions, ListOptions, Subresource};
use super::registry::ResourceDef;
use super::table::{Column, AGE, NAME};
use super::validation::NameRule;
use super::ApiState;

/// A pending lock that serialises a kind's writes (see [`Strategy::write_lock`]).
pub type WriteLock<'a> = BoxFuture<'a, tokio::sync::MutexGuard<'a, ()>>;

/// The verbs of a collection and its objects, as discovery lists them.
pub const ALL_VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// The verbs of a create-only review kind (SubjectAccessReview, TokenReview, ...).
pub const CREATE_ONLY: &[&str] = &["create"];

/// A create-only, never-stored kind that answers a question about the requester or a subject
/// (Kubernetes' `rest.Creater`s under `pkg/registry/authorization` and `authentication`): a
/// POST of the kind is decoded and checked as any create, then answered with 201 Created and
/// the request object with its `status`; every other verb is 405.
pub trait Review: Send + Sync {
    /// Answers `object` (typed-decoded, `apiVersion`/`kind` checked, `metadata.namespace`
    /// the path's for a namespaced kind) for `user`, who made the request.
    fn answer<'a>(
        &'a self,
        state: &'a ApiState,
        user: &'a UserInfo,
        namespace: Option<&'a str>,
        object: Value,
    ) -> BoxFuture<'a, Result<Value, ApiError>>;
}

/// A read-only kind computed on request, never stored (metrics.k8s.io's NodeMetrics and
/// PodMetrics, which Kubernetes serves from metrics-server): GET of the collection lists,
/// GET of a name gets, every other verb is 405. [`Strategy::verbs`] should be
/// [`metrics::GET_LIST`].
pub trait Computed: Send + Sync {
    /// The objects in `namespace` (all namespaces: `None`) that `opts`' selectors match.
    fn list<'a>(
        &'a self,
        state: &'a ApiState,
        namespace: Option<&'a str>,
        opts: &'a ListOptions,
    ) -> BoxFuture<'a, Result<Vec<Value>, ApiError>>;

    /// The object `name`, or a NotFound error.
    fn get<'a>(
        &'a self,
        state: &'a ApiState,
        namespace: Option<&'a str>,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Value, ApiError>>;
}

/// Everything kind-specific about a resource. The generic object code calls these hooks in
/// the order Kubernetes' generic registry calls a strategy's.
pub trait Strategy: Send + Sync {
    // --- create and update -------------------------------------------------------------------

    /// Clears what a client may not set on create in a kind with a `/status` subresource
    /// (`PrepareForCreate`): by default the whole status, which its controller writes.
    fn prepare_for_create(&self, object: &mut Value) {
        if let Some(map) = object.as_object_mut() {
            map.remove("status");
        }
    }

    /// The status a new object starts with. Kubernetes' status types are structs, which JSON
    /// never omits, and their fields without `omitempty` show their zero value (a new
    /// StatefulSet reads `{"replicas": 0, "availableReplicas": 0}`): clients wait on them.
    /// `None` for kinds without a status struct (custom resources start with no status).
    fn initial_status(&self) -> Option<Value> {
        Some(Value::Object(serde_json::Map::new()))
    }

    /// Repairs what Kubernetes' decoder accepts and the typed decode here does not, before it:
    /// Go's base64 skips CR and LF, so `[]byte` fields (Secret `data`, ConfigMap
    /// `binaryData`) may hold base64 wrapped at 76 columns, as Python's `encodebytes` writes it.
    fn before_decode(&self, _object: &mut Value) {}

    /// Fills in defaults (`SetDefaults_<Kind>`), on create and on every update.
    fn default(&self, _object: &mut Value) {}

    /// Mutating admission on create, after defaulting (DefaultTolerationSeconds, the
    /// ServiceAccount plugin). Async because it may read the store.
    fn admit<'a>(
        &'a self,
        _state: &'a ApiState,
        _object: &'a mut Value,
    ) -> BoxFuture<'a, Result<(), ApiError>> {
        Box::pin(async { Ok(()) })
    }

    /// What names must be: DNS-1123 subdomains unless the kind says otherwise (labels for
    /// Namespace and Service, path segments for RBAC kinds). `validate_metadata` checks it.
    fn name_rule(&self) -> NameRule {
        NameRule::DnsSubdomain
    }

    /// Kind-specific validation of a defaulted object, after the metadata checks.
    fn validate(&self, _object: &Value, _errs: &mut Vec<FieldError>) {}

    /// What an update may not change, after [`Strategy::validate`] of the new object.
    fn validate_update(&self, _old: &Value, _new: &Value, _errs: &mut Vec<FieldError>) {}

    /// Whether an update changes what `metadata.generation` counts: by default the spec.
    fn bumps_generation(&self, old: &Value, new: &Value) -> bool {
        new.get("spec") != old.get("spec") && new.get("spec").is_some()
    }

    /// Whether every object starts at generation 1, spec or not (custom resources).
    fn always_has_generation(&self) -> bool {
        false
    }

    // --- write hooks -------------------------------------------------------------------------

    /// A lock held across a write (check, store write, [`Strategy::after_write`]) of this
    /// kind, for kinds whose writes allocate from shared state.
    fn write_lock<'a>(&self, _state: &'a ApiState) -> Option<WriteLock<'a>> {
        None
    }

    /// Last step of a create before the store write (allocations), under the write lock.
    /// Async because it may read the store.
    fn before_create<'a>(
        &'a self,
        _state: &'a ApiState,
        _def: &'a ResourceDef,
        _key: &'a str,
        _object: &'a mut Value,
    ) -> BoxFuture<'a, Result<(), ApiError>> {
        Box::pin(async { Ok(()) })
    }

    /// Last step of an update of the object itself (not `/status`, `/scale`) before
    /// validation, under the write lock.
    fn before_update(
        &self,
        _state: &ApiState,
        _key: &str,
        _old: &Value,
        _new: &mut Value,
    ) -> Result<(), ApiError> {
        Ok(())
    }

    /// Last step of a write through a subresource (`/status`, `/approval`, ...) before
    /// validation, under the write lock: what that subresource may change beyond copying it
    /// (kept conditions, timestamps) and who may change it (the certificates admission
    /// checks). `new` is the stored object with the subresource's part replaced.
    fn before_subresource_update(
        &self,
        _state: &ApiState,
        _sub: Subresource,
        _old: &Value,
        _new: &mut Value,
    ) -> Result<(), ApiError> {
        Ok(())
    }

    /// After any write to `key` (or a failed or dry-run one): settle with what is stored.
    /// Async because it reads the store.
    fn after_write<'a>(&'a self, _state: &'a ApiState, _key: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }

    // --- delete plan -------------------------------------------------------------------------

    /// Refuses to delete some objects (the system namespaces).
    fn check_delete(&self, _name: &str) -> Result<(), ApiError> {
        Ok(())
    }

    /// Deleting marks the object terminating and keeps it, whatever its finalizers; a
    /// controller removes it when done (namespaces). Then [`Strategy::terminating`] adjusts
    /// the marked object and [`Strategy::terminated`] runs once it is stored.
    fn terminates(&self) -> bool {
        false
    }

    /// Finalizers a DELETE adds before it marks the object (a CustomResourceDefinition's
    /// `customresourcecleanup`: its objects go first), as Kubernetes' REST `Delete` of such
    /// kinds does.
    fn delete_finalizers(&self) -> &'static [&'static str] {
        &[]
    }

    /// Adjusts an object being marked terminating (e.g. `status.phase`).
    fn terminating(&self, _object: &mut Value) {}

    /// Runs after an object was stored as terminating (e.g. queues its finalization).
    fn terminated(&self, _state: &ApiState, _name: &str) {}

    /// The grace period of a deletion that someone else completes (a running pod's node
    /// agent), or `None` to delete at once. Async because it may read the store.
    fn grace_period<'a>(
        &'a self,
        _state: &'a ApiState,
        _object: &'a Value,
        _opts: &'a DeleteOptions,
    ) -> BoxFuture<'a, Option<i64>> {
        Box::pin(async { None })
    }

    // --- reading -----------------------------------------------------------------------------

    /// The Table columns `kubectl get` prints, each with the function that fills its cell.
    fn columns(&self) -> Vec<Column> {
        vec![NAME, AGE]
    }

    /// Field selector paths beyond `metadata.name` and `metadata.namespace`.
    fn field_selectors(&self) -> Vec<&str> {
        vec![]
    }

    // --- subresources and discovery ----------------------------------------------------------

    /// `spec.replicas` the `/scale` view shows when the object has none.
    fn scale_default_replicas(&self) -> i64 {
        0
    }

    /// Where the `/scale` view's `spec.replicas` and `status.replicas` live in the object, as
    /// JSON pointers (a custom resource's `specReplicasPath` and `statusReplicasPath`).
    fn scale_replicas_paths(&self) -> (&str, &str) {
        ("/spec/replicas", "/status/replicas")
    }

    /// The `/scale` view's `status.selector`: by default the object's `spec.selector`.
    fn scale_selector(&self, object: &Value) -> String {
        super::objects::spec_selector_string(object)
    }

    // --- versions ----------------------------------------------------------------------------

    /// Whether objects may be stored in another version than the one served here, so that
    /// [`Strategy::served_form`] must see every object going out.
    fn converts(&self) -> bool {
        false
    }

    /// The structural schema of a custom resource, which server-side apply merges by (its list
    /// types and map types); `None` for a built-in kind, whose come from the generated table
    /// of [`crate::apiserver::apply::types`].
    fn structural_schema(&self) -> Option<&crate::apiserver::apiextensions::schema::Node> {
        None
    }

    /// Turns an object about to be stored into the storage version (custom resources with
    /// several versions and `conversion: None` rewrite `apiVersion`).
    fn storage_form(&self, _object: &mut Value) {}

    /// Turns a stored object into the version served here, before it goes out (only called
    /// when [`Strategy::converts`]).
    /// Whether a stored object (its JSON) must go through [`Strategy::served_form`] before
    /// it is served, or may go out as stored: by default whenever the kind converts.
    fn needs_served_form(&self, _raw: &[u8]) -> bool {
        self.converts()
    }

    fn served_form(&self, _object: &mut Value) {}

    /// The warning every request of a deprecated version gets.
    fn deprecation_warning(&self) -> Option<&str> {
        None
    }

    /// Subresources beyond `/status` and `/scale` (`namespaces/finalize`, `pods/binding`):
    /// what a request to `name` addresses, given whether the path had a namespace.
    fn subresource(&self, _name: &str, _namespaced_path: bool) -> Option<Subresource> {
        None
    }

    /// Extra discovery entries, listed after `/status` (`pods/binding`, `pods/log`, ...).
    fn discovery_subresources(&self) -> Vec<Value> {
        Vec::new()
    }

    /// The verbs discovery lists.
    fn verbs(&self) -> &'static [&'static str] {
        ALL_VERBS
    }

    /// For a create-only review kind, what answers it (and then [`Strategy::verbs`] should
    /// be [`CREATE_ONLY`]). Such a kind is never stored.
    fn review(&self) -> Option<&dyn Review> {
        None
    }

    /// For a read-only computed kind, what computes it (see [`Computed`]). Such a kind is
    /// never stored.
    fn computed(&self) -> Option<&dyn Computed> {
        None
    }

    /// Whether objects of the kind live in the store (not a review or a computed kind):
    /// what the namespace controller deletes and the garbage collector watches.
    fn stored(&self) -> bool {
        self.review().is_none() && self.computed().is_none()
    }

    /// Whether PATCH accepts strategic merge patches (built-in kinds, whose list merge keys
    /// `patch.rs` knows); custom resources answer 415 as in Kubernetes.
    fn strategic_merge(&self) -> bool {
        true
    }
}

/// A strategy with every default: validation of metadata, Name and Age columns.
#[derive(Debug, Clone, Copy, Default)]
pub struct Plain;

impl Strategy for Plain {}

/// Declares the kind modules and [`builtins`] from one list, so adding a built-in kind is
/// one new file and one line here. Each module has `pub fn resources() -> Vec<ResourceDef>`;
/// the order is the order of discovery (core first, then groups as first seen).
macro_rules! builtins {
    ($($kind:ident),* $(,)?) => {
        $(pub mod $kind;)*

        /// The built-in resources, in discovery order.
        pub fn builtins() -> Vec<ResourceDef> {
            let mut defs = Vec::new();
            $(defs.extend($kind::resources());)*
            defs
        }
    };
}

builtins! {
    namespace,
    pod,
    service,
    endpoints,
    node,
    event,
    config,
    replicationcontroller,
    deployment,
    replicaset,
    daemonset,
    statefulset,
    controllerrevision,
    authentication,
    authorization,
    job,
    cronjob,
    certificates,
    ingress,
    endpointslice,
    lease,
    priorityclass,
    rbac,
    customresourcedefinition,
    metrics,
}

#[cfg(test)]
pub(crate) mod testing {
    //! Unit-test access to a built-in kind's strategy by group and kind.

    use std::sync::Arc;

    use serde_json::Value;

    use super::Strategy;
    use crate::apiserver::error::FieldError;

    /// The strategy of a built-in kind.
    pub fn strategy(group: &str, kind: &str) -> Arc<dyn Strategy> {
        super::builtins()
            .into_iter()
            .find(|d| d.group == group && d.kind == kind)
            .map(|d| d.strategy)
            .unwrap_or_else(|| panic!("{group}/{kind} is built in"))
    }

    /// Defaults an object as create does.
    pub fn defaulted(group: &str, kind: &str, mut object: Value) -> Value {
        strategy(group, kind).default(&mut object);
        object
    }

    /// Validates an object as create does.
    pub fn validate(group: &str, kind: &str, object: &Value) -> Vec<FieldError> {
        crate::apiserver::validation::validate_object(strategy(group, kind).as_ref(), object)
    }

    /// Validates an update as update does (after validating the new object).
    pub fn validate_update(group: &str, kind: &str, old: &Value, new: &Value) -> Vec<FieldError> {
        let mut errs = Vec::new();
        strategy(group, kind).validate_update(old, new, &mut errs);
        errs
    }
}
