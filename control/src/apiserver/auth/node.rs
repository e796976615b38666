//! The Node authorizer (kube-apiserver's `--authorization-mode=Node`): what a node's own
//! credential (`system:node:<name>` in `system:nodes`) may read and write.
//!
//! A node gets the fixed rules Kubernetes gives every kubelet ([`NODE_RULES`], plus what
//! skiff's agent needs as the node's service proxy), except for the objects that carry other
//! people's data, which it may read only when a pod bound to it uses them, as Kubernetes' node
//! graph decides:
//!
//! - Secrets, ConfigMaps and PersistentVolumeClaims: `get` (or a list/watch of one name) of
//!   one referenced by a pod on the node (volumes, projected sources, env, envFrom, image pull
//!   secrets);
//! - `serviceaccounts/token`: `create` for an account a pod on the node runs as (NodeRestriction
//!   then requires the token to be bound to that pod);
//! - Leases in `kube-node-lease`: only its own.
//!
//! Every node runs an Ingress proxy, so a Secret named in the `spec.tls` of an Ingress in its
//! namespace is readable too (by name, as for pods): the TLS certificates the proxy
//! terminates with, and no other Secret, where ingress controllers are usually allowed to
//! read every Secret of the cluster.
//!
//! Skiff answers the graph question at request time from the store (the pods of the object's
//! namespace), where Kubernetes keeps a graph in memory: a node reads these objects only when
//! it starts a pod or refreshes its volumes, so the scan is rare. Writes a node may make only
//! to its own objects are checked by NodeRestriction admission
//! ([`crate::apiserver::admission::node_restriction`]).

use std::sync::LazyLock;

use k8s_openapi::api::rbac::v1::PolicyRule;
use serde_json::Value;

use super::authorizer::Decision;
use super::rbac::rules::allows;
use super::request_info::RequestInfo;
use super::user::UserInfo;
use crate::store::{keys, ListRequest, SharedStore};

/// The group of every node credential.
pub const NODES_GROUP: &str = "system:nodes";
/// The user name prefix of a node credential.
pub const NODE_USER_PREFIX: &str = "system:node:";
/// The namespace of node heartbeat Leases.
const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";

/// The node a user is, if it is a node's credential (Kubernetes' `NodeIdentity`: the name
/// prefix and the group both).
pub fn node_name(user: &UserInfo) -> Option<&str> {
    if !user.in_group(NODES_GROUP) {
        return None;
    }
    user.name
        .strip_prefix(NODE_USER_PREFIX)
        .filter(|n| !n.is_empty())
}

fn rule(verbs: &[&str], groups: &[&str], resources: &[&str]) -> PolicyRule {
    let strings = |v: &[&str]| Some(v.iter().map(|s| (*s).to_owned()).collect());
    PolicyRule {
        verbs: verbs.iter().map(|s| (*s).to_owned()).collect(),
        api_groups: strings(groups),
        resources: strings(resources),
        ..PolicyRule::default()
    }
}

/// Kubernetes' node rules (`bootstrappolicy.NodeRules`), for the resources skiff serves, and
/// the list/watch of EndpointSlices that skiff's agent needs as the node's service proxy (what
/// kube-proxy gets from `system:node-proxier`).
pub static NODE_RULES: LazyLock<Vec<PolicyRule>> = LazyLock::new(|| {
    const READ: &[&str] = &["get", "list", "watch"];
    vec![
        rule(&["create"], &["authentication.k8s.io"], &["tokenreviews"]),
        rule(
            &["create"],
            &["authorization.k8s.io"],
            &["subjectaccessreviews", "localsubjectaccessreviews"],
        ),
        rule(READ, &[""], &["services"]),
        rule(
            &[
                "create", "get", "list", "watch", "delete", "patch", "update",
            ],
            &[""],
            &["nodes"],
        ),
        rule(&["patch", "update"], &[""], &["nodes/status"]),
        rule(
            &["create", "patch", "update"],
            &["", "events.k8s.io"],
            &["events"],
        ),
        rule(READ, &[""], &["pods"]),
        rule(&["create", "delete"], &[""], &["pods"]),
        rule(&["update", "patch"], &[""], &["pods/status"]),
        rule(&["create"], &[""], &["pods/eviction"]),
        rule(&["get"], &[""], &["persistentvolumes"]),
        rule(&["get"], &[""], &["endpoints"]),
        rule(
            &["create", "get", "list", "watch"],
            &["certificates.k8s.io"],
            &["certificatesigningrequests"],
        ),
        rule(
            &["create"],
            &["certificates.k8s.io"],
            &["certificatesigningrequests/selfnodeclient"],
        ),
        rule(READ, &["node.k8s.io"], &["runtimeclasses"]),
        rule(
            &["list", "watch"],
            &["discovery.k8s.io"],
            &["endpointslices"],
        ),
        // The agent's Ingress proxy (`agent/src/ingress/`): the Ingresses and classes it
        // routes from, and Events about an Ingress it cannot serve.
        rule(
            &["list", "watch"],
            &["networking.k8s.io"],
            &["ingresses", "ingressclasses"],
        ),
    ]
});

