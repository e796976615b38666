//! PATCH bodies: JSON merge patch (RFC 7386), JSON patch (RFC 6902) and Kubernetes strategic
//! merge patch, the kind kubectl apply/patch send for built-in types.
//!
//! Strategic merge needs each list's merge key (containers merge by `name`, container ports by
//! `containerPort`, ...). Go reads them from struct tags; k8s-openapi carries no such metadata,
//! so the keys of the served kinds are listed in [`list_strategy`].

use serde_json::{Map, Value};

/// Errors applying a patch.
#[derive(Debug, thiserror::Error)]
pub enum PatchError {
    /// The patch body is not valid JSON of the expected shape.
    #[error("invalid patch: {0}")]
    Malformed(String),
    /// A JSON patch operation failed (missing path, failed test).
    #[error("the server rejected our request due to an error in our request: {0}")]
    Apply(String),
    /// The patch has too many operations or its result is over [`MAX_OBJECT_BYTES`]
    /// (Kubernetes answers these with RequestEntityTooLarge).
    #[error("{0}")]
    TooLarge(String),
}

/// The most operations a JSON patch may have, as kube-apiserver's `maxJSONPatchOperations`.
pub const MAX_JSON_PATCH_OPERATIONS: usize = 10_000;

/// The largest object a patch may produce: etcd's default request limit (1.5 MiB), which
/// bounds every object Kubernetes stores. Checked while a JSON patch applies, so a chain of
/// `copy` operations that doubles the document each time stops before it allocates more.
pub const MAX_OBJECT_BYTES: usize = 3 * 1024 * 1024 / 2;

/// The most bytes the `copy` operations of one JSON patch may copy in all, as Kubernetes'
/// limit (its request body limit, 3 MiB).
pub const MAX_COPIED_BYTES: usize = 3 * 1024 * 1024;

/// The JSON length of `value`, counted up to `cap`: once over it the count stops (so sizing a
/// huge value costs no more than sizing `cap` bytes of it). Strings count their bytes and
/// quotes, without escapes, which is close enough for a limit.
pub fn json_len(value: &Value, cap: usize) -> usize {
    fn walk(value: &Value, cap: usize, total: &mut usize) {
        if *total > cap {
            return;
        }
        match value {
            Value::Null => *total += 4,
            Value::Bool(b) => *total += if *b { 4 } else { 5 },
            Value::Number(n) => *total += n.to_string().len(),
            Value::String(s) => *total += s.len() + 2,
            Value::Array(items) => {
                *total += 2 + items.len();
                for item in items {
                    walk(item, cap, total);
                    if *total > cap {
                        return;
                    }
                }
            }
            Value::Object(map) => {
                *total += 2 + map.len();
                for (key, item) in map {
                    *total += key.len() + 3;
                    walk(item, cap, total);
                    if *total > cap {
                        return;
                    }
                }
            }
        }
    }
    let mut total = 0;
    walk(value, cap, &mut total);
    total
}

fn too_large_result(size: usize) -> PatchError {
    PatchError::TooLarge(format!(
        "the patched object would be over {size} bytes, more than the limit of {MAX_OBJECT_BYTES}"
    ))
}

/// Whether JSON pointer `ancestor` is a proper ancestor of `path` (`/a` of `/a/b`, not of `/ab`).
fn is_proper_ancestor(ancestor: &str, path: &str) -> bool {
    path.strip_prefix(ancestor)
        .is_some_and(|rest| rest.starts_with('/'))
}

