//! Semantic validation after typed decoding: names, labels, and the per-kind rules users hit
//! most (a pod needs containers with images, a Deployment's selector must match its template).

use serde_json::Value;
use skiff_k8s::names::{
    dns_label_errors, dns_subdomain_errors, label_key_errors, label_value_errors,
    path_segment_errors, NameError,
};

use super::error::FieldError;
use super::kinds::Strategy;

pub fn str_at<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer).and_then(Value::as_str)
}

/// What a kind's object names must be (the name function Kubernetes passes to
/// `ValidateObjectMeta`), chosen by [`Strategy::name_rule`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NameRule {
    /// A DNS-1123 subdomain: most kinds.
    #[default]
    DnsSubdomain,
    /// A DNS-1123 label: names that become DNS labels (Namespace, Service).
    DnsLabel,
    /// Anything that is one URL path segment (RBAC kinds: `system:basic-user`).
    PathSegment,
}

impl NameRule {
    /// Why `name` breaks the rule, in Kubernetes' words.
    pub fn errors(self, name: &str) -> Vec<NameError> {
        match self {
            Self::DnsSubdomain => dns_subdomain_errors(name),
            Self::DnsLabel => dns_label_errors(name),
            Self::PathSegment => path_segment_errors(name),
        }
    }
}

