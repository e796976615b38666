//! Semantic validation after typed decoding: names, labels, and the per-kind rules users hit
//! most (a pod needs containers with images, a Deployment's selector must match its template).

use serde_json::Value;
use skiff_k8s::names::{
    dns_label_errors, dns_subdomain_errors, label_key_errors, label_value_errors,
};

use super::error::FieldError;

fn str_at<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer).and_then(Value::as_str)
}

/// Validates `metadata`: name (label-style for `dns_label_names` kinds), labels, annotations.
pub fn validate_metadata(object: &Value, dns_label_names: bool, errs: &mut Vec<FieldError>) {
    let name = str_at(object, "/metadata/name").unwrap_or("");
    if name.is_empty() {
        errs.push(FieldError::required("metadata.name"));
    } else {
        let problems = if dns_label_names {
            dns_label_errors(name)
        } else {
            dns_subdomain_errors(name)
        };
        for p in problems {
            errs.push(FieldError::invalid("metadata.name", name, p.to_string()));
        }
    }
    validate_labels(object.pointer("/metadata/labels"), "metadata.labels", errs);
    if let Some(annotations) = object
        .pointer("/metadata/annotations")
        .and_then(Value::as_object)
    {
        for key in annotations.keys() {
            for p in label_key_errors(key) {
                errs.push(FieldError::invalid(
                    "metadata.annotations",
                    key,
                    p.to_string(),
                ));
            }
        }
        let size: usize = annotations
            .iter()
            .map(|(k, v)| k.len() + v.as_str().map_or(0, str::len))
            .sum();
        if size > 256 * 1024 {
            errs.push(FieldError {
                reason: "FieldValueTooLong",
                field: "metadata.annotations".into(),
                message: "Too long: must have at most 262144 bytes".into(),
            });
        }
    }
}

fn validate_labels(labels: Option<&Value>, field: &str, errs: &mut Vec<FieldError>) {
    for (key, value) in labels.and_then(Value::as_object).into_iter().flatten() {
        for p in label_key_errors(key) {
            errs.push(FieldError::invalid(field, key, p.to_string()));
        }
        let value = value.as_str().unwrap_or_default();
        for p in label_value_errors(value) {
            errs.push(FieldError::invalid(
                format!("{field}[{key}]"),
                value,
                p.to_string(),
            ));
        }
    }
}

fn validate_port(port: Option<&Value>, field: String, errs: &mut Vec<FieldError>) {
    match port.and_then(Value::as_i64) {
        None => errs.push(FieldError::required(field)),
        Some(p) if !(1..=65535).contains(&p) => errs.push(FieldError::invalid(
            field,
            &p.to_string(),
            "must be between 1 and 65535, inclusive",
        )),
        Some(_) => {}
    }
}

fn validate_containers(
    list: Option<&Value>,
    field: &str,
    required: bool,
    errs: &mut Vec<FieldError>,
) {
    let containers = list
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    if containers.is_empty() {
        if required {
            errs.push(FieldError::required(field));
        }
        return;
    }
    let mut seen = std::collections::HashSet::new();
    for (i, c) in containers.iter().enumerate() {
        let at = format!("{field}[{i}]");
        match c.get("name").and_then(Value::as_str) {
            None | Some("") => errs.push(FieldError::required(format!("{at}.name"))),
            Some(name) => {
                for p in dns_label_errors(name) {
                    errs.push(FieldError::invalid(
                        format!("{at}.name"),
                        name,
                        p.to_string(),
                    ));
                }
                if !seen.insert(name.to_owned()) {
                    errs.push(FieldError {
                        reason: "FieldValueDuplicate",
                        field: format!("{at}.name"),
                        message: format!("Duplicate value: {name:?}"),
                    });
                }
            }
        }
        if c.get("image")
            .and_then(Value::as_str)
            .is_none_or(|s| s.trim().is_empty())
        {
            errs.push(FieldError::required(format!("{at}.image")));
        }
        for (j, port) in c
            .get("ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            validate_port(
                port.get("containerPort"),
                format!("{at}.ports[{j}].containerPort"),
                errs,
            );
        }
    }
}

