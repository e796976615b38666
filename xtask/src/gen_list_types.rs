//! `cargo xtask gen-list-types SPEC... --source TEXT`: writes
//! control/src/apiserver/apply/builtin_types.json, the merge semantics of the built-in kinds
//! that server-side apply needs and k8s-openapi's types do not carry: which lists are sets or
//! maps (and their keys), which maps are atomic, and through which fields the definitions
//! holding them are reached.
//!
//! The input is Kubernetes' published OpenAPI: the v2 `swagger.json` (`definitions`) or the v3
//! documents of `api/openapi-spec/v3/*.json` (`components.schemas`), files or directories.
//! Lists without `x-kubernetes-list-type` get what kube-openapi's schema conversion gives
//! them: a `merge` patch strategy with a merge key makes a map list, without one a set, and
//! otherwise the list is atomic. Only what differs from the default (granular maps, atomic
//! lists) is written, so the table stays small.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde_json::{json, Map, Value};

/// Where the table goes, relative to the workspace root.
pub const OUTPUT: &str = "control/src/apiserver/apply/builtin_types.json";

/// Reads the specs at `inputs` and writes the table to `output`, noting `source` in it.
pub fn run(inputs: &[PathBuf], source: &str, output: &Path) -> anyhow::Result<()> {
    let mut schemas = Map::new();
    for input in inputs {
        let files: Vec<PathBuf> = if input.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(input)
                .with_context(|| format!("reading {}", input.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "json"))
                .collect();
            files.sort();
            files
        } else {
            vec![input.clone()]
        };
        for file in files {
            let text =
                std::fs::read_to_string(&file).with_context(|| format!("{}", file.display()))?;
            let doc: Value =
                serde_json::from_str(&text).with_context(|| format!("{}", file.display()))?;
            let defs = doc
                .get("definitions")
                .or_else(|| doc.pointer("/components/schemas"))
                .and_then(Value::as_object);
            for (name, schema) in defs.into_iter().flatten() {
                schemas.insert(name.clone(), schema.clone());
            }
        }
    }
    if schemas.is_empty() {
        bail!("no schema definitions found in the inputs");
    }
    let table = build(&schemas, source);
    let mut text = serde_json::to_string_pretty(&table)?;
    text.push('\n');
    std::fs::write(output, text).with_context(|| format!("writing {}", output.display()))?;
    println!(
        "wrote {} ({} definitions, {} kinds)",
        output.display(),
        table["definitions"].as_object().map_or(0, Map::len),
        table["kinds"].as_object().map_or(0, Map::len)
    );
    Ok(())
}

/// The definition a schema refers to (`$ref`, or v3's `allOf: [{$ref}]`).
fn reference(schema: &Value) -> Option<String> {
    let r = schema.get("$ref").or_else(|| {
        schema
            .get("allOf")?
            .as_array()?
            .iter()
            .find_map(|s| s.get("$ref"))
    })?;
    let r = r.as_str()?;
    Some(r.rsplit('/').next()?.to_owned())
}

/// One field's merge semantics, before pruning: `None` where the default applies.
fn field_entry(schema: &Value) -> Value {
    let mut entry = Map::new();
    if let Some(r) = reference(schema) {
        entry.insert("ref".into(), json!(r));
    }
    match schema.get("type").and_then(Value::as_str) {
        Some("array") => {
            let items = schema.get("items").unwrap_or(&Value::Null);
            let list_type = schema.get("x-kubernetes-list-type").and_then(Value::as_str);
            let strategy = schema
                .get("x-kubernetes-patch-strategy")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let merge_key = schema
                .get("x-kubernetes-patch-merge-key")
                .and_then(Value::as_str);
            let keys: Option<Vec<Value>> = schema
                .get("x-kubernetes-list-map-keys")
                .and_then(Value::as_array)
                .cloned();
            let kind = match (list_type, strategy.split(',').any(|s| s == "merge")) {
                (Some(t), _) => t.to_owned(),
                (None, true) if merge_key.is_some() => "map".into(),
                (None, true) => "set".into(),
                (None, false) => "atomic".into(),
            };
            entry.insert("list".into(), json!(kind));
            if kind == "map" {
                let keys =
                    keys.unwrap_or_else(|| merge_key.map(|k| vec![json!(k)]).unwrap_or_default());
                entry.insert("keys".into(), Value::Array(keys));
            }
            if let Some(r) = reference(items) {
                entry.insert("items".into(), json!(r));
            }
        }
        Some("object") => {
            if let Some(r) = schema.get("additionalProperties").and_then(reference) {
                entry.insert("values".into(), json!(r));
            }
        }
        _ => {}
    }
    if schema.get("x-kubernetes-map-type").and_then(Value::as_str) == Some("atomic") {
        entry.insert("atomic".into(), json!(true));
    }
    Value::Object(entry)
}

