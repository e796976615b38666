//! core/v1 Node: keeps the status it registers with, and kubectl's columns.

use k8s_openapi::api::core::v1::Node as K;
use serde_json::{json, Value};

use super::Strategy;
use crate::apiserver::registry::ResourceDef;
use crate::apiserver::table::{arr, or_none, s, Column, AGE, NAME};

/// The served resource.
pub fn resources() -> Vec<ResourceDef> {
    vec![ResourceDef::of::<K>(Node).short_names(&["no"]).with_status()]
}

struct Node;

fn node_status(node: &Value) -> String {
    let ready = arr(node, "/status/conditions")
        .iter()
        .find(|c| s(c, "/type") == "Ready");
    let mut status = match ready.map(|c| s(c, "/status")) {
        Some("True") => "Ready".to_owned(),
        _ => "NotReady".to_owned(),
    };
    if node.pointer("/spec/unschedulable").and_then(Value::as_bool) == Some(true) {
        status.push_str(",SchedulingDisabled");
    }
    status
}

fn node_roles(node: &Value) -> String {
    let roles: Vec<&str> = node
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter_map(|(k, _)| k.strip_prefix("node-role.kubernetes.io/"))
        .collect();
    or_none(roles.join(","))
}

fn node_address(node: &Value, ty: &str) -> String {
    let a = arr(node, "/status/addresses")
        .iter()
        .find(|a| s(a, "/type") == ty)
        .map(|a| s(a, "/address").to_owned());
    or_none(a.unwrap_or_default())
}

impl Strategy for Node {
    /// Nodes report their status on registration: it is kept.
    fn prepare_for_create(&self, _object: &mut Value) {}

    fn columns(&self) -> Vec<Column> {
        vec![
            NAME,
            Column::new("Status", "string", |o, _| json!(node_status(o))),
            Column::new("Roles", "string", |o, _| json!(node_roles(o))),
            AGE,
            Column::new("Version", "string", |o, _| {
                json!(s(o, "/status/nodeInfo/kubeletVersion"))
            }),
            Column::wide("Internal-IP", "string", |o, _| {
                json!(node_address(o, "InternalIP"))
            }),
            Column::wide("External-IP", "string", |o, _| {
                json!(node_address(o, "ExternalIP"))
            }),
            Column::wide("OS-Image", "string", |o, _| {
                json!(s(o, "/status/nodeInfo/osImage"))
            }),
            Column::wide("Kernel-Version", "string", |o, _| {
                json!(s(o, "/status/nodeInfo/kernelVersion"))
            }),
            Column::wide("Container-Runtime", "string", |o, _| {
                json!(s(o, "/status/nodeInfo/containerRuntimeVersion"))
            }),
        ]
    }

    fn field_selectors(&self) -> Vec<&str> {
        vec!["spec.unschedulable"]
    }
}
