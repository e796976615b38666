//! `pods/binding`: how the scheduler assigns a pod to a node. A v1 `Binding` POSTed to
//! `/api/v1/namespaces/{ns}/pods/{name}/binding` sets `spec.nodeName` once (the field cannot be
//! changed through the pod itself afterwards by a second binding), merges the binding's
//! annotations into the pod and marks it `PodScheduled`, as the real API server's BindingREST.

use serde_json::{json, Value};
use skiff_k8s::time::now;

use super::error::{ApiError, FieldError};
use super::objects::WriteOptions;
use super::ApiState;
use crate::store::{object_revision, StoreError};

/// A parsed, validated Binding.
#[derive(Debug, Clone, PartialEq)]
struct Binding {
    node: String,
    uid: Option<String>,
    annotations: serde_json::Map<String, Value>,
}

/// Checks a Binding body for the pod `pod` as the API server's validation does.
fn parse_binding(pod: &str, body: Value) -> Result<Binding, ApiError> {
    match body.get("kind").and_then(Value::as_str) {
        None | Some("") | Some("Binding") => {}
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "the body must be a Binding, not a {other}"
            )))
        }
    }
    match body.get("apiVersion").and_then(Value::as_str) {
        None | Some("") | Some("v1") => {}
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "Binding is served as v1, not {other}"
            )))
        }
    }
    let binding: k8s_openapi::api::core::v1::Binding =
        serde_json::from_value(body).map_err(|e| {
            ApiError::BadRequest(format!(
                "Binding in version \"v1\" cannot be handled as a Binding: {e}"
            ))
        })?;
    match binding.metadata.name.as_deref() {
        Some(n) if !n.is_empty() && n != pod => {
            return Err(ApiError::BadRequest(format!(
                "name in URL does not match name in Binding object: {pod} != {n}"
            )))
        }
        _ => {}
    }
    let mut causes = Vec::new();
    match binding.target.kind.as_deref() {
        None | Some("") | Some("Node") => {}
        Some(k) => causes.push(FieldError {
            reason: "FieldValueNotSupported",
            field: "target.kind".into(),
            message: format!("Unsupported value: {k:?}: supported values: \"Node\", \"\""),
        }),
    }
    let node = binding.target.name.clone().unwrap_or_default();
    if node.is_empty() {
        causes.push(FieldError::required("target.name"));
    }
    if !causes.is_empty() {
        return Err(ApiError::Invalid {
            kind: "Binding".into(),
            name: pod.into(),
            causes,
        });
    }
    Ok(Binding {
        node,
        uid: binding.metadata.uid.filter(|u| !u.is_empty()),
        annotations: binding
            .metadata
            .annotations
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, Value::String(v)))
            .collect(),
    })
}

/// The pod with the binding applied, or why it cannot be bound.
fn bound_pod(mut pod: Value, name: &str, binding: &Binding) -> Result<Value, ApiError> {
    let conflict = |detail: String| ApiError::Conflict {
        kind: "pods".into(),
        name: name.into(),
        detail,
    };
    if let Some(uid) = &binding.uid {
        let actual = pod.pointer("/metadata/uid").and_then(Value::as_str);
        if actual != Some(uid.as_str()) {
            return Err(conflict(format!(
                "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                actual.unwrap_or_default()
            )));
        }
    }
    if pod.pointer("/metadata/deletionTimestamp").is_some() {
        return Err(conflict(format!(
            "pod {name} is being deleted, cannot be assigned to a host"
        )));
    }
    if let Some(node) = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
    {
        return Err(conflict(format!(
            "pod {name} is already assigned to node {node:?}"
        )));
    }
    pod["spec"]["nodeName"] = json!(binding.node);
    if !binding.annotations.is_empty() {
        if !pod
            .pointer("/metadata/annotations")
            .is_some_and(Value::is_object)
        {
            pod["metadata"]["annotations"] = json!({});
        }
        let annotations = pod["metadata"]["annotations"]
            .as_object_mut()
            .expect("annotations were just made an object");
        for (k, v) in &binding.annotations {
            annotations.insert(k.clone(), v.clone());
        }
    }
    if !pod.get("status").is_some_and(Value::is_object) {
        pod["status"] = json!({});
    }
    if !pod
        .pointer("/status/conditions")
        .is_some_and(Value::is_array)
    {
        pod["status"]["conditions"] = json!([]);
    }
    let conditions = pod["status"]["conditions"]
        .as_array_mut()
        .expect("conditions were just made an array");
    conditions.retain(|c| c.get("type").and_then(Value::as_str) != Some("PodScheduled"));
    conditions.push(json!({
        "type": "PodScheduled", "status": "True", "lastTransitionTime": now(),
    }));
    Ok(pod)
}