/// Validates a pod spec found at `field`.
pub fn validate_pod_spec(spec: Option<&Value>, field: &str, errs: &mut Vec<FieldError>) {
    let Some(spec) = spec else {
        errs.push(FieldError::required(format!("{field}.containers")));
        return;
    };
    validate_containers(
        spec.get("containers"),
        &format!("{field}.containers"),
        true,
        errs,
    );
    validate_containers(
        spec.get("initContainers"),
        &format!("{field}.initContainers"),
        false,
        errs,
    );
    if let Some(policy) = spec.get("restartPolicy").and_then(Value::as_str) {
        if !["Always", "OnFailure", "Never"].contains(&policy) {
            errs.push(FieldError {
                reason: "FieldValueNotSupported",
                field: format!("{field}.restartPolicy"),
                message: format!("Unsupported value: {policy:?}: supported values: \"Always\", \"OnFailure\", \"Never\""),
            });
        }
    }
}

/// Validates a workload with a selector and pod template (Deployment, ReplicaSet, ...).
fn validate_workload(object: &Value, errs: &mut Vec<FieldError>) {
    let selector = object.pointer("/spec/selector");
    let template_labels = object.pointer("/spec/template/metadata/labels");
    validate_labels(template_labels, "spec.template.metadata.labels", errs);
    validate_pod_spec(
        object.pointer("/spec/template/spec"),
        "spec.template.spec",
        errs,
    );
    let kind = object
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default();
    // ReplicationController's selector is a plain map and defaults to the template labels.
    if kind == "ReplicationController" {
        return;
    }
    let Some(selector) = selector.filter(|s| s.as_object().is_some_and(|m| !m.is_empty())) else {
        errs.push(FieldError::required("spec.selector"));
        return;
    };
    match skiff_k8s::labels::LabelSelector::from_object(selector) {
        Ok(sel) if sel.is_empty() => errs.push(FieldError::invalid(
            "spec.selector",
            &selector.to_string(),
            "empty selector is invalid for deployment",
        )),
        Ok(sel) => {
            let template = serde_json::json!({"metadata": {"labels": template_labels.cloned().unwrap_or(Value::Null)}});
            if !sel.matches(&template) {
                errs.push(FieldError::invalid(
                    "spec.template.metadata.labels",
                    &template_labels.map(Value::to_string).unwrap_or_default(),
                    "`selector` does not match template `labels`",
                ));
            }
        }
        Err(e) => errs.push(FieldError::invalid(
            "spec.selector",
            &selector.to_string(),
            e.to_string(),
        )),
    }
}

fn non_negative(spec: &Value, key: &str, field: &str, errs: &mut Vec<FieldError>) {
    if let Some(n) = spec.get(key).and_then(Value::as_i64) {
        if n < 0 {
            errs.push(FieldError::invalid(
                format!("{field}.{key}"),
                &n.to_string(),
                "must be greater than or equal to 0",
            ));
        }
    }
}

fn not_supported(field: impl Into<String>, value: &str, supported: &[&str]) -> FieldError {
    let list: Vec<String> = supported.iter().map(|s| format!("{s:?}")).collect();
    FieldError {
        reason: "FieldValueNotSupported",
        field: field.into(),
        message: format!(
            "Unsupported value: {value:?}: supported values: {}",
            list.join(", ")
        ),
    }
}

