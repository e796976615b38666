//! NodeRestriction admission (kube-apiserver's plugin of that name): a node's credential may
//! change only its own objects. The Node authorizer lets a node write pods, Nodes and Leases
//! at all; this decides which ones, from the objects themselves:
//!
//! - pods: create only mirror pods bound to itself (without ServiceAccount, Secret, ConfigMap
//!   or claim references), delete and update the status of only pods bound to itself;
//! - Nodes: create, update and delete only its own, without touching labels under
//!   `node-restriction.kubernetes.io/` (which admins use to steer workloads to trusted nodes)
//!   or its taints;
//! - Leases: create only its own heartbeat (the authorizer checks the other verbs by name);
//! - ServiceAccount tokens: only bound to a pod on itself (checked in
//!   [`token_request`](crate::apiserver::auth::service_account::token_request)).
//!
//! Other users are not affected.

use serde_json::Value;

use crate::apiserver::auth::node::node_name;
use crate::apiserver::auth::UserInfo;
use crate::apiserver::error::ApiError;
use crate::apiserver::objects::Subresource;

/// The label prefix only admins may set on Nodes.
const RESTRICTED_LABELS: &str = "node-restriction.kubernetes.io/";
const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// A write being admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// A create (POST).
    Create,
    /// An update or patch.
    Update,
    /// A delete.
    Delete,
}

/// What is written: the API group and resource, the subresource, the object before and after.
#[derive(Debug, Clone, Copy)]
pub struct Write<'a> {
    /// API group of the resource.
    pub group: &'a str,
    /// Resource (plural).
    pub resource: &'a str,
    /// Subresource written through.
    pub subresource: Subresource,
    /// Create, update or delete.
    pub operation: Operation,
    /// The stored object (update, delete).
    pub old: Option<&'a Value>,
    /// The object to store (create, update).
    pub new: Option<&'a Value>,
}

/// Refuses the write if `user` is a node and the object is not its to write.
pub fn admit(user: Option<&UserInfo>, write: &Write<'_>) -> Result<(), ApiError> {
    let Some(node) = user.and_then(node_name) else {
        return Ok(());
    };
    match (write.group, write.resource) {
        ("", "pods") => pod(node, write),
        ("", "nodes") => own_node(node, write),
        ("coordination.k8s.io", "leases") if write.operation == Operation::Create => {
            let name = str_at(write.new, "/metadata/name");
            if name == node {
                Ok(())
            } else {
                Err(forbidden(
                    write,
                    "can only access node lease with the same name as the requesting node",
                ))
            }
        }
        _ => Ok(()),
    }
}

fn str_at<'a>(object: Option<&'a Value>, pointer: &str) -> &'a str {
    object
        .and_then(|o| o.pointer(pointer))
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// `<resource> "<name>" is forbidden: <why>`, as admission refusals read.
fn forbidden(write: &Write<'_>, why: &str) -> ApiError {
    let name = match str_at(write.new, "/metadata/name") {
        "" => str_at(write.old, "/metadata/name"),
        n => n,
    };
    ApiError::Forbidden(format!("{} {name:?} is forbidden: {why}", write.resource))
}