/// What a node may reach through a pod bound to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Through {
    Secret,
    ConfigMap,
    Claim,
    ServiceAccount,
}

/// The Node authorizer.
pub struct NodeAuthorizer {
    store: SharedStore,
}

impl std::fmt::Debug for NodeAuthorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeAuthorizer").finish_non_exhaustive()
    }
}

impl NodeAuthorizer {
    /// An authorizer reading pods from `store`.
    pub fn new(store: SharedStore) -> Self {
        Self { store }
    }

    /// Allows, or has no opinion (a denial with a reason, which the chain passes on): requests
    /// of users that are not nodes get no opinion at all.
    pub async fn authorize(&self, user: &UserInfo, request: &RequestInfo) -> Decision {
        let Some(node) = node_name(user) else {
            return Decision::deny("");
        };
        if request.is_resource_request {
            let through = match (request.api_group.as_str(), request.resource.as_str()) {
                ("", "secrets") => Some(Through::Secret),
                ("", "configmaps") => Some(Through::ConfigMap),
                ("", "persistentvolumeclaims") => Some(Through::Claim),
                ("", "serviceaccounts") => Some(Through::ServiceAccount),
                ("coordination.k8s.io", "leases") => return lease(node, request),
                _ => None,
            };
            if let Some(through) = through {
                return self.related(node, through, request).await;
            }
        }
        if NODE_RULES.iter().any(|r| allows(r, request)) {
            return Decision::allow("");
        }
        Decision::deny("")
    }

    async fn related(&self, node: &str, through: Through, request: &RequestInfo) -> Decision {
        if through == Through::ServiceAccount {
            if request.verb != "create" || request.subresource != "token" {
                return Decision::deny("can only create tokens for individual service accounts");
            }
        } else {
            if !matches!(request.verb.as_str(), "get" | "list" | "watch") {
                return Decision::deny("can only read resources of this type");
            }
            if !request.subresource.is_empty() {
                return Decision::deny("cannot read subresource");
            }
        }
        if request.namespace.is_empty() {
            return Decision::deny("can only read namespaced object of this type");
        }
        if request.name.is_empty() {
            return Decision::deny("No Object name found");
        }
        let prefix = keys::PODS.namespace_prefix(Some(&request.namespace));
        let pods = match self.store.list(&prefix, ListRequest::default()).await {
            Ok(list) => list.items,
            Err(e) => return Decision::deny(format!("reading pods: {e}")),
        };
        let uses = pods.iter().any(|bytes| {
            serde_json::from_slice::<Value>(bytes).is_ok_and(|pod| {
                pod.pointer("/spec/nodeName").and_then(Value::as_str) == Some(node)
                    && pod_uses(&pod, through, &request.name)
            })
        });
        let uses = uses
            || (through == Through::Secret
                && self.ingress_uses(&request.namespace, &request.name).await);
        if uses {
            Decision::allow("")
        } else {
            Decision::deny(format!(
                "no relationship found between node '{node}' and this object"
            ))
        }
    }
}

impl NodeAuthorizer {
    /// Whether an Ingress in `namespace` terminates TLS with the Secret `name`.
    async fn ingress_uses(&self, namespace: &str, name: &str) -> bool {
        let prefix = INGRESSES.namespace_prefix(Some(namespace));
        let Ok(list) = self.store.list(&prefix, ListRequest::default()).await else {
            return false;
        };
        list.items.iter().any(|bytes| {
            serde_json::from_slice::<Value>(bytes).is_ok_and(|ingress| {
                ingress
                    .pointer("/spec/tls")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .any(|tls| tls["secretName"].as_str() == Some(name))
            })
        })
    }
}

/// Ingresses (networking.k8s.io, namespaced).
const INGRESSES: keys::Collection<'static> = keys::Collection {
    group: "networking.k8s.io",
    plural: "ingresses",
    namespaced: true,
};