fn build(schemas: &Map<String, Value>, source: &str) -> Value {
    // Every definition's fields with their entries.
    let mut all: BTreeMap<String, (bool, BTreeMap<String, Value>)> = BTreeMap::new();
    for (name, schema) in schemas {
        let atomic = schema.get("x-kubernetes-map-type").and_then(Value::as_str) == Some("atomic");
        let fields = schema
            .get("properties")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .map(|(f, s)| (f.clone(), field_entry(s)))
            .collect();
        all.insert(name.clone(), (atomic, fields));
    }
    // A definition matters when it is atomic or has a non-default field; a field matters when
    // it is non-default or leads to a definition that matters. Iterate to the fixed point.
    let mut matters: BTreeSet<String> = BTreeSet::new();
    let field_matters = |entry: &Value, matters: &BTreeSet<String>| {
        let leads = |key: &str| {
            entry
                .get(key)
                .and_then(Value::as_str)
                .is_some_and(|d| matters.contains(d))
        };
        let list = entry.get("list").and_then(Value::as_str);
        entry.get("atomic").is_some()
            || matches!(list, Some("set" | "map"))
            || (list != Some("atomic") && (leads("ref") || leads("values")))
            || (matches!(list, Some("set" | "map")) && leads("items"))
    };
    loop {
        let before = matters.len();
        for (name, (atomic, fields)) in &all {
            if *atomic || fields.values().any(|e| field_matters(e, &matters)) {
                matters.insert(name.clone());
            }
        }
        if matters.len() == before {
            break;
        }
    }
    let mut definitions = Map::new();
    for name in &matters {
        let (atomic, fields) = &all[name];
        let mut out = Map::new();
        if *atomic {
            out.insert("atomic".into(), json!(true));
        }
        let kept: Map<String, Value> = fields
            .iter()
            .filter(|(_, e)| field_matters(e, &matters))
            .map(|(f, e)| {
                let mut e = e.as_object().cloned().unwrap_or_default();
                // Only references to definitions in the table are useful.
                for key in ["ref", "items", "values"] {
                    if e.get(key)
                        .and_then(Value::as_str)
                        .is_some_and(|d| !matters.contains(d))
                    {
                        e.remove(key);
                    }
                }
                (f.clone(), Value::Object(e))
            })
            .collect();
        if !kept.is_empty() {
            out.insert("fields".into(), Value::Object(kept));
        }
        definitions.insert(name.clone(), Value::Object(out));
    }
    // The kinds, by apiVersion and kind, with their root definitions.
    let mut kinds = Map::new();
    for (name, schema) in schemas {
        for gvk in schema
            .get("x-kubernetes-group-version-kind")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let group = gvk["group"].as_str().unwrap_or_default();
            let version = gvk["version"].as_str().unwrap_or_default();
            let kind = gvk["kind"].as_str().unwrap_or_default();
            // Only kinds with object metadata are served objects (not options or events).
            let has_meta = schema.pointer("/properties/metadata").is_some();
            if !has_meta || kind.ends_with("List") || !matters.contains(name) {
                continue;
            }
            let api_version = if group.is_empty() {
                version.to_owned()
            } else {
                format!("{group}/{version}")
            };
            kinds.insert(format!("{api_version}/{kind}"), json!(name));
        }
    }
    json!({
        "source": source,
        "kinds": kinds,
        "definitions": definitions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_types_keys_and_legacy_strategies() {
        let schemas = json!({
            "x.Pod": {
                "x-kubernetes-group-version-kind": [{"group": "", "version": "v1", "kind": "Pod"}],
                "properties": {
                    "metadata": {"$ref": "#/definitions/x.Meta"},
                    "spec": {"allOf": [{"$ref": "#/components/schemas/x.Spec"}]}
                }
            },
            "x.Meta": {"properties": {
                "finalizers": {"type": "array", "x-kubernetes-list-type": "set", "items": {"type": "string"}},
                "name": {"type": "string"}
            }},
            "x.Spec": {"properties": {
                "containers": {"type": "array", "items": {"$ref": "#/definitions/x.Container"},
                    "x-kubernetes-patch-strategy": "merge", "x-kubernetes-patch-merge-key": "name"},
                "args": {"type": "array", "items": {"type": "string"}},
                "selector": {"$ref": "#/definitions/x.Selector"},
                "nodeSelector": {"type": "object", "x-kubernetes-map-type": "atomic"}
            }},
            "x.Container": {"properties": {"image": {"type": "string"}}},
            "x.Selector": {"x-kubernetes-map-type": "atomic", "properties": {}}
        });
        let table = build(schemas.as_object().unwrap(), "test");
        assert_eq!(table["kinds"], json!({"v1/Pod": "x.Pod"}));
        let defs = &table["definitions"];
        assert_eq!(
            defs["x.Spec"]["fields"],
            json!({
                "containers": {"list": "map", "keys": ["name"]},
                "nodeSelector": {"atomic": true},
                "selector": {"ref": "x.Selector"}
            })
        );
        assert_eq!(
            defs["x.Meta"]["fields"],
            json!({"finalizers": {"list": "set"}})
        );
        assert!(defs.get("x.Container").is_none());
    }
}
