//! Serving a custom resource: the [`ResourceDef`] and [`Strategy`] of each served version of
//! a CustomResourceDefinition (apiextensions-apiserver's `customresource_handler.go` and
//! `registry/customresource/strategy.go`).
//!
//! Every version's objects share one store key space (`<group>/<plural>/...`) and are stored
//! in the storage version; with `conversion: None` converting is rewriting `apiVersion`.
//! A write is pruned to the version's schema (its roundtrip), defaulted, validated against
//! it, and stored; a read is given the served `apiVersion` and the schema's defaults.

use std::sync::Arc;

use jsonpath_rust::parser::model::JpQuery;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceColumnDefinition, CustomResourceDefinition, CustomResourceDefinitionVersion,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::{json, Value};

use super::prune;
use super::schema::Schema;
use super::validate;
use crate::apiserver::error::{ApiError, FieldError};
use crate::apiserver::kinds::Strategy;
use crate::apiserver::registry::{Origin, ResourceDef, Subresources};
use crate::apiserver::table::{Cell, Column, AGE, NAME};
use crate::apiserver::ApiState;

/// The finalizer that holds a CustomResourceDefinition until its objects are gone.
pub const CLEANUP_FINALIZER: &str = "customresourcecleanup.apiextensions.k8s.io";

/// The `/scale` mapping of a custom resource, as JSON pointers.
#[derive(Debug, Clone)]
struct Scale {
    spec_replicas: String,
    status_replicas: String,
    label_selector: Option<String>,
}

/// One served version of a custom resource.
pub struct CustomResource {
    api_version: String,
    storage_api_version: String,
    schema: Arc<Schema>,
    columns: Vec<Column>,
    scale: Option<Scale>,
    deprecation: Option<String>,
    terminating: bool,
    /// `selectableFields`, as field selector paths (`spec.color`).
    selectable: Vec<String>,
    /// Whether the version has a `/status` subresource (then status changes are not counted
    /// by `metadata.generation`).
    status: bool,
}

/// A simple JSON path of a CRD (`.spec.replicas`) as a JSON pointer (`/spec/replicas`).
pub fn pointer_of(path: &str) -> Option<String> {
    let rest = path.strip_prefix('.')?;
    if rest.is_empty()
        || rest
            .split('.')
            .any(|s| s.is_empty() || s.contains(['[', ']', '*', '@', '?']))
    {
        return None;
    }
    Some(
        rest.split('.')
            .map(|s| format!("/{}", s.replace('~', "~0").replace('/', "~1")))
            .collect(),
    )
}

/// Parses a printer column's JSONPath (`.status.conditions[?(@.type=="Ready")].status`, as
/// kubectl writes them, without the leading `$`).
pub fn printer_path(path: &str) -> Result<JpQuery, String> {
    let full = if path.starts_with('$') {
        path.to_owned()
    } else {
        format!("${path}")
    };
    jsonpath_rust::parser::parse_json_path(&full).map_err(|e| e.to_string())
}

/// A printer column's cell: nothing, the one value found, or the values joined by commas.
fn printer_cell(query: &JpQuery, ty: &str, object: &Value) -> Value {
    let found = jsonpath_rust::query::js_path_process(query, object).unwrap_or_default();
    let values: Vec<&Value> = found.into_iter().map(|r| r.val()).collect();
    match values.as_slice() {
        [] => Value::Null,
        [one] => match (ty, one) {
            ("string" | "date", Value::String(_)) => (*one).clone(),
            ("string", other) => json!(other.to_string()),
            _ => (*one).clone(),
        },
        many => json!(many
            .iter()
            .map(|v| match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect::<Vec<_>>()
            .join(",")),
    }
}

fn column(def: &CustomResourceColumnDefinition) -> Result<Column, String> {
    let query = Arc::new(printer_path(&def.json_path)?);
    let ty = def.type_.clone();
    let cell_ty = ty.clone();
    Ok(Column {
        name: def.name.clone().into(),
        ty: ty.into(),
        format: def.format.clone().unwrap_or_default().into(),
        priority: def.priority.unwrap_or(0),
        cell: Cell::Dynamic(Arc::new(move |o, _| printer_cell(&query, &cell_ty, o))),
    })
}

/// What the resources of a definition are built from: its spec and whether it is
/// terminating. Equal fingerprints build the same resources.
pub fn fingerprint(crd: &CustomResourceDefinition, terminating: bool) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    serde_json::to_string(&crd.spec)
        .unwrap_or_default()
        .hash(&mut h);
    terminating.hash(&mut h);
    h.finish()
}

