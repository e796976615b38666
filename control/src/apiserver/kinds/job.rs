//! batch/v1 Job: `SetDefaults_Job`, the generated selector and pod labels, JobSpec
//! validation, what an update may change, and kubectl's columns.

use k8s_openapi::api::batch::v1::Job as K;
use serde_json::{json, Value};

use super::Strategy;
use crate::apiserver::defaults::{default_field, default_template, obj};
use crate::apiserver::error::FieldError;
use crate::apiserver::registry::ResourceDef;
use crate::apiserver::table::{
    arr, human_duration, i, s, Column, AGE, NAME, SELECTOR, TEMPLATE_CONTAINERS, TEMPLATE_IMAGES,
};
use crate::apiserver::validation::{str_at, validate_job_spec};

/// The served resource.
pub fn resources() -> Vec<ResourceDef> {
    vec![ResourceDef::of::<K>(Job).in_all().with_status()]
}

struct Job;

/// `SetDefaults_Job`: one pod to completion unless told otherwise, six retries, NonIndexed.
fn default_job_spec(spec: Option<&mut Value>) {
    let Some(spec) = spec.and_then(Value::as_object_mut) else {
        return;
    };
    // Both unset: one pod, once. Only parallelism set: a work queue (completions stays unset).
    if spec.get("completions").is_none_or(Value::is_null)
        && spec.get("parallelism").is_none_or(Value::is_null)
    {
        spec.insert("completions".into(), json!(1));
        spec.insert("parallelism".into(), json!(1));
    }
    default_field(spec, "parallelism", json!(1));
    default_field(spec, "backoffLimit", json!(6));
    default_field(spec, "completionMode", json!("NonIndexed"));
    default_field(spec, "suspend", json!(false));
    default_field(spec, "podReplacementPolicy", json!("TerminatingOrFailed"));
}

/// The Job strategy's `generateSelector`: unless `manualSelector`, the pods carry the Job's
/// uid and name as labels and the selector is the uid label.
fn generate_job_selector(object: &mut Value) {
    if object.pointer("/spec/manualSelector") == Some(&json!(true)) {
        return;
    }
    let Some(uid) = object.pointer("/metadata/uid").cloned() else {
        return;
    };
    let name = object
        .pointer("/metadata/name")
        .cloned()
        .unwrap_or(Value::Null);
    let Some(spec) = obj(object, "spec") else {
        return;
    };
    spec.insert(
        "selector".into(),
        json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}),
    );
    default_field(spec, "template", json!({}));
    let Some(meta) = spec.get_mut("template").and_then(|t| {
        let t = t.as_object_mut()?;
        default_field(t, "metadata", json!({}));
        let m = t.get_mut("metadata")?.as_object_mut()?;
        default_field(m, "labels", json!({}));
        m.get_mut("labels")?.as_object_mut()
    }) else {
        return;
    };
    for key in ["batch.kubernetes.io/controller-uid", "controller-uid"] {
        meta.insert(key.into(), uid.clone());
    }
    for key in ["batch.kubernetes.io/job-name", "job-name"] {
        meta.insert(key.into(), name.clone());
    }
}

/// kubectl's Job STATUS column (1.31+): the first of these conditions that is True.
pub(crate) fn job_status(job: &Value) -> &'static str {
    let has = |ty: &str| {
        arr(job, "/status/conditions")
            .iter()
            .any(|c| s(c, "/type") == ty && s(c, "/status") == "True")
    };
    if has("Complete") {
        "Complete"
    } else if has("Failed") {
        "Failed"
    } else if job.pointer("/metadata/deletionTimestamp").is_some() {
        "Terminating"
    } else if has("Suspended") {
        "Suspended"
    } else if has("FailureTarget") {
        "FailureTarget"
    } else if has("SuccessCriteriaMet") {
        "SuccessCriteriaMet"
    } else {
        "Running"
    }
}

/// COMPLETIONS: `succeeded/completions`, or `succeeded/1 of parallelism` for a work queue.
pub(crate) fn job_completions(job: &Value) -> String {
    let succeeded = i(job, "/status/succeeded");
    match job.pointer("/spec/completions").and_then(Value::as_i64) {
        Some(c) => format!("{succeeded}/{c}"),
        None => match i(job, "/spec/parallelism") {
            p if p > 1 => format!("{succeeded}/1 of {p}"),
            _ => format!("{succeeded}/1"),
        },
    }
}

/// DURATION: start to completion, or start to now while running.
fn job_duration(job: &Value, now: jiff::Timestamp) -> String {
    let time = |p: &str| {
        job.pointer(p)
            .and_then(Value::as_str)
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
    };
    match (time("/status/startTime"), time("/status/completionTime")) {
        (None, _) => String::new(),
        (Some(start), None) => human_duration((now - start).get_seconds()),
        (Some(start), Some(end)) => human_duration((end - start).get_seconds()),
    }
}

impl Strategy for Job {
    fn default(&self, object: &mut Value) {
        default_job_spec(object.get_mut("spec"));
        generate_job_selector(object);
        default_template(object);
    }

    fn validate(&self, object: &Value, errs: &mut Vec<FieldError>) {
        validate_job_spec(object.get("spec"), "spec", errs);
    }

    /// A Job's pods are made from a template and selector that must not change under it.
    fn validate_update(&self, old: &Value, new: &Value, errs: &mut Vec<FieldError>) {
        let indexed = str_at(new, "/spec/completionMode") == Some("Indexed");
        for field in ["selector", "template", "completionMode", "completions"] {
            // Elastic Indexed Jobs may change completions together with parallelism.
            let elastic = field == "completions"
                && indexed
                && new.pointer("/spec/completions") == new.pointer("/spec/parallelism");
            let pointer = format!("/spec/{field}");
            if !elastic && old.pointer(&pointer) != new.pointer(&pointer) {
                errs.push(FieldError::immutable(format!("spec.{field}")));
            }
        }
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            NAME,
            Column::new("Status", "string", |o, _| json!(job_status(o))),
            Column::new("Completions", "string", |o, _| json!(job_completions(o))),
            Column::new("Duration", "string", |o, now| json!(job_duration(o, now))),
            AGE,
            TEMPLATE_CONTAINERS,
            TEMPLATE_IMAGES,
            SELECTOR,
        ]
    }

    fn field_selectors(&self) -> Vec<&str> {
        vec!["status.successful"]
    }
}
