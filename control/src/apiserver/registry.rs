//! The resources the API serves, keyed by group/version/plural and by group/kind.
//!
//! A [`ResourceDef`] holds what is generic about a resource (names, scope, subresources, typed
//! decoding, OpenAPI schema) and the kind's [`Strategy`] for everything kind-specific. The
//! built-in kinds come from `kinds::builtins()` (one file per kind under `kinds/`); kinds can be
//! registered and unregistered while the server runs (custom resources): handlers read an
//! immutable [`Snapshot`] that a change replaces, so discovery and the OpenAPI documents built
//! from one snapshot stay consistent and are rebuilt after a change.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, RwLock};

use k8s_openapi::{NamespaceResourceScope, Resource, ResourceScope};
use schemars::{JsonSchema, SchemaGenerator};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use super::kinds::Strategy;
use crate::store::keys::Collection;

/// Subresources a kind has besides the object itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Subresources {
    /// `/status`: writes there change only `.status`; writes to the object keep `.status`.
    pub status: bool,
    /// `/scale`: an autoscaling/v1 Scale view of `.spec.replicas`.
    pub scale: bool,
}

/// Decodes a JSON object as the kind's k8s-openapi type and encodes it back: this rejects
/// wrongly typed fields and normalises the object to the schema. For a custom resource it
/// prunes what its schema does not declare (a closure over the schema).
pub type Roundtrip = Arc<dyn Fn(Value) -> Result<Value, serde_json::Error> + Send + Sync>;

/// Adds the kind's schema (and those it refers to) to an OpenAPI document's generator.
pub type SchemaFn = fn(&mut SchemaGenerator);

/// Where a resource's OpenAPI schema comes from.
#[derive(Clone)]
pub enum Schema {
    /// A built-in kind: generated from its k8s-openapi type.
    Typed(SchemaFn),
    /// A custom resource: its definition's `openAPIV3Schema` (an OpenAPI v3 schema object,
    /// `metadata` referring to ObjectMeta).
    Custom(Arc<Value>),
}

/// A served resource.
#[derive(Clone)]
pub struct ResourceDef {
    /// API group, empty for core.
    pub group: String,
    /// API version.
    pub version: String,
    /// Kind, e.g. `Pod`.
    pub kind: String,
    /// URL segment (plural), e.g. `pods`.
    pub plural: String,
    /// Singular name, e.g. `pod`.
    pub singular: String,
    /// Whether objects live in namespaces.
    pub namespaced: bool,
    /// kubectl short names, e.g. `po`.
    pub short_names: Vec<String>,
    /// kubectl categories, e.g. `all`.
    pub categories: Vec<String>,
    /// Subresources.
    pub subresources: Subresources,
    /// Typed decode/encode of the kind.
    pub roundtrip: Roundtrip,
    /// The kind's OpenAPI schema, when it has one.
    pub schema: Option<Schema>,
    /// Everything kind-specific.
    pub strategy: Arc<dyn Strategy>,
    /// The CustomResourceDefinition serving this resource; `None` for a built-in kind.
    pub origin: Option<Origin>,
}

/// Which CustomResourceDefinition, in which state, a custom resource was built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The definition's name (`<plural>.<group>`).
    pub definition: String,
    /// A hash of what the resource was built from (the definition's spec and whether it is
    /// terminating): equal fingerprints serve the same.
    pub fingerprint: u64,
}

impl fmt::Debug for ResourceDef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResourceDef")
            .field("group", &self.group)
            .field("version", &self.version)
            .field("kind", &self.kind)
            .field("plural", &self.plural)
            .field("namespaced", &self.namespaced)
            .field("subresources", &self.subresources)
            .finish_non_exhaustive()
    }
}

fn roundtrip<K: Serialize + DeserializeOwned>(value: Value) -> Result<Value, serde_json::Error> {
    let typed: K = serde_json::from_value(value)?;
    serde_json::to_value(typed)
}

fn schema<K: JsonSchema>(generator: &mut SchemaGenerator) {
    generator.subschema_for::<K>();
}