/// The versions of `crd` that are served, as resources to register; `terminating` when the
/// definition is being deleted (its objects can no longer be created).
pub fn resource_defs(
    crd: &CustomResourceDefinition,
    terminating: bool,
) -> Result<Vec<ResourceDef>, String> {
    let spec = &crd.spec;
    let fingerprint = fingerprint(crd, terminating);
    let storage = spec
        .versions
        .iter()
        .find(|v| v.storage)
        .ok_or("no storage version")?;
    let storage_api_version = format!("{}/{}", spec.group, storage.name);
    spec.versions
        .iter()
        .filter(|v| v.served)
        .map(|v| version_def(crd, v, &storage_api_version, terminating, fingerprint))
        .collect()
}

fn version_def(
    crd: &CustomResourceDefinition,
    v: &CustomResourceDefinitionVersion,
    storage_api_version: &str,
    terminating: bool,
    fingerprint: u64,
) -> Result<ResourceDef, String> {
    let spec = &crd.spec;
    let props = v
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .ok_or_else(|| format!("version {} has no schema", v.name))?;
    let schema = Arc::new(Schema::compile(props, "openAPIV3Schema").map_err(|errs| {
        errs.iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect::<Vec<_>>()
            .join("; ")
    })?);
    let subresources = v.subresources.as_ref();
    let scale = subresources
        .and_then(|s| s.scale.as_ref())
        .map(|s| -> Result<Scale, String> {
            let spec_replicas = pointer_of(&s.spec_replicas_path)
                .ok_or_else(|| format!("bad specReplicasPath {:?}", s.spec_replicas_path))?;
            let status_replicas = pointer_of(&s.status_replicas_path)
                .ok_or_else(|| format!("bad statusReplicasPath {:?}", s.status_replicas_path))?;
            Ok(Scale {
                spec_replicas,
                status_replicas,
                label_selector: s.label_selector_path.as_deref().and_then(pointer_of),
            })
        })
        .transpose()?;
    let mut columns = vec![NAME];
    let printer = v.additional_printer_columns.as_deref().unwrap_or_default();
    for c in printer {
        columns.push(column(c)?);
    }
    if printer.is_empty() {
        columns.push(AGE);
    }
    let api_version = format!("{}/{}", spec.group, v.name);
    let deprecation = (v.deprecated == Some(true)).then(|| {
        v.deprecation_warning
            .clone()
            .unwrap_or_else(|| format!("{api_version} {} is deprecated", spec.names.kind))
    });
    let strategy = CustomResource {
        api_version: api_version.clone(),
        storage_api_version: storage_api_version.to_owned(),
        schema: schema.clone(),
        columns,
        scale: scale.clone(),
        deprecation,
        terminating,
        status: subresources.is_some_and(|s| s.status.is_some()),
        selectable: v
            .selectable_fields
            .iter()
            .flatten()
            .map(|f| f.json_path.trim_start_matches('.').to_owned())
            .collect(),
    };
    let roundtrip_schema = schema.clone();
    let open_api = Arc::new(serde_json::to_value(props).map_err(|e| e.to_string())?);
    Ok(ResourceDef {
        group: spec.group.clone(),
        version: v.name.clone(),
        kind: spec.names.kind.clone(),
        plural: spec.names.plural.clone(),
        singular: spec
            .names
            .singular
            .clone()
            .unwrap_or_else(|| spec.names.kind.to_ascii_lowercase()),
        namespaced: spec.scope == "Namespaced",
        short_names: spec.names.short_names.clone().unwrap_or_default(),
        categories: spec.names.categories.clone().unwrap_or_default(),
        subresources: Subresources {
            status: subresources.is_some_and(|s| s.status.is_some()),
            scale: scale.is_some(),
        },
        roundtrip: Arc::new(move |value| roundtrip(&roundtrip_schema, value)),
        schema: Some(crate::apiserver::registry::Schema::Custom(open_api)),
        strategy: Arc::new(strategy),
        origin: Some(Origin {
            definition: crd.metadata.name.clone().unwrap_or_default(),
            fingerprint,
        }),
    })
}

/// A custom resource's decode: `metadata` through ObjectMeta (wrong types are a 400, unknown
/// fields dropped), the rest pruned to the schema. Pruned fields are what strict field
/// validation reports.
fn roundtrip(schema: &Schema, mut value: Value) -> Result<Value, serde_json::Error> {
    use serde::de::Error as _;
    let Some(map) = value.as_object_mut() else {
        return Err(serde_json::Error::custom(
            "the object must be a JSON object",
        ));
    };
    if let Some(meta) = map.get_mut("metadata") {
        let typed: ObjectMeta = serde_json::from_value(meta.take())?;
        *meta = serde_json::to_value(typed)?;
    }
    prune::prune(&schema.root, &mut value, "", &mut Vec::new());
    Ok(value)
}

impl Strategy for CustomResource {
    fn initial_status(&self) -> Option<Value> {
        None
    }

