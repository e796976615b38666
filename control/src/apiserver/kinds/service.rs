//! core/v1 Service: defaults, port and type validation, ClusterIP and NodePort allocation in
//! the write path (`service_alloc.rs`, writes serialised), and kubectl's columns.

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Service as K;
use serde_json::{json, Value};

use super::{Strategy, WriteLock};
use crate::apiserver::defaults::{default_field, obj};
use crate::apiserver::error::{ApiError, FieldError};
use crate::apiserver::registry::ResourceDef;
use crate::apiserver::service_alloc::{externally_accessible, needs_health_check};
use crate::apiserver::table::{arr, i, or_none, s, Column, AGE, NAME, SELECTOR};
use crate::apiserver::validation::{str_at, validate_port, NameRule};
use crate::apiserver::ApiState;

/// The served resource.
pub fn resources() -> Vec<ResourceDef> {
    vec![ResourceDef::of::<K>(Service)
        .short_names(&["svc"])
        .in_all()
        .with_status()]
}

struct Service;

/// What an update that makes a Service internal leaves behind, cleared as Kubernetes'
/// `dropTypeDependentFields` does: the traffic policy and health check port it had only for
/// outside traffic (values the client did not change; a changed one is the client's and
/// validation judges it).
fn drop_type_dependent_fields(old: &Value, new: &mut Value) {
    let (Some(old), Some(new)) = (
        old.get("spec").and_then(Value::as_object),
        new.get_mut("spec").and_then(Value::as_object_mut),
    ) else {
        return;
    };
    let unchanged = |new: &serde_json::Map<String, Value>, field: &str| {
        new.get(field).is_some() && new.get(field) == old.get(field)
    };
    if !externally_accessible(new) && unchanged(new, "externalTrafficPolicy") {
        new.remove("externalTrafficPolicy");
    }
    if !needs_health_check(new) && unchanged(new, "healthCheckNodePort") {
        new.remove("healthCheckNodePort");
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

fn service_type(o: &Value) -> &str {
    o.pointer("/spec/type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP")
}

fn external_ip(o: &Value) -> String {
    let mut external: Vec<String> = arr(o, "/spec/externalIPs")
        .iter()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    external.extend(
        arr(o, "/status/loadBalancer/ingress")
            .iter()
            .map(|i| s(i, "/ip").to_owned()),
    );
    match (service_type(o), external.is_empty()) {
        ("LoadBalancer", true) => "<pending>".to_owned(),
        ("ExternalName", _) => s(o, "/spec/externalName").to_owned(),
        _ => or_none(external.join(",")),
    }
}

impl Strategy for Service {
    /// `loadBalancer` is a struct in core/v1 ServiceStatus.
    fn initial_status(&self) -> Option<Value> {
        Some(json!({"loadBalancer": {}}))
    }

    fn default(&self, object: &mut Value) {
        let Some(spec) = obj(object, "spec") else {
            return;
        };
        default_field(spec, "type", json!("ClusterIP"));
        default_field(spec, "sessionAffinity", json!("None"));
        default_field(spec, "internalTrafficPolicy", json!("Cluster"));
        // SetDefaults_Service: an externally reachable Service gets `Cluster` (masqueraded,
        // any node's endpoints).
        if externally_accessible(spec) {
            default_field(spec, "externalTrafficPolicy", json!("Cluster"));
        }
        if spec.get("type").and_then(Value::as_str) == Some("LoadBalancer") {
            default_field(spec, "allocateLoadBalancerNodePorts", json!(true));
        }
        for p in spec
            .get_mut("ports")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            if let Some(p) = p.as_object_mut() {
                default_field(p, "protocol", json!("TCP"));
                let port = p.get("port").cloned().unwrap_or(Value::Null);
                default_field(p, "targetPort", port);
            }
        }
    }

    fn name_rule(&self) -> NameRule {
        NameRule::DnsLabel
    }

    fn validate(&self, object: &Value, errs: &mut Vec<FieldError>) {
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
            validate_port(p.get("port"), format!("spec.ports[{i}].port"), errs);
        }
        let supported = |errs: &mut Vec<FieldError>, field: &str, value: Option<&str>, values: &[&str]| {
            let Some(value) = value.filter(|v| !values.contains(v)) else {
                return;
            };
            let list: Vec<String> = values.iter().map(|v| format!("{v:?}")).collect();
            errs.push(FieldError {
                reason: "FieldValueNotSupported",
                field: field.into(),
                message: format!(
                    "Unsupported value: {value:?}: supported values: {}",
                    list.join(", ")
                ),
            });
        };
        supported(
            errs,
            "spec.type",
            Some(ty),
            &["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"],
        );
        let spec = object.get("spec").and_then(Value::as_object);
        let etp = str_at(object, "/spec/externalTrafficPolicy");
        if spec.is_some_and(externally_accessible) {
            supported(errs, "spec.externalTrafficPolicy", etp, &["Cluster", "Local"]);
        } else if let Some(etp) = etp.filter(|v| !v.is_empty()) {
            errs.push(FieldError::invalid(
                "spec.externalTrafficPolicy",
                etp,
                "may only be set for externally-accessible services",
            ));
        }
        match object.pointer("/spec/healthCheckNodePort").and_then(Value::as_i64) {
            None | Some(0) => {}
            Some(port) if !spec.is_some_and(needs_health_check) => {
                errs.push(FieldError::invalid_rendered(
                    "spec.healthCheckNodePort",
                    &port.to_string(),
                    "may only be set when `type` is 'LoadBalancer' and `externalTrafficPolicy` \
                     is 'Local'",
                ))
            }
            Some(port) => validate_port(
                Some(&json!(port)),
                "spec.healthCheckNodePort".into(),
                errs,
            ),
        }
        supported(
            errs,
            "spec.internalTrafficPolicy",
            str_at(object, "/spec/internalTrafficPolicy"),
            &["Cluster", "Local"],
        );
        // The values Kubernetes 1.37 accepts; the service proxy acts on PreferSameNode (its own
        // node's endpoints first) and treats the zone preferences as no preference (a node is
        // its own zone here only when labelled so; zones are not tracked).
        supported(
            errs,
            "spec.trafficDistribution",
            str_at(object, "/spec/trafficDistribution"),
            &["PreferClose", "PreferSameNode", "PreferSameZone"],
        );
    }

    /// Service writes are serialised: reserve, store write and settle see one another.
    fn write_lock<'a>(&self, state: &'a ApiState) -> Option<WriteLock<'a>> {
        Some(Box::pin(state.services.lock()))
    }

    fn before_create<'a>(
        &'a self,
        state: &'a ApiState,
        def: &'a ResourceDef,
        key: &'a str,
        object: &'a mut Value,
    ) -> BoxFuture<'a, Result<(), ApiError>> {
        Box::pin(async move {
            // An existing Service must not have its addresses reserved a second time.
            if state.store.get(key).await.ok().flatten().is_some() {
                return Err(ApiError::AlreadyExists {
                    kind: def.group_resource(),
                    name: str_at(object, "/metadata/name")
                        .unwrap_or_default()
                        .to_owned(),
                });
            }
            state.services.reserve(key, object, None)
        })
    }

    fn before_update(
        &self,
        state: &ApiState,
        key: &str,
        old: &Value,
        new: &mut Value,
    ) -> Result<(), ApiError> {
        drop_type_dependent_fields(old, new);
        state.services.reserve(key, new, Some(old))
    }

    /// Releases what the Service at `key` no longer holds, from what is stored now.
    fn after_write<'a>(&'a self, state: &'a ApiState, key: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let stored = state.store.get(key).await.ok().flatten();
            state.services.settle(key, stored.as_ref());
        })
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            NAME,
            Column::new("Type", "string", |o, _| json!(service_type(o))),
            Column::new("Cluster-IP", "string", |o, _| {
                json!(or_none(s(o, "/spec/clusterIP").into()))
            }),
            Column::new("External-IP", "string", |o, _| json!(external_ip(o))),
            Column::new("Port(s)", "string", |o, _| json!(service_ports(o))),
            AGE,
            SELECTOR,
        ]
    }

    fn field_selectors(&self) -> Vec<&str> {
        vec!["spec.clusterIP", "spec.type"]
    }
}
