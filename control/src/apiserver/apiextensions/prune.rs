//! Pruning: fields a custom resource's schema does not declare are dropped before it is
//! stored (apiextensions-apiserver's `pruning`), unless the schema keeps them with
//! `x-kubernetes-preserve-unknown-fields` or `additionalProperties`. The pruned paths are
//! what `fieldValidation=Strict` reports as unknown fields.

use serde_json::Value;

use super::schema::{Additional, Node, Type};

/// The fields every object (and every embedded resource) keeps at its top: metadata is
/// pruned as ObjectMeta by its own typed decode.
const OBJECT_FIELDS: [&str; 3] = ["apiVersion", "kind", "metadata"];

fn child(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_owned()
    } else {
        format!("{path}.{name}")
    }
}

/// Prunes `v` to `n` in place; the paths of what was dropped go to `pruned`.
pub fn prune(n: &Node, v: &mut Value, path: &str, pruned: &mut Vec<String>) {
    prune_node(n, v, path, pruned, path.is_empty());
}

fn prune_node(n: &Node, v: &mut Value, path: &str, pruned: &mut Vec<String>, resource: bool) {
    match v {
        Value::Object(map) => {
            let keeps_object_fields = resource || n.embedded;
            if n.ty != Some(Type::Object) && !n.preserve_unknown && !n.int_or_string {
                // A type mismatch: validation reports it; nothing to prune by.
                if n.ty.is_some() {
                    return;
                }
            }
            let mut drop = Vec::new();
            for (k, x) in map.iter_mut() {
                let at = child(path, k);
                if let Some(p) = n.properties.get(k) {
                    prune_node(p, x, &at, pruned, false);
                } else if keeps_object_fields && OBJECT_FIELDS.contains(&k.as_str()) {
                    // kept as they are
                } else {
                    match &n.additional {
                        Additional::Schema(s) => prune_node(s, x, &at, pruned, false),
                        Additional::Any => {}
                        Additional::None if n.preserve_unknown => {}
                        Additional::None => drop.push(k.clone()),
                    }
                }
            }
            for k in drop {
                map.remove(&k);
                pruned.push(child(path, &k));
            }
        }
        Value::Array(items) => {
            if let Some(item) = &n.items {
                for (i, x) in items.iter_mut().enumerate() {
                    prune_node(item, x, &format!("{path}[{i}]"), pruned, false);
                }
            }
        }
        _ => {}
    }
}

/// Applies the schema's defaults to `v` in place, top-down as Kubernetes does: an absent
/// property with a default (or a null one that is not nullable) gets a copy of the default,
/// and the defaulted value is then defaulted further.
pub fn default(n: &Node, v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (k, p) in &n.properties {
                match map.get(k) {
                    Some(Value::Null) if !p.nullable => {
                        if let Some(d) = &p.default {
                            map.insert(k.clone(), d.clone());
                        }
                    }
                    None => {
                        if let Some(d) = &p.default {
                            map.insert(k.clone(), d.clone());
                        }
                    }
                    _ => {}
                }
                if let Some(x) = map.get_mut(k) {
                    default(p, x);
                }
            }
            if let Additional::Schema(s) = &n.additional {
                for (k, x) in map.iter_mut() {
                    if !n.properties.contains_key(k) {
                        default(s, x);
                    }
                }
            }
        }
        Value::Array(items) => {
            if let Some(item) = &n.items {
                for x in items.iter_mut() {
                    default(item, x);
                }
            }
        }
        _ => {}
    }
}
