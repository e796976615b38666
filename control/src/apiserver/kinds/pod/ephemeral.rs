//! `pods/{name}/ephemeralcontainers`: the only way to change `spec.ephemeralContainers`
//! (`kubectl debug` patches it). As Kubernetes validates it: containers are only added, never
//! changed or removed; names are unique among all of the pod's containers; an ephemeral
//! container has an image and none of the fields that make no sense for a container that is
//! not restarted and has no guaranteed resources (ports, probes, lifecycle, resources,
//! restartPolicy); `targetContainerName` names one of the pod's containers.

use serde_json::Value;

use crate::apiserver::error::FieldError;

/// Fields an ephemeral container may not set.
const FORBIDDEN: [&str; 8] = [
    "ports",
    "livenessProbe",
    "readinessProbe",
    "startupProbe",
    "lifecycle",
    "resources",
    "resizePolicy",
    "restartPolicy",
];

fn list<'a>(pod: &'a Value, field: &str) -> &'a [Value] {
    pod.pointer(&format!("/spec/{field}"))
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

fn name(container: &Value) -> &str {
    container["name"].as_str().unwrap_or_default()
}

/// Whether a field is set to something (an empty `resources: {}` or `ports: []` is not).
fn set(value: Option<&Value>) -> bool {
    match value {
        None | Some(Value::Null) => false,
        Some(Value::Object(m)) => !m.is_empty(),
        Some(Value::Array(a)) => !a.is_empty(),
        Some(_) => true,
    }
}

/// The errors of changing `old`'s ephemeral containers to `new`'s (an update of any kind: a
/// pod update that leaves them alone has none).
pub fn validate_update(old: &Value, new: &Value, errs: &mut Vec<FieldError>) {
    let (before, after) = (
        list(old, "ephemeralContainers"),
        list(new, "ephemeralContainers"),
    );
    for c in before {
        match after.iter().position(|n| name(n) == name(c)) {
            None => errs.push(FieldError::forbidden(
                "spec.ephemeralContainers",
                format!("existing ephemeral containers \"{}\" may not be removed", name(c)),
            )),
            Some(j) if after[j] != *c => errs.push(FieldError::forbidden(
                format!("spec.ephemeralContainers[{j}]"),
                format!("existing ephemeral containers \"{}\" may not be changed", name(c)),
            )),
            Some(_) => {}
        }
    }
    let mut seen: Vec<&str> = list(new, "initContainers")
        .iter()
        .chain(list(new, "containers"))
        .map(name)
        .collect();
    let targets = seen.clone();
    for (i, c) in after.iter().enumerate() {
        let path = format!("spec.ephemeralContainers[{i}]");
        let n = name(c);
        if n.is_empty() {
            errs.push(FieldError::required(format!("{path}.name")));
        } else if !skiff_k8s::names::is_dns_label(n) {
            errs.push(FieldError::invalid(
                format!("{path}.name"),
                n,
                "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-'",
            ));
        } else if seen.contains(&n) {
            errs.push(FieldError {
                reason: "FieldValueDuplicate",
                ..FieldError::invalid(format!("{path}.name"), n, "Duplicate value")
            });
        }
        seen.push(n);
        if c["image"].as_str().is_none_or(str::is_empty) {
            errs.push(FieldError::required(format!("{path}.image")));
        }
        for field in FORBIDDEN {
            if set(c.get(field)) {
                errs.push(FieldError::forbidden(
                    format!("{path}.{field}"),
                    "cannot be set for an Ephemeral Container",
                ));
            }
        }
        if let Some(target) = c["targetContainerName"].as_str() {
            if !targets.contains(&target) {
                errs.push(FieldError {
                    reason: "FieldValueNotFound",
                    ..FieldError::invalid(
                        format!("{path}.targetContainerName"),
                        target,
                        "Not found",
                    )
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod(ephemeral: Value) -> Value {
        json!({"spec": {"containers": [{"name": "app", "image": "busybox"}],
            "initContainers": [{"name": "setup", "image": "busybox"}],
            "ephemeralContainers": ephemeral}})
    }

    fn errors(old: Value, new: Value) -> Vec<(String, &'static str)> {
        let mut errs = Vec::new();
        validate_update(&pod(old), &pod(new), &mut errs);
        errs.into_iter().map(|e| (e.field, e.reason)).collect()
    }

    #[test]
    fn additions_pass() {
        let debugger = json!({"name": "debugger", "image": "busybox",
            "targetContainerName": "app", "stdin": true, "tty": true, "resources": {}});
        assert_eq!(errors(json!([]), json!([debugger.clone()])), vec![]);
        let second = json!({"name": "d2", "image": "busybox"});
        assert_eq!(
            errors(json!([debugger.clone()]), json!([debugger, second])),
            vec![]
        );
    }

    #[test]
    fn existing_ones_stay_as_they_are() {
        let debugger = json!({"name": "debugger", "image": "busybox"});
        assert_eq!(
            errors(json!([debugger.clone()]), json!([])),
            vec![("spec.ephemeralContainers".into(), "FieldValueForbidden")]
        );
        assert_eq!(
            errors(
                json!([debugger]),
                json!([{"name": "debugger", "image": "alpine"}])
            ),
            vec![("spec.ephemeralContainers[0]".into(), "FieldValueForbidden")]
        );
    }

    #[test]
    fn names_images_and_fields_are_checked() {
        let got = errors(
            json!([]),
            json!([
                {"name": "app", "image": "busybox"},
                {"name": "setup", "image": "busybox"},
                {"name": "Bad_Name", "image": "busybox"},
                {"name": "noimage"},
                {"image": "busybox"},
                {"name": "ported", "image": "busybox", "ports": [{"containerPort": 80}],
                 "readinessProbe": {"exec": {"command": ["true"]}},
                 "resources": {"limits": {"cpu": "1"}}},
                {"name": "lost", "image": "busybox", "targetContainerName": "nope"},
                {"name": "lost", "image": "busybox"},
            ]),
        );
        assert_eq!(
            got,
            vec![
                ("spec.ephemeralContainers[0].name".into(), "FieldValueDuplicate"),
                ("spec.ephemeralContainers[1].name".into(), "FieldValueDuplicate"),
                ("spec.ephemeralContainers[2].name".into(), "FieldValueInvalid"),
                ("spec.ephemeralContainers[3].image".into(), "FieldValueRequired"),
                ("spec.ephemeralContainers[4].name".into(), "FieldValueRequired"),
                ("spec.ephemeralContainers[5].ports".into(), "FieldValueForbidden"),
                (
                    "spec.ephemeralContainers[5].readinessProbe".into(),
                    "FieldValueForbidden"
                ),
                ("spec.ephemeralContainers[5].resources".into(), "FieldValueForbidden"),
                (
                    "spec.ephemeralContainers[6].targetContainerName".into(),
                    "FieldValueNotFound"
                ),
                ("spec.ephemeralContainers[7].name".into(), "FieldValueDuplicate"),
            ]
        );
    }
}