fn pod(node: &str, write: &Write<'_>) -> Result<(), ApiError> {
    match (write.operation, write.subresource) {
        (Operation::Create, Subresource::Main) => {
            let pod = write.new;
            let mirror = pod
                .and_then(|p| p.pointer("/metadata/annotations"))
                .and_then(Value::as_object)
                .is_some_and(|a| a.contains_key(MIRROR_ANNOTATION));
            if !mirror {
                return Err(forbidden(
                    write,
                    &format!(
                        "pod does not have \"{MIRROR_ANNOTATION}\" annotation, node \"{node}\" can only create mirror pods"
                    ),
                ));
            }
            if str_at(pod, "/spec/nodeName") != node {
                return Err(forbidden(
                    write,
                    &format!(
                        "node \"{node}\" can only create pods with spec.nodeName set to itself"
                    ),
                ));
            }
            if let Some(what) = pod.and_then(references) {
                return Err(forbidden(
                    write,
                    &format!("node \"{node}\" can not create pods that reference {what}"),
                ));
            }
            Ok(())
        }
        (Operation::Delete, Subresource::Main) => {
            if str_at(write.old, "/spec/nodeName") == node {
                Ok(())
            } else {
                Err(forbidden(
                    write,
                    &format!(
                        "node \"{node}\" can only delete pods with spec.nodeName set to itself"
                    ),
                ))
            }
        }
        (Operation::Update, Subresource::Status) => {
            if str_at(write.old, "/spec/nodeName") == node {
                Ok(())
            } else {
                Err(forbidden(
                    write,
                    &format!(
                        "node \"{node}\" can only update pod status for pods with spec.nodeName set to itself"
                    ),
                ))
            }
        }
        _ => Err(forbidden(
            write,
            &format!("node \"{node}\" may not make this change to pods"),
        )),
    }
}

/// What a mirror pod may not reference, if it does.
fn references(pod: &Value) -> Option<&'static str> {
    let spec = pod.get("spec")?;
    if spec
        .get("serviceAccountName")
        .and_then(Value::as_str)
        .is_some_and(|s| !s.is_empty())
    {
        return Some("serviceaccounts");
    }
    let volumes = spec.get("volumes").and_then(Value::as_array);
    for v in volumes.into_iter().flatten() {
        if v.get("secret").is_some() {
            return Some("secrets");
        }
        if v.get("configMap").is_some() {
            return Some("configmaps");
        }
        if v.get("persistentVolumeClaim").is_some() {
            return Some("persistentvolumeclaims");
        }
        if v.get("projected").is_some() {
            return Some("projected volumes");
        }
    }
    let text = spec.to_string();
    if text.contains("\"secretKeyRef\"") || text.contains("\"secretRef\"") {
        return Some("secrets");
    }
    if text.contains("\"configMapKeyRef\"") || text.contains("\"configMapRef\"") {
        return Some("configmaps");
    }
    None
}

fn labels(object: Option<&Value>) -> Vec<(&str, &str)> {
    let mut out: Vec<(&str, &str)> = object
        .and_then(|o| o.pointer("/metadata/labels"))
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter(|(k, _)| k.starts_with(RESTRICTED_LABELS))
        .map(|(k, v)| (k.as_str(), v.as_str().unwrap_or_default()))
        .collect();
    out.sort_unstable();
    out
}

