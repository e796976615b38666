//! Whether a stored custom resource still lacks one of its schema's defaults.
//!
//! Kubernetes defaults custom resources on read as well as on write, so that a default added to
//! a definition shows on objects stored before it. Writes already store defaulted objects, so
//! nearly every stored object is complete, and re-encoding each one to find that out made
//! lists of a defaulted kind four times as slow as lists of ConfigMaps. This module keeps only
//! the part of the schema that has defaults and looks at the stored bytes along it (borrowed
//! `RawValue`s, nothing decoded into values): a complete object goes out as stored, only an
//! incomplete one is decoded and defaulted ([`super::prune::default`]).

use std::collections::{BTreeSet, HashMap};

use serde_json::value::RawValue;

use super::schema::{Additional, Node};

/// The properties, map values and list items under which a schema has defaults.
#[derive(Debug, Clone, Default)]
pub struct DefaultsTree {
    /// Properties with a default or with defaults beneath them.
    props: Vec<Prop>,
    /// Every property name of the node, when its `additionalProperties` has defaults (the
    /// other keys are its map values).
    known: BTreeSet<String>,
    /// The `additionalProperties` schema, when it has defaults.
    additional: Option<Box<DefaultsTree>>,
    /// The `items` schema, when it has defaults.
    items: Option<Box<DefaultsTree>>,
}

#[derive(Debug, Clone)]
struct Prop {
    name: String,
    /// `Some(nullable)` when the property has a default: absent (or null and not nullable),
    /// it would be defaulted.
    default: Option<bool>,
    below: Option<DefaultsTree>,
}

impl DefaultsTree {
    /// The tree of `node`'s defaults, `None` when it has none.
    pub fn of(node: &Node) -> Option<Self> {
        let props: Vec<Prop> = node
            .properties
            .iter()
            .filter_map(|(name, p)| {
                let default = p.default.as_ref().map(|_| p.nullable);
                let below = Self::of(p);
                (default.is_some() || below.is_some()).then(|| Prop {
                    name: name.clone(),
                    default,
                    below,
                })
            })
            .collect();
        let additional = match &node.additional {
            Additional::Schema(s) => Self::of(s).map(Box::new),
            _ => None,
        };
        let items = node.items.as_deref().and_then(Self::of).map(Box::new);
        if props.is_empty() && additional.is_none() && items.is_none() {
            return None;
        }
        let known = if additional.is_some() {
            node.properties.keys().cloned().collect()
        } else {
            BTreeSet::new()
        };
        Some(Self {
            props,
            known,
            additional,
            items,
        })
    }

    /// Whether defaulting `raw` (a stored object's JSON) would change nothing. Anything this
    /// cannot tell without decoding (an escaped key, malformed JSON) counts as incomplete.
    pub fn complete(&self, raw: &[u8]) -> bool {
        serde_json::from_slice::<&RawValue>(raw).is_ok_and(|v| self.complete_value(v))
    }

