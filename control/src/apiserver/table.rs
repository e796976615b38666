//! Server-side `Table` output (`Accept: application/json;as=Table;g=meta.k8s.io;v=v1`): the
//! columns `kubectl get` prints, computed here as the Kubernetes API server does.

use serde_json::{json, Value};

/// One column: name, type, and priority (1 = only with `-o wide`).
struct Column(&'static str, &'static str, u8);

fn columns(kind: &str) -> Vec<Column> {
    let c = |n, t, p| Column(n, t, p);
    let mut cols = vec![c("Name", "string", 0)];
    cols.extend(match kind {
        "Pod" => vec![
            c("Ready", "string", 0),
            c("Status", "string", 0),
            c("Restarts", "string", 0),
            c("Age", "string", 0),
            c("IP", "string", 1),
            c("Node", "string", 1),
            c("Nominated Node", "string", 1),
            c("Readiness Gates", "string", 1),
        ],
        "Service" => vec![
            c("Type", "string", 0),
            c("Cluster-IP", "string", 0),
            c("External-IP", "string", 0),
            c("Port(s)", "string", 0),
            c("Age", "string", 0),
            c("Selector", "string", 1),
        ],
        "Node" => vec![
            c("Status", "string", 0),
            c("Roles", "string", 0),
            c("Age", "string", 0),
            c("Version", "string", 0),
            c("Internal-IP", "string", 1),
            c("External-IP", "string", 1),
            c("OS-Image", "string", 1),
            c("Kernel-Version", "string", 1),
            c("Container-Runtime", "string", 1),
        ],
        "Deployment" => vec![
            c("Ready", "string", 0),
            c("Up-to-date", "integer", 0),
            c("Available", "integer", 0),
            c("Age", "string", 0),
            c("Containers", "string", 1),
            c("Images", "string", 1),
            c("Selector", "string", 1),
        ],
        "ReplicaSet" | "ReplicationController" => vec![
            c("Desired", "integer", 0),
            c("Current", "integer", 0),
            c("Ready", "integer", 0),
            c("Age", "string", 0),
            c("Containers", "string", 1),
            c("Images", "string", 1),
            c("Selector", "string", 1),
        ],
        "DaemonSet" => vec![
            c("Desired", "integer", 0),
            c("Current", "integer", 0),
            c("Ready", "integer", 0),
            c("Up-to-date", "integer", 0),
            c("Available", "integer", 0),
            c("Node Selector", "string", 0),
            c("Age", "string", 0),
            c("Containers", "string", 1),
            c("Images", "string", 1),
            c("Selector", "string", 1),
        ],
        "Job" => vec![
            c("Status", "string", 0),
            c("Completions", "string", 0),
            c("Duration", "string", 0),
            c("Age", "string", 0),
            c("Containers", "string", 1),
            c("Images", "string", 1),
            c("Selector", "string", 1),
        ],
        "StatefulSet" => vec![
            c("Ready", "string", 0),
            c("Age", "string", 0),
            c("Containers", "string", 1),
            c("Images", "string", 1),
        ],
        "ControllerRevision" => vec![
            c("Controller", "string", 0),
            c("Revision", "integer", 0),
            c("Age", "string", 0),
        ],
        "CronJob" => vec![
            c("Schedule", "string", 0),
            c("Timezone", "string", 0),
            c("Suspend", "boolean", 0),
            c("Active", "integer", 0),
            c("Last Schedule", "string", 0),
            c("Age", "string", 0),
            c("Containers", "string", 1),
            c("Images", "string", 1),
            c("Selector", "string", 1),
        ],
        "Endpoints" => vec![c("Endpoints", "string", 0), c("Age", "string", 0)],
        "Namespace" => vec![c("Status", "string", 0), c("Age", "string", 0)],
        "ConfigMap" => vec![c("Data", "integer", 0), c("Age", "string", 0)],
        "Secret" => vec![
            c("Type", "string", 0),
            c("Data", "integer", 0),
            c("Age", "string", 0),
        ],
        _ => vec![c("Age", "string", 0)],
    });
    if kind == "Event" {
        cols = vec![
            c("Last Seen", "string", 0),
            c("Type", "string", 0),
            c("Reason", "string", 0),
            c("Object", "string", 0),
            c("Message", "string", 0),
            c("Source", "string", 1),
            c("First Seen", "string", 1),
            c("Count", "string", 1),
            c("Name", "string", 1),
        ];
    }
    cols
}

