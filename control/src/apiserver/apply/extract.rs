//! The field sets of objects: what an applied configuration sets, and what a write changed
//! or removed (structured-merge-diff's `ToFieldSet` and `Compare`).

use serde_json::Value;

use super::fieldset::{FieldSet, PathElement};
use super::types::{item_key, ListKind, Ty};

/// Why a value cannot be given field paths.
#[derive(Debug, PartialEq, Eq)]
pub struct BadList(pub String);

/// The path element of list item `item` (at `index`) in a list of kind `kind`.
fn item_element(kind: ListKind<'_>, item: &Value, index: usize) -> Option<PathElement> {
    match kind {
        ListKind::Atomic => None,
        ListKind::Set => Some(PathElement::value(item)),
        ListKind::Map(keys) => {
            let key = item_key(item, keys);
            Some(if key.is_empty() {
                PathElement::Index(index as u64)
            } else {
                PathElement::key(&key)
            })
        }
    }
}

/// The paths an applied configuration sets: its leaves (scalars, atomic lists and maps, empty
/// maps) and the items of its set and map lists. Duplicate list items, or map-list items
/// without any key, are errors as in Kubernetes.
pub fn applied(config: &Value, ty: Ty<'_>) -> Result<FieldSet, BadList> {
    let mut set = FieldSet::new();
    walk_applied(config, ty, &mut set, &mut Vec::new())?;
    Ok(set)
}

fn walk_applied(
    value: &Value,
    ty: Ty<'_>,
    set: &mut FieldSet,
    path: &mut Vec<PathElement>,
) -> Result<(), BadList> {
    match value {
        Value::Object(map) if !ty.atomic_map() && !map.is_empty() => {
            for (name, child) in map {
                if child.is_null() {
                    continue;
                }
                path.push(PathElement::Field(name.clone()));
                walk_applied(child, ty.field(name), set, path)?;
                path.pop();
            }
        }
        Value::Array(items) if ty.list() != ListKind::Atomic => {
            let kind = ty.list();
            let item_ty = ty.items();
            let mut seen = std::collections::HashSet::new();
            for (i, item) in items.iter().enumerate() {
                let element = match (kind, item_element(kind, item, i)) {
                    (ListKind::Map(keys), Some(PathElement::Index(_))) => {
                        return Err(BadList(format!(
                            "{}: an item of a list keyed by {keys:?} has none of its keys",
                            super::fieldset::PathDisplay(path)
                        )))
                    }
                    (_, Some(e)) => e,
                    (_, None) => unreachable!("only atomic lists have no item elements"),
                };
                if !seen.insert(element.clone()) {
                    return Err(BadList(format!(
                        "{}: duplicate entries for key {}",
                        super::fieldset::PathDisplay(path),
                        element.encode()
                    )));
                }
                path.push(element);
                set.insert(path);
                if let ListKind::Map(_) = kind {
                    walk_applied(item, item_ty, set, path)?;
                }
                path.pop();
            }
            if items.is_empty() {
                set.insert(path);
            }
        }
        _ => set.insert(path),
    }
    Ok(())
}

/// Every path of `value`: its maps, list items and leaves.
pub fn all(value: &Value, ty: Ty<'_>) -> FieldSet {
    let mut set = FieldSet::new();
    walk_all(value, ty, &mut set, &mut Vec::new());
    set
}

fn walk_all(value: &Value, ty: Ty<'_>, set: &mut FieldSet, path: &mut Vec<PathElement>) {
    if !path.is_empty() {
        set.insert(path);
    }
    match value {
        Value::Object(map) if !ty.atomic_map() => {
            for (name, child) in map {
                path.push(PathElement::Field(name.clone()));
                walk_all(child, ty.field(name), set, path);
                path.pop();
            }
        }
        Value::Array(items) => {
            let kind = ty.list();
            let item_ty = ty.items();
            for (i, item) in items.iter().enumerate() {
                if let Some(element) = item_element(kind, item, i) {
                    path.push(element);
                    walk_all(item, item_ty, set, path);
                    path.pop();
                }
            }
        }
        _ => {}
    }
}

