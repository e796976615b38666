//! The generic object operations behind every resource: create, get, list, update, patch and
//! delete with Kubernetes semantics (server-set metadata, defaulting, validation, optimistic
//! concurrency, status/scale subresources, finalizers and graceful deletion).
//!
//! They are methods on [`ApiState`] so that in-process controllers go through the same rules
//! as HTTP clients.

use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use serde_json::{json, Map, Value};
use skiff_k8s::labels::LabelSelector;
use skiff_k8s::time;

use super::admission::node_restriction::{self, Operation};
use super::admission::pod_security;
use super::apply;
use super::auth::current_user;
use super::error::{ApiError, FieldError};
use super::patch::{self, PatchKind};
use super::registry::ResourceDef;
use super::selectors::{FieldSelector, Filter};
use super::validation::validate_object;
use super::ApiState;
use crate::store::{keys, object_revision, ListRequest, StoreError};

/// Which part of an object a request addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subresource {
    /// The object itself.
    Main,
    /// `/status`.
    Status,
    /// `/scale`.
    Scale,
    /// `pods/{name}/binding` (POST only).
    Binding,
    /// `serviceaccounts/{name}/token` (POST only): a TokenRequest, never stored.
    Token,
    /// `certificatesigningrequests/{name}/approval`: writes change only
    /// `status.conditions` (approving or denying a CSR).
    Approval,
    /// `pods/{name}/ephemeralcontainers`: writes change only `spec.ephemeralContainers`.
    EphemeralContainers,
}

/// `?fieldValidation=`: what to do with fields the schema does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FieldValidation {
    /// Drop them silently.
    Ignore,
    /// Drop them with a warning header (the server default).
    #[default]
    Warn,
    /// Reject the request (kubectl's default).
    Strict,
}

/// Options of a write request.
#[derive(Debug, Clone, Default)]
pub struct WriteOptions {
    /// `?dryRun=All`: run everything but the store write.
    pub dry_run: bool,
    /// `?fieldValidation=`.
    pub field_validation: FieldValidation,
    /// Who writes, for `metadata.managedFields` (`?fieldManager=`, else the User-Agent's
    /// first part); `None` for the server's own writes, which record no entry.
    pub field_manager: Option<String>,
    /// Set by [`ApiState::apply`]: the object's managed fields are already the apply's, so the
    /// write records no `Update` entry over them.
    pub applied: bool,
}

/// The apply semantics of a resource's objects.
pub fn apply_type(def: &ResourceDef) -> apply::types::Ty<'_> {
    match def.strategy.structural_schema() {
        Some(root) => apply::types::Ty::custom(root),
        None => apply::types::Ty::builtin(&def.api_version(), &def.kind),
    }
}

/// Which fields a write through `sub` changes and owns.
fn apply_scope(def: &ResourceDef, sub: Subresource) -> apply::Scope {
    match sub {
        Subresource::Status | Subresource::Approval => apply::Scope::Status,
        _ if def.subresources.status => apply::Scope::WithoutStatus,
        _ => apply::Scope::Whole,
    }
}

fn subresource_name(sub: Subresource) -> &'static str {
    match sub {
        Subresource::Status => "status",
        Subresource::Scale => "scale",
        Subresource::Approval => "approval",
        _ => "",
    }
}

/// Records the write from `old` to `new` in `new`'s managedFields (see [`apply::track_write`]).
fn track_write(
    def: &ResourceDef,
    old: Option<&Value>,
    new: &mut Value,
    sub: Subresource,
    opts: &WriteOptions,
) -> Result<(), ApiError> {
    if opts.applied {
        return Ok(());
    }
    let now = time::now();
    let api_version = def.api_version();
    let writer = opts
        .field_manager
        .as_deref()
        .map(|manager| apply::managed::Writer {
            manager,
            api_version: &api_version,
            subresource: subresource_name(sub),
            now: &now,
        });
    apply::track_write(apply_type(def), old, new, apply_scope(def, sub), writer).map_err(|causes| {
        ApiError::Invalid {
            kind: def.kind.clone(),
            name: meta_str(new, "name").unwrap_or_default().into(),
            causes,
        }
    })
}

/// A written object and the warnings for the `Warning` header.
#[derive(Debug)]
pub struct Written {
    /// The object as stored.
    pub object: Value,
    /// Human-readable warnings.
    pub warnings: Vec<String>,
}

/// Options of a list.
#[derive(Debug, Clone, Default)]
pub struct ListOptions {
    /// `?labelSelector=`.
    pub labels: LabelSelector,
    /// `?fieldSelector=`.
    pub fields: FieldSelector,
    /// `?limit=`.
    pub limit: Option<usize>,
    /// `?continue=`.
    pub continue_token: Option<String>,
}

/// A list page.
#[derive(Debug)]
pub struct ListPage {
    /// Matching objects, as stored (JSON bytes).
    pub items: Vec<Bytes>,
    /// The revision read.
    pub revision: u64,
    /// Token for the next page.
    pub continue_token: Option<String>,
}

impl ListPage {
    /// The items as parsed documents.
    pub fn values(&self) -> Result<Vec<Value>, ApiError> {
        self.items
            .iter()
            .map(|b| {
                serde_json::from_slice(b)
                    .map_err(|e| ApiError::Internal(format!("stored object does not decode: {e}")))
            })
            .collect()
    }
}

/// Options of a delete (`DeleteOptions` body or query).
#[derive(Debug, Clone, Default)]
pub struct DeleteOptions {
    /// Grace period override; 0 deletes at once.
    pub grace_period_seconds: Option<i64>,
    /// Background, Foreground or Orphan.
    pub propagation_policy: Option<String>,
    /// Only delete the object with this uid.
    pub precondition_uid: Option<String>,
    /// Only delete the object at this resourceVersion.
    pub precondition_resource_version: Option<String>,
    /// Validate but do not delete.
    pub dry_run: bool,
}

/// The finalizer a deletion's propagationPolicy asks for (Foreground and Orphan wait for the
/// garbage collector; Background, the default, does not).
fn propagation_finalizer(opts: &DeleteOptions) -> Option<&'static str> {
    match opts.propagation_policy.as_deref() {
        Some("Foreground") => Some("foregroundDeletion"),
        Some("Orphan") => Some("orphan"),
        _ => None,
    }
}

fn meta(object: &mut Value) -> &mut Map<String, Value> {
    if !object.get("metadata").is_some_and(Value::is_object) {
        object["metadata"] = json!({});
    }
    object["metadata"]
        .as_object_mut()
        .expect("metadata was just made an object")
}

fn meta_str<'a>(object: &'a Value, field: &str) -> Option<&'a str> {
    object.get("metadata")?.get(field)?.as_str()
}