/// Applies a JSON patch (RFC 6902) one operation at a time, keeping a running estimate of the
/// document's size: every operation that grows it (add, replace, copy) is sized first and
/// refused when the result would pass [`MAX_OBJECT_BYTES`], so a copy bomb costs at most the
/// limit in memory. The caller owns `target` as a scratch copy: on an error it is half-patched
/// and must be dropped.
fn apply_json_patch(target: &mut Value, patch: &Value) -> Result<(), PatchError> {
    let Value::Array(raw) = patch else {
        return Err(PatchError::Malformed(
            "a JSON patch must be a list of operations".into(),
        ));
    };
    if raw.len() > MAX_JSON_PATCH_OPERATIONS {
        return Err(PatchError::TooLarge(format!(
            "The allowed maximum operations in a JSON patch is {MAX_JSON_PATCH_OPERATIONS}, got {}",
            raw.len()
        )));
    }
    let ops: json_patch::Patch =
        serde_json::from_value(patch.clone()).map_err(|e| PatchError::Malformed(e.to_string()))?;
    let cap = MAX_OBJECT_BYTES;
    let mut size = json_len(target, cap);
    // Copies cost even when a later remove undoes them: like Kubernetes
    // (`AccumulatedCopySizeLimit`), their total is limited too, so alternating copy and remove
    // cannot make ten thousand megabyte copies.
    let mut copied = 0usize;
    let size_at = |doc: &Value, path: &str| doc.pointer(path).map_or(0, |v| json_len(v, cap));
    for (i, op) in ops.0.iter().enumerate() {
        use json_patch::PatchOperation as Op;
        // What the operation adds, and what it takes away (the value it overwrites).
        let (grows, shrinks) = match op {
            Op::Add(add) => (
                json_len(&add.value, cap),
                size_at(target, add.path.as_str()),
            ),
            Op::Replace(replace) => (
                json_len(&replace.value, cap),
                size_at(target, replace.path.as_str()),
            ),
            Op::Remove(remove) => (0, size_at(target, remove.path.as_str())),
            Op::Copy(copy) => {
                if is_proper_ancestor(copy.from.as_str(), copy.path.as_str()) {
                    return Err(PatchError::Apply(format!(
                        "operation '/{i}' failed at path '{}': cannot copy a value into itself",
                        copy.path
                    )));
                }
                let grows = size_at(target, copy.from.as_str());
                copied = copied.saturating_add(grows);
                if copied > MAX_COPIED_BYTES {
                    return Err(PatchError::TooLarge(format!(
                        "Unable to complete the copy, the accumulated size increase of copy is {copied}, exceeding the limit {MAX_COPIED_BYTES}"
                    )));
                }
                (grows, size_at(target, copy.path.as_str()))
            }
            Op::Move(_) | Op::Test(_) => (0, 0),
        };
        // An add into an array inserts rather than overwrites; counting the overwrite anyway
        // only makes the estimate smaller by at most one value, and the exact size is checked
        // once the patch is done.
        let after = size.saturating_add(grows).saturating_sub(shrinks);
        if after > cap {
            return Err(too_large_result(after));
        }
        json_patch::patch_unsafe(target, std::slice::from_ref(op)).map_err(|e| {
            PatchError::Apply(format!(
                "operation '/{i}' failed at path '{}': {}",
                e.path, e.kind
            ))
        })?;
        size = after;
    }
    Ok(())
}

/// The patch media types the API accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchKind {
    /// `application/merge-patch+json`.
    Merge,
    /// `application/json-patch+json`.
    Json,
    /// `application/strategic-merge-patch+json`.
    Strategic,
}

impl PatchKind {
    /// Picks the patch kind from a Content-Type.
    pub fn from_content_type(ct: &str) -> Option<Self> {
        match ct.split(';').next().unwrap_or_default().trim() {
            "application/merge-patch+json" => Some(Self::Merge),
            "application/json-patch+json" => Some(Self::Json),
            "application/strategic-merge-patch+json" => Some(Self::Strategic),
            _ => None,
        }
    }
}

