//! apps/v1 StatefulSet: apps-set defaults and rules, pod management policy and partition,
//! what an update may change, `/scale`, and kubectl's columns.

use k8s_openapi::api::apps::v1::StatefulSet as K;
use serde_json::{json, Value};

use super::deployment::READY_OF_DESIRED;
use super::Strategy;
use crate::apiserver::defaults::default_apps_set;
use crate::apiserver::error::FieldError;
use crate::apiserver::registry::ResourceDef;
use crate::apiserver::table::{Column, AGE, NAME, TEMPLATE_CONTAINERS, TEMPLATE_IMAGES};
use crate::apiserver::validation::{
    non_negative_at, not_supported, str_at, validate_apps_set, validate_replicas,
    validate_workload,
};

/// The served resource.
pub fn resources() -> Vec<ResourceDef> {
    vec![ResourceDef::of::<K>(StatefulSet)
        .short_names(&["sts"])
        .in_all()
        .with_scale()]
}

struct StatefulSet;

/// The spec fields an update may change (Kubernetes' `ValidateStatefulSetUpdate`).
const MUTABLE: &[&str] = &[
    "replicas",
    "ordinals",
    "template",
    "updateStrategy",
    "revisionHistoryLimit",
    "persistentVolumeClaimRetentionPolicy",
    "minReadySeconds",
];

impl Strategy for StatefulSet {
    /// `replicas` and `availableReplicas` have no omitempty in apps/v1 StatefulSetStatus.
    fn initial_status(&self) -> Option<Value> {
        Some(json!({"replicas": 0, "availableReplicas": 0}))
    }

    fn default(&self, object: &mut Value) {
        default_apps_set(true, object);
    }

    fn validate(&self, object: &Value, errs: &mut Vec<FieldError>) {
        validate_workload(object, errs);
        validate_apps_set(object, errs);
        if let Some(p) = str_at(object, "/spec/podManagementPolicy")
            .filter(|p| !["OrderedReady", "Parallel"].contains(p))
        {
            errs.push(not_supported(
                "spec.podManagementPolicy",
                p,
                &["OrderedReady", "Parallel"],
            ));
        }
        non_negative_at(
            object,
            "/spec/updateStrategy/rollingUpdate/partition",
            "spec.updateStrategy.rollingUpdate.partition",
            errs,
        );
        non_negative_at(object, "/spec/ordinals/start", "spec.ordinals.start", errs);
        validate_replicas(object, errs);
    }

    /// The spec beyond [`MUTABLE`] is fixed: the pods' identities and volumes depend on it.
    fn validate_update(&self, old: &Value, new: &Value, errs: &mut Vec<FieldError>) {
        let frozen = |v: &Value| -> Value {
            let mut spec = v.get("spec").cloned().unwrap_or(Value::Null);
            if let Some(m) = spec.as_object_mut() {
                m.retain(|k, _| !MUTABLE.contains(&k.as_str()));
            }
            spec
        };
        if frozen(old) != frozen(new) {
            errs.push(FieldError::forbidden(
                "spec",
                "updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'revisionHistoryLimit', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden",
            ));
        }
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            NAME,
            READY_OF_DESIRED,
            AGE,
            TEMPLATE_CONTAINERS,
            TEMPLATE_IMAGES,
        ]
    }
}
