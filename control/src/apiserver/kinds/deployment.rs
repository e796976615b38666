//! apps/v1 Deployment: defaults (RollingUpdate 25%/25%), selector/template validation, the
//! `/scale` subresource (one replica when unset) and kubectl's columns.

use k8s_openapi::api::apps::v1::Deployment as K;
use serde_json::{json, Value};

use super::Strategy;
use crate::apiserver::defaults::{default_field, default_template, obj};
use crate::apiserver::error::FieldError;
use crate::apiserver::registry::ResourceDef;
use crate::apiserver::table::{i, Column, AGE, NAME, SELECTOR, TEMPLATE_CONTAINERS, TEMPLATE_IMAGES};
use crate::apiserver::validation::{validate_replicas, validate_workload};

/// The served resource.
pub fn resources() -> Vec<ResourceDef> {
    vec![ResourceDef::of::<K>(Deployment)
        .short_names(&["deploy"])
        .in_all()
        .with_scale()]
}

struct Deployment;

/// READY as `ready/desired` (Deployments, StatefulSets).
pub(super) const READY_OF_DESIRED: Column = Column::new("Ready", "string", |o, _| {
    json!(format!(
        "{}/{}",
        i(o, "/status/readyReplicas"),
        o.pointer("/spec/replicas")
            .and_then(Value::as_i64)
            .unwrap_or(1)
    ))
});

impl Strategy for Deployment {
    fn default(&self, object: &mut Value) {
        if let Some(spec) = obj(object, "spec") {
            default_field(spec, "replicas", json!(1));
            default_field(spec, "revisionHistoryLimit", json!(10));
            default_field(spec, "progressDeadlineSeconds", json!(600));
            default_field(spec, "strategy", json!({}));
            if let Some(strategy) = spec.get_mut("strategy").and_then(Value::as_object_mut) {
                default_field(strategy, "type", json!("RollingUpdate"));
                if strategy.get("type") == Some(&json!("RollingUpdate")) {
                    default_field(strategy, "rollingUpdate", json!({}));
                    if let Some(ru) = strategy
                        .get_mut("rollingUpdate")
                        .and_then(Value::as_object_mut)
                    {
                        default_field(ru, "maxSurge", json!("25%"));
                        default_field(ru, "maxUnavailable", json!("25%"));
                    }
                }
            }
        }
        default_template(object);
    }

    fn validate(&self, object: &Value, errs: &mut Vec<FieldError>) {
        validate_workload(object, errs);
        validate_replicas(object, errs);
    }

    fn scale_default_replicas(&self) -> i64 {
        1
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            NAME,
            READY_OF_DESIRED,
            Column::new("Up-to-date", "integer", |o, _| {
                json!(i(o, "/status/updatedReplicas"))
            }),
            Column::new("Available", "integer", |o, _| {
                json!(i(o, "/status/availableReplicas"))
            }),
            AGE,
            TEMPLATE_CONTAINERS,
            TEMPLATE_IMAGES,
            SELECTOR,
        ]
    }
}
