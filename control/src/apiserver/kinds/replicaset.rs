//! apps/v1 ReplicaSet: one replica by default, selector/template validation, `/scale`, and
//! the DESIRED/CURRENT/READY columns it shares with ReplicationController.

use k8s_openapi::api::apps::v1::ReplicaSet as K;
use serde_json::{json, Value};

use super::Strategy;
use crate::apiserver::defaults::{default_field, default_template, obj};
use crate::apiserver::error::FieldError;
use crate::apiserver::registry::ResourceDef;
use crate::apiserver::table::{i, Column, AGE, NAME, SELECTOR, TEMPLATE_CONTAINERS, TEMPLATE_IMAGES};
use crate::apiserver::validation::{validate_replicas, validate_workload};

/// The served resource.
pub fn resources() -> Vec<ResourceDef> {
    vec![ResourceDef::of::<K>(ReplicaSet)
        .short_names(&["rs"])
        .in_all()
        .with_scale()]
}

struct ReplicaSet;

/// The columns of ReplicaSets and ReplicationControllers.
pub(super) fn replica_columns() -> Vec<Column> {
    vec![
        NAME,
        Column::new("Desired", "integer", |o, _| {
            json!(o
                .pointer("/spec/replicas")
                .and_then(Value::as_i64)
                .unwrap_or(1))
        }),
        Column::new("Current", "integer", |o, _| json!(i(o, "/status/replicas"))),
        Column::new("Ready", "integer", |o, _| {
            json!(i(o, "/status/readyReplicas"))
        }),
        AGE,
        TEMPLATE_CONTAINERS,
        TEMPLATE_IMAGES,
        SELECTOR,
    ]
}

impl Strategy for ReplicaSet {
    /// `replicas` has no omitempty in apps/v1 ReplicaSetStatus.
    fn initial_status(&self) -> Option<Value> {
        Some(json!({"replicas": 0}))
    }

    fn default(&self, object: &mut Value) {
        if let Some(spec) = obj(object, "spec") {
            default_field(spec, "replicas", json!(1));
        }
        default_template(object);
    }

    fn validate(&self, object: &Value, errs: &mut Vec<FieldError>) {
        validate_workload(object, errs);
        validate_replicas(object, errs);
    }

    fn columns(&self) -> Vec<Column> {
        replica_columns()
    }

    fn field_selectors(&self) -> Vec<&str> {
        vec!["status.replicas"]
    }
}
