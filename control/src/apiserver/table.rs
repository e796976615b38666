//! Server-side `Table` output (`Accept: application/json;as=Table;g=meta.k8s.io;v=v1`): the
//! columns `kubectl get` prints, computed here as the Kubernetes API server does.

use std::borrow::Cow;
use std::sync::Arc;

use serde_json::{json, Value};

/// A cell's value from an object, given the time now (for ages).
pub type CellFn = fn(&Value, jiff::Timestamp) -> Value;

/// A cell's value computed by a closure (a printer column's JSONPath).
pub type CellClosure = Arc<dyn Fn(&Value, jiff::Timestamp) -> Value + Send + Sync>;

/// How a column's cells are computed.
#[derive(Clone)]
pub enum Cell {
    /// A built-in kind's function.
    Fn(CellFn),
    /// A closure: a custom resource's `additionalPrinterColumns` JSONPath.
    Dynamic(CellClosure),
}

impl Cell {
    fn of(&self, object: &Value, now: jiff::Timestamp) -> Value {
        match self {
            Self::Fn(f) => f(object, now),
            Self::Dynamic(f) => f(object, now),
        }
    }
}

/// One column: name, type, priority (1 = only with `-o wide`) and the function that fills its
/// cell from an object, so a kind's columns and cells are declared together and cannot
/// disagree.
#[derive(Clone)]
pub struct Column {
    /// The column header as kubectl prints it (upper-cased).
    pub name: Cow<'static, str>,
    /// `string`, `integer`, `number`, `boolean` or `date`.
    pub ty: Cow<'static, str>,
    /// `format` of the column definition (`name` for the Name column).
    pub format: Cow<'static, str>,
    /// 0 shown by default, more only with `-o wide`.
    pub priority: i32,
    /// The cell of an object.
    pub cell: Cell,
}

impl Column {
    /// A column shown by default.
    pub const fn new(name: &'static str, ty: &'static str, cell: CellFn) -> Self {
        Self {
            name: Cow::Borrowed(name),
            ty: Cow::Borrowed(ty),
            format: Cow::Borrowed(""),
            priority: 0,
            cell: Cell::Fn(cell),
        }
    }

    /// A column shown with `-o wide`.
    pub const fn wide(name: &'static str, ty: &'static str, cell: CellFn) -> Self {
        Self {
            name: Cow::Borrowed(name),
            ty: Cow::Borrowed(ty),
            format: Cow::Borrowed(""),
            priority: 1,
            cell: Cell::Fn(cell),
        }
    }
}

/// `NAME`.
pub const NAME: Column = Column {
    name: Cow::Borrowed("Name"),
    ty: Cow::Borrowed("string"),
    format: Cow::Borrowed("name"),
    priority: 0,
    cell: Cell::Fn(|o, _| json!(s(o, "/metadata/name"))),
};

/// `AGE`, from creationTimestamp.
pub const AGE: Column = Column::new("Age", "string", |o, now| {
    json!(age_of(
        o.pointer("/metadata/creationTimestamp")
            .and_then(Value::as_str),
        now
    ))
});

/// Wide `CONTAINERS` of a workload's pod template.
pub const TEMPLATE_CONTAINERS: Column = Column::wide("Containers", "string", |o, _| {
    json!(containers_and_images(o.pointer("/spec/template/spec")).0)
});

/// Wide `IMAGES` of a workload's pod template.
pub const TEMPLATE_IMAGES: Column = Column::wide("Images", "string", |o, _| {
    json!(containers_and_images(o.pointer("/spec/template/spec")).1)
});

/// Wide `SELECTOR` of `spec.selector`.
pub const SELECTOR: Column = Column::wide("Selector", "string", |o, _| {
    json!(selector_string(o.pointer("/spec/selector")))
});

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

/// The age of a timestamp as kubectl prints it, `<unknown>` without one.
pub fn age_of(timestamp: Option<&str>, now: jiff::Timestamp) -> String {
    match timestamp.and_then(|t| t.parse::<jiff::Timestamp>().ok()) {
        Some(t) => human_duration((now - t).get_seconds()),
        None => "<unknown>".into(),
    }
}

/// The string at `pointer`, or empty.
pub fn s<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// The integer at `pointer`, or 0.
pub fn i(v: &Value, pointer: &str) -> i64 {
    v.pointer(pointer).and_then(Value::as_i64).unwrap_or(0)
}

/// The array at `pointer`, or empty.
pub fn arr<'a>(v: &'a Value, pointer: &str) -> &'a [Value] {
    v.pointer(pointer)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

/// `<none>` for an empty cell.
pub fn or_none(s: String) -> String {
    if s.is_empty() {
        "<none>".into()
    } else {
        s
    }
}

