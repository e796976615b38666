//! Defaulting helpers the kinds' strategies share (pod specs and templates, apps sets), as
//! the Kubernetes API server's `SetDefaults_*` do for the fields users (and kubectl's
//! printers) rely on; each kind's own defaults are in `kinds/<kind>.rs`.

use serde_json::{json, Map, Value};

/// The map at `key`, if it is one.
pub fn obj<'a>(v: &'a mut Value, key: &str) -> Option<&'a mut Map<String, Value>> {
    v.get_mut(key).and_then(Value::as_object_mut)
}

/// Sets `key` unless it has a non-null value.
pub fn default_field(map: &mut Map<String, Value>, key: &str, value: Value) {
    if map.get(key).is_none_or(Value::is_null) {
        map.insert(key.to_owned(), value);
    }
}

fn image_pull_policy(image: &str) -> &'static str {
    let last = image.rsplit('/').next().unwrap_or(image);
    if image.contains('@') {
        return "IfNotPresent";
    }
    match last.split_once(':') {
        Some((_, "latest")) | None => "Always",
        Some(_) => "IfNotPresent",
    }
}

fn default_containers(list: Option<&mut Value>) {
    for c in list.and_then(Value::as_array_mut).into_iter().flatten() {
        let Some(c) = c.as_object_mut() else { continue };
        let image = c
            .get("image")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        default_field(c, "imagePullPolicy", json!(image_pull_policy(&image)));
        default_field(c, "terminationMessagePath", json!("/dev/termination-log"));
        default_field(c, "terminationMessagePolicy", json!("File"));
        default_field(c, "resources", json!({}));
        for p in c
            .get_mut("ports")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            if let Some(p) = p.as_object_mut() {
                default_field(p, "protocol", json!("TCP"));
            }
        }
    }
}

/// Defaults of a pod spec (also used inside templates).
pub fn default_pod_spec(spec: &mut Value) {
    let Some(map) = spec.as_object_mut() else {
        return;
    };
    default_field(map, "restartPolicy", json!("Always"));
    default_field(map, "terminationGracePeriodSeconds", json!(30));
    default_field(map, "dnsPolicy", json!("ClusterFirst"));
    default_field(map, "schedulerName", json!("default-scheduler"));
    default_field(map, "securityContext", json!({}));
    default_field(map, "enableServiceLinks", json!(true));
    default_containers(map.get_mut("containers"));
    default_containers(map.get_mut("initContainers"));
    if map.get("hostNetwork") == Some(&json!(true)) {
        default_host_network_ports(map);
    }
}

/// A hostNetwork pod listens on the node itself: each container port is also a host port
/// (`defaultHostNetworkPorts`), which is what the scheduler checks for conflicts.
fn default_host_network_ports(spec: &mut serde_json::Map<String, Value>) {
    for list in ["containers", "initContainers"] {
        let ports = spec
            .get_mut(list)
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
            .filter_map(|c| c.get_mut("ports").and_then(Value::as_array_mut))
            .flatten()
            .filter_map(Value::as_object_mut);
        for port in ports {
            let unset = port.get("hostPort").is_none_or(|p| p.as_i64() == Some(0));
            if let (true, Some(container_port)) = (unset, port.get("containerPort").cloned()) {
                port.insert("hostPort".into(), container_port);
            }
        }
    }
}

/// Defaults the pod spec of a workload's template.
pub fn default_template(object: &mut Value) {
    if let Some(spec) = object.pointer_mut("/spec/template/spec") {
        default_pod_spec(spec);
    }
}

/// StatefulSet (`stateful`) and DaemonSet defaults (`SetDefaults_StatefulSet`,
/// `SetDefaults_DaemonSet`): kubectl's rollout commands read the update strategy.
pub fn default_apps_set(stateful: bool, object: &mut Value) {
    if let Some(spec) = obj(object, "spec") {
        if stateful {
            default_field(spec, "replicas", json!(1));
            default_field(spec, "podManagementPolicy", json!("OrderedReady"));
            default_field(
                spec,
                "persistentVolumeClaimRetentionPolicy",
                json!({"whenDeleted": "Retain", "whenScaled": "Retain"}),
            );
        }
        default_field(spec, "revisionHistoryLimit", json!(10));
        default_field(spec, "updateStrategy", json!({}));
        if let Some(strategy) = spec
            .get_mut("updateStrategy")
            .and_then(Value::as_object_mut)
        {
            default_field(strategy, "type", json!("RollingUpdate"));
            if strategy.get("type") == Some(&json!("RollingUpdate")) {
                default_field(strategy, "rollingUpdate", json!({}));
                if let Some(ru) = strategy
                    .get_mut("rollingUpdate")
                    .and_then(Value::as_object_mut)
                {
                    if stateful {
                        default_field(ru, "partition", json!(0));
                    } else {
                        default_field(ru, "maxUnavailable", json!(1));
                        default_field(ru, "maxSurge", json!(0));
                    }
                }
            }
        }
    }
    default_template(object);
}

