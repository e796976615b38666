//! Merging an applied configuration into the live object by schema, and removing the paths an
//! applier gave up (structured-merge-diff's `merge` and `RemoveItems`).

use serde_json::Value;

use super::fieldset::{FieldSet, PathElement};
use super::types::{item_key, same_item, ListKind, Ty};

/// Merges `config` into `live`: granular maps field by field, atomic maps and lists replaced,
/// set lists unioned, map lists item by item by their keys. Nulls in the configuration are no
/// opinion (structured-merge-diff drops them from typed objects).
pub fn merge(live: &mut Value, config: &Value, ty: Ty<'_>) {
    match (&mut *live, config) {
        (Value::Object(l), Value::Object(c)) if !ty.atomic_map() => {
            for (name, value) in c {
                if value.is_null() {
                    continue;
                }
                let child_ty = ty.field(name);
                match l.get_mut(name) {
                    Some(existing) => merge(existing, value, child_ty),
                    None => {
                        l.insert(name.clone(), without_nulls(value));
                    }
                }
            }
        }
        (Value::Array(l), Value::Array(c)) => match ty.list() {
            ListKind::Atomic => *live = without_nulls(config),
            ListKind::Set => {
                for item in c {
                    if !l.contains(item) {
                        l.push(item.clone());
                    }
                }
            }
            ListKind::Map(keys) => {
                let item_ty = ty.items();
                for item in c {
                    let key = item_key(item, keys);
                    match l.iter_mut().find(|existing| same_item(&key, existing)) {
                        Some(existing) => merge(existing, item, item_ty),
                        None => l.push(without_nulls(item)),
                    }
                }
            }
        },
        _ => *live = without_nulls(config),
    }
}

fn without_nulls(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), without_nulls(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(without_nulls).collect()),
        other => other.clone(),
    }
}

fn is_empty_container(value: &Value) -> bool {
    match value {
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

/// Removes the paths of `set` from `value`. A map field or list item whose own path is in the
/// set goes whole; otherwise the paths under it are removed from it, and a map or list left
/// empty by that goes too (Kubernetes' types omit empty maps and lists).
pub fn remove(value: &mut Value, set: &FieldSet, ty: Ty<'_>) {
    for (element, below) in set.elements() {
        match (element, &mut *value) {
            (PathElement::Field(name), Value::Object(map)) => {
                if below.is_member() {
                    map.remove(name);
                } else if let Some(child) = map.get_mut(name) {
                    remove(child, below, ty.field(name));
                    if is_empty_container(child) {
                        map.remove(name);
                    }
                }
            }
            (PathElement::Key(json), Value::Array(items)) => {
                let key: serde_json::Map<String, Value> =
                    serde_json::from_str(json).unwrap_or_default();
                if let Some(i) = items.iter().position(|item| same_item(&key, item)) {
                    if below.is_member() {
                        items.remove(i);
                    } else {
                        remove(&mut items[i], below, ty.items());
                    }
                }
            }
            (PathElement::Value(json), Value::Array(items)) if below.is_member() => {
                if let Ok(v) = serde_json::from_str::<Value>(json) {
                    items.retain(|item| item != &v);
                }
            }
            // Items by index are never applied (keyless lists are atomic or refused).
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merges_by_schema() {
        let pod = Ty::builtin("v1", "Pod");
        let mut live = json!({
            "metadata": {"labels": {"a": "1"}, "finalizers": ["x"]},
            "spec": {
                "nodeSelector": {"disk": "ssd", "zone": "a"},
                "containers": [
                    {"name": "c", "image": "i1", "args": ["1", "2"],
                     "ports": [{"containerPort": 80, "protocol": "TCP", "name": "http"}]},
                    {"name": "d", "image": "d1"}
                ]
            }
        });
        let config = json!({
            "metadata": {"labels": {"b": "2"}, "finalizers": ["y", "x"]},
            "spec": {
                "nodeSelector": {"zone": "b"},
                "containers": [{"name": "c", "image": "i2", "args": ["3"],
                    "ports": [{"containerPort": 80, "hostPort": 8080}]}]
            }
        });
        merge(&mut live, &config, pod);
        assert_eq!(
            live,
            json!({
                "metadata": {"labels": {"a": "1", "b": "2"}, "finalizers": ["x", "y"]},
                "spec": {
                    "nodeSelector": {"zone": "b"},
                    "containers": [
                        {"name": "c", "image": "i2", "args": ["3"],
                         "ports": [{"containerPort": 80, "protocol": "TCP", "name": "http", "hostPort": 8080}]},
                        {"name": "d", "image": "d1"}
                    ]
                }
            })
        );
    }

    #[test]
    fn removes_fields_items_and_values() {
        let pod = Ty::builtin("v1", "Pod");
        let mut live = json!({
            "metadata": {"labels": {"a": "1", "b": "2"}, "finalizers": ["x", "y"]},
            "spec": {"containers": [{"name": "c", "image": "i", "tty": true}, {"name": "d"}]}
        });
        let set = FieldSet::from_json(&json!({
            "f:metadata": {"f:labels": {"f:b": {}}, "f:finalizers": {"v:\"x\"": {}}},
            "f:spec": {"f:containers": {"k:{\"name\":\"c\"}": {"f:tty": {}}, "k:{\"name\":\"d\"}": {}}}
        }))
        .unwrap();
        remove(&mut live, &set, pod);
        assert_eq!(
            live,
            json!({
                "metadata": {"labels": {"a": "1"}, "finalizers": ["y"]},
                "spec": {"containers": [{"name": "c", "image": "i"}]}
            })
        );
    }
}
