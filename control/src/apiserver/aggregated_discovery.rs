//! Aggregated discovery (`apidiscovery.k8s.io/v2`, and `v2beta1` for kubectl 1.26-1.29):
//! `/api` and `/apis` answer every group, version and resource in one document when the
//! client asks for it in `Accept`, as kubectl does first since 1.30. The document carries an
//! ETag, so a client's cached discovery is revalidated with one 304; a custom resource
//! changes the registry's snapshot and so the document and its ETag at once.
//!
//! Built from the same per-group/version lists as the legacy form (`discovery.rs`), so the
//! two cannot disagree.

use std::hash::{Hash, Hasher};

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};

use super::discovery::{groups_of, resource_list};
use super::ApiState;

/// The aggregated form a request asks for, if any: the `apidiscovery.k8s.io` version.
pub fn wanted(headers: &HeaderMap) -> Option<&'static str> {
    let accept = headers.get(header::ACCEPT)?.to_str().ok()?;
    // The first acceptable media type wins, as the client lists them by preference.
    for media in accept.split(',') {
        let params: Vec<&str> = media.split(';').map(str::trim).collect();
        let has = |p: &str| params.iter().any(|x| x.eq_ignore_ascii_case(p));
        if has("as=APIGroupDiscoveryList") && has("g=apidiscovery.k8s.io") {
            if has("v=v2") {
                return Some("v2");
            }
            if has("v=v2beta1") {
                return Some("v2beta1");
            }
        }
        if params
            .first()
            .is_some_and(|m| m.eq_ignore_ascii_case("application/json") || *m == "*/*")
            && !has("as=APIGroupDiscoveryList")
        {
            return None;
        }
    }
    None
}

/// One resource's entry from its legacy entries (the resource and its `name/sub` entries).
fn resource_entry(group: &str, version: &str, parent: &Value, subresources: &[&Value]) -> Value {
    let mut entry = json!({
        "resource": parent["name"],
        "responseKind": {"group": group, "version": version, "kind": parent["kind"]},
        "scope": if parent["namespaced"] == true { "Namespaced" } else { "Cluster" },
        "singularResource": parent["singularName"],
        "verbs": parent["verbs"],
    });
    for field in ["shortNames", "categories"] {
        if parent[field].as_array().is_some_and(|a| !a.is_empty()) {
            entry[field] = parent[field].clone();
        }
    }
    let subs: Vec<Value> = subresources
        .iter()
        .map(|s| {
            let name = s["name"].as_str().unwrap_or("");
            let sub = name.split_once('/').map_or(name, |(_, sub)| sub);
            json!({
                "subresource": sub,
                "responseKind": {
                    "group": s.get("group").cloned().unwrap_or_else(|| json!(group)),
                    "version": s.get("version").cloned().unwrap_or_else(|| json!(version)),
                    "kind": s["kind"],
                },
                "verbs": s["verbs"],
            })
        })
        .collect();
    if !subs.is_empty() {
        entry["subresources"] = json!(subs);
    }
    entry
}

/// The `versions` of one group: each with its resources.
fn versions(state: &ApiState, group: &str, versions: &[String]) -> Vec<Value> {
    versions
        .iter()
        .filter_map(|v| {
            let list = resource_list(state, group, v)?;
            let entries = list["resources"].as_array().cloned().unwrap_or_default();
            let resources: Vec<Value> = entries
                .iter()
                .filter(|e| !e["name"].as_str().unwrap_or("").contains('/'))
                .map(|parent| {
                    let prefix = format!("{}/", parent["name"].as_str().unwrap_or(""));
                    let subs: Vec<&Value> = entries
                        .iter()
                        .filter(|e| e["name"].as_str().is_some_and(|n| n.starts_with(&prefix)))
                        .collect();
                    resource_entry(group, v, parent, &subs)
                })
                .collect();
            Some(json!({"version": v, "resources": resources, "freshness": "Current"}))
        })
        .collect()
}

/// The document for `/api` (`core`) or `/apis`.
pub fn document(state: &ApiState, core: bool, api_version: &str) -> Value {
    let items: Vec<Value> = if core {
        vec![
            json!({"metadata": {"creationTimestamp": null}, "versions": versions(state, "", &["v1".to_owned()])}),
        ]
    } else {
        groups_of(state)
            .iter()
            .map(|(g, vs)| {
                json!({"metadata": {"name": g, "creationTimestamp": null}, "versions": versions(state, g, vs)})
            })
            .collect()
    };
    json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": format!("apidiscovery.k8s.io/{api_version}"),
        "metadata": Map::new(),
        "items": items,
    })
}

/// Answers with the document, or 304 when the client's ETag still matches.
pub fn respond(state: &ApiState, headers: &HeaderMap, core: bool, api_version: &str) -> Response {
    let body = serde_json::to_vec(&document(state, core, api_version)).unwrap_or_default();
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    body.hash(&mut hasher);
    let etag = format!("\"{:016X}\"", hasher.finish());
    let content_type =
        format!("application/json;g=apidiscovery.k8s.io;v={api_version};as=APIGroupDiscoveryList");
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    let mut response = if matches {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (StatusCode::OK, body).into_response()
    };
    let h = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&content_type) {
        h.insert(header::CONTENT_TYPE, v);
    }
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(header::VARY, HeaderValue::from_static("Accept"));
    response
}