/// Applies `patch` of `patch_kind` to `target`, refusing a result over [`MAX_OBJECT_BYTES`].
/// On an error `target` may be half-patched: apply to a copy.
pub fn apply(patch_kind: PatchKind, target: &mut Value, patch: &Value) -> Result<(), PatchError> {
    apply_unbounded(patch_kind, target, patch)?;
    // Merge patches cannot grow a document past the patch's own size, which the body limit
    // bounds; the result still has to fit the object limit.
    let size = json_len(target, MAX_OBJECT_BYTES);
    if size > MAX_OBJECT_BYTES {
        return Err(too_large_result(size));
    }
    Ok(())
}

fn apply_unbounded(
    patch_kind: PatchKind,
    target: &mut Value,
    patch: &Value,
) -> Result<(), PatchError> {
    match patch_kind {
        PatchKind::Merge => {
            if !patch.is_object() {
                return Err(PatchError::Malformed(
                    "a merge patch must be a JSON object".into(),
                ));
            }
            json_patch::merge(target, patch);
            Ok(())
        }
        PatchKind::Json => apply_json_patch(target, patch),
        PatchKind::Strategic => {
            let Value::Object(patch) = patch else {
                return Err(PatchError::Malformed(
                    "a strategic merge patch must be a JSON object".into(),
                ));
            };
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            let Value::Object(map) = target else {
                unreachable!("made an object above")
            };
            merge_map(map, patch, &mut Vec::new())
        }
    }
}

/// How a list field merges.
#[derive(Debug, PartialEq, Eq)]
enum ListStrategy {
    /// Replace the whole list (no patch strategy).
    Replace,
    /// Merge maps by this key.
    MergeKey(&'static str),
    /// Union of primitive values.
    MergePrimitives,
}

/// The patch strategy of list `field` found under `path` (the map keys leading to it).
fn list_strategy(path: &[String], field: &str) -> ListStrategy {
    let under = |name: &str| path.iter().any(|p| p == name);
    let in_container =
        under("containers") || under("initContainers") || under("ephemeralContainers");
    match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "imagePullSecrets"
        | "volumes"
        | "resourceClaims" => ListStrategy::MergeKey("name"),
        "env" if in_container => ListStrategy::MergeKey("name"),
        "volumeMounts" => ListStrategy::MergeKey("mountPath"),
        "volumeDevices" => ListStrategy::MergeKey("devicePath"),
        "ports" if in_container => ListStrategy::MergeKey("containerPort"),
        "ports" if path.last().is_some_and(|p| p == "spec") => ListStrategy::MergeKey("port"),
        "conditions" => ListStrategy::MergeKey("type"),
        "addresses" if path.last().is_some_and(|p| p == "status") => ListStrategy::MergeKey("type"),
        "ownerReferences" => ListStrategy::MergeKey("uid"),
        "hostAliases" => ListStrategy::MergeKey("ip"),
        "podIPs" | "hostIPs" => ListStrategy::MergeKey("ip"),
        "topologySpreadConstraints" => ListStrategy::MergeKey("topologyKey"),
        "finalizers" => ListStrategy::MergePrimitives,
        _ => ListStrategy::Replace,
    }
}

const SET_ORDER: &str = "$setElementOrder/";
const DELETE_PRIMITIVES: &str = "$deleteFromPrimitiveList/";