/// `HumanDuration` from apimachinery: 45s, 3m20s, 12m, 5h3m, 3d4h, 400d, 2y10d.
pub fn human_duration(seconds: i64) -> String {
    if seconds < -1 {
        return "<invalid>".into();
    }
    let s = seconds.max(0);
    if s < 60 * 2 {
        return format!("{s}s");
    }
    let m = s / 60;
    if m < 10 {
        return if s % 60 == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{}s", s % 60)
        };
    }
    if m < 60 * 3 {
        return format!("{m}m");
    }
    let h = m / 60;
    if h < 8 {
        return if m % 60 == 0 {
            format!("{h}h")
        } else {
            format!("{h}h{}m", m % 60)
        };
    }
    if h < 48 {
        return format!("{h}h");
    }
    if h < 24 * 8 {
        return if h % 24 == 0 {
            format!("{}d", h / 24)
        } else {
            format!("{}d{}h", h / 24, h % 24)
        };
    }
    if h < 24 * 365 * 2 {
        return format!("{}d", h / 24);
    }
    let y = h / 24 / 365;
    if h < 24 * 365 * 8 {
        let d = h / 24 - y * 365;
        return if d == 0 {
            format!("{y}y")
        } else {
            format!("{y}y{d}d")
        };
    }
    format!("{y}y")
}

fn age_of(timestamp: Option<&str>, now: jiff::Timestamp) -> String {
    match timestamp.and_then(|t| t.parse::<jiff::Timestamp>().ok()) {
        Some(t) => human_duration((now - t).get_seconds()),
        None => "<unknown>".into(),
    }
}

fn s<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn i(v: &Value, pointer: &str) -> i64 {
    v.pointer(pointer).and_then(Value::as_i64).unwrap_or(0)
}

fn arr<'a>(v: &'a Value, pointer: &str) -> &'a [Value] {
    v.pointer(pointer)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

fn or_none(s: String) -> String {
    if s.is_empty() {
        "<none>".into()
    } else {
        s
    }
}

fn selector_string(selector: Option<&Value>) -> String {
    let Some(sel) = selector else {
        return "<none>".into();
    };
    let map = sel.get("matchLabels").unwrap_or(sel);
    let mut parts: Vec<String> = map
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some(format!("{k}={}", v.as_str()?)))
        .collect();
    for e in arr(sel, "/matchExpressions") {
        let vals: Vec<&str> = arr(e, "/values").iter().filter_map(Value::as_str).collect();
        parts.push(match s(e, "/operator") {
            "In" => format!("{} in ({})", s(e, "/key"), vals.join(",")),
            "NotIn" => format!("{} notin ({})", s(e, "/key"), vals.join(",")),
            "Exists" => s(e, "/key").to_owned(),
            _ => format!("!{}", s(e, "/key")),
        });
    }
    or_none(parts.join(","))
}