fn own_node(node: &str, write: &Write<'_>) -> Result<(), ApiError> {
    let name = match str_at(write.new, "/metadata/name") {
        "" => str_at(write.old, "/metadata/name"),
        n => n,
    };
    if name != node {
        return Err(forbidden(
            write,
            &format!("node \"{node}\" is not allowed to modify node \"{name}\""),
        ));
    }
    match write.operation {
        Operation::Create => {
            let set = labels(write.new);
            if !set.is_empty() {
                let keys: Vec<&str> = set.iter().map(|(k, _)| *k).collect();
                return Err(forbidden(
                    write,
                    &format!(
                        "node \"{node}\" is not allowed to set the following labels: {}",
                        keys.join(", ")
                    ),
                ));
            }
        }
        Operation::Update => {
            if labels(write.old) != labels(write.new) {
                return Err(forbidden(
                    write,
                    &format!(
                        "node \"{node}\" is not allowed to modify labels with the prefix {RESTRICTED_LABELS}"
                    ),
                ));
            }
            let taints = |o: Option<&Value>| {
                o.and_then(|o| o.pointer("/spec/taints"))
                    .cloned()
                    .filter(|t| t.as_array().is_some_and(|a| !a.is_empty()))
            };
            if taints(write.old) != taints(write.new) {
                return Err(forbidden(
                    write,
                    &format!("node \"{node}\" is not allowed to modify taints"),
                ));
            }
        }
        Operation::Delete => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::apiserver::auth::node::NODES_GROUP;

    fn node(name: &str) -> UserInfo {
        UserInfo {
            name: format!("system:node:{name}"),
            groups: vec![NODES_GROUP.into()],
            ..UserInfo::default()
        }
    }

    fn write<'a>(
        resource: &'a str,
        operation: Operation,
        subresource: Subresource,
        old: Option<&'a Value>,
        new: Option<&'a Value>,
    ) -> Write<'a> {
        Write {
            group: "",
            resource,
            subresource,
            operation,
            old,
            new,
        }
    }

    fn refused(result: Result<(), ApiError>) -> String {
        result.unwrap_err().to_string()
    }

    #[test]
    fn a_node_touches_only_pods_bound_to_it() {
        let n1 = node("n1");
        let theirs = json!({"metadata": {"name": "p"}, "spec": {"nodeName": "n2"}});
        let ours = json!({"metadata": {"name": "p"}, "spec": {"nodeName": "n1"}});
        let del = |pod: &Value| {
            admit(
                Some(&n1),
                &write(
                    "pods",
                    Operation::Delete,
                    Subresource::Main,
                    Some(pod),
                    None,
                ),
            )
        };
        assert!(del(&ours).is_ok());
        assert!(refused(del(&theirs))
            .contains("node \"n1\" can only delete pods with spec.nodeName set to itself"));
        let status = |pod: &Value| {
            admit(
                Some(&n1),
                &write(
                    "pods",
                    Operation::Update,
                    Subresource::Status,
                    Some(pod),
                    Some(pod),
                ),
            )
        };
        assert!(status(&ours).is_ok());
        assert!(status(&theirs).is_err());
        // Not a mirror pod; a mirror pod with a secret; a proper mirror pod.
        let create = |pod: &Value| {
            admit(
                Some(&n1),
                &write(
                    "pods",
                    Operation::Create,
                    Subresource::Main,
                    None,
                    Some(pod),
                ),
            )
        };
        assert!(refused(create(&ours)).contains("can only create mirror pods"));
        let mirror = json!({"metadata": {"name": "m", "annotations": {MIRROR_ANNOTATION: "x"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "envFrom": [{"secretRef": {"name": "s"}}]}]}});
        assert!(refused(create(&mirror)).contains("can not create pods that reference secrets"));
        let mirror = json!({"metadata": {"name": "m", "annotations": {MIRROR_ANNOTATION: "x"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c"}]}});
        assert!(create(&mirror).is_ok());
        // Other users are not this plugin's business.
        assert!(admit(
            Some(&UserInfo::admin()),
            &write(
                "pods",
                Operation::Delete,
                Subresource::Main,
                Some(&theirs),
                None
            )
        )
        .is_ok());
    }

    #[test]
    fn a_node_changes_only_itself_and_not_its_restricted_labels_or_taints() {
        let n1 = node("n1");
        let update = |old: &Value, new: &Value| {
            admit(
                Some(&n1),
                &write(
                    "nodes",
                    Operation::Update,
                    Subresource::Status,
                    Some(old),
                    Some(new),
                ),
            )
        };
        let me = json!({"metadata": {"name": "n1", "labels": {"a": "b"}}});
        let other = json!({"metadata": {"name": "n2"}});
        assert!(update(&me, &me).is_ok());
        assert!(refused(update(&other, &other))
            .contains("node \"n1\" is not allowed to modify node \"n2\""));
        let trusted = json!({"metadata": {"name": "n1", "labels": {"node-restriction.kubernetes.io/trusted": "yes"}}});
        assert!(update(&me, &trusted).is_err());
        assert!(update(&trusted, &me).is_err(), "nor remove one");
        let tainted = json!({"metadata": {"name": "n1"}, "spec": {"taints": [{"key": "k", "effect": "NoSchedule"}]}});
        assert!(refused(update(&tainted, &me)).contains("not allowed to modify taints"));
        let create = admit(
            Some(&n1),
            &write(
                "nodes",
                Operation::Create,
                Subresource::Main,
                None,
                Some(&trusted),
            ),
        );
        assert!(refused(create).contains("not allowed to set the following labels"));
    }
}