    fn complete_value(&self, v: &RawValue) -> bool {
        let text = v.get();
        match text.as_bytes().first() {
            Some(b'{') => {
                // Keys with escapes cannot be borrowed: the object is decoded the slow way.
                let Ok(map) = serde_json::from_str::<HashMap<&str, &RawValue>>(text) else {
                    return false;
                };
                for p in &self.props {
                    match (map.get(p.name.as_str()), p.default) {
                        (None, Some(_)) => return false,
                        (Some(x), Some(false)) if x.get() == "null" => return false,
                        (Some(x), _) => {
                            if p.below.as_ref().is_some_and(|b| !b.complete_value(x)) {
                                return false;
                            }
                        }
                        (None, None) => {}
                    }
                }
                if let Some(additional) = &self.additional {
                    for (k, x) in &map {
                        if !self.known.contains(*k) && !additional.complete_value(x) {
                            return false;
                        }
                    }
                }
                true
            }
            Some(b'[') => {
                let Some(items) = &self.items else {
                    return true;
                };
                let Ok(list) = serde_json::from_str::<Vec<&RawValue>>(text) else {
                    return false;
                };
                list.iter().all(|x| items.complete_value(x))
            }
            // A scalar or null: defaults apply to objects' properties only.
            _ => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaProps;
    use serde_json::{json, Value};

    use super::*;
    use crate::apiserver::apiextensions::prune;
    use crate::apiserver::apiextensions::schema::Schema;

    fn schema() -> Schema {
        let props: JSONSchemaProps = serde_json::from_value(json!({
            "type": "object",
            "properties": {
                "spec": {"type": "object", "properties": {
                    "replicas": {"type": "integer", "default": 1},
                    "mode": {"type": "string", "default": "fast", "nullable": true},
                    "plain": {"type": "string"},
                    "ports": {"type": "array", "items": {"type": "object", "properties": {
                        "protocol": {"type": "string", "default": "TCP"},
                        "port": {"type": "integer"}}}},
                    "limits": {"type": "object", "additionalProperties": {
                        "type": "object", "properties": {"unit": {"type": "string", "default": "m"}}}},
                }},
                "status": {"type": "object", "properties": {"ready": {"type": "boolean"}}},
            }
        }))
        .unwrap();
        Schema::compile(&props, "spec.validation.openAPIV3Schema").unwrap()
    }

    /// What the decoding path says: does defaulting change the object?
    fn changes(schema: &Schema, object: &Value) -> bool {
        let mut defaulted = object.clone();
        prune::default(&schema.root, &mut defaulted);
        &defaulted != object
    }

    #[test]
    fn agrees_with_defaulting_on_every_case() {
        let s = schema();
        let tree = DefaultsTree::of(&s.root).expect("the schema has defaults");
        let full = json!({"spec": {"replicas": 2, "mode": "slow", "ports": [{"protocol": "UDP", "port": 53}],
            "limits": {"cpu": {"unit": "n"}}}});
        let cases = [
            full.clone(),
            json!({"spec": {"mode": "slow"}}),
            json!({"spec": {"replicas": 2}}),
            json!({"spec": {"replicas": 2, "mode": null}}),
            json!({"spec": {"replicas": null, "mode": "x"}}),
            json!({"spec": {"replicas": 2, "mode": "x", "ports": [{"port": 1}]}}),
            json!({"spec": {"replicas": 2, "mode": "x", "ports": [{"protocol": "TCP"}, {"port": 2}]}}),
            json!({"spec": {"replicas": 2, "mode": "x", "limits": {"cpu": {}}}}),
            json!({"spec": {"replicas": 2, "mode": "x", "limits": {"cpu": {"unit": "m"}}, "plain": "p"}}),
            json!({"spec": {"replicas": 2, "mode": "x", "ports": "not a list"}}),
            json!({"status": {"ready": true}}),
            json!({"metadata": {"name": "w"}}),
            json!({"spec": {"repl\u{0069}cas": 2, "mode": "x"}}),
        ];
        for object in cases {
            let raw = serde_json::to_vec(&object).unwrap();
            assert_eq!(tree.complete(&raw), !changes(&s, &object), "{object}");
        }
        // An escaped key cannot be borrowed: the slow path decides.
        assert!(!tree.complete(br#"{"spec": {"repl\u0069cas": 2, "mode": "x"}}"#));
        assert!(!tree.complete(b"{not json"));
    }

    #[test]
    fn a_schema_without_defaults_has_no_tree() {
        let props: JSONSchemaProps = serde_json::from_value(json!({
            "type": "object",
            "properties": {"spec": {"type": "object", "properties": {"a": {"type": "string"}}}}
        }))
        .unwrap();
        let s = Schema::compile(&props, "x").unwrap();
        assert!(DefaultsTree::of(&s.root).is_none());
    }
}
