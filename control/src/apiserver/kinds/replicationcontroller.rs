//! core/v1 ReplicationController: like a ReplicaSet, but its selector is a plain map that
//! defaults to the template's labels.

use k8s_openapi::api::core::v1::ReplicationController as K;
use serde_json::{json, Value};

use super::replicaset::replica_columns;
use super::Strategy;
use crate::apiserver::defaults::{default_field, default_template, obj};
use crate::apiserver::error::FieldError;
use crate::apiserver::registry::ResourceDef;
use crate::apiserver::table::Column;
use crate::apiserver::validation::{validate_replicas, validate_template};

/// The served resource.
pub fn resources() -> Vec<ResourceDef> {
    vec![ResourceDef::of::<K>(ReplicationController)
        .short_names(&["rc"])
        .in_all()
        .with_scale()]
}

struct ReplicationController;

impl Strategy for ReplicationController {
    /// `replicas` has no omitempty in core/v1 ReplicationControllerStatus.
    fn initial_status(&self) -> Option<Value> {
        Some(json!({"replicas": 0}))
    }

    fn default(&self, object: &mut Value) {
        let template_labels = object.pointer("/spec/template/metadata/labels").cloned();
        if let Some(spec) = obj(object, "spec") {
            default_field(spec, "replicas", json!(1));
            if let Some(labels) = template_labels {
                default_field(spec, "selector", labels);
            }
        }
        default_template(object);
    }

    fn validate(&self, object: &Value, errs: &mut Vec<FieldError>) {
        // The selector is a plain map defaulted from the template labels: not checked.
        validate_template(object, errs);
        validate_replicas(object, errs);
    }

    fn columns(&self) -> Vec<Column> {
        replica_columns()
    }

    fn field_selectors(&self) -> Vec<&str> {
        vec!["status.replicas"]
    }
}