    fn default(&self, object: &mut Value) {
        if self.schema.has_defaults {
            prune::default(&self.schema.root, object);
        }
    }

    fn admit<'a>(
        &'a self,
        _state: &'a ApiState,
        _object: &'a mut Value,
    ) -> futures::future::BoxFuture<'a, Result<(), ApiError>> {
        let terminating = self.terminating;
        Box::pin(async move {
            if terminating {
                Err(ApiError::MethodNotAllowed)
            } else {
                Ok(())
            }
        })
    }

    fn validate(&self, object: &Value, errs: &mut Vec<FieldError>) {
        // The schema describes the object without its metadata, which ObjectMeta's rules check.
        let mut body = object.clone();
        if let Some(map) = body.as_object_mut() {
            if !self.schema.root.properties.contains_key("metadata") {
                map.remove("metadata");
            }
        }
        validate::value(&self.schema.root, &body, "", errs);
        if self.schema.has_rules {
            validate::rules(&self.schema.root, &body, None, "", errs);
        }
    }

    fn validate_update(&self, old: &Value, new: &Value, errs: &mut Vec<FieldError>) {
        if self.schema.has_rules {
            validate::rules(&self.schema.root, new, Some(old), "", errs);
        }
    }

    /// As apiextensions-apiserver: every change but metadata (and status, with a `/status`
    /// subresource) is a new generation.
    fn bumps_generation(&self, old: &Value, new: &Value) -> bool {
        let counted = |o: &Value| {
            let mut o = o.clone();
            if let Some(map) = o.as_object_mut() {
                // Versions are one object: only what the object says counts.
                map.remove("metadata");
                map.remove("apiVersion");
                if self.status {
                    map.remove("status");
                }
            }
            o
        };
        counted(old) != counted(new)
    }

    fn always_has_generation(&self) -> bool {
        true
    }

    fn columns(&self) -> Vec<Column> {
        self.columns.clone()
    }

    fn field_selectors(&self) -> Vec<&str> {
        self.selectable.iter().map(String::as_str).collect()
    }

    fn scale_replicas_paths(&self) -> (&str, &str) {
        match &self.scale {
            Some(s) => (&s.spec_replicas, &s.status_replicas),
            None => ("/spec/replicas", "/status/replicas"),
        }
    }

    fn scale_selector(&self, object: &Value) -> String {
        self.scale
            .as_ref()
            .and_then(|s| s.label_selector.as_deref())
            .and_then(|p| object.pointer(p))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    }

    fn converts(&self) -> bool {
        self.api_version != self.storage_api_version || self.schema.has_defaults
    }

    fn needs_served_form(&self, raw: &[u8]) -> bool {
        self.api_version != self.storage_api_version
            || self
                .schema
                .read_defaults
                .as_ref()
                .is_some_and(|t| !t.complete(raw))
    }

    fn structural_schema(&self) -> Option<&super::schema::Node> {
        Some(&self.schema.root)
    }

    fn storage_form(&self, object: &mut Value) {
        if let Some(map) = object.as_object_mut() {
            map.insert("apiVersion".into(), json!(self.storage_api_version));
        }
    }

    fn served_form(&self, object: &mut Value) {
        if let Some(map) = object.as_object_mut() {
            map.insert("apiVersion".into(), json!(self.api_version));
        }
        self.default(object);
    }

    fn deprecation_warning(&self) -> Option<&str> {
        self.deprecation.as_deref()
    }

    fn strategic_merge(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crd_paths_become_json_pointers() {
        assert_eq!(
            pointer_of(".spec.replicas").as_deref(),
            Some("/spec/replicas")
        );
        assert_eq!(pointer_of(".status.a/b").as_deref(), Some("/status/a~1b"));
        for bad in [
            "spec.replicas",
            ".",
            ".spec..x",
            ".spec.items[0]",
            ".spec.*",
        ] {
            assert_eq!(pointer_of(bad), None, "{bad}");
        }
    }

    #[test]
    fn printer_cells_follow_kubernetes() {
        let o = json!({"status": {"conditions": [{"type": "Ready", "status": "True"}, {"type": "X", "status": "False"}]}, "spec": {"n": 3, "tags": ["a", "b"]}});
        let cell = |path: &str, ty: &str| printer_cell(&printer_path(path).unwrap(), ty, &o);
        assert_eq!(
            cell(".status.conditions[?(@.type==\"Ready\")].status", "string"),
            json!("True")
        );
        assert_eq!(cell(".spec.n", "integer"), json!(3));
        assert_eq!(cell(".spec.n", "string"), json!("3"));
        assert_eq!(cell(".spec.tags[*]", "string"), json!("a,b"));
        assert_eq!(cell(".spec.missing", "string"), Value::Null);
        assert!(printer_path(".spec[").is_err());
    }
}
