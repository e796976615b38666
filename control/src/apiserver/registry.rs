//! The resources the API serves, described once from their k8s-openapi types.
//!
//! Everything else (routing, storage keys, discovery, OpenAPI, validation by typed decoding) is
//! generic over [`ResourceDef`], so adding a kind is one line in [`Registry::new`].

use std::collections::HashMap;

use k8s_openapi::api::{apps, batch, coordination, core, discovery};
use k8s_openapi::{NamespaceResourceScope, Resource, ResourceScope};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

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
/// wrongly typed fields and normalises the object to the schema.
pub type Roundtrip = fn(Value) -> Result<Value, serde_json::Error>;

/// A served resource.
#[derive(Debug, Clone)]
pub struct ResourceDef {
    /// API group, empty for core.
    pub group: &'static str,
    /// API version.
    pub version: &'static str,
    /// Kind, e.g. `Pod`.
    pub kind: &'static str,
    /// URL segment (plural), e.g. `pods`.
    pub plural: &'static str,
    /// Singular name, e.g. `pod`.
    pub singular: String,
    /// Whether objects live in namespaces.
    pub namespaced: bool,
    /// kubectl short names, e.g. `po`.
    pub short_names: &'static [&'static str],
    /// kubectl categories, e.g. `all`.
    pub categories: &'static [&'static str],
    /// Subresources.
    pub subresources: Subresources,
    /// Typed decode/encode of the kind.
    pub roundtrip: Roundtrip,
    /// Field selector paths beyond metadata.name and metadata.namespace.
    pub field_selectors: &'static [&'static str],
}

impl ResourceDef {
    /// `apiVersion` as written in objects: `v1` or `apps/v1`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The group/resource as used in messages, e.g. `pods` or `deployments.apps`.
    pub fn group_resource(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_owned()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// The store keys of this resource's objects.
    pub fn keys(&self) -> Collection<'static> {
        Collection {
            group: self.group,
            plural: self.plural,
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

fn roundtrip<K: Serialize + DeserializeOwned>(value: Value) -> Result<Value, serde_json::Error> {
    let typed: K = serde_json::from_value(value)?;
    serde_json::to_value(typed)
}

fn def<K>(
    short_names: &'static [&'static str],
    categories: &'static [&'static str],
    subresources: Subresources,
    field_selectors: &'static [&'static str],
) -> ResourceDef
where
    K: Resource + Serialize + DeserializeOwned,
    K::Scope: ResourceScope + 'static,
{
    ResourceDef {
        group: K::GROUP,
        version: K::VERSION,
        kind: K::KIND,
        plural: K::URL_PATH_SEGMENT,
        singular: K::KIND.to_ascii_lowercase(),
        namespaced: std::any::TypeId::of::<K::Scope>()
            == std::any::TypeId::of::<NamespaceResourceScope>(),
        short_names,
        categories,
        subresources,
        roundtrip: roundtrip::<K>,
        field_selectors,
    }
}

const NONE: Subresources = Subresources {
    status: false,
    scale: false,
};
const STATUS: Subresources = Subresources {
    status: true,
    scale: false,
};
const SCALE: Subresources = Subresources {
    status: true,
    scale: true,
};
const ALL: &[&str] = &["all"];

/// All served resources, with lookups by group/version/plural.
pub struct Registry {
    defs: Vec<ResourceDef>,
    by_path: HashMap<(String, String, String), usize>,
}

impl Registry {
    /// The resources skiff serves.
    pub fn new() -> Self {
        let defs = vec![
            def::<core::v1::Namespace>(&["ns"], &[], STATUS, &["status.phase"]),
            def::<core::v1::Pod>(
                &["po"],
                ALL,
                STATUS,
                &[
                    "spec.nodeName",
                    "status.phase",
                    "spec.restartPolicy",
                    "spec.schedulerName",
                    "spec.serviceAccountName",
                    "status.podIP",
                ],
            ),
            def::<core::v1::Service>(&["svc"], ALL, STATUS, &["spec.clusterIP", "spec.type"]),
            def::<core::v1::Endpoints>(&["ep"], &[], NONE, &[]),
            def::<core::v1::Node>(&["no"], &[], STATUS, &["spec.unschedulable"]),
            def::<core::v1::Event>(
                &["ev"],
                &[],
                NONE,
                &[
                    "involvedObject.kind",
                    "involvedObject.namespace",
                    "involvedObject.name",
                    "involvedObject.uid",
                    "involvedObject.apiVersion",
                    "involvedObject.resourceVersion",
                    "involvedObject.fieldPath",
                    "reason",
                    "reportingComponent",
                    "source",
                    "type",
                ],
            ),
            def::<core::v1::ConfigMap>(&["cm"], &[], NONE, &[]),
            def::<core::v1::Secret>(&[], &[], NONE, &["type"]),
            def::<core::v1::ServiceAccount>(&["sa"], &[], NONE, &[]),
            def::<core::v1::ReplicationController>(&["rc"], ALL, SCALE, &["status.replicas"]),
            def::<apps::v1::Deployment>(&["deploy"], ALL, SCALE, &[]),
            def::<apps::v1::ReplicaSet>(&["rs"], ALL, SCALE, &["status.replicas"]),
            def::<apps::v1::DaemonSet>(&["ds"], ALL, STATUS, &[]),
            def::<apps::v1::StatefulSet>(&["sts"], ALL, SCALE, &[]),
            def::<apps::v1::ControllerRevision>(&[], &[], NONE, &[]),
            def::<batch::v1::Job>(&[], ALL, STATUS, &["status.successful"]),
            def::<batch::v1::CronJob>(&["cj"], ALL, STATUS, &[]),
            def::<discovery::v1::EndpointSlice>(&[], &[], NONE, &[]),
            def::<coordination::v1::Lease>(&[], &[], NONE, &[]),
        ];
        let by_path = defs
            .iter()
            .enumerate()
            .map(|(i, d)| {
                (
                    (
                        d.group.to_owned(),
                        d.version.to_owned(),
                        d.plural.to_owned(),
                    ),
                    i,
                )
            })
            .collect();
        Self { defs, by_path }
    }

    /// Looks a resource up by its URL parts.
    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<&ResourceDef> {
        self.by_path
            .get(&(group.to_owned(), version.to_owned(), plural.to_owned()))
            .map(|&i| &self.defs[i])
    }

    /// Looks a resource up by kind.
    pub fn by_kind(&self, group: &str, kind: &str) -> Option<&ResourceDef> {
        self.defs
            .iter()
            .find(|d| d.group == group && d.kind == kind)
    }

    /// All resources.
    pub fn all(&self) -> &[ResourceDef] {
        &self.defs
    }

    /// The distinct (group, version) pairs, core first.
    pub fn group_versions(&self) -> Vec<(&'static str, &'static str)> {
        let mut gvs: Vec<(&str, &str)> = Vec::new();
        for d in &self.defs {
            if !gvs.contains(&(d.group, d.version)) {
                gvs.push((d.group, d.version));
            }
        }
        gvs
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
}
