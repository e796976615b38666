//! Discovery: /version, /api, /api/v1, /apis, /apis/G, /apis/G/V in the legacy form; `/api`
//! and `/apis` answer the aggregated form instead when `Accept` asks for it
//! (`aggregated_discovery.rs`, built from the lists here).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::aggregated_discovery;
use super::error::ApiError;
use super::registry::ResourceDef;
use super::ApiState;

/// The Kubernetes version skiff's API corresponds to (k8s-openapi's `v1_37`).
pub const KUBE_MINOR: &str = "37";

/// `/version`.
pub async fn version() -> Json<Value> {
    Json(json!({
        "major": "1",
        "minor": KUBE_MINOR,
        "gitVersion": format!("v1.{KUBE_MINOR}.0-skiff.{}", env!("CARGO_PKG_VERSION")),
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "",
        "goVersion": "",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, if cfg!(target_arch = "x86_64") { "amd64" } else { std::env::consts::ARCH }),
    }))
}

/// `/api`: the aggregated document when asked for (see `aggregated_discovery.rs`).
pub async fn core_versions(State(state): State<Arc<ApiState>>, headers: HeaderMap) -> Response {
    if let Some(version) = aggregated_discovery::wanted(&headers) {
        return aggregated_discovery::respond(&state, &headers, true, version);
    }
    Json(json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}],
    }))
    .into_response()
}

/// The APIResourceList of one group/version.
pub fn resource_list(state: &ApiState, group: &str, version: &str) -> Option<Value> {
    let snapshot = state.registry.snapshot();
    let defs: Vec<&ResourceDef> = snapshot
        .all()
        .iter()
        .filter(|d| d.group == group && d.version == version)
        .map(|d| d.as_ref())
        .collect();
    if defs.is_empty() {
        return None;
    }
    let mut resources = Vec::new();
    for d in defs {
        resources.push(json!({
            "name": d.plural,
            "singularName": d.singular,
            "namespaced": d.namespaced,
            "kind": d.kind,
            "verbs": d.strategy.verbs(),
            "shortNames": d.short_names,
            "categories": d.categories,
        }));
        if d.subresources.status {
            resources.push(json!({
                "name": format!("{}/status", d.plural), "singularName": "", "namespaced": d.namespaced,
                "kind": d.kind, "verbs": ["get", "patch", "update"],
            }));
        }
        resources.extend(d.strategy.discovery_subresources());
        if d.subresources.scale {
            resources.push(json!({
                "name": format!("{}/scale", d.plural), "singularName": "", "namespaced": d.namespaced,
                "group": "autoscaling", "version": "v1", "kind": "Scale", "verbs": ["get", "patch", "update"],
            }));
        }
    }
    let gv = if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    };
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
    )
}

/// `/api/{version}`.
pub async fn core_resources(
    State(state): State<Arc<ApiState>>,
    Path(version): Path<String>,
) -> Result<Json<Value>, ApiError> {
    resource_list(&state, "", &version)
        .map(Json)
        .ok_or(ApiError::UnknownResource)
}

/// Kubernetes' version priority (`version.CompareKubeAwareVersionStrings`): GA before beta
/// before alpha, higher numbers first, then names that are not Kubernetes versions in
/// alphabetical order. Smaller keys come first.
pub fn version_priority(version: &str) -> (u8, i64, i64, String) {
    let parsed = version.strip_prefix('v').and_then(|rest| {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let major: i64 = rest[..digits].parse().ok()?;
        let tail = &rest[digits..];
        if tail.is_empty() {
            return Some((0, -major, 0));
        }
        let (level, n) = if let Some(n) = tail.strip_prefix("beta") {
            (1, n)
        } else {
            (2, tail.strip_prefix("alpha")?)
        };
        let minor: i64 = n.parse().ok()?;
        Some((level, -major, -minor))
    });
    match parsed {
        Some((level, major, minor)) => (level, major, minor, String::new()),
        None => (3, 0, 0, version.to_owned()),
    }
}

/// The groups with their versions, preferred version first.
pub fn groups_of(state: &ApiState) -> Vec<(String, Vec<String>)> {
    let snapshot = state.registry.snapshot();
    let mut groups: Vec<(String, Vec<String>)> = Vec::new();
    for (g, v) in snapshot.group_versions() {
        if g.is_empty() {
            continue;
        }
        match groups.iter_mut().find(|(name, _)| name == g) {
            Some((_, versions)) => versions.push(v.to_owned()),
            None => groups.push((g.to_owned(), vec![v.to_owned()])),
        }
    }
    for (_, versions) in &mut groups {
        versions.sort_by_key(|v| version_priority(v));
    }
    groups
}

fn group_object(group: &str, versions: &[String]) -> Value {
    let gvs: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
        .collect();
    json!({"name": group, "versions": gvs, "preferredVersion": gvs.first()})
}

/// `/apis`: the aggregated document when asked for.
pub async fn groups(State(state): State<Arc<ApiState>>, headers: HeaderMap) -> Response {
    if let Some(version) = aggregated_discovery::wanted(&headers) {
        return aggregated_discovery::respond(&state, &headers, false, version);
    }
    let groups: Vec<Value> = groups_of(&state)
        .iter()
        .map(|(g, versions)| group_object(g, versions))
        .collect();
    Json(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})).into_response()
}

/// `/apis/{group}`.
pub async fn group(
    State(state): State<Arc<ApiState>>,
    Path(group): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let (g, versions) = groups_of(&state)
        .into_iter()
        .find(|(g, _)| *g == group)
        .ok_or(ApiError::UnknownResource)?;
    let mut object = group_object(&g, &versions);
    object["kind"] = json!("APIGroup");
    object["apiVersion"] = json!("v1");
    Ok(Json(object))
}

/// `/apis/{group}/{version}`.
pub async fn group_resources(
    State(state): State<Arc<ApiState>>,
    Path((group, version)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    resource_list(&state, &group, &version)
        .map(Json)
        .ok_or(ApiError::UnknownResource)
}

#[cfg(test)]
mod tests {
    use super::version_priority;

    #[test]
    fn versions_sort_as_kubernetes_prefers_them() {
        let mut v = vec![
            "v1alpha1",
            "foo",
            "v2beta1",
            "v1",
            "v11alpha2",
            "v1beta2",
            "v2",
            "bar",
            "v12",
        ];
        v.sort_by_key(|x| version_priority(x));
        assert_eq!(
            v,
            [
                "v12",
                "v2",
                "v1",
                "v2beta1",
                "v1beta2",
                "v11alpha2",
                "v1alpha1",
                "bar",
                "foo"
            ]
        );
    }
}