fn finalizers_empty(object: &Value) -> bool {
    object
        .pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_none_or(Vec::is_empty)
}

/// Finds the paths present in `input` that typed decoding dropped: unknown fields.
fn unknown_fields(input: &Value, output: &Value, path: &str, found: &mut Vec<String>) {
    match (input, output) {
        (Value::Object(i), Value::Object(o)) => {
            for (k, v) in i {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match o.get(k) {
                    Some(ov) => unknown_fields(v, ov, &p, found),
                    None if is_empty_value(v) => {}
                    None => found.push(p),
                }
            }
        }
        (Value::Array(i), Value::Array(o)) if i.len() == o.len() => {
            for (n, (iv, ov)) in i.iter().zip(o).enumerate() {
                unknown_fields(iv, ov, &format!("{path}[{n}]"), found);
            }
        }
        _ => {}
    }
}

fn is_empty_value(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Object(m) => m.values().all(is_empty_value),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

fn encode_continue(revision: u64, key: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(json!({"rv": revision, "start": key}).to_string())
}

/// The revision of the first page (0: none, read the newest) and the key to start after.
fn decode_continue(token: &str) -> Result<(u64, String), ApiError> {
    let bad = || ApiError::BadRequest(format!("continue key is not valid: {token}"));
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    let start = v
        .get("start")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(bad)?;
    Ok((v.get("rv").and_then(Value::as_u64).unwrap_or(0), start))
}

/// A stored object as the version `def` serves it (see [`Strategy::converts`]).
///
/// [`Strategy::converts`]: super::kinds::Strategy::converts
pub fn served(def: &ResourceDef, mut object: Value) -> Value {
    if def.strategy.converts() {
        def.strategy.served_form(&mut object);
    }
    object
}

/// The autoscaling/v1 Scale view of a scalable object.
pub fn scale_of(def: &ResourceDef, object: &Value) -> Value {
    let (spec_path, status_path) = def.strategy.scale_replicas_paths();
    let m = object.get("metadata").cloned().unwrap_or_default();
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": m.get("name"), "namespace": m.get("namespace"), "uid": m.get("uid"),
            "resourceVersion": m.get("resourceVersion"), "creationTimestamp": m.get("creationTimestamp"),
        },
        "spec": {"replicas": object.pointer(spec_path).cloned().unwrap_or(json!(def.strategy.scale_default_replicas()))},
        "status": {
            "replicas": object.pointer(status_path).cloned().unwrap_or(json!(0)),
            "selector": def.strategy.scale_selector(object),
        },
    })
}

/// An object's `spec.selector` as a selector string (`app=web,tier in (a,b)`), or empty.
pub fn spec_selector_string(object: &Value) -> String {
    let Some(s) = object.pointer("/spec/selector") else {
        return String::new();
    };
    let sel = LabelSelector::from_object(s)
        .ok()
        .filter(|_| s.get("matchLabels").is_some() || s.get("matchExpressions").is_some());
    match sel {
        Some(sel) => selector_to_string(&sel),
        // ReplicationController selectors are plain maps.
        None => s
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(k, v)| Some(format!("{k}={}", v.as_str()?)))
            .collect::<Vec<_>>()
            .join(","),
    }
}

/// Sets the value at a JSON pointer, creating the objects on the way.
pub(crate) fn set_pointer(object: &mut Value, pointer: &str, value: Value) {
    let mut at = object;
    for token in pointer.split('/').skip(1) {
        let token = token.replace("~1", "/").replace("~0", "~");
        if !at.is_object() {
            *at = json!({});
        }
        at = at
            .as_object_mut()
            .expect("just made an object")
            .entry(token)
            .or_insert(Value::Null);
    }
    *at = value;
}