fn merge_map(
    target: &mut Map<String, Value>,
    patch: &Map<String, Value>,
    path: &mut Vec<String>,
) -> Result<(), PatchError> {
    match patch.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            *target = patch
                .iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), strip_directives(v)))
                .collect();
            return Ok(());
        }
        Some("delete") => {
            target.clear();
            return Ok(());
        }
        Some("merge") | None => {}
        Some(other) => {
            return Err(PatchError::Malformed(format!(
                "unknown patch directive $patch: {other}"
            )))
        }
    }
    for (key, value) in patch {
        if key == "$patch" || key == "$retainKeys" || key.starts_with(SET_ORDER) {
            continue;
        }
        if let Some(field) = key.strip_prefix(DELETE_PRIMITIVES) {
            if let (Some(Value::Array(list)), Some(remove)) =
                (target.get_mut(field), value.as_array())
            {
                list.retain(|v| !remove.contains(v));
            }
            continue;
        }
        if value.is_null() {
            target.remove(key);
            continue;
        }
        path.push(key.clone());
        match (target.get_mut(key), value) {
            (Some(Value::Object(t)), Value::Object(p)) => merge_map(t, p, path)?,
            (Some(Value::Array(t)), Value::Array(p)) => {
                let strategy = list_strategy(&path[..path.len() - 1], key);
                merge_list(t, p, strategy, path)?;
            }
            (_, Value::Object(p)) => {
                let mut fresh = Map::new();
                merge_map(&mut fresh, p, path)?;
                if p.get("$patch").and_then(Value::as_str) != Some("delete") {
                    target.insert(key.clone(), Value::Object(fresh));
                }
            }
            (_, v) => {
                target.insert(key.clone(), strip_directives(v));
            }
        }
        path.pop();
    }
    // Order lists as the patch says (kubectl sends the full order of merged lists).
    for (key, order) in patch
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix(SET_ORDER)?, v.as_array()?)))
    {
        let strategy = list_strategy(path, key);
        if let Some(Value::Array(list)) = target.get_mut(key) {
            reorder(list, order, &strategy);
        }
    }
    if let Some(retain) = patch.get("$retainKeys").and_then(Value::as_array) {
        let keep: Vec<&str> = retain.iter().filter_map(Value::as_str).collect();
        target.retain(|k, _| keep.contains(&k.as_str()));
    }
    Ok(())
}

fn reorder(list: &mut [Value], order: &[Value], strategy: &ListStrategy) {
    let identity = |v: &Value| -> Value {
        match strategy {
            ListStrategy::MergeKey(k) => v.get(*k).cloned().unwrap_or(Value::Null),
            _ => v.clone(),
        }
    };
    let position = |v: &Value| {
        let id = identity(v);
        order
            .iter()
            .position(|o| identity(o) == id)
            .unwrap_or(usize::MAX)
    };
    list.sort_by_key(position);
}

fn merge_list(
    target: &mut Vec<Value>,
    patch: &[Value],
    strategy: ListStrategy,
    path: &mut Vec<String>,
) -> Result<(), PatchError> {
    match strategy {
        ListStrategy::Replace => {
            *target = patch.iter().map(strip_directives).collect();
        }
        ListStrategy::MergePrimitives => {
            for v in patch {
                if !target.contains(v) {
                    target.push(v.clone());
                }
            }
        }
        ListStrategy::MergeKey(key) => {
            if patch
                .iter()
                .any(|p| p.get("$patch").and_then(Value::as_str) == Some("replace"))
            {
                *target = patch
                    .iter()
                    .filter(|p| p.get("$patch").is_none())
                    .map(strip_directives)
                    .collect();
                return Ok(());
            }
            for item in patch {
                let Value::Object(item_map) = item else {
                    return Err(PatchError::Malformed(format!(
                        "list items merged by {key:?} must be objects"
                    )));
                };
                let id = item_map.get(key);
                let existing = target.iter().position(|t| id.is_some() && t.get(key) == id);
                match (item_map.get("$patch").and_then(Value::as_str), existing) {
                    (Some("delete"), Some(i)) => {
                        target.remove(i);
                    }
                    (Some("delete"), None) => {}
                    (_, Some(i)) => {
                        if let Value::Object(t) = &mut target[i] {
                            merge_map(t, item_map, path)?;
                        }
                    }
                    (_, None) => target.push(strip_directives(item)),
                }
            }
        }
    }
    Ok(())
}

