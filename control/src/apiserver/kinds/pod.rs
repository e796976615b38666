//! core/v1 Pod: `status.phase` Pending on create, pod spec defaults, DefaultTolerationSeconds
//! admission, graceful deletion of pods running on a node, the `binding`, `log`, `exec`,
//! `attach` and `ephemeralcontainers` ([`ephemeral`]) subresources, and kubectl's columns.

mod ephemeral;

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Pod as K;
use serde_json::{json, Value};

use super::Strategy;
use crate::apiserver::defaults::default_pod_spec;
use crate::apiserver::admission;
use crate::apiserver::error::{ApiError, FieldError};
use crate::apiserver::objects::{DeleteOptions, Subresource};
use crate::apiserver::registry::ResourceDef;
use crate::apiserver::table::{arr, i, or_none, s, Column, AGE, NAME};
use crate::apiserver::validation::validate_pod_spec;
use crate::apiserver::ApiState;
use crate::store::keys;

/// The served resource.
pub fn resources() -> Vec<ResourceDef> {
    vec![ResourceDef::of::<K>(Pod)
        .short_names(&["po"])
        .in_all()
        .with_status()]
}

struct Pod;

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

fn ready(o: &Value) -> String {
    let total = arr(o, "/spec/containers").len();
    let ready = arr(o, "/status/containerStatuses")
        .iter()
        .filter(|c| c.get("ready").and_then(Value::as_bool) == Some(true))
        .count();
    format!("{ready}/{total}")
}

fn restarts(o: &Value) -> String {
    let restarts: i64 = arr(o, "/status/containerStatuses")
        .iter()
        .map(|c| i(c, "/restartCount"))
        .sum();
    restarts.to_string()
}

fn readiness_gates(o: &Value) -> String {
    let gates = arr(o, "/spec/readinessGates");
    if gates.is_empty() {
        "<none>".to_owned()
    } else {
        format!("0/{}", gates.len())
    }
}

impl Strategy for Pod {
    fn prepare_for_create(&self, object: &mut Value) {
        object["status"] = json!({"phase": "Pending"});
    }

    fn default(&self, object: &mut Value) {
        if let Some(spec) = object.get_mut("spec") {
            default_pod_spec(spec);
        }
    }

    fn admit<'a>(
        &'a self,
        state: &'a ApiState,
        object: &'a mut Value,
    ) -> BoxFuture<'a, Result<(), ApiError>> {
        Box::pin(async move {
            if state.admission.service_account() {
                admission::service_account::admit(state, object).await?;
            }
            state.default_tolerations.apply(object);
            Ok(())
        })
    }

    fn validate(&self, object: &Value, errs: &mut Vec<FieldError>) {
        validate_pod_spec(object.get("spec"), "spec", errs);
    }

    fn validate_update(&self, old: &Value, new: &Value, errs: &mut Vec<FieldError>) {
        ephemeral::validate_update(old, new, errs);
    }

    /// Ephemeral containers change through their subresource only: a pod update keeps them.
    fn before_update(
        &self,
        _state: &ApiState,
        _key: &str,
        old: &Value,
        new: &mut Value,
    ) -> Result<(), ApiError> {
        if let Some(spec) = new.get_mut("spec").and_then(Value::as_object_mut) {
            match old.pointer("/spec/ephemeralContainers") {
                Some(kept) => {
                    spec.insert("ephemeralContainers".into(), kept.clone());
                }
                None => {
                    spec.remove("ephemeralContainers");
                }
            }
        }
        Ok(())
    }

    /// A pod bound to an existing node and still running is deleted gracefully: the agent
    /// stops it and then deletes it with grace 0.
    fn grace_period<'a>(
        &'a self,
        state: &'a ApiState,
        pod: &'a Value,
        opts: &'a DeleteOptions,
    ) -> BoxFuture<'a, Option<i64>> {
        Box::pin(async move {
            let grace = opts
                .grace_period_seconds
                .or_else(|| {
                    pod.pointer("/spec/terminationGracePeriodSeconds")
                        .and_then(Value::as_i64)
                })
                .unwrap_or(30);
            let node = pod
                .pointer("/spec/nodeName")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty())?;
            let phase = pod
                .pointer("/status/phase")
                .and_then(Value::as_str)
                .unwrap_or("Pending");
            let node_exists = state
                .store
                .get(&keys::NODES.key(None, node))
                .await
                .ok()
                .flatten()
                .is_some();
            (grace > 0 && node_exists && phase != "Succeeded" && phase != "Failed")
                .then_some(grace)
        })
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            NAME,
            Column::new("Ready", "string", |o, _| json!(ready(o))),
            Column::new("Status", "string", |o, _| json!(pod_status(o))),
            Column::new("Restarts", "string", |o, _| json!(restarts(o))),
            AGE,
            Column::wide("IP", "string", |o, _| {
                json!(or_none(s(o, "/status/podIP").into()))
            }),
            Column::wide("Node", "string", |o, _| {
                json!(or_none(s(o, "/spec/nodeName").into()))
            }),
            Column::wide("Nominated Node", "string", |o, _| {
                json!(or_none(s(o, "/status/nominatedNodeName").into()))
            }),
            Column::wide("Readiness Gates", "string", |o, _| {
                json!(readiness_gates(o))
            }),
        ]
    }

    fn field_selectors(&self) -> Vec<&str> {
        vec![
            "spec.nodeName",
            "status.phase",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "status.podIP",
        ]
    }

    fn subresource(&self, name: &str, namespaced_path: bool) -> Option<Subresource> {
        match name {
            "binding" if namespaced_path => Some(Subresource::Binding),
            "ephemeralcontainers" if namespaced_path => Some(Subresource::EphemeralContainers),
            _ => None,
        }
    }

    fn discovery_subresources(&self) -> Vec<Value> {
        vec![
            json!({
                "name": "pods/binding", "singularName": "", "namespaced": true,
                "kind": "Binding", "verbs": ["create"],
            }),
            // Served by proxying to the pod's agent (node_proxy.rs).
            json!({
                "name": "pods/log", "singularName": "", "namespaced": true,
                "kind": "Pod", "verbs": ["get"],
            }),
            json!({
                "name": "pods/ephemeralcontainers", "singularName": "", "namespaced": true,
                "kind": "Pod", "verbs": ["get", "patch", "update"],
            }),
            json!({
                "name": "pods/attach", "singularName": "", "namespaced": true,
                "kind": "PodAttachOptions", "verbs": ["create", "get"],
            }),
            json!({
                "name": "pods/exec", "singularName": "", "namespaced": true,
                "kind": "PodExecOptions", "verbs": ["create", "get"],
            }),
            json!({
                "name": "pods/portforward", "singularName": "", "namespaced": true,
                "kind": "PodPortForwardOptions", "verbs": ["create", "get"],
            }),
        ]
    }
}