/// A node's own Lease, read or written.
fn lease(node: &str, request: &RequestInfo) -> Decision {
    if !matches!(
        request.verb.as_str(),
        "get" | "create" | "update" | "patch" | "delete"
    ) {
        return Decision::deny("can only get, create, update, patch, or delete a node lease");
    }
    if request.namespace != NODE_LEASE_NAMESPACE {
        return Decision::deny(format!(
            "can only access leases in the {NODE_LEASE_NAMESPACE} system namespace"
        ));
    }
    // A create names its object in the body, checked by NodeRestriction.
    if request.verb != "create" && request.name != node {
        return Decision::deny(
            "can only access node lease with the same name as the requesting node",
        );
    }
    Decision::allow("")
}

/// Whether `pod` refers to the object `name` of the kind `through` names.
fn pod_uses(pod: &Value, through: Through, name: &str) -> bool {
    let spec = &pod["spec"];
    let is = |v: &Value| v.as_str() == Some(name);
    if through == Through::ServiceAccount {
        let account = spec
            .get("serviceAccountName")
            .and_then(Value::as_str)
            .unwrap_or("default");
        return account == name;
    }
    let volumes = spec["volumes"].as_array().into_iter().flatten();
    for volume in volumes {
        let hit = match through {
            Through::Secret => {
                is(&volume["secret"]["secretName"])
                    || projected(volume, "secret").any(|s| is(&s["name"]))
            }
            Through::ConfigMap => {
                is(&volume["configMap"]["name"])
                    || projected(volume, "configMap").any(|s| is(&s["name"]))
            }
            Through::Claim => is(&volume["persistentVolumeClaim"]["claimName"]),
            Through::ServiceAccount => false,
        };
        if hit {
            return true;
        }
    }
    if through == Through::Secret
        && spec["imagePullSecrets"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| is(&s["name"]))
    {
        return true;
    }
    let (key_ref, from_ref) = match through {
        Through::Secret => ("secretKeyRef", "secretRef"),
        Through::ConfigMap => ("configMapKeyRef", "configMapRef"),
        _ => return false,
    };
    ["initContainers", "containers", "ephemeralContainers"]
        .iter()
        .flat_map(|field| spec[*field].as_array().into_iter().flatten())
        .any(|c| {
            c["env"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|e| is(&e["valueFrom"][key_ref]["name"]))
                || c["envFrom"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|e| is(&e[from_ref]["name"]))
        })
}

/// The `kind` sources of a projected volume.
fn projected<'a>(volume: &'a Value, kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    volume["projected"]["sources"]
        .as_array()
        .into_iter()
        .flatten()
        .map(move |s| &s[kind])
        .filter(|s| !s.is_null())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn only_a_named_node_in_the_group_is_a_node() {
        let user = |name: &str, groups: &[&str]| UserInfo {
            name: name.into(),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            ..UserInfo::default()
        };
        assert_eq!(
            node_name(&user("system:node:n1", &[NODES_GROUP])),
            Some("n1")
        );
        assert_eq!(node_name(&user("system:node:n1", &[])), None);
        assert_eq!(node_name(&user("system:node:", &[NODES_GROUP])), None);
        assert_eq!(node_name(&user("alice", &[NODES_GROUP])), None);
    }

    #[test]
    fn a_pod_uses_what_it_references_anywhere() {
        let pod = json!({"spec": {
            "serviceAccountName": "builder",
            "imagePullSecrets": [{"name": "pull"}],
            "volumes": [
                {"name": "a", "secret": {"secretName": "vol"}},
                {"name": "b", "projected": {"sources": [{"configMap": {"name": "proj"}}, {"secret": {"name": "psec"}}]}},
                {"name": "c", "persistentVolumeClaim": {"claimName": "data"}},
            ],
            "initContainers": [{"name": "i", "envFrom": [{"configMapRef": {"name": "envfrom"}}]}],
            "containers": [{"name": "c", "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "envsec", "key": "k"}}}]}],
        }});
        for name in ["vol", "psec", "pull", "envsec"] {
            assert!(pod_uses(&pod, Through::Secret, name), "{name}");
        }
        for name in ["proj", "envfrom"] {
            assert!(pod_uses(&pod, Through::ConfigMap, name), "{name}");
        }
        assert!(pod_uses(&pod, Through::Claim, "data"));
        assert!(pod_uses(&pod, Through::ServiceAccount, "builder"));
        assert!(!pod_uses(&pod, Through::Secret, "proj"));
        assert!(!pod_uses(&pod, Through::ConfigMap, "vol"));
        assert!(!pod_uses(&pod, Through::ServiceAccount, "default"));
        assert!(pod_uses(
            &json!({"spec": {}}),
            Through::ServiceAccount,
            "default"
        ));
    }
}