impl ResourceDef {
    /// A built-in resource described from its k8s-openapi type `K`, served with `strategy`.
    /// Short names, categories and subresources are added with the builder methods.
    pub fn of<K>(strategy: impl Strategy + 'static) -> Self
    where
        K: Resource + Serialize + DeserializeOwned + JsonSchema + 'static,
        K::Scope: ResourceScope + 'static,
    {
        Self {
            group: K::GROUP.into(),
            version: K::VERSION.into(),
            kind: K::KIND.into(),
            plural: K::URL_PATH_SEGMENT.into(),
            singular: K::KIND.to_ascii_lowercase(),
            namespaced: std::any::TypeId::of::<K::Scope>()
                == std::any::TypeId::of::<NamespaceResourceScope>(),
            short_names: Vec::new(),
            categories: Vec::new(),
            subresources: Subresources::default(),
            roundtrip: Arc::new(roundtrip::<K>),
            schema: Some(Schema::Typed(schema::<K>)),
            strategy: Arc::new(strategy),
            origin: None,
        }
    }

    /// With kubectl short names.
    pub fn short_names(mut self, names: &[&str]) -> Self {
        self.short_names = names.iter().map(|&n| n.to_owned()).collect();
        self
    }

    /// In the `all` category (`kubectl get all`).
    pub fn in_all(mut self) -> Self {
        self.categories = vec!["all".into()];
        self
    }

    /// With a `/status` subresource.
    pub fn with_status(mut self) -> Self {
        self.subresources.status = true;
        self
    }

    /// With `/status` and `/scale` subresources.
    pub fn with_scale(mut self) -> Self {
        self.subresources = Subresources {
            status: true,
            scale: true,
        };
        self
    }

    /// `apiVersion` as written in objects: `v1` or `apps/v1`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The group/resource as used in messages, e.g. `pods` or `deployments.apps`.
    pub fn group_resource(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// The store keys of this resource's objects.
    pub fn keys(&self) -> Collection<'_> {
        Collection {
            group: &self.group,
            plural: &self.plural,
            namespaced: self.namespaced,
        }
    }

    /// The store key prefix of all objects of this resource.
    pub fn prefix(&self) -> String {
        self.keys().prefix()
    }

    /// The store key prefix of one namespace's objects (or all, with `None`).
    pub fn namespace_prefix(&self, namespace: Option<&str>) -> String {
        self.keys().namespace_prefix(namespace)
    }

    /// The store key of one object.
    pub fn key(&self, namespace: Option<&str>, name: &str) -> String {
        self.keys().key(namespace, name)
    }
}

/// Why a registration was refused.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The group/version/plural is served already.
    #[error("{0} is already served")]
    PathTaken(String),
    /// The group/version/kind is served already (under another plural).
    #[error("kind {0} is already served")]
    KindTaken(String),
}

/// The served resources at one moment. Handlers work on one snapshot per request; a
/// registration replaces the whole snapshot, so what was built from the old one (the OpenAPI
/// documents) goes with it.
pub struct Snapshot {
    defs: Vec<Arc<ResourceDef>>,
    by_path: HashMap<(String, String, String), usize>,
    generation: u64,
    /// Rendered OpenAPI documents of this snapshot by path (built on first request).
    pub openapi: Mutex<HashMap<String, Arc<Vec<u8>>>>,
}

impl Snapshot {
    fn new(defs: Vec<Arc<ResourceDef>>, generation: u64) -> Self {
        let by_path = defs
            .iter()
            .enumerate()
            .map(|(i, d)| ((d.group.clone(), d.version.clone(), d.plural.clone()), i))
            .collect();
        Self {
            defs,
            by_path,
            generation,
            openapi: Mutex::new(HashMap::new()),
        }
    }

    /// Looks a resource up by its URL parts.
    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<&Arc<ResourceDef>> {
        self.by_path
            .get(&(group.to_owned(), version.to_owned(), plural.to_owned()))
            .map(|&i| &self.defs[i])
    }

    /// All resources, in registration order.
    pub fn all(&self) -> &[Arc<ResourceDef>] {
        &self.defs
    }

    /// Counts changes of the registry; part of the OpenAPI hash clients cache by.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The distinct (group, version) pairs, in registration order (core first).
    pub fn group_versions(&self) -> Vec<(&str, &str)> {
        let mut gvs: Vec<(&str, &str)> = Vec::new();
        for d in &self.defs {
            let gv = (d.group.as_str(), d.version.as_str());
            if !gvs.contains(&gv) {
                gvs.push(gv);
            }
        }
        gvs
    }
}

/// All served resources, changeable at run time.
pub struct Registry {
    current: RwLock<Arc<Snapshot>>,
}

impl Registry {
    /// The built-in resources.
    pub fn new() -> Self {
        Self::with(super::kinds::builtins())
    }

    /// A registry serving `defs`.
    pub fn with(defs: Vec<ResourceDef>) -> Self {
        let defs = defs.into_iter().map(Arc::new).collect();
        Self {
            current: RwLock::new(Arc::new(Snapshot::new(defs, 0))),
        }
    }

    /// The served resources now.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Looks a resource up by its URL parts.
    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<Arc<ResourceDef>> {
        self.snapshot().find(group, version, plural).cloned()
    }

    /// Looks a resource up by group and kind.
    pub fn by_kind(&self, group: &str, kind: &str) -> Option<Arc<ResourceDef>> {
        self.snapshot()
            .all()
            .iter()
            .find(|d| d.group == group && d.kind == kind)
            .cloned()
    }

    /// All resources.
    pub fn all(&self) -> Vec<Arc<ResourceDef>> {
        self.snapshot().all().to_vec()
    }

    /// Counts changes of the registry.
    pub fn generation(&self) -> u64 {
        self.snapshot().generation()
    }

