//! OpenAPI v3 documents per group/version, generated from k8s-openapi's schemars schemas.
//!
//! kubectl needs them twice: `kubectl explain` reads the schemas, and `kubectl create/apply`
//! (validation "strict" by default) checks that the PATCH operation of a kind declares the
//! `fieldValidation` parameter, then leaves validation to the server. PATCH operations list
//! JSON and merge patch bodies but not strategic merge on purpose: kubectl apply then builds
//! its strategic merge patch from its compiled-in Go types, whose patch metadata is exact.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use schemars::generate::SchemaSettings;
use schemars::SchemaGenerator;
use serde_json::{json, Map, Value};

use super::error::ApiError;
use super::registry::{ResourceDef, Schema, Snapshot};
use super::ApiState;

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// A hash of the served API that changes when the build or the registry does, for client
/// caches.
fn doc_hash(snapshot: &Snapshot) -> String {
    format!(
        "skiff-{}-1{}-{}",
        env!("CARGO_PKG_VERSION"),
        super::discovery::KUBE_MINOR,
        snapshot.generation()
    )
}

/// `/openapi/v3`.
pub async fn root(State(state): State<Arc<ApiState>>) -> axum::Json<Value> {
    let snapshot = state.registry.snapshot();
    let mut paths = Map::new();
    for (g, v) in snapshot.group_versions() {
        let p = gv_path(g, v);
        paths.insert(
            p.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash={}", doc_hash(&snapshot))}),
        );
    }
    axum::Json(json!({"paths": paths}))
}

/// `/openapi/v3/{path}`.
pub async fn group_version(
    State(state): State<Arc<ApiState>>,
    Path(path): Path<String>,
) -> Result<Response, ApiError> {
    // Documents are built on first request and kept with the registry snapshot (they are
    // large and rarely asked for, so they stay out of the idle footprint until kubectl wants
    // them); a registry change starts a new snapshot and so new documents.
    let snapshot = state.registry.snapshot();
    let doc = {
        let mut cache = snapshot.openapi.lock().unwrap_or_else(|p| p.into_inner());
        match cache.get(&path) {
            Some(doc) => doc.clone(),
            None => {
                let (g, v) = snapshot
                    .group_versions()
                    .into_iter()
                    .find(|(g, v)| gv_path(g, v) == path)
                    .ok_or(ApiError::UnknownResource)?;
                let doc = Arc::new(
                    serde_json::to_vec(&build(&snapshot, g, v))
                        .map_err(|e| ApiError::Internal(e.to_string()))?,
                );
                cache.insert(path, doc.clone());
                doc
            }
        }
    };
    Ok((
        [(http::header::CONTENT_TYPE, "application/json")],
        doc.as_ref().clone(),
    )
        .into_response())
}

/// The schemas of the group/version's kinds (and of what they refer to).
fn schemas_for(defs: &[&ResourceDef]) -> Map<String, Value> {
    let mut settings = SchemaSettings::openapi3();
    settings.definitions_path = "/components/schemas".into();
    let mut generator = SchemaGenerator::new(settings);
    let mut custom = Vec::new();
    for def in defs {
        match &def.schema {
            Some(Schema::Typed(schema)) => schema(&mut generator),
            Some(Schema::Custom(schema)) => custom.push((def, schema)),
            None => {}
        }
    }
    let object_meta = (!custom.is_empty()).then(|| {
        generator.subschema_for::<k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>()
    });
    let mut schemas: Map<String, Value> = generator.take_definitions(true).into_iter().collect();
    for (def, schema) in custom {
        // As Kubernetes publishes a definition's schema: its metadata is ObjectMeta, and
        // apiVersion and kind are described when the schema leaves them out.
        let mut schema = Value::clone(schema);
        if let Some(properties) = schema
            .as_object_mut()
            .map(|s| s.entry("properties").or_insert_with(|| json!({})))
            .and_then(Value::as_object_mut)
        {
            if let Some(meta) = &object_meta {
                properties.insert(
                    "metadata".into(),
                    json!({"allOf": [meta], "description": "Standard object's metadata."}),
                );
            }
            properties.entry("apiVersion").or_insert_with(|| json!({"type": "string", "description": "APIVersion defines the versioned schema of this representation of an object."}));
            properties.entry("kind").or_insert_with(|| json!({"type": "string", "description": "Kind is a string value representing the REST resource this object represents."}));
        }
        schemas.insert(schema_name(def), schema);
    }
    schemas
}

fn schema_name(def: &ResourceDef) -> String {
    if def.origin.is_some() {
        // A custom resource: the reversed group, as Kubernetes names it (com.example.v1.Widget).
        let group: Vec<&str> = def.group.split('.').rev().collect();
        return format!("{}.{}.{}", group.join("."), def.version, def.kind);
    }
    let group = match def.group.as_str() {
        "" => "core",
        g => g.split('.').next().unwrap_or(g),
    };
    format!("io.k8s.api.{group}.{}.{}", def.version, def.kind)
}

fn operation(def: &ResourceDef, verb: &str, body_types: &[&str]) -> Value {
    let mut op = json!({
        "operationId": format!("{verb}{}", def.kind),
        "x-kubernetes-action": verb,
        "x-kubernetes-group-version-kind": {"group": def.group, "version": def.version, "kind": def.kind},
        "parameters": [
            {"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
            {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
        ],
        "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{}", schema_name(def))}}}}},
    });
    if !body_types.is_empty() {
        let content: Map<String, Value> = body_types
            .iter()
            .map(|t| (t.to_string(), json!({"schema": {"type": "object"}})))
            .collect();
        op["requestBody"] = json!({"content": content, "required": true});
    }
    op
}

fn build(snapshot: &Snapshot, group: &str, version: &str) -> Value {
    let defs: Vec<&ResourceDef> = snapshot
        .all()
        .iter()
        .filter(|d| d.group == group && d.version == version)
        .map(|d| d.as_ref())
        .collect();
    let mut schemas = schemas_for(&defs);
    let mut paths = Map::new();
    for def in defs {
        if let Some(Value::Object(schema)) = schemas.get_mut(&schema_name(def)) {
            schema.insert(
                "x-kubernetes-group-version-kind".into(),
                json!([{"group": def.group, "version": def.version, "kind": def.kind}]),
            );
        }
        let base = if group.is_empty() {
            format!("/api/{version}")
        } else {
            format!("/apis/{group}/{version}")
        };
        let collection = if def.namespaced {
            format!("{base}/namespaces/{{namespace}}/{}", def.plural)
        } else {
            format!("{base}/{}", def.plural)
        };
        paths.insert(
            collection.clone(),
            json!({"get": operation(def, "list", &[]), "post": operation(def, "post", &["application/json", "application/yaml"])}),
        );
        paths.insert(
            format!("{collection}/{{name}}"),
            json!({
                "get": operation(def, "get", &[]),
                "put": operation(def, "put", &["application/json", "application/yaml"]),
                "patch": operation(def, "patch", &["application/json-patch+json", "application/merge-patch+json"]),
                "delete": operation(def, "delete", &[]),
            }),
        );
    }
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": format!("v1.{}.0", super::discovery::KUBE_MINOR)},
        "paths": paths,
        "components": {"schemas": schemas},
    })
}