fn selector_to_string(sel: &LabelSelector) -> String {
    use skiff_k8s::labels::Requirement::*;
    sel.0
        .iter()
        .map(|r| match r {
            In(k, v) if v.len() == 1 => format!("{k}={}", v.iter().next().expect("one value")),
            In(k, v) => format!(
                "{k} in ({})",
                v.iter().cloned().collect::<Vec<_>>().join(",")
            ),
            NotIn(k, v) => format!(
                "{k} notin ({})",
                v.iter().cloned().collect::<Vec<_>>().join(",")
            ),
            Exists(k) => k.clone(),
            DoesNotExist(k) => format!("!{k}"),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Random suffix for generateName (and the token volume's name), from Kubernetes' alphabet
/// (no vowels, no confusables).
pub(crate) fn random_suffix() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..5)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

impl ApiState {
    /// Holds the kind's write lock, if it has one (Services: see `service_alloc`).
    async fn write_lock(&self, def: &ResourceDef) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        match def.strategy.write_lock(self) {
            Some(lock) => Some(lock.await),
            None => None,
        }
    }

    /// Rebuilds the ClusterIP and NodePort allocation from the stored Services (at start).
    pub async fn restore_service_allocations(&self) -> Result<(), ApiError> {
        let def = self
            .registry
            .find("", "v1", "services")
            .expect("services are served")
            .clone();
        for svc in self
            .list(&def, None, &ListOptions::default())
            .await?
            .values()?
        {
            let key = def.key(
                meta_str(&svc, "namespace"),
                meta_str(&svc, "name").unwrap_or_default(),
            );
            self.services.restore(&key, &svc);
        }
        Ok(())
    }

    fn key(&self, def: &ResourceDef, namespace: Option<&str>, name: &str) -> String {
        def.key(namespace, name)
    }

    /// Checks apiVersion/kind against the path, filling them in when absent.
    pub(crate) fn check_type_meta(
        &self,
        def: &ResourceDef,
        object: &mut Value,
        expect_kind: &str,
        expect_version: &str,
    ) -> Result<(), ApiError> {
        let Some(map) = object.as_object_mut() else {
            return Err(ApiError::BadRequest(
                "the request body must be a JSON or YAML object".into(),
            ));
        };
        let mut causes = Vec::new();
        match map.get("apiVersion").and_then(Value::as_str) {
            None | Some("") => {
                map.insert("apiVersion".into(), json!(expect_version));
            }
            Some(v) if v != expect_version => causes.push(FieldError::invalid(
                "apiVersion",
                v,
                format!(
                    "must be {expect_version} for the resource {}",
                    def.group_resource()
                ),
            )),
            Some(_) => {}
        }
        match map.get("kind").and_then(Value::as_str) {
            None | Some("") => {
                map.insert("kind".into(), json!(expect_kind));
            }
            Some(k) if k != expect_kind => causes.push(FieldError::invalid(
                "kind",
                k,
                format!(
                    "must be {expect_kind} for the resource {}",
                    def.group_resource()
                ),
            )),
            Some(_) => {}
        }
        if causes.is_empty() {
            Ok(())
        } else {
            let name = meta_str(object, "name").unwrap_or_default().to_owned();
            Err(ApiError::Invalid {
                kind: expect_kind.into(),
                name,
                causes,
            })
        }
    }

    /// Decodes through the k8s-openapi type; reports or rejects unknown fields.
    pub(crate) fn decode(
        &self,
        def: &ResourceDef,
        mut input: Value,
        opts: &WriteOptions,
    ) -> Result<(Value, Vec<String>), ApiError> {
        def.strategy.before_decode(&mut input);
        let output = (def.roundtrip)(input.clone()).map_err(|e| {
            ApiError::BadRequest(format!(
                "{} in version {:?} cannot be handled as a {}: {e}",
                def.kind, def.version, def.kind
            ))
        })?;
        let mut unknown = Vec::new();
        if opts.field_validation != FieldValidation::Ignore {
            unknown_fields(&input, &output, "", &mut unknown);
        }
        match (opts.field_validation, unknown.is_empty()) {
            (_, true) | (FieldValidation::Ignore, _) => Ok((output, Vec::new())),
            (FieldValidation::Strict, false) => {
                let list: Vec<String> = unknown
                    .iter()
                    .map(|f| format!("unknown field {f:?}"))
                    .collect();
                Err(ApiError::BadRequest(format!(
                    "strict decoding error: {}",
                    list.join(", ")
                )))
            }
            (FieldValidation::Warn, false) => Ok((
                output,
                unknown
                    .iter()
                    .map(|f| format!("unknown field {f:?}"))
                    .collect(),
            )),
        }
    }

    fn invalid(def: &ResourceDef, object: &Value, causes: Vec<FieldError>) -> ApiError {
        ApiError::Invalid {
            kind: def.kind.clone(),
            name: meta_str(object, "name").unwrap_or_default().into(),
            causes,
        }
    }

    /// Reads one object.
    pub async fn get(
        &self,
        def: &ResourceDef,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Value, ApiError> {
        self.store
            .get(&self.key(def, namespace, name))
            .await
            .map_err(|e| ApiError::from_store(e, &def.group_resource(), name))?
            .ok_or_else(|| ApiError::NotFound {
                kind: def.group_resource(),
                name: name.into(),
            })
    }

    /// Lists objects, filtered by selectors, paged by limit/continue. Every page of a paged
    /// list reads at the first page's revision, as Kubernetes' etcd store does.
    pub async fn list(
        &self,
        def: &ResourceDef,
        namespace: Option<&str>,
        opts: &ListOptions,
    ) -> Result<ListPage, ApiError> {
        let prefix = def.namespace_prefix(namespace);
        let continued = opts
            .continue_token
            .as_deref()
            .map(decode_continue)
            .transpose()?;
        let filter = Filter {
            labels: &opts.labels,
            fields: &opts.fields,
        };
        let mut items = Vec::new();
        let (mut at, mut after) = match continued {
            Some((rv, start)) => ((rv > 0).then_some(rv), Some(start)),
            None => (None, None),
        };
        // With selectors a store page may hold fewer matches than asked; read on until full.
        loop {
            let request = ListRequest {
                start_after: after.clone(),
                limit: opts.limit,
                revision: at,
            };
            let page = self
                .store
                .list(&prefix, request)
                .await
                .map_err(|e| match (e, &after) {
                    // The snapshot of the first page is gone: offer the rest at the newest
                    // revision, as Kubernetes does with its "inconsistent continue" token.
                    (StoreError::Gone { .. }, Some(start)) if at.is_some() => {
                        ApiError::ContinueExpired(encode_continue(0, start))
                    }
                    (e, _) => ApiError::from_store(e, &def.group_resource(), ""),
                })?;
            at = Some(page.revision);
            let revision = page.revision;
            for item in page.items {
                if filter.matches_raw(&item, || {
                    serde_json::from_slice(&item)
                        .ok()
                        .map(std::borrow::Cow::Owned)
                }) {
                    items.push(item);
                }
            }
            let full = opts.limit.is_some_and(|l| items.len() >= l);
            match page.continue_after {
                Some(last) if !full => after = Some(last),
                next => {
                    let continue_token = next.map(|k| encode_continue(revision, &k));
                    return Ok(ListPage {
                        items,
                        revision,
                        continue_token,
                    });
                }
            }
        }
    }

    fn namespace_for_write(
        &self,
        def: &ResourceDef,
        path_namespace: Option<&str>,
        object: &mut Value,
    ) -> Result<Option<String>, ApiError> {
        if !def.namespaced {
            meta(object).remove("namespace");
            return Ok(None);
        }
        let body_ns = meta_str(object, "namespace")
            .filter(|s| !s.is_empty())
            .map(str::to_owned);
        let ns = match (path_namespace, body_ns) {
            (Some(p), Some(b)) if p != b => {
                return Err(ApiError::BadRequest(
                    "the namespace of the provided object does not match the namespace sent on the request".into(),
                ))
            }
            (Some(p), _) => p.to_owned(),
            (None, Some(b)) => b,
            (None, None) => "default".to_owned(),
        };
        meta(object).insert("namespace".into(), json!(ns));
        Ok(Some(ns))
    }

    /// Creates an object.
    pub async fn create(
        &self,
        def: &ResourceDef,
        path_namespace: Option<&str>,
        body: Value,
        opts: &WriteOptions,
    ) -> Result<Written, ApiError> {
        let _lock = self.write_lock(def).await;
        self.create_unlocked(def, path_namespace, body, opts).await
    }

    async fn create_unlocked(
        &self,
        def: &ResourceDef,
        path_namespace: Option<&str>,
        body: Value,
        opts: &WriteOptions,
    ) -> Result<Written, ApiError> {
        let mut object = body;
        self.check_type_meta(def, &mut object, &def.kind, &def.api_version())?;
        let namespace = self.namespace_for_write(def, path_namespace, &mut object)?;
        if meta_str(&object, "name").is_none_or(str::is_empty) {
            if let Some(prefix) = meta_str(&object, "generateName").filter(|s| !s.is_empty()) {
                let name = format!("{prefix}{}", random_suffix());
                meta(&mut object).insert("name".into(), json!(name));
            }
        }
        let (mut object, warnings) = self.decode(def, object, opts)?;
        let m = meta(&mut object);
        for server_field in [
            "resourceVersion",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "selfLink",
        ] {
            m.remove(server_field);
        }
        m.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
        m.insert("creationTimestamp".into(), json!(time::now()));
        if object.get("spec").is_some() || def.strategy.always_has_generation() {
            meta(&mut object).insert("generation".into(), json!(1));
        }
        let strategy = def.strategy.as_ref();
        if def.subresources.status {
            strategy.prepare_for_create(&mut object);
            // Kubernetes' types hold the status as a struct, which JSON never omits: a new
            // Deployment comes back with `"status": {}`, and clients (kr8s's `ready()`) read it.
            // See `Strategy::initial_status`.
            if let (Some(m), Some(status)) = (object.as_object_mut(), strategy.initial_status()) {
                m.entry("status").or_insert(status);
            }
        }
        strategy.default(&mut object);
        track_write(def, None, &mut object, Subresource::Main, opts)?;
        // NamespaceLifecycle comes first among Kubernetes' admission plugins.
        if let Some(ns) = &namespace {
            self.check_namespace_open(ns).await?;
        }
        strategy.admit(self, &mut object).await?;
        node_restriction::admit(
            current_user().as_deref(),
            &node_restriction::Write {
                group: &def.group,
                resource: &def.plural,
                subresource: Subresource::Main,
                operation: Operation::Create,
                old: None,
                new: Some(&object),
            },
        )?;
        let causes = validate_object(strategy, &object);
        if !causes.is_empty() {
            return Err(Self::invalid(def, &object, causes));
        }
        // Validating admission comes after validation, as in Kubernetes.
        let mut warnings = warnings;
        warnings.extend(pod_security::admit(self, def, Subresource::Main, None, &object).await?);
        let name = meta_str(&object, "name").unwrap_or_default().to_owned();
        let key = self.key(def, namespace.as_deref(), &name);
        strategy.before_create(self, def, &key, &mut object).await?;
        strategy.storage_form(&mut object);
        if opts.dry_run {
            strategy.after_write(self, &key).await;
            return Ok(Written { object, warnings });
        }
        let written = self.store.create(&key, object).await;
        strategy.after_write(self, &key).await;
        let object = written.map_err(|e| ApiError::from_store(e, &def.group_resource(), &name))?;
        Ok(Written { object, warnings })
    }

    async fn check_namespace_open(&self, namespace: &str) -> Result<(), ApiError> {
        let ns = self
            .store
            .get(&keys::NAMESPACES.key(None, namespace))
            .await
            .map_err(|e| ApiError::from_store(e, "namespaces", namespace))?
            .ok_or_else(|| ApiError::NotFound {
                kind: "namespaces".into(),
                name: namespace.into(),
            })?;
        if ns.pointer("/metadata/deletionTimestamp").is_some() {
            return Err(ApiError::Forbidden(format!(
                "unable to create new content in namespace {namespace} because it is being terminated"
            )));
        }
        Ok(())
    }

    /// Builds the object to store for a write of `candidate` over `old` through `sub`.
    fn prepare_update(
        &self,
        def: &ResourceDef,
        old: &Value,
        candidate: Value,
        sub: Subresource,
        opts: &WriteOptions,
    ) -> Result<(Value, Vec<String>), ApiError> {
        node_restriction::admit(
            current_user().as_deref(),
            &node_restriction::Write {
                group: &def.group,
                resource: &def.plural,
                subresource: sub,
                operation: Operation::Update,
                old: Some(old),
                new: Some(&candidate),
            },
        )?;
        let (mut new, warnings) = match sub {
            // Bindings are POSTed and handled by `bind_pod`, never written as updates.
            Subresource::Binding | Subresource::Token => return Err(ApiError::MethodNotAllowed),
            Subresource::Scale => {
                let replicas = candidate
                    .pointer("/spec/replicas")
                    .and_then(Value::as_i64)
                    .ok_or_else(|| ApiError::BadRequest("Scale needs spec.replicas".into()))?;
                if replicas < 0 {
                    return Err(ApiError::Invalid {
                        kind: "Scale".into(),
                        name: meta_str(old, "name").unwrap_or_default().into(),
                        causes: vec![FieldError::invalid(
                            "spec.replicas",
                            &replicas.to_string(),
                            "must be greater than or equal to 0",
                        )],
                    });
                }
                let mut new = old.clone();
                set_pointer(
                    &mut new,
                    def.strategy.scale_replicas_paths().0,
                    json!(replicas),
                );
                (new, Vec::new())
            }
            Subresource::Status => {
                let (decoded, warnings) = self.decode(def, candidate, opts)?;
                let mut new = old.clone();
                match decoded.get("status") {
                    Some(status) => new["status"] = status.clone(),
                    None => {
                        new.as_object_mut()
                            .expect("stored objects are maps")
                            .remove("status");
                    }
                }
                // An apply through /status computed the managedFields with its Apply entry
                // (other writes are tracked below, from `old` to `new`).
                if opts.applied {
                    match decoded.pointer("/metadata/managedFields") {
                        Some(managed) => {
                            meta(&mut new).insert("managedFields".into(), managed.clone());
                        }
                        None => {
                            meta(&mut new).remove("managedFields");
                        }
                    }
                }
                (new, warnings)
            }
            Subresource::Approval => {
                let (decoded, warnings) = self.decode(def, candidate, opts)?;
                let mut new = old.clone();
                if !new.get("status").is_some_and(Value::is_object) {
                    new["status"] = json!({});
                }
                let status = new["status"]
                    .as_object_mut()
                    .expect("status was just made an object");
                match decoded.pointer("/status/conditions") {
                    Some(conditions) => {
                        status.insert("conditions".into(), conditions.clone());
                    }
                    None => {
                        status.remove("conditions");
                    }
                }
                (new, warnings)
            }
            Subresource::EphemeralContainers => {
                let (decoded, warnings) = self.decode(def, candidate, opts)?;
                let mut new = old.clone();
                let spec = new
                    .get_mut("spec")
                    .and_then(Value::as_object_mut)
                    .ok_or_else(|| ApiError::BadRequest("the pod has no spec".into()))?;
                match decoded.pointer("/spec/ephemeralContainers") {
                    Some(ephemeral) => {
                        spec.insert("ephemeralContainers".into(), ephemeral.clone());
                    }
                    None => {
                        spec.remove("ephemeralContainers");
                    }
                }
                (new, warnings)
            }
            Subresource::Main => {
                let (mut decoded, warnings) = self.decode(def, candidate, opts)?;
                if def.subresources.status {
                    match old.get("status") {
                        Some(status) => decoded["status"] = status.clone(),
                        None => {
                            decoded
                                .as_object_mut()
                                .expect("decoded objects are maps")
                                .remove("status");
                        }
                    }
                }
                (decoded, warnings)
            }
        };
        // Server-owned metadata cannot be changed by clients.
        let old_meta = old.get("metadata").cloned().unwrap_or_default();
        let m = meta(&mut new);
        for field in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
            "name",
            "namespace",
        ] {
            match old_meta.get(field) {
                Some(v) => {
                    m.insert(field.into(), v.clone());
                }
                None => {
                    m.remove(field);
                }
            }
        }
        let strategy = def.strategy.as_ref();
        strategy.default(&mut new);
        if sub == Subresource::Main {
            let key = def.key(
                meta_str(old, "namespace"),
                meta_str(old, "name").unwrap_or_default(),
            );
            strategy.before_update(self, &key, old, &mut new)?;
        } else {
            strategy.before_subresource_update(self, sub, old, &mut new)?;
        }
        track_write(def, Some(old), &mut new, sub, opts)?;
        if strategy.bumps_generation(old, &new) {
            let generation = old
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(0)
                + 1;
            meta(&mut new).insert("generation".into(), json!(generation));
        }
        let mut causes = validate_object(strategy, &new);
        strategy.validate_update(old, &new, &mut causes);
        if !causes.is_empty() {
            return Err(Self::invalid(def, &new, causes));
        }
        strategy.storage_form(&mut new);
        Ok((new, warnings))
    }

    /// Stores `new` over `old` (expected at `expected`), completing a pending deletion when the
    /// last finalizer is gone. Returns the stored object.
    async fn commit_update(
        &self,
        def: &ResourceDef,
        key: String,
        old: &Value,
        mut new: Value,
        expected: u64,
        dry_run: bool,
    ) -> Result<Value, StoreError> {
        // Unchanged objects are not rewritten: no new resourceVersion, no watch event.
        let old_rv = old.pointer("/metadata/resourceVersion").cloned();
        meta(&mut new).insert("resourceVersion".into(), old_rv.unwrap_or(Value::Null));
        if &new == old || dry_run {
            return Ok(new);
        }
        let deleting = new.pointer("/metadata/deletionTimestamp").is_some();
        let grace = new
            .pointer("/metadata/deletionGracePeriodSeconds")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        if deleting && finalizers_empty(&new) && grace == 0 && !def.strategy.terminates() {
            return self.store.delete(&key, Some(expected)).await;
        }
        self.store.update(&key, Some(expected), new).await
    }

    /// Replaces an object (PUT).
    pub async fn update(
        &self,
        def: &ResourceDef,
        namespace: Option<&str>,
        name: &str,
        body: Value,
        sub: Subresource,
        opts: &WriteOptions,
    ) -> Result<Written, ApiError> {
        let _lock = self.write_lock(def).await;
        let result = self
            .update_unlocked(def, namespace, name, body, sub, opts)
            .await;
        def.strategy
            .after_write(self, &def.key(namespace, name))
            .await;
        result
    }

    async fn update_unlocked(
        &self,
        def: &ResourceDef,
        namespace: Option<&str>,
        name: &str,
        body: Value,
        sub: Subresource,
        opts: &WriteOptions,
    ) -> Result<Written, ApiError> {
        let mut candidate = body;
        let (kind, version) = match sub {
            Subresource::Scale => ("Scale", "autoscaling/v1".to_owned()),
            _ => (def.kind.as_str(), def.api_version()),
        };
        self.check_type_meta(def, &mut candidate, kind, &version)?;
        match meta_str(&candidate, "name") {
            Some(n) if n != name => {
                return Err(ApiError::BadRequest(format!(
                    "the name of the object ({n}) does not match the name on the URL ({name})"
                )))
            }
            _ => {}
        }
        if sub != Subresource::Scale {
            self.namespace_for_write(def, namespace, &mut candidate)?;
        }
        let old = self.get(def, namespace, name).await?;
        let precondition = match meta_str(&candidate, "resourceVersion").filter(|s| !s.is_empty()) {
            Some(rv) => Some(
                rv.parse::<u64>()
                    .map_err(|_| ApiError::BadRequest(format!("invalid resourceVersion {rv:?}")))?,
            ),
            None => None,
        };
        let expected = precondition.unwrap_or_else(|| object_revision(&old));
        if expected != object_revision(&old) {
            return Err(ApiError::from_store(
                StoreError::Conflict {
                    key: String::new(),
                    expected,
                    actual: object_revision(&old),
                },
                &def.group_resource(),
                name,
            ));
        }
        let (new, mut warnings) = self.prepare_update(def, &old, candidate, sub, opts)?;
        warnings.extend(pod_security::admit(self, def, sub, Some(&old), &new).await?);
        let key = self.key(def, namespace, name);
        let object = self
            .commit_update(def, key, &old, new, expected, opts.dry_run)
            .await
            .map_err(|e| ApiError::from_store(e, &def.group_resource(), name))?;
        let object = if sub == Subresource::Scale {
            scale_of(def, &object)
        } else {
            object
        };
        Ok(Written { object, warnings })
    }

    /// Patches an object, retrying on concurrent writes unless the patch pins a resourceVersion.
    #[allow(
        clippy::too_many_arguments,
        reason = "the parts of a PATCH request, as the handler has them"
    )]
    pub async fn patch(
        &self,
        def: &ResourceDef,
        namespace: Option<&str>,
        name: &str,
        kind: PatchKind,
        body: Arc<Value>,
        sub: Subresource,
        opts: &WriteOptions,
    ) -> Result<Written, ApiError> {
        let _lock = self.write_lock(def).await;
        let result = self
            .patch_unlocked(def, namespace, name, kind, body, sub, opts)
            .await;
        def.strategy
            .after_write(self, &def.key(namespace, name))
            .await;
        result
    }

    #[allow(
        clippy::too_many_arguments,
        reason = "the arguments of `patch`, passed through"
    )]
    async fn patch_unlocked(
        &self,
        def: &ResourceDef,
        namespace: Option<&str>,
        name: &str,
        kind: PatchKind,
        body: Arc<Value>,
        sub: Subresource,
        opts: &WriteOptions,
    ) -> Result<Written, ApiError> {
        if kind == PatchKind::Strategic && !def.strategy.strategic_merge() {
            return Err(ApiError::UnsupportedMediaType(
                "application/json-patch+json, application/merge-patch+json".into(),
            ));
        }
        const ATTEMPTS: usize = 8;
        for attempt in 1..=ATTEMPTS {
            let old = self.get(def, namespace, name).await?;
            // The patch was computed against the object as served at this version.
            let view = if sub == Subresource::Scale {
                scale_of(def, &old)
            } else {
                served(def, old.clone())
            };
            let mut patched = view.clone();
            let patch = Arc::clone(&body);
            let cap = super::limits::INLINE_BYTES;
            let size = patch::json_len(&body, cap) + patch::json_len(&view, cap);
            let patched = self
                .off_workers(size, move || {
                    patch::apply(kind, &mut patched, &patch).map(|()| patched)
                })
                .await?;
            let patched = patched.map_err(|e| match e {
                patch::PatchError::Malformed(m) => ApiError::BadRequest(m),
                patch::PatchError::TooLarge(m) => ApiError::TooLarge(m),
                patch::PatchError::Apply(m) => ApiError::Invalid {
                    kind: def.kind.clone(),
                    name: name.into(),
                    causes: vec![FieldError {
                        reason: "FieldValueInvalid",
                        field: String::new(),
                        message: m,
                    }],
                },
            })?;
            let pinned = patched.pointer("/metadata/resourceVersion")
                != view.pointer("/metadata/resourceVersion");
            if pinned {
                return Err(ApiError::from_store(
                    StoreError::Conflict {
                        key: String::new(),
                        expected: object_revision(&patched),
                        actual: object_revision(&old),
                    },
                    &def.group_resource(),
                    name,
                ));
            }
            if meta_str(&patched, "name").is_some_and(|n| n != name) {
                return Err(ApiError::BadRequest(
                    "the name of a patched object cannot change".into(),
                ));
            }
            let (new, mut warnings) = self.prepare_update(def, &old, patched, sub, opts)?;
            warnings.extend(pod_security::admit(self, def, sub, Some(&old), &new).await?);
            let key = self.key(def, namespace, name);
            match self
                .commit_update(def, key, &old, new, object_revision(&old), opts.dry_run)
                .await
            {
                Ok(object) => {
                    let object = if sub == Subresource::Scale {
                        scale_of(def, &object)
                    } else {
                        object
                    };
                    return Ok(Written { object, warnings });
                }
                Err(StoreError::Conflict { .. }) if attempt < ATTEMPTS => continue,
                Err(e) => return Err(ApiError::from_store(e, &def.group_resource(), name)),
            }
        }
        unreachable!("the last attempt returns")
    }

    /// Server-side apply (PATCH with `application/apply-patch+yaml`): merges the configuration
    /// `config` into the object for the manager in `opts.field_manager`, creating the object
    /// when it does not exist unless `create_refusal` (the caller may not create) says why not. The
    /// result goes through the same defaulting, admission and validation as any update.
    #[allow(
        clippy::too_many_arguments,
        reason = "the parts of an apply request, as the handler has them"
    )]
    pub async fn apply(
        &self,
        def: &ResourceDef,
        namespace: Option<&str>,
        name: &str,
        config: Value,
        force: bool,
        create_refusal: Option<ApiError>,
        sub: Subresource,
        opts: &WriteOptions,
    ) -> Result<Written, ApiError> {
        let _lock = self.write_lock(def).await;
        let result = self
            .apply_unlocked(
                def,
                namespace,
                name,
                config,
                force,
                create_refusal,
                sub,
                opts,
            )
            .await;
        def.strategy
            .after_write(self, &def.key(namespace, name))
            .await;
        result
    }

    #[allow(
        clippy::too_many_arguments,
        reason = "the arguments of `apply`, passed through"
    )]
    async fn apply_unlocked(
        &self,
        def: &ResourceDef,
        namespace: Option<&str>,
        name: &str,
        mut config: Value,
        force: bool,
        create_refusal: Option<ApiError>,
        sub: Subresource,
        opts: &WriteOptions,
    ) -> Result<Written, ApiError> {
        let manager = opts
            .field_manager
            .clone()
            .ok_or_else(|| ApiError::Invalid {
                kind: "PatchOptions.meta.k8s.io".into(),
                name: String::new(),
                causes: vec![FieldError {
                    reason: "FieldValueRequired",
                    field: "fieldManager".into(),
                    message: "Required value: is required for apply patch".into(),
                }],
            })?;
        if !matches!(sub, Subresource::Main | Subresource::Status) {
            return Err(ApiError::UnsupportedMediaType(
                "application/json-patch+json, application/merge-patch+json".into(),
            ));
        }
        let Value::Object(map) = &mut config else {
            return Err(ApiError::BadRequest(
                "error decoding apply patch: the configuration must be an object".into(),
            ));
        };
        // An applied configuration names what it is: apiVersion and kind are required.
        for field in ["apiVersion", "kind"] {
            if map
                .get(field)
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                return Err(ApiError::BadRequest(format!(
                    "error decoding apply patch: {field} must be set"
                )));
            }
        }
        let meta = map
            .entry("metadata")
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .ok_or_else(|| ApiError::BadRequest("metadata must be an object".into()))?;
        if meta.get("managedFields").is_some_and(|m| !m.is_null()) {
            return Err(ApiError::BadRequest(
                "metadata.managedFields must be nil".into(),
            ));
        }
        match meta.get("name").and_then(Value::as_str) {
            Some(n) if n != name => {
                return Err(ApiError::BadRequest(format!(
                    "the name of the object ({n}) does not match the name on the URL ({name})"
                )))
            }
            _ => {
                meta.insert("name".into(), json!(name));
            }
        }
        let precondition = match meta.remove("resourceVersion") {
            Some(Value::String(rv)) if !rv.is_empty() => Some(rv),
            _ => None,
        };
        self.namespace_for_write(def, namespace, &mut config)?;
        let mut opts = opts.clone();
        opts.applied = true;
        let now = time::now();
        let writer = apply::managed::Writer {
            manager: &manager,
            api_version: &def.api_version(),
            subresource: subresource_name(sub),
            now: &now,
        };
        let ty = apply_type(def);
        let scope = apply_scope(def, sub);
        let failed = |e: apply::ApplyError| match e {
            apply::ApplyError::Bad(m) => ApiError::BadRequest(m),
            apply::ApplyError::Invalid(causes) => ApiError::Invalid {
                kind: def.kind.clone(),
                name: name.into(),
                causes,
            },
            apply::ApplyError::Conflicts(c) => ApiError::ApplyConflict {
                message: c.message(),
                causes: c.causes(),
            },
        };
        const ATTEMPTS: usize = 8;
        for attempt in 1..=ATTEMPTS {
            let old = match self.get(def, namespace, name).await {
                Ok(old) => old,
                Err(ApiError::NotFound { .. }) if sub == Subresource::Main => {
                    if let Some(refusal) = create_refusal {
                        return Err(refusal);
                    }
                    if precondition.is_some() {
                        return Err(ApiError::NotFound {
                            kind: def.group_resource(),
                            name: name.into(),
                        });
                    }
                    let object =
                        apply::apply(ty, None, &config, scope, writer, force).map_err(failed)?;
                    return self.create_unlocked(def, namespace, object, &opts).await;
                }
                Err(e) => return Err(e),
            };
            if let Some(rv) = &precondition {
                if meta_str(&old, "resourceVersion") != Some(rv.as_str()) {
                    return Err(ApiError::from_store(
                        StoreError::Conflict {
                            key: String::new(),
                            expected: rv.parse().unwrap_or(0),
                            actual: object_revision(&old),
                        },
                        &def.group_resource(),
                        name,
                    ));
                }
            }
            let view = served(def, old.clone());
            let cap = super::limits::INLINE_BYTES;
            let size = patch::json_len(&config, cap) + patch::json_len(&view, cap);
            let (config_ref, view_ref) = (config.clone(), view);
            let manager_owned = manager.clone();
            let api_version = def.api_version();
            let now_owned = now.clone();
            let sub_name = subresource_name(sub);
            let ty_def = def.clone();
            let merged = self
                .off_workers(size, move || {
                    let writer = apply::managed::Writer {
                        manager: &manager_owned,
                        api_version: &api_version,
                        subresource: sub_name,
                        now: &now_owned,
                    };
                    apply::apply(
                        apply_type(&ty_def),
                        Some(&view_ref),
                        &config_ref,
                        scope,
                        writer,
                        force,
                    )
                })
                .await?
                .map_err(failed)?;
            let size = patch::json_len(&merged, patch::MAX_OBJECT_BYTES);
            if size > patch::MAX_OBJECT_BYTES {
                return Err(ApiError::TooLarge(format!(
                    "the applied object would be over {size} bytes, more than the limit of {}",
                    patch::MAX_OBJECT_BYTES
                )));
            }
            let (new, mut warnings) = self.prepare_update(def, &old, merged, sub, &opts)?;
            warnings.extend(pod_security::admit(self, def, sub, Some(&old), &new).await?);
            let key = self.key(def, namespace, name);
            match self
                .commit_update(def, key, &old, new, object_revision(&old), opts.dry_run)
                .await
            {
                Ok(object) => return Ok(Written { object, warnings }),
                Err(StoreError::Conflict { .. }) if attempt < ATTEMPTS => continue,
                Err(e) => return Err(ApiError::from_store(e, &def.group_resource(), name)),
            }
        }
        unreachable!("the last attempt returns")
    }

    /// Deletes an object (or starts its graceful/finalized deletion). Returns the object as
    /// deleted, or as marked for deletion.
    pub async fn delete(
        &self,
        def: &ResourceDef,
        namespace: Option<&str>,
        name: &str,
        opts: &DeleteOptions,
    ) -> Result<Value, ApiError> {
        let _lock = self.write_lock(def).await;
        let result = self.delete_unlocked(def, namespace, name, opts).await;
        def.strategy
            .after_write(self, &def.key(namespace, name))
            .await;
        result
    }

    async fn delete_unlocked(
        &self,
        def: &ResourceDef,
        namespace: Option<&str>,
        name: &str,
        opts: &DeleteOptions,
    ) -> Result<Value, ApiError> {
        const ATTEMPTS: usize = 8;
        for attempt in 1..=ATTEMPTS {
            let current = self.get(def, namespace, name).await?;
            if let Some(uid) = &opts.precondition_uid {
                if meta_str(&current, "uid") != Some(uid.as_str()) {
                    return Err(ApiError::Conflict {
                        kind: def.group_resource(),
                        name: name.into(),
                        detail: format!(
                            "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                            meta_str(&current, "uid").unwrap_or_default()
                        ),
                    });
                }
            }
            if let Some(rv) = &opts.precondition_resource_version {
                if meta_str(&current, "resourceVersion") != Some(rv.as_str()) {
                    return Err(ApiError::Conflict {
                        kind: def.group_resource(),
                        name: name.into(),
                        detail: format!(
                            "Precondition failed: ResourceVersion in precondition: {rv}"
                        ),
                    });
                }
            }
            node_restriction::admit(
                current_user().as_deref(),
                &node_restriction::Write {
                    group: &def.group,
                    resource: &def.plural,
                    subresource: Subresource::Main,
                    operation: Operation::Delete,
                    old: Some(&current),
                    new: None,
                },
            )?;
            let expected = object_revision(&current);
            let key = self.key(def, namespace, name);
            let store = &self.store;
            let mark = |mut object: Value, grace: i64| {
                let at = if grace > 0 {
                    let now = jiff::Timestamp::now();
                    // Validation bounds the grace period; one stored before it existed still
                    // must not panic: past the last time is never, the farthest time there is.
                    time::format(time::add_seconds(now, grace).unwrap_or(jiff::Timestamp::MAX))
                } else {
                    time::now()
                };
                let m = meta(&mut object);
                m.insert("deletionTimestamp".into(), json!(at));
                m.insert("deletionGracePeriodSeconds".into(), json!(grace));
                object
            };
            let already_marked = current.pointer("/metadata/deletionTimestamp").is_some();
            let strategy = def.strategy.as_ref();
            strategy.check_delete(name)?;
            let mut current = current;
            if !already_marked {
                let finalizers = strategy.delete_finalizers();
                if !finalizers.is_empty() {
                    let list = meta(&mut current)
                        .entry("finalizers")
                        .or_insert_with(|| json!([]));
                    if let Some(list) = list.as_array_mut() {
                        for f in finalizers {
                            if !list.iter().any(|x| x == f) {
                                list.push(json!(f));
                            }
                        }
                    }
                }
            }
            let result = if strategy.terminates() {
                // Marked and kept whatever its finalizers: a controller removes it when done.
                if already_marked || opts.dry_run {
                    return Ok(current);
                }
                let mut object = mark(current, 0);
                strategy.terminating(&mut object);
                let written = store.update(&key, Some(expected), object).await;
                if written.is_ok() {
                    strategy.terminated(self, name);
                }
                written
            } else if let Some(finalizer) = propagation_finalizer(opts) {
                // Foreground and Orphan deletion: the garbage collector deletes or orphans the
                // dependents, then removes the finalizer, which completes the deletion.
                if opts.dry_run {
                    return Ok(current);
                }
                let mut object = current.clone();
                let finalizers = meta(&mut object)
                    .entry("finalizers")
                    .or_insert_with(|| json!([]));
                if let Some(list) = finalizers.as_array_mut() {
                    // The other policy's finalizer is dropped: the latest request wins.
                    list.retain(|f| f != "orphan" && f != "foregroundDeletion");
                    list.push(json!(finalizer));
                }
                if object == current {
                    return Ok(current);
                }
                let object = if already_marked {
                    object
                } else {
                    mark(object, 0)
                };
                store.update(&key, Some(expected), object).await
            } else if !finalizers_empty(&current) {
                if already_marked || opts.dry_run {
                    return Ok(current);
                }
                let object = mark(current, 0);
                store.update(&key, Some(expected), object).await
            } else if let Some(grace) = strategy.grace_period(self, &current, opts).await {
                let current_grace = current
                    .pointer("/metadata/deletionGracePeriodSeconds")
                    .and_then(Value::as_i64);
                if opts.dry_run || current_grace.is_some_and(|g| g <= grace) {
                    return Ok(current);
                }
                let object = mark(current, grace);
                store.update(&key, Some(expected), object).await
            } else {
                if opts.dry_run {
                    return Ok(current);
                }
                store.delete(&key, Some(expected)).await
            };
            match result {
                Ok(object) => return Ok(object),
                Err(StoreError::Conflict { .. }) if attempt < ATTEMPTS => continue,
                Err(e) => return Err(ApiError::from_store(e, &def.group_resource(), name)),
            }
        }
        unreachable!("the last attempt returns")
    }

    /// Deletes every object of a collection that matches the selectors.
    pub async fn delete_collection(
        &self,
        def: &ResourceDef,
        namespace: Option<&str>,
        list: &ListOptions,
        opts: &DeleteOptions,
    ) -> Result<Vec<Value>, ApiError> {
        let page = self
            .list(
                def,
                namespace,
                &ListOptions {
                    limit: None,
                    continue_token: None,
                    ..list.clone()
                },
            )
            .await?;
        let mut deleted = Vec::with_capacity(page.items.len());
        for item in page.values()? {
            let name = meta_str(&item, "name").unwrap_or_default().to_owned();
            let ns = meta_str(&item, "namespace").map(str::to_owned);
            match self.delete(def, ns.as_deref(), &name, opts).await {
                Ok(object) => deleted.push(object),
                Err(ApiError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(deleted)
    }

    /// Creates the `kubernetes` Service in `default` (the first address of the service CIDR,
    /// port 443 to the API server's port) if missing, as the real API server does. Its
    /// endpoints are left to whoever knows the address pods reach the server on.
    pub async fn ensure_kubernetes_service(&self, target_port: u16) -> Result<(), ApiError> {
        let def = self
            .registry
            .find("", "v1", "services")
            .expect("services are served")
            .clone();
        let ip = self.services.cidr().nth(1).to_string();
        let svc = json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "kubernetes", "namespace": "default",
                "labels": {"component": "apiserver", "provider": "kubernetes"}},
            "spec": {"type": "ClusterIP", "clusterIP": ip, "sessionAffinity": "None",
                "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": target_port}]}});
        match self
            .create(&def, Some("default"), svc, &WriteOptions::default())
            .await
        {
            Ok(_) | Err(ApiError::AlreadyExists { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Creates the cluster DNS Service, `kube-dns` in `kube-system` at `ip`, if missing (as
    /// kubeadm's DNS add-on does): ports 53/UDP and 53/TCP, no selector (each node's agent
    /// answers; `controllers::cluster_dns` keeps its EndpointSlice), and
    /// `trafficDistribution: PreferSameNode` so a node's lookups stay on the node.
    pub async fn ensure_cluster_dns_service(&self, ip: std::net::Ipv4Addr) -> Result<(), ApiError> {
        let def = self
            .registry
            .find("", "v1", "services")
            .expect("services are served")
            .clone();
        let svc = json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "kube-dns", "namespace": "kube-system",
                "labels": {"k8s-app": "kube-dns", "kubernetes.io/cluster-service": "true",
                    "kubernetes.io/name": "KubeDNS"}},
            "spec": {"type": "ClusterIP", "clusterIP": ip.to_string(),
                "trafficDistribution": "PreferSameNode",
                "ports": [{"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                    {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53}]}});
        match self
            .create(&def, Some("kube-system"), svc, &WriteOptions::default())
            .await
        {
            Ok(_) | Err(ApiError::AlreadyExists { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Creates skiff's IngressClass (`skiff`, the agents' built-in proxy), marked default, if
    /// no class of that name exists, as a k3s server installs its Traefik class. A class the
    /// user changed (or un-defaulted) is left as it is.
    pub async fn ensure_default_ingress_class(&self) -> Result<(), ApiError> {
        let def = self
            .registry
            .find("networking.k8s.io", "v1", "ingressclasses")
            .expect("ingressclasses are served")
            .clone();
        let class = super::kinds::ingress::skiff_class();
        match self
            .create(&def, None, class, &WriteOptions::default())
            .await
        {
            Ok(_) | Err(ApiError::AlreadyExists { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Points the `kubernetes` Service at this API server: an Endpoints and an EndpointSlice
    /// named `kubernetes` in `default` holding `address:port`, as the real API server's
    /// endpoint reconciler keeps them, so pods reach the API through the Service's address.
    /// Rewritten at every start (the address may have changed).
    pub async fn ensure_kubernetes_endpoints(
        &self,
        address: std::net::Ipv4Addr,
        port: u16,
    ) -> Result<(), ApiError> {
        let meta = json!({"name": "kubernetes", "namespace": "default",
            "labels": {"kubernetes.io/service-name": "kubernetes",
                "endpointslice.kubernetes.io/managed-by": "skiff-apiserver"}});
        let objects = [
            (
                "",
                "endpoints",
                json!({"apiVersion": "v1", "kind": "Endpoints",
                    "metadata": {"name": "kubernetes", "namespace": "default"},
                    "subsets": [{"addresses": [{"ip": address.to_string()}],
                        "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}]}),
            ),
            (
                "discovery.k8s.io",
                "endpointslices",
                json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                    "metadata": meta, "addressType": "IPv4",
                    "endpoints": [{"addresses": [address.to_string()],
                        "conditions": {"ready": true, "serving": true, "terminating": false}}],
                    "ports": [{"name": "https", "port": port, "protocol": "TCP"}]}),
            ),
        ];
        for (group, resource, body) in objects {
            let def = self
                .registry
                .find(group, "v1", resource)
                .expect("endpoints and endpointslices are served")
                .clone();
            let opts = WriteOptions::default();
            match self
                .create(&def, Some("default"), body.clone(), &opts)
                .await
            {
                Ok(_) => {}
                Err(ApiError::AlreadyExists { .. }) => {
                    self.update(
                        &def,
                        Some("default"),
                        "kubernetes",
                        body,
                        Subresource::Main,
                        &opts,
                    )
                    .await?;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Creates `default`, `kube-system`, `kube-public` and `kube-node-lease` if missing.
    pub async fn ensure_system_namespaces(&self) -> Result<(), ApiError> {
        let def = self
            .registry
            .find("", "v1", "namespaces")
            .expect("namespaces are served")
            .clone();
        for name in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
            match self.create(&def, None, ns, &WriteOptions::default()).await {
                Ok(_) | Err(ApiError::AlreadyExists { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}
