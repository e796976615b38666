//! apps/v1 DaemonSet: apps-set defaults and rules, rollout numbers (maxUnavailable and
//! maxSurge not both zero), an immutable selector, and kubectl's columns.

use k8s_openapi::api::apps::v1::DaemonSet as K;
use serde_json::{json, Value};

use super::Strategy;
use crate::apiserver::defaults::default_apps_set;
use crate::apiserver::error::FieldError;
use crate::apiserver::registry::ResourceDef;
use crate::apiserver::table::{
    i, or_none, Column, AGE, NAME, SELECTOR, TEMPLATE_CONTAINERS, TEMPLATE_IMAGES,
};
use crate::apiserver::validation::{validate_apps_set, validate_replicas, validate_workload};

/// The served resource.
pub fn resources() -> Vec<ResourceDef> {
    vec![ResourceDef::of::<K>(DaemonSet)
        .short_names(&["ds"])
        .in_all()
        .with_status()]
}

struct DaemonSet;

/// maxUnavailable and maxSurge are counts or percentages, not both zero.
fn validate_rollout(object: &Value, errs: &mut Vec<FieldError>) {
    // Whether the amount is zero; `None` when absent or invalid (reported).
    let amount = |name: &str, errs: &mut Vec<FieldError>| -> Option<bool> {
        let field = format!("spec.updateStrategy.rollingUpdate.{name}");
        let v = object.pointer(&format!("/spec/updateStrategy/rollingUpdate/{name}"))?;
        let zero = match v {
            Value::Number(n) => match n.as_i64() {
                Some(n) if n >= 0 => n == 0,
                _ => {
                    errs.push(FieldError::invalid(
                        &field,
                        &v.to_string(),
                        "must be greater than or equal to 0",
                    ));
                    return None;
                }
            },
            Value::String(s) => match s.strip_suffix('%').and_then(|p| p.parse::<u32>().ok()) {
                Some(p) if p <= 100 => p == 0,
                _ => {
                    errs.push(FieldError::invalid(&field, s, "a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%',  or '93%', regex used for validation is '[0-9]+%'), at most 100%"));
                    return None;
                }
            },
            _ => return None,
        };
        Some(zero)
    };
    let unavailable_zero = amount("maxUnavailable", errs);
    let surge_zero = amount("maxSurge", errs);
    if unavailable_zero == Some(true) && surge_zero.unwrap_or(true) {
        errs.push(FieldError::invalid(
            "spec.updateStrategy.rollingUpdate.maxUnavailable",
            "0",
            "may not be 0 when `maxSurge` is 0",
        ));
    }
}

fn node_selector(o: &Value) -> String {
    let pairs: Vec<String> = o
        .pointer("/spec/template/spec/nodeSelector")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect();
    or_none(pairs.join(","))
}

impl Strategy for DaemonSet {
    /// The four counts without omitempty in apps/v1 DaemonSetStatus.
    fn initial_status(&self) -> Option<Value> {
        Some(json!({"currentNumberScheduled": 0, "numberMisscheduled": 0, "desiredNumberScheduled": 0, "numberReady": 0}))
    }

    fn default(&self, object: &mut Value) {
        default_apps_set(false, object);
    }

    fn validate(&self, object: &Value, errs: &mut Vec<FieldError>) {
        validate_workload(object, errs);
        validate_apps_set(object, errs);
        validate_rollout(object, errs);
        validate_replicas(object, errs);
    }

    /// The controller finds its pods through the selector.
    fn validate_update(&self, old: &Value, new: &Value, errs: &mut Vec<FieldError>) {
        if old.pointer("/spec/selector") != new.pointer("/spec/selector") {
            errs.push(FieldError::immutable("spec.selector"));
        }
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            NAME,
            Column::new("Desired", "integer", |o, _| {
                json!(i(o, "/status/desiredNumberScheduled"))
            }),
            Column::new("Current", "integer", |o, _| {
                json!(i(o, "/status/currentNumberScheduled"))
            }),
            Column::new("Ready", "integer", |o, _| json!(i(o, "/status/numberReady"))),
            Column::new("Up-to-date", "integer", |o, _| {
                json!(i(o, "/status/updatedNumberScheduled"))
            }),
            Column::new("Available", "integer", |o, _| {
                json!(i(o, "/status/numberAvailable"))
            }),
            Column::new("Node Selector", "string", |o, _| json!(node_selector(o))),
            AGE,
            TEMPLATE_CONTAINERS,
            TEMPLATE_IMAGES,
            SELECTOR,
        ]
    }
}