/// A label selector (or a plain map) as `kubectl get -o wide` prints it.
pub fn selector_string(selector: Option<&Value>) -> String {
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

/// The container names and images of a pod spec, comma-separated.
pub fn containers_and_images(template_spec: Option<&Value>) -> (String, String) {
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

/// Renders objects as a `meta.k8s.io/v1` Table with `columns` (a kind's
/// [`Strategy::columns`](super::kinds::Strategy::columns)).
pub fn table(
    columns: &[Column],
    objects: &[&Value],
    list_meta: Value,
    include: IncludeObject,
) -> Value {
    let now = jiff::Timestamp::now();
    let rows = objects
        .iter()
        .map(|o| row(columns, o, include, now))
        .collect();
    assemble(columns, rows, list_meta)
}

/// [`table`] of stored JSON items, parsed one at a time: a row keeps only its cells and
/// metadata, so a Table of 10 000 pods never holds 10 000 parsed pods at once (about 100 MB
/// the allocator then kept in holes between long-lived objects).
pub fn table_of_items(
    columns: &[Column],
    items: &[bytes::Bytes],
    list_meta: Value,
    include: IncludeObject,
) -> Result<Value, serde_json::Error> {
    let now = jiff::Timestamp::now();
    let rows = items
        .iter()
        .map(|item| {
            let object: Value = serde_json::from_slice(item)?;
            Ok(row(columns, &object, include, now))
        })
        .collect::<Result<_, serde_json::Error>>()?;
    Ok(assemble(columns, rows, list_meta))
}

/// One object's row.
fn row(columns: &[Column], o: &Value, include: IncludeObject, now: jiff::Timestamp) -> Value {
    let object = match include {
        IncludeObject::None => Value::Null,
        IncludeObject::Object => o.clone(),
        IncludeObject::Metadata => json!({
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": o.get("metadata").cloned().unwrap_or_else(|| json!({})),
        }),
    };
    let cells: Vec<Value> = columns.iter().map(|c| c.cell.of(o, now)).collect();
    let mut row = json!({"cells": cells});
    if !object.is_null() {
        row["object"] = object;
    }
    row
}

/// The Table around its rows.
fn assemble(columns: &[Column], rows: Vec<Value>, list_meta: Value) -> Value {
    let column_definitions: Vec<Value> = columns
        .iter()
        .map(|c| {
            json!({"name": c.name, "type": c.ty, "format": c.format, "description": "", "priority": c.priority})
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
    use crate::apiserver::kinds::job::{job_completions, job_status};
    use crate::apiserver::kinds::testing::strategy;

    fn cols(group: &str, kind: &str) -> Vec<Column> {
        strategy(group, kind).columns()
    }

    #[test]
    fn a_table_of_stored_items_is_the_table_of_their_documents() {
        let pods = [
            json!({"metadata": {"name": "a", "namespace": "default", "creationTimestamp": "2020-01-01T00:00:00Z"},
                "spec": {"containers": [{"name": "c"}]}, "status": {"phase": "Pending"}}),
            json!({"metadata": {"name": "b", "namespace": "default"}, "spec": {"nodeName": "n1"},
                "status": {"phase": "Running"}}),
        ];
        let items: Vec<bytes::Bytes> = pods
            .iter()
            .map(|p| serde_json::to_vec(p).unwrap().into())
            .collect();
        let columns = cols("", "Pod");
        for include in [
            IncludeObject::None,
            IncludeObject::Metadata,
            IncludeObject::Object,
        ] {
            let refs: Vec<&Value> = pods.iter().collect();
            let parsed = table(&columns, &refs, json!({"resourceVersion": "7"}), include);
            let streamed =
                table_of_items(&columns, &items, json!({"resourceVersion": "7"}), include).unwrap();
            assert_eq!(parsed, streamed);
        }
        assert!(table_of_items(
            &columns,
            &[bytes::Bytes::from_static(b"{")],
            json!({}),
            IncludeObject::None
        )
        .is_err());
    }

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
        let t = table(
            &cols("", "Pod"),
            &[&pod],
            json!({}),
            IncludeObject::Metadata,
        );
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
        let cells = &table(
            &cols("batch", "Job"),
            &[&job],
            json!({}),
            IncludeObject::None,
        )["rows"][0]["cells"];
        assert_eq!(cells[1], "Complete");
        assert_eq!(cells[2], "3/3");
        assert_eq!(cells[3], "42s");
        let queue = json!({"metadata": {"name": "q"}, "spec": {"parallelism": 4}});
        assert_eq!(job_completions(&queue), "0/1 of 4");
        assert_eq!(job_status(&queue), "Running");
        let cj = json!({"metadata": {"name": "c"}, "spec": {"schedule": "*/5 * * * *", "suspend": false},
            "status": {"active": [{"name": "c-1"}]}});
        let cells = &table(
            &cols("batch", "CronJob"),
            &[&cj],
            json!({}),
            IncludeObject::None,
        )["rows"][0]["cells"];
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
        // Every built-in kind (Pod, Service, Node, Deployment, ReplicaSet, DaemonSet,
        // StatefulSet, ControllerRevision, Job, CronJob, Endpoints, Event, Namespace,
        // ConfigMap, Secret, Lease, ...).
        for def in crate::apiserver::kinds::builtins() {
            let kind = &def.kind;
            let t = table(
                &def.strategy.columns(),
                &[&o],
                json!({}),
                IncludeObject::None,
            );
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
        let t = table(
            &cols("", "Service"),
            &[&svc],
            json!({}),
            IncludeObject::None,
        );
        assert_eq!(t["rows"][0]["cells"][4], "80:30123/TCP");
        assert_eq!(t["rows"][0]["cells"][6], "app=kubia");
    }
}
