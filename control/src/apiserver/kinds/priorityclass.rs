//! scheduling.k8s.io/v1 PriorityClass (cluster-scoped): Kubernetes'
//! `pkg/apis/scheduling/validation` and `pkg/registry/scheduling/priorityclass`: user classes
//! at most 1 000 000 000, the `system-` prefix reserved for the two built-in classes with
//! their exact values, `value` and `preemptionPolicy` immutable, `preemptionPolicy`
//! defaulted to PreemptLowerPriority; kubectl's columns NAME, VALUE, GLOBAL-DEFAULT, AGE,
//! PREEMPTIONPOLICY. More than one globalDefault is allowed, as in Kubernetes (the pod
//! admission that would pick the lowest one is not implemented here).

use k8s_openapi::api::scheduling::v1::PriorityClass as K;
use serde_json::{json, Value};

use super::Strategy;
use crate::apiserver::defaults::default_field;
use crate::apiserver::error::FieldError;
use crate::apiserver::registry::ResourceDef;
use crate::apiserver::table::{i, s, Column, AGE, NAME};
use crate::apiserver::validation::{not_supported, str_at};

/// The served resource.
pub fn resources() -> Vec<ResourceDef> {
    vec![ResourceDef::of::<K>(PriorityClass).short_names(&["pc"])]
}

struct PriorityClass;

/// `HighestUserDefinablePriority`.
const HIGHEST_USER_DEFINABLE: i64 = 1_000_000_000;

/// The system classes: name, value, globalDefault (`SystemPriorityClasses()`).
const SYSTEM_CLASSES: &[(&str, i64)] = &[
    ("system-node-critical", 2_000_001_000),
    ("system-cluster-critical", 2_000_000_000),
];

fn global_default(o: &Value) -> bool {
    o.get("globalDefault").and_then(Value::as_bool) == Some(true)
}

/// `IsKnownSystemPriorityClass`: why a `system-` class is not one of the built-in ones.
fn unknown_system_class(name: &str, value: i64, global: bool) -> Option<String> {
    let Some((_, expected)) = SYSTEM_CLASSES.iter().find(|(n, _)| *n == name) else {
        return Some(format!("name {name} is not a known system priority class"));
    };
    if value != *expected {
        return Some(format!("value of {name} PriorityClass must be {expected}"));
    }
    if global {
        return Some(format!("globalDefault of {name} PriorityClass must be false"));
    }
    None
}

impl Strategy for PriorityClass {
    fn default(&self, object: &mut Value) {
        if let Some(map) = object.as_object_mut() {
            default_field(map, "preemptionPolicy", json!("PreemptLowerPriority"));
        }
    }

    fn validate(&self, object: &Value, errs: &mut Vec<FieldError>) {
        let name = str_at(object, "/metadata/name").unwrap_or_default();
        let value = object.get("value").and_then(Value::as_i64).unwrap_or(0);
        if name.starts_with("system-") {
            if let Some(why) = unknown_system_class(name, value, global_default(object)) {
                errs.push(FieldError::forbidden(
                    "metadata.name",
                    format!("priority class names with 'system-' prefix are reserved for system use only. error: {why}"),
                ));
            }
        } else if value > HIGHEST_USER_DEFINABLE {
            errs.push(FieldError::forbidden(
                "value",
                format!("maximum allowed value of a user defined priority is {HIGHEST_USER_DEFINABLE}"),
            ));
        }
        if let Some(policy) = str_at(object, "/preemptionPolicy") {
            if !["Never", "PreemptLowerPriority"].contains(&policy) {
                errs.push(not_supported(
                    "preemptionPolicy",
                    policy,
                    &["Never", "PreemptLowerPriority"],
                ));
            }
        }
    }

    fn validate_update(&self, old: &Value, new: &Value, errs: &mut Vec<FieldError>) {
        if old.get("value") != new.get("value") {
            errs.push(FieldError::forbidden(
                "value",
                "may not be changed in an update.",
            ));
        }
        if old.get("preemptionPolicy") != new.get("preemptionPolicy") {
            errs.push(FieldError::immutable("preemptionPolicy"));
        }
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            NAME,
            Column::new("Value", "integer", |o, _| json!(i(o, "/value"))),
            Column::new("Global-Default", "boolean", |o, _| json!(global_default(o))),
            AGE,
            Column::new("PreemptionPolicy", "string", |o, _| {
                json!(s(o, "/preemptionPolicy"))
            }),
        ]
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::apiserver::kinds::testing::{defaulted, validate, validate_update};

    const G: &str = "scheduling.k8s.io";

    fn pc(name: &str, value: i64) -> serde_json::Value {
        defaulted(G, "PriorityClass", json!({"metadata": {"name": name}, "value": value}))
    }

    #[test]
    fn user_values_are_capped_and_system_names_reserved() {
        assert_eq!(validate(G, "PriorityClass", &pc("high", 1_000_000_000)), vec![]);
        let errs = validate(G, "PriorityClass", &pc("higher", 1_000_000_001));
        assert_eq!((errs[0].field.as_str(), errs[0].reason), ("value", "FieldValueForbidden"));
        assert_eq!(validate(G, "PriorityClass", &pc("system-node-critical", 2_000_001_000)), vec![]);
        let errs = validate(G, "PriorityClass", &pc("system-mine", 5));
        assert_eq!(errs[0].field, "metadata.name");
        assert!(errs[0].message.contains("is not a known system priority class"), "{errs:?}");
        let errs = validate(G, "PriorityClass", &pc("system-cluster-critical", 5));
        assert!(errs[0].message.contains("must be 2000000000"), "{errs:?}");
    }

    #[test]
    fn value_and_preemption_policy_are_immutable() {
        let old = pc("p", 10);
        let mut new = old.clone();
        new["description"] = json!("now described");
        new["globalDefault"] = json!(true);
        assert_eq!(validate_update(G, "PriorityClass", &old, &new), vec![]);
        new["value"] = json!(11);
        new["preemptionPolicy"] = json!("Never");
        let fields: Vec<String> = validate_update(G, "PriorityClass", &old, &new)
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(fields, ["value", "preemptionPolicy"]);
    }
}