/// Validates `metadata`: the name by the kind's rule, labels, annotations.
pub fn validate_metadata(object: &Value, names: NameRule, errs: &mut Vec<FieldError>) {
    let name = str_at(object, "/metadata/name").unwrap_or("");
    if name.is_empty() {
        errs.push(FieldError::required("metadata.name"));
    } else {
        for p in names.errors(name) {
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

/// Validates a label map found at `field`.
pub fn validate_labels(labels: Option<&Value>, field: &str, errs: &mut Vec<FieldError>) {
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

/// Validates a `metav1.LabelSelector` found at `field` (`ValidateLabelSelector`): its
/// matchLabels as labels, and each expression's operator, values and key.
pub fn validate_label_selector(selector: &Value, field: &str, errs: &mut Vec<FieldError>) {
    validate_labels(
        selector.get("matchLabels"),
        &format!("{field}.matchLabels"),
        errs,
    );
    let expressions = selector.get("matchExpressions").and_then(Value::as_array);
    for (i, expr) in expressions.into_iter().flatten().enumerate() {
        let at = format!("{field}.matchExpressions[{i}]");
        let values = expr
            .get("values")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        match expr.get("operator").and_then(Value::as_str).unwrap_or("") {
            "In" | "NotIn" if values.is_empty() => errs.push(
                FieldError::required(format!("{at}.values"))
                    .with_message("must be specified when `operator` is 'In' or 'NotIn'"),
            ),
            "Exists" | "DoesNotExist" if !values.is_empty() => errs.push(FieldError::forbidden(
                format!("{at}.values"),
                "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
            )),
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => errs.push(FieldError::invalid(
                format!("{at}.operator"),
                other,
                "not a valid selector operator",
            )),
        }
        let key = expr.get("key").and_then(Value::as_str).unwrap_or("");
        for p in label_key_errors(key) {
            errs.push(FieldError::invalid(format!("{at}.key"), key, p.to_string()));
        }
        for (j, value) in values.iter().enumerate() {
            let value = value.as_str().unwrap_or("");
            for p in label_value_errors(value) {
                errs.push(FieldError::invalid(
                    format!("{at}.values[{j}]"),
                    value,
                    p.to_string(),
                ));
            }
        }
    }
}

/// Validates a port number (1-65535) found at `field`.
pub fn validate_port(port: Option<&Value>, field: String, errs: &mut Vec<FieldError>) {
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
            if port.get("hostPort").is_some_and(|p| p.as_i64() != Some(0)) {
                validate_port(
                    port.get("hostPort"),
                    format!("{at}.ports[{j}].hostPort"),
                    errs,
                );
            }
        }
    }
}

/// The pod's sysctl names (`validateSysctls`) and each container's `procMount`
/// (`Default`, or `Unmasked` only with `hostUsers: false`, as Kubernetes requires).
fn validate_sysctls_and_proc_mount(spec: &Value, field: &str, errs: &mut Vec<FieldError>) {
    const MAX: usize = 253;
    let sysctls = spec
        .pointer("/securityContext/sysctls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten();
    let mut seen = std::collections::HashSet::new();
    for (i, s) in sysctls.enumerate() {
        let at = format!("{field}.securityContext.sysctls[{i}].name");
        match s.get("name").and_then(Value::as_str) {
            None | Some("") => errs.push(FieldError::required(at)),
            Some(name) if !sysctl_name_ok(name, MAX) => errs.push(FieldError::invalid(
                at,
                name,
                format!(
                    "must have at most {MAX} characters and match regex \
                     ([a-z0-9]([-_a-z0-9]*[a-z0-9])?[\\./])*[a-z0-9]([-_a-z0-9]*[a-z0-9])?"
                ),
            )),
            Some(name) => {
                if !seen.insert(name.replace('/', ".")) {
                    errs.push(FieldError {
                        reason: "FieldValueDuplicate",
                        field: at,
                        message: format!("Duplicate value: {name:?}"),
                    });
                }
            }
        }
    }
    let host_users = spec
        .get("hostUsers")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    for (list, i, c) in containers_of(spec) {
        let Some(mount) = c
            .pointer("/securityContext/procMount")
            .and_then(Value::as_str)
        else {
            continue;
        };
        let at = format!("{field}.{list}[{i}].securityContext.procMount");
        match mount {
            "Default" => {}
            "Unmasked" if !host_users => {}
            "Unmasked" => errs.push(FieldError::invalid(
                at,
                mount,
                "`hostUsers` must be false to use `Unmasked`",
            )),
            other => errs.push(FieldError {
                reason: "FieldValueNotSupported",
                field: at,
                message: format!(
                    "Unsupported value: {other:?}: supported values: \"Default\", \"Unmasked\""
                ),
            }),
        }
    }
}

/// A sysctl name: dot- (or slash-) separated segments of `[a-z0-9]([-_a-z0-9]*[a-z0-9])?`.
fn sysctl_name_ok(name: &str, max: usize) -> bool {
    let segment_ok = |seg: &str| {
        let b = seg.as_bytes();
        let edge = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
        !b.is_empty()
            && b.first().is_some_and(edge)
            && b.last().is_some_and(edge)
            && b.iter().all(|c| edge(c) || *c == b'-' || *c == b'_')
    };
    name.len() <= max && name.split(['.', '/']).all(segment_ok)
}

/// Every container of a pod spec with its list (`initContainers`, then `containers`) and index.
fn containers_of(spec: &Value) -> impl Iterator<Item = (&'static str, usize, &Value)> {
    ["initContainers", "containers"]
        .into_iter()
        .flat_map(move |list| {
            spec.get(list)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
                .map(move |(i, c)| (list, i, c))
        })
}

/// Host ports are unique within a pod (`AccumulateUniqueHostPorts`: protocol, host IP and
/// port), and a hostNetwork pod's host port is its container port (`validateHostNetwork`).
fn validate_host_ports(spec: &Value, field: &str, errs: &mut Vec<FieldError>) {
    let host_network = spec.get("hostNetwork") == Some(&Value::Bool(true));
    let mut seen = std::collections::HashSet::new();
    for (list, i, c) in containers_of(spec) {
        let ports = c
            .get("ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten();
        for (j, port) in ports.enumerate() {
            let at = format!("{field}.{list}[{i}].ports[{j}].hostPort");
            let host_port = port.get("hostPort").and_then(Value::as_i64).unwrap_or(0);
            let container_port = port.get("containerPort").and_then(Value::as_i64);
            if host_network && Some(host_port) != container_port {
                errs.push(FieldError::invalid_rendered(
                    at.clone(),
                    &host_port.to_string(),
                    "must match `containerPort` when `hostNetwork` is true",
                ));
            }
            if host_port == 0 || list == "initContainers" {
                continue;
            }
            let key = format!(
                "{}/{}/{host_port}",
                port.get("protocol")
                    .and_then(Value::as_str)
                    .unwrap_or("TCP"),
                port.get("hostIP").and_then(Value::as_str).unwrap_or("")
            );
            if !seen.insert(key.clone()) {
                errs.push(FieldError {
                    reason: "FieldValueDuplicate",
                    field: at,
                    message: format!("Duplicate value: {key:?}"),
                });
            }
        }
    }
}

/// The most seconds a duration field may hold. Kubernetes bounds a pod's
/// `activeDeadlineSeconds` by MaxInt32 (68 years); skiff bounds every `*Seconds` field the same
/// way, so that adding one to the current time can never leave the range of a timestamp.
pub const MAX_SECONDS: i64 = i32::MAX as i64;

/// Rejects a number at `key` of `parent` outside `min..=MAX_SECONDS`, with Kubernetes'
/// `InclusiveRangeError` (reported at `<field>.<key>`).
pub fn seconds_in_range(
    parent: &Value,
    key: &str,
    field: &str,
    min: i64,
    errs: &mut Vec<FieldError>,
) {
    let Some(n) = parent.get(key).and_then(Value::as_i64) else {
        return;
    };
    if !(min..=MAX_SECONDS).contains(&n) {
        errs.push(FieldError::invalid_rendered(
            format!("{field}.{key}"),
            &n.to_string(),
            &format!("must be between {min} and {MAX_SECONDS}, inclusive"),
        ));
    }
}

/// The duration fields of a pod spec: its deadline and grace period, the tolerations'
/// seconds, and the probes' grace periods (the probes' other fields are int32, which decoding
/// already bounds).
fn validate_pod_seconds(spec: &Value, field: &str, errs: &mut Vec<FieldError>) {
    seconds_in_range(spec, "activeDeadlineSeconds", field, 1, errs);
    seconds_in_range(spec, "terminationGracePeriodSeconds", field, 0, errs);
    for (i, toleration) in spec
        .get("tolerations")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        // A negative tolerationSeconds means "evict at once", as Kubernetes reads it.
        seconds_in_range(
            toleration,
            "tolerationSeconds",
            &format!("{field}.tolerations[{i}]"),
            i64::MIN,
            errs,
        );
    }
    for list in ["containers", "initContainers"] {
        for (i, container) in spec
            .get(list)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
                if let Some(p) = container.get(probe) {
                    seconds_in_range(
                        p,
                        "terminationGracePeriodSeconds",
                        &format!("{field}.{list}[{i}].{probe}"),
                        1,
                        errs,
                    );
                }
            }
        }
    }
}

/// Validates a pod spec found at `field`.
pub fn validate_pod_spec(spec: Option<&Value>, field: &str, errs: &mut Vec<FieldError>) {
    let Some(spec) = spec else {
        errs.push(FieldError::required(format!("{field}.containers")));
        return;
    };
    validate_pod_seconds(spec, field, errs);
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
    validate_host_ports(spec, field, errs);
    validate_sysctls_and_proc_mount(spec, field, errs);
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

/// Validates a workload's pod template: its labels and pod spec.
pub fn validate_template(object: &Value, errs: &mut Vec<FieldError>) {
    validate_labels(
        object.pointer("/spec/template/metadata/labels"),
        "spec.template.metadata.labels",
        errs,
    );
    validate_pod_spec(
        object.pointer("/spec/template/spec"),
        "spec.template.spec",
        errs,
    );
}

/// Validates a workload with a label selector and pod template (Deployment, ReplicaSet,
/// DaemonSet, StatefulSet): the template, and a selector that matches its labels.
pub fn validate_workload(object: &Value, errs: &mut Vec<FieldError>) {
    validate_template(object, errs);
    let selector = object.pointer("/spec/selector");
    let template_labels = object.pointer("/spec/template/metadata/labels");
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

/// Rejects a negative `spec.replicas`.
pub fn validate_replicas(object: &Value, errs: &mut Vec<FieldError>) {
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

/// Rejects a negative number at `pointer` (reported at `field`).
pub fn non_negative_at(object: &Value, pointer: &str, field: &str, errs: &mut Vec<FieldError>) {
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
}

/// The rules DaemonSets and StatefulSets share (Kubernetes' apps validation, as the
/// controllers rely on them): pods that always restart, known update strategies, sane
/// rollout numbers.
pub fn validate_apps_set(object: &Value, errs: &mut Vec<FieldError>) {
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
    non_negative_at(
        object,
        "/spec/minReadySeconds",
        "spec.minReadySeconds",
        errs,
    );
    non_negative_at(
        object,
        "/spec/revisionHistoryLimit",
        "spec.revisionHistoryLimit",
        errs,
    );
}

/// Rejects a negative `spec.<key>` (reported at `<field>.<key>`).
pub fn non_negative(spec: &Value, key: &str, field: &str, errs: &mut Vec<FieldError>) {
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

/// A `FieldValueNotSupported` cause listing the supported values.
pub fn not_supported(field: impl Into<String>, value: &str, supported: &[&str]) -> FieldError {
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

/// Validates a JobSpec found at `field` (a Job's `spec` or a CronJob's `jobTemplate.spec`).
/// The selector is generated on create, so it is only checked when the Job has one.
pub fn validate_job_spec(spec: Option<&Value>, field: &str, errs: &mut Vec<FieldError>) {
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
        } else {
            seconds_in_range(spec, "activeDeadlineSeconds", field, 1, errs);
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

/// Validates a decoded, defaulted object: its metadata, then the kind's own rules.
pub fn validate_object(strategy: &dyn Strategy, object: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    validate_metadata(object, strategy.name_rule(), &mut errs);
    strategy.validate(object, &mut errs);
    errs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::kinds::testing::{validate, validate_update};
    use serde_json::json;

    #[test]
    fn names_follow_the_kinds_rule() {
        let named = |name: &str| json!({"metadata": {"name": name}});
        let mut errs = Vec::new();
        validate_metadata(
            &named("system:basic-user"),
            NameRule::PathSegment,
            &mut errs,
        );
        assert!(errs.is_empty());
        validate_metadata(&named("a/b"), NameRule::PathSegment, &mut errs);
        assert_eq!(
            errs,
            vec![FieldError::invalid(
                "metadata.name",
                "a/b",
                "may not contain '/'"
            )]
        );
        errs.clear();
        validate_metadata(
            &named("system:basic-user"),
            NameRule::DnsSubdomain,
            &mut errs,
        );
        assert_eq!(errs.len(), 1);
    }

    #[test]
    fn label_selectors() {
        let mut errs = Vec::new();
        let selector = json!({
            "matchLabels": {"ok": "yes", "bad key!": "v"},
            "matchExpressions": [
                {"key": "a", "operator": "In"},
                {"key": "b", "operator": "Exists", "values": ["x"]},
                {"key": "c", "operator": "Near", "values": ["bad value!"]},
            ],
        });
        validate_label_selector(&selector, "sel", &mut errs);
        let got: Vec<(&str, &str)> = errs.iter().map(|e| (e.field.as_str(), e.reason)).collect();
        assert_eq!(
            got,
            [
                ("sel.matchLabels", "FieldValueInvalid"),
                ("sel.matchExpressions[0].values", "FieldValueRequired"),
                ("sel.matchExpressions[1].values", "FieldValueForbidden"),
                ("sel.matchExpressions[2].operator", "FieldValueInvalid"),
                ("sel.matchExpressions[2].values[0]", "FieldValueInvalid"),
            ]
        );
        assert_eq!(
            errs[1].message,
            "Required value: must be specified when `operator` is 'In' or 'NotIn'"
        );
        assert_eq!(
            errs[2].message,
            "Forbidden: may not be specified when `operator` is 'Exists' or 'DoesNotExist'"
        );
    }

    #[test]
    fn host_ports_are_unique_and_match_container_ports_on_the_host_network() {
        let pod = |host_network: bool, ports: Value| {
            json!({"metadata": {"name": "p"}, "spec": {"hostNetwork": host_network, "containers": [
                {"name": "a", "image": "i", "ports": ports},
                {"name": "b", "image": "i", "ports": [{"containerPort": 81, "hostPort": 8080}]},
            ]}})
        };
        let fields = |errs: Vec<FieldError>| -> Vec<(String, String)> {
            errs.into_iter().map(|e| (e.field, e.message)).collect()
        };
        let errs = validate(
            "",
            "Pod",
            &pod(
                false,
                json!([{"containerPort": 80, "hostPort": 8080, "protocol": "TCP"}]),
            ),
        );
        assert_eq!(
            fields(errs),
            [(
                "spec.containers[1].ports[0].hostPort".to_owned(),
                "Duplicate value: \"TCP//8080\"".to_owned()
            )]
        );
        let other_protocol = pod(
            false,
            json!([{"containerPort": 80, "hostPort": 8080, "protocol": "UDP"}]),
        );
        assert!(validate("", "Pod", &other_protocol).is_empty());
        let out_of_range = pod(false, json!([{"containerPort": 80, "hostPort": 70000}]));
        assert_eq!(
            fields(validate("", "Pod", &out_of_range))[0].0,
            "spec.containers[0].ports[0].hostPort"
        );
        // Defaulting made b's hostPort its containerPort... unless it was set otherwise.
        let errs = validate(
            "",
            "Pod",
            &pod(true, json!([{"containerPort": 80, "hostPort": 80}])),
        );
        assert_eq!(
            fields(errs),
            [(
                "spec.containers[1].ports[0].hostPort".to_owned(),
                "Invalid value: 8080: must match `containerPort` when `hostNetwork` is true"
                    .to_owned()
            )]
        );
    }

    #[test]
    fn sysctl_names_and_proc_mounts() {
        let pod = |sysctls: Value, proc_mount: &str, host_users: bool| {
            json!({"metadata": {"name": "p"}, "spec": {"hostUsers": host_users,
                "securityContext": {"sysctls": sysctls},
                "containers": [{"name": "a", "image": "i", "securityContext": {"procMount": proc_mount}}]}})
        };
        let fields = |v: Value| -> Vec<String> {
            validate("", "Pod", &v)
                .into_iter()
                .map(|e| format!("{}: {}", e.field, e.message))
                .collect()
        };
        assert!(fields(pod(
            json!([{"name": "net.ipv4.tcp_syncookies", "value": "1"},
            {"name": "net/ipv4/ip_local_port_range", "value": "1 2"}]),
            "Default",
            true
        ))
        .is_empty());
        let errs = fields(pod(
            json!([{"name": "Net.Bad", "value": "1"}, {"name": "", "value": "1"},
            {"name": "a.b", "value": "1"}, {"name": "a/b", "value": "2"}]),
            "Unmasked",
            true,
        ));
        assert_eq!(errs.len(), 4, "{errs:?}");
        assert!(errs[0].starts_with("spec.securityContext.sysctls[0].name: Invalid value: \"Net.Bad\": must have at most 253"));
        assert_eq!(
            errs[1],
            "spec.securityContext.sysctls[1].name: Required value"
        );
        assert_eq!(
            errs[2],
            "spec.securityContext.sysctls[3].name: Duplicate value: \"a/b\""
        );
        assert_eq!(
            errs[3],
            "spec.containers[0].securityContext.procMount: Invalid value: \"Unmasked\": `hostUsers` must be false to use `Unmasked`"
        );
        assert!(fields(pod(json!([]), "Unmasked", false)).is_empty());
        assert!(fields(pod(json!([]), "Weird", true))[0].contains("Unsupported value"));
    }

    #[test]
    fn pod_without_containers_or_image() {
        let errs = validate(
            "",
            "Pod",
            &json!({"metadata": {"name": "p"}, "spec": {"containers": []}}),
        );
        assert_eq!(errs, vec![FieldError::required("spec.containers")]);
        let errs = validate(
            "",
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
        assert!(validate(
            "apps",
            "DaemonSet",
            &ds(json!({"maxUnavailable": 1}), "Always")
        )
        .is_empty());
        assert!(validate(
            "apps",
            "DaemonSet",
            &ds(json!({"maxUnavailable": 0, "maxSurge": "10%"}), "Always")
        )
        .is_empty());
        let errs = validate(
            "apps",
            "DaemonSet",
            &ds(json!({"maxUnavailable": 0, "maxSurge": 0}), "Always"),
        );
        assert_eq!(
            errs[0].field,
            "spec.updateStrategy.rollingUpdate.maxUnavailable"
        );
        let errs = validate(
            "apps",
            "DaemonSet",
            &ds(json!({"maxUnavailable": "x%"}), "Never"),
        );
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
        let fields: Vec<String> = validate("apps", "StatefulSet", &sts)
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
        assert!(validate_update("apps", "StatefulSet", &sts, &scaled).is_empty());
        let mut renamed = sts.clone();
        renamed["spec"]["serviceName"] = json!("b");
        let errs = validate_update("apps", "StatefulSet", &sts, &renamed);
        assert_eq!(
            (errs[0].field.as_str(), errs[0].reason),
            ("spec", "FieldValueForbidden")
        );
        let mut reselected = sts.clone();
        reselected["spec"]["selector"] = json!({"matchLabels": {"app": "b"}});
        let errs = validate_update("apps", "DaemonSet", &sts, &reselected);
        assert_eq!(errs[0].field, "spec.selector");
        assert!(validate_update("apps", "Deployment", &sts, &reselected).is_empty());
    }

    #[test]
    fn deployment_selector_must_match_template() {
        let d = json!({"kind": "Deployment", "metadata": {"name": "d"}, "spec": {
            "selector": {"matchLabels": {"app": "a"}},
            "template": {"metadata": {"labels": {"app": "b"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}});
        let errs = validate("apps", "Deployment", &d);
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].field, "spec.template.metadata.labels");
    }

    fn job(restart: &str) -> Value {
        json!({"metadata": {"name": "j"}, "spec": {"template": {"spec": {
            "restartPolicy": restart, "containers": [{"name": "c", "image": "busybox"}]}}}})
    }

    #[test]
    fn job_pods_must_not_restart_always() {
        assert_eq!(validate("batch", "Job", &job("Never")), vec![]);
        assert_eq!(validate("batch", "Job", &job("OnFailure")), vec![]);
        let errs = validate("batch", "Job", &job("Always"));
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].field, "spec.template.spec.restartPolicy");
        assert_eq!(
            errs[0].message,
            "Unsupported value: \"Always\": supported values: \"OnFailure\", \"Never\""
        );
        let mut negative = job("Never");
        negative["spec"]["backoffLimit"] = json!(-1);
        assert_eq!(
            validate("batch", "Job", &negative)[0].field,
            "spec.backoffLimit"
        );
        let mut indexed = job("Never");
        indexed["spec"]["completionMode"] = json!("Indexed");
        assert_eq!(
            validate("batch", "Job", &indexed)[0].field,
            "spec.completions"
        );
    }

    #[test]
    fn job_template_and_selector_are_immutable() {
        let old = job("Never");
        let mut new = old.clone();
        new["spec"]["parallelism"] = json!(3);
        new["metadata"]["labels"] = json!({"a": "b"});
        assert_eq!(validate_update("batch", "Job", &old, &new), vec![]);
        new["spec"]["template"]["spec"]["containers"][0]["image"] = json!("busybox:2");
        assert_eq!(
            validate_update("batch", "Job", &old, &new),
            vec![FieldError::immutable("spec.template")]
        );
        assert_eq!(validate_update("apps", "Deployment", &old, &new), vec![]);
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
            validate("batch", "CronJob", &cj("*/5 * * * *", None, "Allow")),
            vec![]
        );
        assert_eq!(
            validate(
                "batch",
                "CronJob",
                &cj("@daily", Some("Europe/Berlin"), "Forbid")
            ),
            vec![]
        );
        let errs = validate("batch", "CronJob", &cj("every minute", None, "Allow"));
        assert_eq!(errs[0].field, "spec.schedule");
        assert!(
            errs[0].message.contains("expected exactly 5 fields"),
            "{errs:?}"
        );
        let errs = validate(
            "batch",
            "CronJob",
            &cj("* * * * *", Some("Nowhere/Land"), "Allow"),
        );
        assert_eq!(errs[0].field, "spec.timeZone");
        let errs = validate("batch", "CronJob", &cj("* * * * *", None, "Sometimes"));
        assert_eq!(errs[0].field, "spec.concurrencyPolicy");
        let mut long = cj("* * * * *", None, "Allow");
        long["metadata"]["name"] = json!("a".repeat(53));
        assert_eq!(
            validate("batch", "CronJob", &long)[0].field,
            "metadata.name"
        );
    }

    #[test]
    fn bad_labels_are_field_errors() {
        let errs = validate(
            "",
            "ConfigMap",
            &json!({"metadata": {"name": "c", "labels": {"bad key": "v"}}}),
        );
        assert_eq!(errs[0].field, "metadata.labels");
    }
}