/// Fields that are plain (non-pointer) values in the Go types with `omitempty`: Go's protobuf
/// encoder always writes them, so a protobuf body carries `false`/`0` where the same request in
/// JSON has nothing. Dropping those zeros makes both encodings store the same object; zeros of
/// pointer fields (`replicas: 0`, `runAsUser: 0`) are meaningful and kept.
const PLAIN_ZERO_FIELDS: &[&str] = &[
    "generation",
    "stdin",
    "stdinOnce",
    "tty",
    "hostIPC",
    "hostNetwork",
    "hostPID",
    "paused",
    "minReadySeconds",
    "nodePort",
    "hostPort",
    "unschedulable",
    "readOnly",
    "observedGeneration",
];

/// Removes the zero values of [`PLAIN_ZERO_FIELDS`] everywhere in a decoded protobuf body
/// (except `spec.replicas`-style pointer fields, which are not listed).
pub fn drop_plain_zeros(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.retain(|k, v| {
                !(PLAIN_ZERO_FIELDS.contains(&k.as_str()) && (v == &json!(false) || v == &json!(0)))
            });
            map.values_mut().for_each(drop_plain_zeros);
        }
        Value::Array(items) => items.iter_mut().for_each(drop_plain_zeros),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::kinds::testing::defaulted;

    #[test]
    fn plain_zeros_go_and_pointer_zeros_stay() {
        let mut v = json!({"spec": {"replicas": 0, "paused": false, "template": {"metadata": {"generation": 0},
            "spec": {"hostNetwork": false, "containers": [{"stdin": false, "tty": true}], "securityContext": {"runAsUser": 0}}}}});
        drop_plain_zeros(&mut v);
        assert_eq!(
            v,
            json!({"spec": {"replicas": 0, "template": {"metadata": {},
            "spec": {"containers": [{"tty": true}], "securityContext": {"runAsUser": 0}}}}})
        );
    }

    #[test]
    fn host_network_ports_default_to_host_ports() {
        let p = defaulted(
            "",
            "Pod",
            json!({"spec": {"hostNetwork": true, "containers": [{"name": "c", "ports": [
                {"containerPort": 53, "protocol": "UDP"}, {"containerPort": 80, "hostPort": 8080}]}]}}),
        );
        let ports = &p["spec"]["containers"][0]["ports"];
        assert_eq!(ports[0]["hostPort"], 53);
        assert_eq!(
            ports[1]["hostPort"], 8080,
            "a set host port is kept (validation refuses it)"
        );
        let p = defaulted(
            "",
            "Pod",
            json!({"spec": {"containers": [{"name": "c", "ports": [{"containerPort": 80}]}]}}),
        );
        assert!(p["spec"]["containers"][0]["ports"][0]
            .get("hostPort")
            .is_none());
    }

    #[test]
    fn deployment_strategy_defaults_fill_an_empty_strategy() {
        let d = defaulted("apps", "Deployment", json!({"spec": {"strategy": {}}}));
        assert_eq!(
            d["spec"]["strategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}})
        );
        let r = defaulted(
            "apps",
            "Deployment",
            json!({"spec": {"strategy": {"type": "Recreate"}}}),
        );
        assert_eq!(r["spec"]["strategy"], json!({"type": "Recreate"}));
    }

    #[test]
    fn job_defaults_and_generated_selector() {
        let job = defaulted(
            "batch",
            "Job",
            json!({"metadata": {"name": "pi", "uid": "u-1"},
            "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": []}}}}),
        );
        let spec = &job["spec"];
        assert_eq!(
            (
                &spec["completions"],
                &spec["parallelism"],
                &spec["backoffLimit"],
                &spec["completionMode"]
            ),
            (&json!(1), &json!(1), &json!(6), &json!("NonIndexed"))
        );
        assert_eq!(
            spec["selector"],
            json!({"matchLabels": {"batch.kubernetes.io/controller-uid": "u-1"}})
        );
        assert_eq!(
            spec["template"]["metadata"]["labels"],
            json!({"batch.kubernetes.io/controller-uid": "u-1", "controller-uid": "u-1",
                "batch.kubernetes.io/job-name": "pi", "job-name": "pi"})
        );
        // A work queue: parallelism alone leaves completions unset.
        let queue = defaulted(
            "batch",
            "Job",
            json!({"metadata": {"name": "q", "uid": "u-2"}, "spec": {"parallelism": 3}}),
        );
        assert!(queue["spec"].get("completions").is_none());
        // A manual selector is left alone.
        let manual = defaulted(
            "batch",
            "Job",
            json!({"metadata": {"name": "m", "uid": "u-3"},
            "spec": {"manualSelector": true, "selector": {"matchLabels": {"app": "m"}}}}),
        );
        assert_eq!(
            manual["spec"]["selector"],
            json!({"matchLabels": {"app": "m"}})
        );
    }

    #[test]
    fn pull_policy_follows_the_tag() {
        assert_eq!(image_pull_policy("kubia"), "Always");
        assert_eq!(image_pull_policy("luksa/kubia:latest"), "Always");
        assert_eq!(image_pull_policy("kubia:v1"), "IfNotPresent");
        assert_eq!(image_pull_policy("localhost:5000/kubia"), "Always");
    }

    #[test]
    fn service_target_port_defaults_to_port() {
        let svc = defaulted("", "Service", json!({"spec": {"ports": [{"port": 80}]}}));
        assert_eq!(
            svc["spec"]["ports"][0],
            json!({"port": 80, "protocol": "TCP", "targetPort": 80})
        );
        assert_eq!(svc["spec"]["type"], "ClusterIP");
    }
}