/// Removes `$`-directives from a value inserted as a whole.
fn strip_directives(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), strip_directives(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(strip_directives).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn smp(mut target: Value, patch: Value) -> Value {
        apply(PatchKind::Strategic, &mut target, &patch).unwrap();
        target
    }

    #[test]
    fn merge_patch_sets_and_removes() {
        let mut t = json!({"metadata": {"labels": {"a": "1", "b": "2"}}});
        apply(
            PatchKind::Merge,
            &mut t,
            &json!({"metadata": {"labels": {"a": null, "c": "3"}}}),
        )
        .unwrap();
        assert_eq!(t, json!({"metadata": {"labels": {"b": "2", "c": "3"}}}));
    }

    #[test]
    fn json_patch_ops_and_failed_test() {
        let mut t = json!({"spec": {"replicas": 1}});
        apply(
            PatchKind::Json,
            &mut t,
            &json!([{"op": "replace", "path": "/spec/replicas", "value": 3}]),
        )
        .unwrap();
        assert_eq!(t["spec"]["replicas"], 3);
        let err = apply(
            PatchKind::Json,
            &mut t,
            &json!([{"op": "test", "path": "/spec/replicas", "value": 9}]),
        );
        assert!(matches!(err, Err(PatchError::Apply(_))));
        assert_eq!(
            t["spec"]["replicas"], 3,
            "a failed JSON patch leaves the object as it was"
        );
        assert!(matches!(
            apply(PatchKind::Json, &mut t, &json!({"op": "x"})),
            Err(PatchError::Malformed(_))
        ));
    }

    #[test]
    fn containers_merge_by_name() {
        let t = json!({"spec": {"containers": [{"name": "a", "image": "a:1"}, {"name": "b", "image": "b:1"}]}});
        let out = smp(
            t,
            json!({"spec": {"containers": [{"name": "b", "image": "b:2"}]}}),
        );
        assert_eq!(
            out["spec"]["containers"],
            json!([{"name": "a", "image": "a:1"}, {"name": "b", "image": "b:2"}])
        );
    }

    #[test]
    fn container_ports_merge_by_container_port_and_lists_without_key_replace() {
        let t = json!({"spec": {"containers": [{"name": "a", "ports": [{"containerPort": 80}], "args": ["x", "y"]}]}});
        let out = smp(
            t,
            json!({"spec": {"containers": [{"name": "a", "ports": [{"containerPort": 81}], "args": ["z"]}]}}),
        );
        assert_eq!(
            out["spec"]["containers"][0]["ports"],
            json!([{"containerPort": 80}, {"containerPort": 81}])
        );
        assert_eq!(out["spec"]["containers"][0]["args"], json!(["z"]));
    }

    #[test]
    fn directives_delete_replace_order_and_retain() {
        let t = json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}, {"name": "c"}]}, "metadata": {"finalizers": ["x"]}});
        let out = smp(
            t,
            json!({
                "spec": {
                    "$setElementOrder/containers": [{"name": "c"}, {"name": "a"}],
                    "containers": [{"name": "b", "$patch": "delete"}]
                },
                "metadata": {"finalizers": ["y"], "$deleteFromPrimitiveList/finalizers": ["x"]}
            }),
        );
        assert_eq!(
            out["spec"]["containers"],
            json!([{"name": "c"}, {"name": "a"}])
        );
        assert_eq!(out["metadata"]["finalizers"], json!(["y"]));

        let out = smp(
            json!({"spec": {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}}}}),
            json!({"spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"}}}),
        );
        assert_eq!(out["spec"]["strategy"], json!({"type": "Recreate"}));

        let out = smp(
            json!({"data": {"a": "1"}}),
            json!({"data": {"$patch": "replace", "b": "2"}}),
        );
        assert_eq!(out["data"], json!({"b": "2"}));
    }

    #[test]
    fn null_removes_and_new_maps_have_no_directives() {
        let out = smp(
            json!({"metadata": {"labels": {"a": "1"}}}),
            json!({"metadata": {"labels": {"a": null}, "annotations": {"k": "v"}}}),
        );
        assert_eq!(
            out,
            json!({"metadata": {"labels": {}, "annotations": {"k": "v"}}})
        );
    }
}
