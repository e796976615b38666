//! apps/v1 ControllerRevision: the revision history of DaemonSets and StatefulSets.

use k8s_openapi::api::apps::v1::ControllerRevision as K;
use serde_json::{json, Value};

use super::Strategy;
use crate::apiserver::registry::ResourceDef;
use crate::apiserver::table::{arr, i, s, Column, AGE, NAME};

/// The served resource.
pub fn resources() -> Vec<ResourceDef> {
    vec![ResourceDef::of::<K>(ControllerRevision)]
}

struct ControllerRevision;

/// `<kind>.<group>/<name>` of the controlling owner.
fn controller(o: &Value) -> String {
    arr(o, "/metadata/ownerReferences")
        .iter()
        .find(|r| r.get("controller") == Some(&json!(true)))
        .map(|r| {
            let group = s(r, "/apiVersion").split('/').next().unwrap_or_default();
            format!("{}.{group}/{}", s(r, "/kind").to_lowercase(), s(r, "/name"))
        })
        .unwrap_or_else(|| "<none>".into())
}

impl Strategy for ControllerRevision {
    fn columns(&self) -> Vec<Column> {
        vec![
            NAME,
            Column::new("Controller", "string", |o, _| json!(controller(o))),
            Column::new("Revision", "integer", |o, _| json!(i(o, "/revision"))),
            AGE,
        ]
    }
}