/// kubectl's Job STATUS column (1.31+): the first of these conditions that is True.
fn job_status(job: &Value) -> &'static str {
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
fn job_completions(job: &Value) -> String {
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

fn containers_and_images(template_spec: Option<&Value>) -> (String, String) {
    let containers = template_spec
        .and_then(|t| t.get("containers"))
        .and_then(Value::as_array);
    let names: Vec<&str> = containers
        .into_iter()
        .flatten()
        .map(|c| s(c, "/name"))
        .collect();
    let images: Vec<&str> = containers
        .into_iter()
        .flatten()
        .map(|c| s(c, "/image"))
        .collect();
    (names.join(","), images.join(","))
}

/// The pod STATUS column: a waiting/terminated reason beats the phase, as kubectl shows it.
fn pod_status(pod: &Value) -> String {
    let mut reason = s(pod, "/status/reason").to_owned();
    if reason.is_empty() {
        reason = s(pod, "/status/phase").to_owned();
    }
    for cs in arr(pod, "/status/containerStatuses").iter().rev() {
        let waiting = s(cs, "/state/waiting/reason");
        let terminated = s(cs, "/state/terminated/reason");
        if !waiting.is_empty() {
            reason = waiting.to_owned();
        } else if !terminated.is_empty() {
            reason = terminated.to_owned();
        }
    }
    if pod.pointer("/metadata/deletionTimestamp").is_some() {
        reason = "Terminating".into();
    }
    if reason.is_empty() {
        "Unknown".into()
    } else {
        reason
    }
}

fn service_ports(svc: &Value) -> String {
    let ports: Vec<String> = arr(svc, "/spec/ports")
        .iter()
        .map(|p| {
            let proto = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
            match p.get("nodePort").and_then(Value::as_i64) {
                Some(np) => format!("{}:{np}/{proto}", i(p, "/port")),
                None => format!("{}/{proto}", i(p, "/port")),
            }
        })
        .collect();
    or_none(ports.join(","))
}

fn endpoints_string(ep: &Value) -> String {
    let mut list = Vec::new();
    for subset in arr(ep, "/subsets") {
        for addr in arr(subset, "/addresses") {
            let ports = arr(subset, "/ports");
            if ports.is_empty() {
                list.push(s(addr, "/ip").to_owned());
            }
            for p in ports {
                list.push(format!("{}:{}", s(addr, "/ip"), i(p, "/port")));
            }
        }
    }
    let total = list.len();
    if total > 3 {
        format!("{} + {} more...", list[..3].join(","), total - 3)
    } else {
        or_none(list.join(","))
    }
}

fn node_status(node: &Value) -> String {
    let ready = arr(node, "/status/conditions")
        .iter()
        .find(|c| s(c, "/type") == "Ready");
    let mut status = match ready.map(|c| s(c, "/status")) {
        Some("True") => "Ready".to_owned(),
        _ => "NotReady".to_owned(),
    };
    if node.pointer("/spec/unschedulable").and_then(Value::as_bool) == Some(true) {
        status.push_str(",SchedulingDisabled");
    }
    status
}

fn node_roles(node: &Value) -> String {
    let roles: Vec<&str> = node
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter_map(|(k, _)| k.strip_prefix("node-role.kubernetes.io/"))
        .collect();
    or_none(roles.join(","))
}

fn node_address(node: &Value, ty: &str) -> String {
    let a = arr(node, "/status/addresses")
        .iter()
        .find(|a| s(a, "/type") == ty)
        .map(|a| s(a, "/address").to_owned());
    or_none(a.unwrap_or_default())
}

fn cells(kind: &str, o: &Value, now: jiff::Timestamp) -> Vec<Value> {
    let name = s(o, "/metadata/name");
    let age = age_of(
        o.pointer("/metadata/creationTimestamp")
            .and_then(Value::as_str),
        now,
    );
    match kind {
        "Pod" => {
            let total = arr(o, "/spec/containers").len();
            let statuses = arr(o, "/status/containerStatuses");
            let ready = statuses
                .iter()
                .filter(|c| c.get("ready").and_then(Value::as_bool) == Some(true))
                .count();
            let restarts: i64 = statuses.iter().map(|c| i(c, "/restartCount")).sum();
            let gates = arr(o, "/spec/readinessGates");
            vec![
                json!(name),
                json!(format!("{ready}/{total}")),
                json!(pod_status(o)),
                json!(restarts.to_string()),
                json!(age),
                json!(or_none(s(o, "/status/podIP").into())),
                json!(or_none(s(o, "/spec/nodeName").into())),
                json!(or_none(s(o, "/status/nominatedNodeName").into())),
                json!(if gates.is_empty() {
                    "<none>".to_owned()
                } else {
                    format!("0/{}", gates.len())
                }),
            ]
        }
        "Service" => {
            let ty = o
                .pointer("/spec/type")
                .and_then(Value::as_str)
                .unwrap_or("ClusterIP");
            let mut external: Vec<String> = arr(o, "/spec/externalIPs")
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect();
            external.extend(
                arr(o, "/status/loadBalancer/ingress")
                    .iter()
                    .map(|i| s(i, "/ip").to_owned()),
            );
            let external = match (ty, external.is_empty()) {
                ("LoadBalancer", true) => "<pending>".to_owned(),
                ("ExternalName", _) => s(o, "/spec/externalName").to_owned(),
                _ => or_none(external.join(",")),
            };
            vec![
                json!(name),
                json!(ty),
                json!(or_none(s(o, "/spec/clusterIP").into())),
                json!(external),
                json!(service_ports(o)),
                json!(age),
                json!(selector_string(o.pointer("/spec/selector"))),
            ]
        }
        "Node" => vec![
            json!(name),
            json!(node_status(o)),
            json!(node_roles(o)),
            json!(age),
            json!(s(o, "/status/nodeInfo/kubeletVersion")),
            json!(node_address(o, "InternalIP")),
            json!(node_address(o, "ExternalIP")),
            json!(s(o, "/status/nodeInfo/osImage")),
            json!(s(o, "/status/nodeInfo/kernelVersion")),
            json!(s(o, "/status/nodeInfo/containerRuntimeVersion")),
        ],
        "Deployment" => {
            let (containers, images) = containers_and_images(o.pointer("/spec/template/spec"));
            vec![
                json!(name),
                json!(format!(
                    "{}/{}",
                    i(o, "/status/readyReplicas"),
                    o.pointer("/spec/replicas")
                        .and_then(Value::as_i64)
                        .unwrap_or(1)
                )),
                json!(i(o, "/status/updatedReplicas")),
                json!(i(o, "/status/availableReplicas")),
                json!(age),
                json!(containers),
                json!(images),
                json!(selector_string(o.pointer("/spec/selector"))),
            ]
        }
        "ReplicaSet" | "ReplicationController" => {
            let (containers, images) = containers_and_images(o.pointer("/spec/template/spec"));
            vec![
                json!(name),
                json!(o
                    .pointer("/spec/replicas")
                    .and_then(Value::as_i64)
                    .unwrap_or(1)),
                json!(i(o, "/status/replicas")),
                json!(i(o, "/status/readyReplicas")),
                json!(age),
                json!(containers),
                json!(images),
                json!(selector_string(o.pointer("/spec/selector"))),
            ]
        }
        "DaemonSet" => {
            let (containers, images) = containers_and_images(o.pointer("/spec/template/spec"));
            let node_selector: Vec<String> = o
                .pointer("/spec/template/spec/nodeSelector")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect();
            vec![
                json!(name),
                json!(i(o, "/status/desiredNumberScheduled")),
                json!(i(o, "/status/currentNumberScheduled")),
                json!(i(o, "/status/numberReady")),
                json!(i(o, "/status/updatedNumberScheduled")),
                json!(i(o, "/status/numberAvailable")),
                json!(or_none(node_selector.join(","))),
                json!(age),
                json!(containers),
                json!(images),
                json!(selector_string(o.pointer("/spec/selector"))),
            ]
        }
        "Job" => {
            let (containers, images) = containers_and_images(o.pointer("/spec/template/spec"));
            vec![
                json!(name),
                json!(job_status(o)),
                json!(job_completions(o)),
                json!(job_duration(o, now)),
                json!(age),
                json!(containers),
                json!(images),
                json!(selector_string(o.pointer("/spec/selector"))),
            ]
        }
        "StatefulSet" => {
            let (containers, images) = containers_and_images(o.pointer("/spec/template/spec"));
            vec![
                json!(name),
                json!(format!(
                    "{}/{}",
                    i(o, "/status/readyReplicas"),
                    o.pointer("/spec/replicas")
                        .and_then(Value::as_i64)
                        .unwrap_or(1)
                )),
                json!(age),
                json!(containers),
                json!(images),
            ]
        }
        "ControllerRevision" => {
            let controller = arr(o, "/metadata/ownerReferences")
                .iter()
                .find(|r| r.get("controller") == Some(&json!(true)))
                .map(|r| {
                    let group = s(r, "/apiVersion").split('/').next().unwrap_or_default();
                    format!("{}.{group}/{}", s(r, "/kind").to_lowercase(), s(r, "/name"))
                })
                .unwrap_or_else(|| "<none>".into());
            vec![
                json!(name),
                json!(controller),
                json!(i(o, "/revision")),
                json!(age),
            ]
        }
        "CronJob" => {
            let (containers, images) =
                containers_and_images(o.pointer("/spec/jobTemplate/spec/template/spec"));
            let last = o
                .pointer("/status/lastScheduleTime")
                .and_then(Value::as_str)
                .map_or_else(|| "<none>".to_owned(), |t| age_of(Some(t), now));
            vec![
                json!(name),
                json!(s(o, "/spec/schedule")),
                json!(or_none(s(o, "/spec/timeZone").into())),
                json!(if o.pointer("/spec/suspend") == Some(&json!(true)) {
                    "True"
                } else {
                    "False"
                }),
                json!(arr(o, "/status/active").len()),
                json!(last),
                json!(age),
                json!(containers),
                json!(images),
                json!(selector_string(
                    o.pointer("/spec/jobTemplate/spec/selector")
                )),
            ]
        }
        "Endpoints" => vec![json!(name), json!(endpoints_string(o)), json!(age)],
        "Namespace" => vec![json!(name), json!(s(o, "/status/phase")), json!(age)],
        "ConfigMap" => {
            let n = o
                .get("data")
                .and_then(Value::as_object)
                .map_or(0, |m| m.len())
                + o.get("binaryData")
                    .and_then(Value::as_object)
                    .map_or(0, |m| m.len());
            vec![json!(name), json!(n), json!(age)]
        }
        "Secret" => {
            let n = o
                .get("data")
                .and_then(Value::as_object)
                .map_or(0, |m| m.len());
            let ty = o.get("type").and_then(Value::as_str).unwrap_or("Opaque");
            vec![json!(name), json!(ty), json!(n), json!(age)]
        }
        "Event" => {
            let last = [
                "/lastTimestamp",
                "/eventTime",
                "/metadata/creationTimestamp",
            ]
            .iter()
            .find_map(|p| {
                o.pointer(p)
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
            });
            let first = o.pointer("/firstTimestamp").and_then(Value::as_str);
            let object = format!(
                "{}/{}",
                s(o, "/involvedObject/kind").to_ascii_lowercase(),
                s(o, "/involvedObject/name")
            );
            let mut source = s(o, "/source/component").to_owned();
            if source.is_empty() {
                source = s(o, "/reportingComponent").to_owned();
            }
            let host = s(o, "/source/host");
            if !host.is_empty() {
                source = format!("{source}, {host}");
            }
            vec![
                json!(age_of(last, now)),
                json!(s(o, "/type")),
                json!(s(o, "/reason")),
                json!(object),
                json!(s(o, "/message").trim()),
                json!(source),
                json!(first
                    .map(|f| age_of(Some(f), now))
                    .unwrap_or_else(|| "<unknown>".into())),
                json!(o
                    .get("count")
                    .and_then(Value::as_i64)
                    .unwrap_or(1)
                    .to_string()),
                json!(name),
            ]
        }
        _ => vec![json!(name), json!(age)],
    }
}

/// How much of each object a Table row carries (`?includeObject=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncludeObject {
    /// No object.
    None,
    /// A `PartialObjectMetadata` (the default; kubectl uses it for namespaces and labels).
    Metadata,
    /// The whole object.
    Object,
}

