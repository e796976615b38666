//! core/v1 Event: the field selectors `kubectl events` and controllers use, and the columns
//! of `kubectl get events` (the name last, only with `-o wide`).

use k8s_openapi::api::core::v1::Event as K;
use serde_json::{json, Value};

use super::Strategy;
use crate::apiserver::registry::ResourceDef;
use crate::apiserver::table::{age_of, s, Column};

/// The served resource.
pub fn resources() -> Vec<ResourceDef> {
    vec![ResourceDef::of::<K>(Event).short_names(&["ev"])]
}

struct Event;

/// When the event was last seen: lastTimestamp, else eventTime, else creation.
fn last_seen(o: &Value) -> Option<&str> {
    [
        "/lastTimestamp",
        "/eventTime",
        "/metadata/creationTimestamp",
    ]
    .iter()
    .find_map(|p| {
        o.pointer(p)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    })
}

fn source(o: &Value) -> String {
    let mut source = s(o, "/source/component").to_owned();
    if source.is_empty() {
        source = s(o, "/reportingComponent").to_owned();
    }
    let host = s(o, "/source/host");
    if !host.is_empty() {
        source = format!("{source}, {host}");
    }
    source
}

impl Strategy for Event {
    fn columns(&self) -> Vec<Column> {
        vec![
            Column::new("Last Seen", "string", |o, now| {
                json!(age_of(last_seen(o), now))
            }),
            Column::new("Type", "string", |o, _| json!(s(o, "/type"))),
            Column::new("Reason", "string", |o, _| json!(s(o, "/reason"))),
            Column::new("Object", "string", |o, _| {
                json!(format!(
                    "{}/{}",
                    s(o, "/involvedObject/kind").to_ascii_lowercase(),
                    s(o, "/involvedObject/name")
                ))
            }),
            Column::new("Message", "string", |o, _| json!(s(o, "/message").trim())),
            Column::wide("Source", "string", |o, _| json!(source(o))),
            Column::wide("First Seen", "string", |o, now| {
                json!(o
                    .pointer("/firstTimestamp")
                    .and_then(Value::as_str)
                    .map(|f| age_of(Some(f), now))
                    .unwrap_or_else(|| "<unknown>".into()))
            }),
            Column::wide("Count", "string", |o, _| {
                json!(o
                    .get("count")
                    .and_then(Value::as_i64)
                    .unwrap_or(1)
                    .to_string())
            }),
            Column::wide("Name", "string", |o, _| json!(s(o, "/metadata/name"))),
        ]
    }

    fn field_selectors(&self) -> Vec<&str> {
        vec![
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ]
    }
}