/// What a write from `old` to `new` changed (added or modified paths, maps that merely
/// contain changes excluded) and which paths of `old` it removed.
pub fn changes(old: &Value, new: &Value, ty: Ty<'_>) -> (FieldSet, FieldSet) {
    let mut changed = FieldSet::new();
    let mut removed = FieldSet::new();
    walk_changes(old, new, ty, &mut changed, &mut removed, &mut Vec::new());
    (changed, removed)
}

/// Adds `value` at `path` and everything under it to `set`.
fn add_subtree(value: &Value, ty: Ty<'_>, set: &mut FieldSet, path: &[PathElement]) {
    let mut below = all(value, ty);
    // `all` leaves the root out; the subtree's own path is in.
    below.insert(&[]);
    let mut node = set;
    for element in path.iter() {
        node = node.child_mut(element.clone());
    }
    node.union_with(&below);
}

/// Whether two values are the same as Kubernetes compares them: numbers by value, so that a
/// stored `10.0` (a float field written by a typed roundtrip) equals an applied `10`.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            x == y || (x.is_f64() || y.is_f64()) && x.as_f64() == y.as_f64()
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(v, w)| same(v, w))
        }
        _ => a == b,
    }
}

fn walk_changes(
    old: &Value,
    new: &Value,
    ty: Ty<'_>,
    changed: &mut FieldSet,
    removed: &mut FieldSet,
    path: &mut Vec<PathElement>,
) {
    if same(old, new) {
        return;
    }
    match (old, new) {
        (Value::Object(o), Value::Object(n)) if !ty.atomic_map() => {
            for (name, child) in n {
                path.push(PathElement::Field(name.clone()));
                match o.get(name) {
                    Some(before) => {
                        walk_changes(before, child, ty.field(name), changed, removed, path)
                    }
                    None => add_subtree(child, ty.field(name), changed, path),
                }
                path.pop();
            }
            for (name, child) in o {
                if !n.contains_key(name) {
                    path.push(PathElement::Field(name.clone()));
                    add_subtree(child, ty.field(name), removed, path);
                    path.pop();
                }
            }
        }
        (Value::Array(o), Value::Array(n)) if ty.list() != ListKind::Atomic => {
            let kind = ty.list();
            let item_ty = ty.items();
            let elements = |items: &[Value]| -> Vec<Option<PathElement>> {
                items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| item_element(kind, v, i))
                    .collect()
            };
            let (old_elements, new_elements) = (elements(o), elements(n));
            for (item, element) in n.iter().zip(&new_elements) {
                let Some(element) = element else { continue };
                path.push(element.clone());
                match old_elements
                    .iter()
                    .position(|e| e.as_ref() == Some(element))
                {
                    Some(i) => walk_changes(&o[i], item, item_ty, changed, removed, path),
                    None => add_subtree(item, item_ty, changed, path),
                }
                path.pop();
            }
            for (item, element) in o.iter().zip(&old_elements) {
                let Some(element) = element else { continue };
                if !new_elements.contains(&Some(element.clone())) {
                    path.push(element.clone());
                    add_subtree(item, item_ty, removed, path);
                    path.pop();
                }
            }
        }
        _ => {
            // A scalar, atomic list or map that differs, or a change of type: the path itself
            // changed, and what was under it before is gone.
            if !path.is_empty() {
                changed.insert(path);
            }
            if old.is_object() || old.is_array() {
                let gone = all(old, ty).difference(&all(new, ty));
                if !gone.is_empty() {
                    let mut node = &mut *removed;
                    for element in path.iter() {
                        node = node.child_mut(element.clone());
                    }
                    node.union_with(&gone);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment() -> Ty<'static> {
        Ty::builtin("apps/v1", "Deployment")
    }

    #[test]
    fn numbers_are_compared_by_value() {
        // A CRD stored through its typed roundtrip has `maximum: 10.0`; the same definition
        // applied again says `10` and changes nothing.
        let crd = Ty::builtin("apiextensions.k8s.io/v1", "CustomResourceDefinition");
        let stored = json!({"spec": {"versions": [{"name": "v1", "schema": {"openAPIV3Schema":
            {"properties": {"n": {"type": "integer", "maximum": 10.0}}}}}]}});
        let applied = json!({"spec": {"versions": [{"name": "v1", "schema": {"openAPIV3Schema":
            {"properties": {"n": {"type": "integer", "maximum": 10}}}}}]}});
        let (changed, removed) = changes(&stored, &applied, crd);
        assert!(changed.is_empty() && removed.is_empty(), "{changed:?}");
        let other = json!({"spec": {"versions": [{"name": "v1", "schema": {"openAPIV3Schema":
            {"properties": {"n": {"type": "integer", "maximum": 10.5}}}}}]}});
        assert!(!changes(&stored, &other, crd).0.is_empty());
        assert!(!same(&json!(1), &json!("1")));
        assert!(same(&json!({"a": [1, 2.0]}), &json!({"a": [1.0, 2]})));
    }

    #[test]
    fn an_applied_deployment_has_the_paths_kubernetes_records() {
        let config = json!({
            "metadata": {"name": "nginx", "labels": {"app": "nginx"}},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "nginx"}},
                "template": {
                    "metadata": {"labels": {"app": "nginx"}},
                    "spec": {"containers": [{"name": "nginx", "image": "nginx:1.27",
                        "ports": [{"containerPort": 80, "protocol": "TCP"}]}]}
                }
            }
        });
        let set = applied(&config, deployment()).unwrap();
        assert_eq!(
            set.to_json(),
            json!({
                "f:metadata": {"f:labels": {"f:app": {}}, "f:name": {}},
                "f:spec": {
                    "f:replicas": {},
                    "f:selector": {},
                    "f:template": {
                        "f:metadata": {"f:labels": {"f:app": {}}},
                        "f:spec": {"f:containers": {"k:{\"name\":\"nginx\"}": {
                            ".": {}, "f:image": {}, "f:name": {},
                            "f:ports": {"k:{\"containerPort\":80,\"protocol\":\"TCP\"}": {
                                ".": {}, "f:containerPort": {}, "f:protocol": {}
                            }}
                        }}}
                    }
                }
            })
        );
    }

    #[test]
    fn duplicate_and_keyless_items_are_refused() {
        let dup =
            json!({"spec": {"template": {"spec": {"containers": [{"name": "a"}, {"name": "a"}]}}}});
        assert!(applied(&dup, deployment())
            .unwrap_err()
            .0
            .contains("duplicate"));
        let keyless = json!({"spec": {"template": {"spec": {"containers": [{"image": "a"}]}}}});
        assert!(applied(&keyless, deployment()).is_err());
    }

    #[test]
    fn changes_name_modified_added_and_removed_paths() {
        let pod = Ty::builtin("v1", "Pod");
        let old = json!({
            "metadata": {"labels": {"a": "1", "b": "2"}, "finalizers": ["x"]},
            "spec": {"containers": [{"name": "c", "image": "i1", "args": ["1"]}]}
        });
        let new = json!({
            "metadata": {"labels": {"a": "1", "c": "3"}, "finalizers": ["x", "y"]},
            "spec": {"containers": [{"name": "c", "image": "i2", "args": ["2"]}, {"name": "d"}]}
        });
        let (changed, removed) = changes(&old, &new, pod);
        assert_eq!(
            changed.to_json(),
            json!({
                "f:metadata": {"f:finalizers": {"v:\"y\"": {}}, "f:labels": {"f:c": {}}},
                "f:spec": {"f:containers": {
                    "k:{\"name\":\"c\"}": {"f:args": {}, "f:image": {}},
                    "k:{\"name\":\"d\"}": {".": {}, "f:name": {}}
                }}
            })
        );
        assert_eq!(
            removed.to_json(),
            json!({"f:metadata": {"f:labels": {"f:b": {}}}})
        );
    }
}