impl IncludeObject {
    /// Parses the query parameter.
    pub fn parse(s: Option<&str>) -> Self {
        match s {
            Some("None") => Self::None,
            Some("Object") => Self::Object,
            _ => Self::Metadata,
        }
    }
}

/// Renders objects of `kind` as a `meta.k8s.io/v1` Table.
pub fn table(kind: &str, objects: &[&Value], list_meta: Value, include: IncludeObject) -> Value {
    let now = jiff::Timestamp::now();
    let column_definitions: Vec<Value> = columns(kind)
        .into_iter()
        .map(|Column(name, ty, priority)| {
            let format = if name == "Name" { "name" } else { "" };
            json!({"name": name, "type": ty, "format": format, "description": "", "priority": priority})
        })
        .collect();
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let object = match include {
                IncludeObject::None => Value::Null,
                IncludeObject::Object => (*o).clone(),
                IncludeObject::Metadata => json!({
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": o.get("metadata").cloned().unwrap_or_else(|| json!({})),
                }),
            };
            let mut row = json!({"cells": cells(kind, o, now)});
            if !object.is_null() {
                row["object"] = object;
            }
            row
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_meta,
        "columnDefinitions": column_definitions,
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_print_like_kubectl() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(119), "119s");
        assert_eq!(human_duration(200), "3m20s");
        assert_eq!(human_duration(600), "10m");
        assert_eq!(human_duration(3 * 3600 + 60 * 5), "3h5m");
        assert_eq!(human_duration(30 * 3600), "30h");
        assert_eq!(human_duration(3 * 86400 + 4 * 3600), "3d4h");
        assert_eq!(human_duration(400 * 86400), "400d");
    }

    #[test]
    fn pod_row() {
        let pod = json!({
            "metadata": {"name": "kubia", "creationTimestamp": "2020-01-01T00:00:00Z"},
            "spec": {"containers": [{"name": "a"}, {"name": "b"}], "nodeName": "n1"},
            "status": {"phase": "Running", "podIP": "10.0.0.5", "containerStatuses": [
                {"ready": true, "restartCount": 2}, {"ready": false, "restartCount": 1, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}
        });
        let t = table("Pod", &[&pod], json!({}), IncludeObject::Metadata);
        let cells = &t["rows"][0]["cells"];
        assert_eq!(cells[0], "kubia");
        assert_eq!(cells[1], "1/2");
        assert_eq!(cells[2], "CrashLoopBackOff");
        assert_eq!(cells[3], "3");
        assert_eq!(cells[5], "10.0.0.5");
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
        assert_eq!(
            t["columnDefinitions"].as_array().unwrap().len(),
            cells.as_array().unwrap().len()
        );
    }

    #[test]
    fn job_and_cronjob_rows() {
        let job = json!({"metadata": {"name": "pi", "creationTimestamp": "2024-05-01T09:59:00Z"},
            "spec": {"completions": 3, "parallelism": 2},
            "status": {"succeeded": 3, "startTime": "2024-05-01T09:59:00Z",
                "completionTime": "2024-05-01T09:59:42Z",
                "conditions": [{"type": "Complete", "status": "True"}]}});
        let cells = &table("Job", &[&job], json!({}), IncludeObject::None)["rows"][0]["cells"];
        assert_eq!(cells[1], "Complete");
        assert_eq!(cells[2], "3/3");
        assert_eq!(cells[3], "42s");
        let queue = json!({"metadata": {"name": "q"}, "spec": {"parallelism": 4}});
        assert_eq!(job_completions(&queue), "0/1 of 4");
        assert_eq!(job_status(&queue), "Running");
        let cj = json!({"metadata": {"name": "c"}, "spec": {"schedule": "*/5 * * * *", "suspend": false},
            "status": {"active": [{"name": "c-1"}]}});
        let cells = &table("CronJob", &[&cj], json!({}), IncludeObject::None)["rows"][0]["cells"];
        assert_eq!(
            cells.as_array().unwrap()[..6],
            [
                json!("c"),
                json!("*/5 * * * *"),
                json!("<none>"),
                json!("False"),
                json!(1),
                json!("<none>")
            ]
        );
    }

    #[test]
    fn every_kind_has_as_many_cells_as_columns() {
        let o = json!({"metadata": {"name": "x"}});
        for kind in [
            "Pod",
            "Service",
            "Node",
            "Deployment",
            "ReplicaSet",
            "DaemonSet",
            "StatefulSet",
            "ControllerRevision",
            "Job",
            "CronJob",
            "Endpoints",
            "Event",
            "Namespace",
            "ConfigMap",
            "Secret",
            "Lease",
        ] {
            let t = table(kind, &[&o], json!({}), IncludeObject::None);
            assert_eq!(
                t["columnDefinitions"].as_array().unwrap().len(),
                t["rows"][0]["cells"].as_array().unwrap().len(),
                "{kind}"
            );
        }
    }

    #[test]
    fn service_row() {
        let svc = json!({"metadata": {"name": "kubia"}, "spec": {"type": "NodePort", "clusterIP": "10.96.0.10",
            "ports": [{"port": 80, "nodePort": 30123, "protocol": "TCP"}], "selector": {"app": "kubia"}}});
        let t = table("Service", &[&svc], json!({}), IncludeObject::None);
        assert_eq!(t["rows"][0]["cells"][4], "80:30123/TCP");
        assert_eq!(t["rows"][0]["cells"][6], "app=kubia");
    }
}
