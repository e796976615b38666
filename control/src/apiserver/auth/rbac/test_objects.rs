//! RBAC objects as the API stores them, and a store holding them, for tests.

use std::sync::Arc;

use serde_json::{json, Value};

use crate::store::{object_revision, MemoryStore, SharedStore};

/// An empty in-memory store.
pub fn store() -> SharedStore {
    Arc::new(MemoryStore::new(1024))
}

/// A rule: verbs, apiGroups, resources.
pub fn rule(verbs: &[&str], groups: &[&str], resources: &[&str]) -> Value {
    json!({"verbs": verbs, "apiGroups": groups, "resources": resources})
}

/// A subject of `kind` (`User`, `Group`, `ServiceAccount`), optionally in a namespace.
pub fn subject(kind: &str, name: &str, namespace: Option<&str>) -> Value {
    let mut s = json!({"kind": kind, "name": name});
    if let Some(ns) = namespace {
        s["namespace"] = json!(ns);
    }
    s
}

/// Writes a ClusterRole; returns the write's revision.
pub async fn put_cluster_role(store: &SharedStore, name: &str, rules: Vec<Value>) -> u64 {
    let object = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": name}, "rules": rules,
    });
    create(
        store,
        &format!("rbac.authorization.k8s.io/clusterroles//{name}"),
        object,
    )
    .await
}

/// Writes a Role; returns the write's revision.
pub async fn put_role(store: &SharedStore, namespace: &str, name: &str, rules: Vec<Value>) -> u64 {
    let object = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": name, "namespace": namespace}, "rules": rules,
    });
    let key = format!("rbac.authorization.k8s.io/roles/{namespace}/{name}");
    create(store, &key, object).await
}

/// Writes a ClusterRoleBinding of `role` (`(kind, name)`); returns the write's revision.
pub async fn put_cluster_role_binding(
    store: &SharedStore,
    name: &str,
    role: (&str, &str),
    subjects: Vec<Value>,
) -> u64 {
    let object = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role.0, "name": role.1},
        "subjects": subjects,
    });
    create(
        store,
        &format!("rbac.authorization.k8s.io/clusterrolebindings//{name}"),
        object,
    )
    .await
}

/// Writes a RoleBinding of `role` (`(kind, name)`); returns the write's revision.
pub async fn put_role_binding(
    store: &SharedStore,
    namespace: &str,
    name: &str,
    role: (&str, &str),
    subjects: Vec<Value>,
) -> u64 {
    let object = json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": name, "namespace": namespace},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role.0, "name": role.1},
        "subjects": subjects,
    });
    let key = format!("rbac.authorization.k8s.io/rolebindings/{namespace}/{name}");
    create(store, &key, object).await
}

async fn create(store: &SharedStore, key: &str, object: Value) -> u64 {
    let stored = store.create(key, object).await.expect("store write");
    object_revision(&stored)
}
