//! batch/v1 CronJob: defaults, schedule/time zone/policy validation (the Job template is a
//! JobSpec), and kubectl's columns.

use k8s_openapi::api::batch::v1::CronJob as K;
use serde_json::{json, Value};

use super::Strategy;
use crate::apiserver::defaults::{default_field, default_pod_spec, obj};
use crate::apiserver::error::FieldError;
use crate::apiserver::registry::ResourceDef;
use crate::apiserver::table::{
    age_of, arr, containers_and_images, or_none, s, selector_string, Column, AGE, NAME,
};
use crate::apiserver::validation::{
    non_negative, not_supported, seconds_in_range, str_at, validate_job_spec, validate_labels,
};

/// The served resource.
pub fn resources() -> Vec<ResourceDef> {
    vec![ResourceDef::of::<K>(CronJob)
        .short_names(&["cj"])
        .in_all()
        .with_status()]
}

struct CronJob;

fn validate_cronjob(object: &Value, errs: &mut Vec<FieldError>) {
    // Job names are `<cronjob>-<minutes since epoch>` (11 more characters) and must stay
    // valid label values (63).
    if let Some(name) = str_at(object, "/metadata/name") {
        if name.len() > 52 {
            errs.push(FieldError::invalid(
                "metadata.name",
                name,
                "must be no more than 52 characters",
            ));
        }
    }
    let spec = object.get("spec").cloned().unwrap_or(Value::Null);
    match spec.get("schedule").and_then(Value::as_str) {
        None | Some("") => errs.push(FieldError::required("spec.schedule")),
        Some(schedule) => {
            if let Err(e) = skiff_k8s::cron::parse(schedule) {
                errs.push(FieldError::invalid(
                    "spec.schedule",
                    schedule,
                    e.to_string(),
                ));
            }
        }
    }
    if let Some(tz) = spec.get("timeZone").and_then(Value::as_str) {
        if let Err(e) = skiff_k8s::cron::time_zone(Some(tz)) {
            errs.push(FieldError::invalid("spec.timeZone", tz, e.to_string()));
        }
    }
    if let Some(policy) = spec.get("concurrencyPolicy").and_then(Value::as_str) {
        if !["Allow", "Forbid", "Replace"].contains(&policy) {
            errs.push(not_supported(
                "spec.concurrencyPolicy",
                policy,
                &["Allow", "Forbid", "Replace"],
            ));
        }
    }
    for key in [
        "startingDeadlineSeconds",
        "successfulJobsHistoryLimit",
        "failedJobsHistoryLimit",
    ] {
        non_negative(&spec, key, "spec", errs);
    }
    seconds_in_range(&spec, "startingDeadlineSeconds", "spec", 0, errs);
    validate_labels(
        spec.pointer("/jobTemplate/metadata/labels"),
        "spec.jobTemplate.metadata.labels",
        errs,
    );
    validate_job_spec(
        spec.pointer("/jobTemplate/spec"),
        "spec.jobTemplate.spec",
        errs,
    );
}

impl Strategy for CronJob {
    fn default(&self, object: &mut Value) {
        if let Some(spec) = obj(object, "spec") {
            default_field(spec, "concurrencyPolicy", json!("Allow"));
            default_field(spec, "suspend", json!(false));
            default_field(spec, "successfulJobsHistoryLimit", json!(3));
            default_field(spec, "failedJobsHistoryLimit", json!(1));
        }
        // Like Kubernetes, only the pod template: the Job made from it is defaulted when created.
        if let Some(spec) = object.pointer_mut("/spec/jobTemplate/spec/template/spec") {
            default_pod_spec(spec);
        }
    }

    fn validate(&self, object: &Value, errs: &mut Vec<FieldError>) {
        validate_cronjob(object, errs);
    }

    fn columns(&self) -> Vec<Column> {
        const TEMPLATE: &str = "/spec/jobTemplate/spec/template/spec";
        vec![
            NAME,
            Column::new("Schedule", "string", |o, _| json!(s(o, "/spec/schedule"))),
            Column::new("Timezone", "string", |o, _| {
                json!(or_none(s(o, "/spec/timeZone").into()))
            }),
            Column::new("Suspend", "boolean", |o, _| {
                json!(if o.pointer("/spec/suspend") == Some(&json!(true)) {
                    "True"
                } else {
                    "False"
                })
            }),
            Column::new("Active", "integer", |o, _| json!(arr(o, "/status/active").len())),
            Column::new("Last Schedule", "string", |o, now| {
                json!(o
                    .pointer("/status/lastScheduleTime")
                    .and_then(Value::as_str)
                    .map_or_else(|| "<none>".to_owned(), |t| age_of(Some(t), now)))
            }),
            AGE,
            Column::wide("Containers", "string", |o, _| {
                json!(containers_and_images(o.pointer(TEMPLATE)).0)
            }),
            Column::wide("Images", "string", |o, _| {
                json!(containers_and_images(o.pointer(TEMPLATE)).1)
            }),
            Column::wide("Selector", "string", |o, _| {
                json!(selector_string(o.pointer("/spec/jobTemplate/spec/selector")))
            }),
        ]
    }
}