/// The DaemonSet and StatefulSet rules of Kubernetes' apps validation that the controllers
/// rely on: pods that always restart, known strategies, sane rollout numbers.
fn validate_apps_set(kind: &str, object: &Value, errs: &mut Vec<FieldError>) {
    if let Some(p) = str_at(object, "/spec/template/spec/restartPolicy").filter(|p| *p != "Always")
    {
        errs.push(not_supported(
            "spec.template.spec.restartPolicy",
            p,
            &["Always"],
        ));
    }
    if let Some(t) = str_at(object, "/spec/updateStrategy/type")
        .filter(|t| !["RollingUpdate", "OnDelete"].contains(t))
    {
        errs.push(not_supported(
            "spec.updateStrategy.type",
            t,
            &["OnDelete", "RollingUpdate"],
        ));
    }
    let non_negative = |pointer: &str, field: &str, errs: &mut Vec<FieldError>| {
        if let Some(n) = object
            .pointer(pointer)
            .and_then(Value::as_i64)
            .filter(|n| *n < 0)
        {
            errs.push(FieldError::invalid(
                field,
                &n.to_string(),
                "must be greater than or equal to 0",
            ));
        }
    };
    non_negative("/spec/minReadySeconds", "spec.minReadySeconds", errs);
    non_negative(
        "/spec/revisionHistoryLimit",
        "spec.revisionHistoryLimit",
        errs,
    );
    if kind == "StatefulSet" {
        if let Some(p) = str_at(object, "/spec/podManagementPolicy")
            .filter(|p| !["OrderedReady", "Parallel"].contains(p))
        {
            errs.push(not_supported(
                "spec.podManagementPolicy",
                p,
                &["OrderedReady", "Parallel"],
            ));
        }
        non_negative(
            "/spec/updateStrategy/rollingUpdate/partition",
            "spec.updateStrategy.rollingUpdate.partition",
            errs,
        );
        non_negative("/spec/ordinals/start", "spec.ordinals.start", errs);
        return;
    }
    // DaemonSet: maxUnavailable and maxSurge are counts or percentages, not both zero.
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

/// The StatefulSet spec fields an update may change (Kubernetes' `ValidateStatefulSetUpdate`).
const STATEFULSET_MUTABLE: &[&str] = &[
    "replicas",
    "ordinals",
    "template",
    "updateStrategy",
    "revisionHistoryLimit",
    "persistentVolumeClaimRetentionPolicy",
    "minReadySeconds",
];

/// Rules about what an update may change: a DaemonSet's selector, a StatefulSet's spec beyond
/// [`STATEFULSET_MUTABLE`] and a Job's template, selector and completions (the controllers find
/// and make their pods through them).
pub fn validate_update(kind: &str, old: &Value, new: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    match kind {
        "DaemonSet" if old.pointer("/spec/selector") != new.pointer("/spec/selector") => {
            errs.push(FieldError::immutable("spec.selector"));
        }
        // A Job's pods are made from a template and selector that must not change under it.
        "Job" => {
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
        "StatefulSet" => {
            let frozen = |v: &Value| -> Value {
                let mut spec = v.get("spec").cloned().unwrap_or(Value::Null);
                if let Some(m) = spec.as_object_mut() {
                    m.retain(|k, _| !STATEFULSET_MUTABLE.contains(&k.as_str()));
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
        _ => {}
    }
    errs
}

/// Validates a JobSpec found at `field` (a Job's `spec` or a CronJob's `jobTemplate.spec`).
/// The selector is generated on create, so it is only checked when the Job has one.
fn validate_job_spec(spec: Option<&Value>, field: &str, errs: &mut Vec<FieldError>) {
    let Some(spec) = spec else {
        errs.push(FieldError::required(format!("{field}.template")));
        return;
    };
    for key in [
        "parallelism",
        "completions",
        "backoffLimit",
        "ttlSecondsAfterFinished",
    ] {
        non_negative(spec, key, field, errs);
    }
    if let Some(d) = spec.get("activeDeadlineSeconds").and_then(Value::as_i64) {
        if d <= 0 {
            errs.push(FieldError::invalid(
                format!("{field}.activeDeadlineSeconds"),
                &d.to_string(),
                "must be greater than 0",
            ));
        }
    }
    let mode = spec
        .get("completionMode")
        .and_then(Value::as_str)
        .unwrap_or("NonIndexed");
    if !["NonIndexed", "Indexed"].contains(&mode) {
        errs.push(not_supported(
            format!("{field}.completionMode"),
            mode,
            &["NonIndexed", "Indexed"],
        ));
    }
    if mode == "Indexed" && spec.get("completions").is_none_or(Value::is_null) {
        errs.push(
            FieldError::required(format!("{field}.completions"))
                .with_message("when completion mode is Indexed"),
        );
    }
    for (key, what) in [
        ("podFailurePolicy", "pod failure policies"),
        ("successPolicy", "success policies"),
        ("backoffLimitPerIndex", "per-index backoff limits"),
        ("managedBy", "external Job controllers"),
    ] {
        if spec.get(key).is_some_and(|v| !v.is_null()) {
            errs.push(FieldError::forbidden(
                format!("{field}.{key}"),
                format!("skiff's Job controller does not implement {what}"),
            ));
        }
    }
    let template_labels = spec.pointer("/template/metadata/labels");
    validate_labels(
        template_labels,
        &format!("{field}.template.metadata.labels"),
        errs,
    );
    let pod_field = format!("{field}.template.spec");
    validate_pod_spec(spec.pointer("/template/spec"), &pod_field, errs);
    if let Some(policy) = spec
        .pointer("/template/spec/restartPolicy")
        .and_then(Value::as_str)
    {
        if !["OnFailure", "Never"].contains(&policy) {
            errs.push(not_supported(
                format!("{pod_field}.restartPolicy"),
                policy,
                &["OnFailure", "Never"],
            ));
        }
    }
    let manual = spec.get("manualSelector") == Some(&Value::Bool(true));
    match spec.get("selector").filter(|s| !s.is_null()) {
        None if manual => errs.push(FieldError::required(format!("{field}.selector"))),
        None => {}
        Some(selector) => match skiff_k8s::labels::LabelSelector::from_object(selector) {
            Ok(sel) if sel.is_empty() => errs.push(FieldError::invalid(
                format!("{field}.selector"),
                &selector.to_string(),
                "empty selector is invalid for job",
            )),
            Ok(sel) => {
                let template = serde_json::json!({"metadata": {"labels": template_labels.cloned().unwrap_or(Value::Null)}});
                if !sel.matches(&template) {
                    errs.push(FieldError::invalid(
                        format!("{field}.template.metadata.labels"),
                        &template_labels.map(Value::to_string).unwrap_or_default(),
                        "`selector` does not match template `labels`",
                    ));
                }
            }
            Err(e) => errs.push(FieldError::invalid(
                format!("{field}.selector"),
                &selector.to_string(),
                e.to_string(),
            )),
        },
    }
}

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

/// Per-kind validation of a decoded object.
pub fn validate_object(kind: &str, object: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let label_names = matches!(kind, "Namespace" | "Service");
    validate_metadata(object, label_names, &mut errs);
    match kind {
        "Pod" => validate_pod_spec(object.get("spec"), "spec", &mut errs),
        "Deployment" | "ReplicaSet" | "DaemonSet" | "StatefulSet" | "ReplicationController" => {
            validate_workload(object, &mut errs);
            if matches!(kind, "DaemonSet" | "StatefulSet") {
                validate_apps_set(kind, object, &mut errs);
            }
            if let Some(r) = object.pointer("/spec/replicas").and_then(Value::as_i64) {
                if r < 0 {
                    errs.push(FieldError::invalid(
                        "spec.replicas",
                        &r.to_string(),
                        "must be greater than or equal to 0",
                    ));
                }
            }
        }
        "Job" => validate_job_spec(object.get("spec"), "spec", &mut errs),
        "CronJob" => validate_cronjob(object, &mut errs),
        "Service" => {
            let ty = str_at(object, "/spec/type").unwrap_or("ClusterIP");
            let headless = str_at(object, "/spec/clusterIP") == Some("None");
            let ports = object
                .pointer("/spec/ports")
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or_default();
            if ports.is_empty() && ty != "ExternalName" && !headless {
                errs.push(FieldError::required("spec.ports"));
            }
            for (i, p) in ports.iter().enumerate() {
                validate_port(p.get("port"), format!("spec.ports[{i}].port"), &mut errs);
            }
            if !["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"].contains(&ty) {
                errs.push(FieldError {
                    reason: "FieldValueNotSupported",
                    field: "spec.type".into(),
                    message: format!("Unsupported value: {ty:?}: supported values: \"ClusterIP\", \"ExternalName\", \"LoadBalancer\", \"NodePort\""),
                });
            }
        }
        _ => {}
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pod_without_containers_or_image() {
        let errs = validate_object(
            "Pod",
            &json!({"metadata": {"name": "p"}, "spec": {"containers": []}}),
        );
        assert_eq!(errs, vec![FieldError::required("spec.containers")]);
        let errs = validate_object(
            "Pod",
            &json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c"}]}}),
        );
        assert_eq!(errs, vec![FieldError::required("spec.containers[0].image")]);
    }

    #[test]
    fn daemonset_and_statefulset_rules() {
        let ds = |ru: Value, policy: &str| {
            json!({"kind": "DaemonSet", "metadata": {"name": "d"}, "spec": {
                "selector": {"matchLabels": {"app": "d"}},
                "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": ru},
                "template": {"metadata": {"labels": {"app": "d"}},
                    "spec": {"restartPolicy": policy, "containers": [{"name": "c", "image": "i"}]}}}})
        };
        assert!(
            validate_object("DaemonSet", &ds(json!({"maxUnavailable": 1}), "Always")).is_empty()
        );
        assert!(validate_object(
            "DaemonSet",
            &ds(json!({"maxUnavailable": 0, "maxSurge": "10%"}), "Always")
        )
        .is_empty());
        let errs = validate_object(
            "DaemonSet",
            &ds(json!({"maxUnavailable": 0, "maxSurge": 0}), "Always"),
        );
        assert_eq!(
            errs[0].field,
            "spec.updateStrategy.rollingUpdate.maxUnavailable"
        );
        let errs = validate_object("DaemonSet", &ds(json!({"maxUnavailable": "x%"}), "Never"));
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.template.spec.restartPolicy",
                "spec.updateStrategy.rollingUpdate.maxUnavailable"
            ]
        );
        let sts = json!({"kind": "StatefulSet", "metadata": {"name": "s"}, "spec": {
            "selector": {"matchLabels": {"app": "s"}}, "podManagementPolicy": "Random",
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": -1}},
            "template": {"metadata": {"labels": {"app": "other"}},
                "spec": {"containers": [{"name": "c", "image": "i"}]}}}});
        let fields: Vec<String> = validate_object("StatefulSet", &sts)
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(
            fields,
            [
                "spec.template.metadata.labels",
                "spec.podManagementPolicy",
                "spec.updateStrategy.rollingUpdate.partition"
            ]
        );
    }

    #[test]
    fn daemonset_selector_and_statefulset_identity_are_fixed() {
        let sts = json!({"spec": {"replicas": 1, "serviceName": "a", "selector": {"matchLabels": {"app": "a"}}}});
        let mut scaled = sts.clone();
        scaled["spec"]["replicas"] = json!(3);
        scaled["spec"]["template"] = json!({"metadata": {}});
        assert!(validate_update("StatefulSet", &sts, &scaled).is_empty());
        let mut renamed = sts.clone();
        renamed["spec"]["serviceName"] = json!("b");
        let errs = validate_update("StatefulSet", &sts, &renamed);
        assert_eq!(
            (errs[0].field.as_str(), errs[0].reason),
            ("spec", "FieldValueForbidden")
        );
        let mut reselected = sts.clone();
        reselected["spec"]["selector"] = json!({"matchLabels": {"app": "b"}});
        let errs = validate_update("DaemonSet", &sts, &reselected);
        assert_eq!(errs[0].field, "spec.selector");
        assert!(validate_update("Deployment", &sts, &reselected).is_empty());
    }

    #[test]
    fn deployment_selector_must_match_template() {
        let d = json!({"kind": "Deployment", "metadata": {"name": "d"}, "spec": {
            "selector": {"matchLabels": {"app": "a"}},
            "template": {"metadata": {"labels": {"app": "b"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}});
        let errs = validate_object("Deployment", &d);
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].field, "spec.template.metadata.labels");
    }

    fn job(restart: &str) -> Value {
        json!({"metadata": {"name": "j"}, "spec": {"template": {"spec": {
            "restartPolicy": restart, "containers": [{"name": "c", "image": "busybox"}]}}}})
    }

    #[test]
    fn job_pods_must_not_restart_always() {
        assert_eq!(validate_object("Job", &job("Never")), vec![]);
        assert_eq!(validate_object("Job", &job("OnFailure")), vec![]);
        let errs = validate_object("Job", &job("Always"));
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].field, "spec.template.spec.restartPolicy");
        assert_eq!(
            errs[0].message,
            "Unsupported value: \"Always\": supported values: \"OnFailure\", \"Never\""
        );
        let mut negative = job("Never");
        negative["spec"]["backoffLimit"] = json!(-1);
        assert_eq!(
            validate_object("Job", &negative)[0].field,
            "spec.backoffLimit"
        );
        let mut indexed = job("Never");
        indexed["spec"]["completionMode"] = json!("Indexed");
        assert_eq!(
            validate_object("Job", &indexed)[0].field,
            "spec.completions"
        );
    }

    #[test]
    fn job_template_and_selector_are_immutable() {
        let old = job("Never");
        let mut new = old.clone();
        new["spec"]["parallelism"] = json!(3);
        new["metadata"]["labels"] = json!({"a": "b"});
        assert_eq!(validate_update("Job", &old, &new), vec![]);
        new["spec"]["template"]["spec"]["containers"][0]["image"] = json!("busybox:2");
        assert_eq!(
            validate_update("Job", &old, &new),
            vec![FieldError::immutable("spec.template")]
        );
        assert_eq!(validate_update("Deployment", &old, &new), vec![]);
    }

    #[test]
    fn cronjob_schedule_zone_and_policy() {
        let cj = |schedule: &str, tz: Option<&str>, policy: &str| {
            json!({"metadata": {"name": "cj"}, "spec": {"schedule": schedule, "timeZone": tz,
                "concurrencyPolicy": policy,
                "jobTemplate": {"spec": {"template": {"spec": {"restartPolicy": "OnFailure",
                    "containers": [{"name": "c", "image": "busybox"}]}}}}}})
        };
        assert_eq!(
            validate_object("CronJob", &cj("*/5 * * * *", None, "Allow")),
            vec![]
        );
        assert_eq!(
            validate_object("CronJob", &cj("@daily", Some("Europe/Berlin"), "Forbid")),
            vec![]
        );
        let errs = validate_object("CronJob", &cj("every minute", None, "Allow"));
        assert_eq!(errs[0].field, "spec.schedule");
        assert!(
            errs[0].message.contains("expected exactly 5 fields"),
            "{errs:?}"
        );
        let errs = validate_object("CronJob", &cj("* * * * *", Some("Nowhere/Land"), "Allow"));
        assert_eq!(errs[0].field, "spec.timeZone");
        let errs = validate_object("CronJob", &cj("* * * * *", None, "Sometimes"));
        assert_eq!(errs[0].field, "spec.concurrencyPolicy");
        let mut long = cj("* * * * *", None, "Allow");
        long["metadata"]["name"] = json!("a".repeat(53));
        assert_eq!(validate_object("CronJob", &long)[0].field, "metadata.name");
    }

    #[test]
    fn bad_labels_are_field_errors() {
        let errs = validate_object(
            "ConfigMap",
            &json!({"metadata": {"name": "c", "labels": {"bad key": "v"}}}),
        );
        assert_eq!(errs[0].field, "metadata.labels");
    }
}