impl ApiState {
    /// Binds pod `namespace/name` to the node a Binding names. Returns the `Status` the real
    /// API server answers with (201 Success).
    pub async fn bind_pod(
        &self,
        namespace: &str,
        name: &str,
        body: Value,
        opts: &WriteOptions,
    ) -> Result<Value, ApiError> {
        let binding = parse_binding(name, body)?;
        let def = self
            .registry
            .find("", "v1", "pods")
            .expect("pods are served")
            .clone();
        const ATTEMPTS: usize = 8;
        for attempt in 1..=ATTEMPTS {
            let pod = self.get(&def, Some(namespace), name).await?;
            let expected = object_revision(&pod);
            let new = bound_pod(pod, name, &binding)?;
            if opts.dry_run {
                break;
            }
            let key = def.key(Some(namespace), name);
            let written = self.store.update(&key, Some(expected), new).await;
            match written {
                Ok(_) => break,
                // Someone else wrote the pod (status, labels): look again, it may still be free.
                Err(StoreError::Conflict { .. }) if attempt < ATTEMPTS => continue,
                Err(e) => return Err(ApiError::from_store(e, "pods", name)),
            }
        }
        Ok(json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Success", "code": 201,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> Value {
        json!({"metadata": {"name": "p", "uid": "u1"}, "spec": {"containers": []},
            "status": {"phase": "Pending"}})
    }

    fn binding(node: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "p"},
            "target": {"kind": "Node", "name": node}})
    }

    #[test]
    fn binding_sets_node_name_condition_and_annotations() {
        let mut b = binding("n1");
        b["metadata"]["annotations"] = json!({"a": "b"});
        let bound = bound_pod(pod(), "p", &parse_binding("p", b).unwrap()).unwrap();
        assert_eq!(bound["spec"]["nodeName"], "n1");
        assert_eq!(bound["metadata"]["annotations"]["a"], "b");
        assert_eq!(bound["status"]["conditions"][0]["type"], "PodScheduled");
        assert_eq!(bound["status"]["conditions"][0]["status"], "True");
    }

    #[test]
    fn a_bound_or_deleting_pod_cannot_be_bound_again() {
        let b = parse_binding("p", binding("n2")).unwrap();
        let mut p = pod();
        p["spec"]["nodeName"] = json!("n1");
        let e = bound_pod(p, "p", &b).unwrap_err();
        assert!(matches!(e, ApiError::Conflict { .. }), "{e}");
        assert!(
            e.to_string().contains("already assigned to node \"n1\""),
            "{e}"
        );
        let mut p = pod();
        p["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        assert!(matches!(
            bound_pod(p, "p", &b),
            Err(ApiError::Conflict { .. })
        ));
    }

    #[test]
    fn bad_bindings_are_rejected_with_reasons() {
        let e = parse_binding("p", json!({"target": {"kind": "Node"}})).unwrap_err();
        assert!(
            matches!(&e, ApiError::Invalid { causes, .. } if causes[0].field == "target.name"),
            "{e}"
        );
        let e = parse_binding("p", json!({"target": {"kind": "Pod", "name": "x"}})).unwrap_err();
        assert!(
            matches!(&e, ApiError::Invalid { causes, .. } if causes[0].field == "target.kind"),
            "{e}"
        );
        let e = parse_binding(
            "p",
            json!({"metadata": {"name": "q"}, "target": {"name": "n"}}),
        )
        .unwrap_err();
        assert!(matches!(e, ApiError::BadRequest(_)));
        let e = parse_binding("p", json!({"kind": "Pod", "target": {"name": "n"}})).unwrap_err();
        assert!(matches!(e, ApiError::BadRequest(_)));
        let e = parse_binding("p", json!({"target": {"name": 5}})).unwrap_err();
        assert!(matches!(e, ApiError::BadRequest(_)));
        let b = parse_binding(
            "p",
            json!({"metadata": {"uid": "other"}, "target": {"name": "n"}}),
        )
        .unwrap();
        assert!(matches!(
            bound_pod(pod(), "p", &b),
            Err(ApiError::Conflict { .. })
        ));
    }
}