    /// Applies `f` to a copy of the served list and publishes it as the next snapshot when
    /// `f` reports a change.
    fn change(
        &self,
        f: impl FnOnce(&mut Vec<Arc<ResourceDef>>) -> Result<bool, RegistryError>,
    ) -> Result<bool, RegistryError> {
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        let mut defs = current.defs.clone();
        let changed = f(&mut defs)?;
        if changed {
            *current = Arc::new(Snapshot::new(defs, current.generation + 1));
        }
        Ok(changed)
    }

    /// Starts serving `def`.
    pub fn register(&self, def: ResourceDef) -> Result<(), RegistryError> {
        self.change(|defs| {
            let same_path = |d: &&Arc<ResourceDef>| {
                d.group == def.group && d.version == def.version && d.plural == def.plural
            };
            if defs.iter().any(|d| same_path(&d)) {
                return Err(RegistryError::PathTaken(def.group_resource()));
            }
            if defs
                .iter()
                .any(|d| d.group == def.group && d.version == def.version && d.kind == def.kind)
            {
                return Err(RegistryError::KindTaken(format!(
                    "{}/{}",
                    def.api_version(),
                    def.kind
                )));
            }
            defs.push(Arc::new(def));
            Ok(true)
        })
        .map(drop)
    }

    /// Serves exactly `defs` as the custom resources (those with an `origin`), keeping the
    /// built-in kinds. An unchanged set (same paths and origins) publishes no new snapshot.
    /// Returns whether anything changed.
    pub fn sync_custom(&self, defs: Vec<ResourceDef>) -> bool {
        self.change(|current| {
            let old: Vec<&Arc<ResourceDef>> =
                current.iter().filter(|d| d.origin.is_some()).collect();
            let unchanged = old.len() == defs.len()
                && defs.iter().all(|d| {
                    old.iter().any(|o| {
                        o.group == d.group
                            && o.version == d.version
                            && o.plural == d.plural
                            && o.origin == d.origin
                    })
                });
            if unchanged {
                return Ok(false);
            }
            current.retain(|d| d.origin.is_none());
            current.extend(defs.into_iter().map(Arc::new));
            Ok(true)
        })
        .unwrap_or(false)
    }

    /// Stops serving a resource; returns whether it was served. Stored objects stay.
    pub fn unregister(&self, group: &str, version: &str, plural: &str) -> bool {
        self.change(|defs| {
            let before = defs.len();
            defs.retain(|d| !(d.group == group && d.version == version && d.plural == plural));
            Ok(defs.len() != before)
        })
        .unwrap_or(false)
    }
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_come_from_k8s_openapi() {
        let r = Registry::new();
        let pods = r.find("", "v1", "pods").unwrap();
        assert_eq!(pods.kind, "Pod");
        assert!(pods.namespaced);
        assert!(!r.find("", "v1", "nodes").unwrap().namespaced);
        let deploy = r.find("apps", "v1", "deployments").unwrap();
        assert_eq!(deploy.api_version(), "apps/v1");
        assert_eq!(
            deploy.key(Some("default"), "web"),
            "apps/deployments/default/web"
        );
        assert_eq!(
            r.find("", "v1", "namespaces")
                .unwrap()
                .key(Some("x"), "default"),
            "core/namespaces//default"
        );
    }

    #[test]
    fn roundtrip_rejects_wrong_types() {
        let r = Registry::new();
        let pods = r.find("", "v1", "pods").unwrap();
        let bad = serde_json::json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}, "spec": {"containers": "nope"}});
        assert!((pods.roundtrip)(bad).is_err());
    }

    #[test]
    fn lookups_are_by_group_and_kind() {
        let r = Registry::new();
        assert_eq!(r.by_kind("batch", "Job").unwrap().plural, "jobs");
        assert!(r.by_kind("example.com", "Job").is_none());
        assert!(r.by_kind("", "Job").is_none());
    }

    #[test]
    fn registration_changes_the_snapshot_and_generation() {
        let r = Registry::new();
        let before = r.snapshot();
        let mut widget = (*r.find("", "v1", "configmaps").unwrap()).clone();
        assert!(matches!(
            r.register(widget.clone()),
            Err(RegistryError::PathTaken(_))
        ));
        widget.group = "example.com".into();
        widget.plural = "widgets".into();
        widget.kind = "Widget".into();
        r.register(widget).unwrap();
        assert_eq!(r.generation(), before.generation() + 1);
        assert!(before.find("example.com", "v1", "widgets").is_none());
        assert!(r.find("example.com", "v1", "widgets").is_some());
        assert!(r.unregister("example.com", "v1", "widgets"));
        assert!(!r.unregister("example.com", "v1", "widgets"));
        assert!(r.find("example.com", "v1", "widgets").is_none());
        assert_eq!(r.generation(), before.generation() + 2);
    }
}
