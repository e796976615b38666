//! Server-side apply and `metadata.managedFields` (Kubernetes' field manager, on
//! structured-merge-diff).
//!
//! Every write records who set which fields: [`track_write`] for creates, updates and
//! patches (an `Update` entry of the writer, taking the fields it changed), [`apply`] for
//! `application/apply-patch+yaml` (the configuration merged into the object by schema,
//! conflicts with other managers' fields refused unless forced, fields the applier gave up
//! removed unless someone else owns them). The merge semantics come from [`types`]: the
//! built-in kinds' list types generated from Kubernetes' OpenAPI, a custom resource's from its
//! structural schema.

pub mod extract;
pub mod fieldset;
pub mod managed;
pub mod merge;
pub mod types;

use serde_json::{json, Map, Value};

use self::managed::{Conflicts, Entry, Writer};
use self::types::Ty;
use super::error::FieldError;

/// What part of an object a write may change, and its fields are tracked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The object, `status` included (kinds without a status subresource).
    Whole,
    /// The object without `status` (written through `/status` only).
    WithoutStatus,
    /// `status` only (the `/status` subresource).
    Status,
}

/// Metadata the server owns or that names the object: never in a field set, as in
/// Kubernetes (its `fieldmanager` strips them before comparing).
const UNTRACKED_METADATA: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "selfLink",
    "managedFields",
];

/// The part of `object` whose fields are tracked in `scope`.
fn tracked(object: &Value, scope: Scope) -> Value {
    let Value::Object(map) = object else {
        return json!({});
    };
    let mut out = Map::new();
    for (key, value) in map {
        let keep = match (key.as_str(), scope) {
            ("apiVersion" | "kind", _) => false,
            ("status", Scope::Status | Scope::Whole) => true,
            (_, Scope::Status) | ("status", Scope::WithoutStatus) => false,
            _ => true,
        };
        if !keep {
            continue;
        }
        if key == "metadata" {
            if let Value::Object(meta) = value {
                let meta: Map<String, Value> = meta
                    .iter()
                    .filter(|(k, _)| !UNTRACKED_METADATA.contains(&k.as_str()))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                if !meta.is_empty() {
                    out.insert(key.clone(), Value::Object(meta));
                }
            }
            continue;
        }
        out.insert(key.clone(), value.clone());
    }
    Value::Object(out)
}

/// What a new object is compared with: Kubernetes compares with the zero value of the Go
/// type, whose struct fields `metadata`, `spec` and `status` exist empty, so a create owns
/// the fields under them but not these maps themselves.
fn zero_like(object: &Value) -> Value {
    let mut zero = Map::new();
    for key in ["metadata", "spec", "status"] {
        if object.get(key).is_some_and(Value::is_object) {
            zero.insert(key.into(), json!({}));
        }
    }
    Value::Object(zero)
}

fn managed_fields(object: &Value) -> Option<&Value> {
    object.pointer("/metadata/managedFields")
}

fn set_managed_fields(object: &mut Value, entries: &[Entry]) {
    let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) else {
        return;
    };
    if entries.is_empty() {
        meta.remove("managedFields");
    } else {
        meta.insert("managedFields".into(), managed::encode(entries));
    }
}

/// Whether `list` is the reset Kubernetes documents: a single empty entry (`[{}]`) strips
/// the managed fields (an empty list keeps them, so clients unaware of the field cannot
/// clear it by accident).
fn is_reset(list: &Value) -> bool {
    list.as_array()
        .is_some_and(|l| l.len() == 1 && l[0].as_object().is_some_and(Map::is_empty))
}

/// Records a create, update or patch from `old` (`None` for a create) to `new` in `new`'s
/// managedFields. The managed fields `new` carries are the basis when a client sent some (and
/// they are valid), else `old`'s; a `[{}]` strips them.
pub fn track_write(
    ty: Ty<'_>,
    old: Option<&Value>,
    new: &mut Value,
    scope: Scope,
    writer: Option<Writer<'_>>,
) -> Result<(), Vec<FieldError>> {
    let sent = managed_fields(new).cloned();
    let basis = match &sent {
        Some(list) if is_reset(list) => {
            set_managed_fields(new, &[]);
            return Ok(());
        }
        Some(list) if list.as_array().is_some_and(|l| !l.is_empty()) => Some(list),
        _ => old.and_then(managed_fields),
    };
    let mut entries = match basis {
        Some(list) => managed::decode(list)?,
        None => Vec::new(),
    };
    let before = match old {
        Some(old) => tracked(old, scope),
        None => zero_like(&tracked(new, scope)),
    };
    let (changed, removed) = extract::changes(&before, &tracked(new, scope), ty);
    managed::record_update(&mut entries, &changed, &removed, writer);
    set_managed_fields(new, &entries);
    Ok(())
}

/// Why an apply failed.
#[derive(Debug)]
pub enum ApplyError {
    /// The configuration cannot be applied (duplicate or keyless list items).
    Bad(String),
    /// The stored managed fields are unreadable.
    Invalid(Vec<FieldError>),
    /// Other managers own fields the configuration changes.
    Conflicts(Conflicts),
}

/// Applies `config` for `writer` to `live` (`None` when the object does not exist yet):
/// returns the object to store, its managedFields updated.
pub fn apply(
    ty: Ty<'_>,
    live: Option<&Value>,
    config: &Value,
    scope: Scope,
    writer: Writer<'_>,
    force: bool,
) -> Result<Value, ApplyError> {
    let mut entries = match live.and_then(managed_fields) {
        Some(list) => managed::decode(list).map_err(ApplyError::Invalid)?,
        None => Vec::new(),
    };
    let applied =
        extract::applied(&tracked(config, scope), ty).map_err(|e| ApplyError::Bad(e.0))?;
    let mut merged = live.cloned().unwrap_or_else(|| json!({}));
    merge::merge(&mut merged, config, ty);
    let before = match live {
        Some(live) => tracked(live, scope),
        None => json!({}),
    };
    let (changed, _) = extract::changes(&before, &tracked(&merged, scope), ty);
    let dropped = managed::record_apply(&mut entries, &applied, &changed, writer, force)
        .map_err(ApplyError::Conflicts)?;
    if !dropped.is_empty() {
        merge::remove(&mut merged, &dropped, ty);
    }
    set_managed_fields(&mut merged, &entries);
    Ok(merged)
}

/// The manager of a write without `fieldManager`: the User-Agent up to its first `/`, as
/// Kubernetes' `prefixFromUserAgent` (`kubectl/v1.35.0 (linux/amd64) ...` is `kubectl`),
/// cut to the longest manager name.
pub fn manager_from_user_agent(user_agent: &str) -> String {
    let prefix = user_agent.split('/').next().unwrap_or_default();
    prefix
        .char_indices()
        .take_while(|(i, _)| *i < managed::MAX_MANAGER_LEN)
        .map(|(_, c)| c)
        .collect()
}

/// Checks a `fieldManager` query parameter as Kubernetes' `ValidateFieldManager` does: at most
/// 128 characters, all printable.
pub fn validate_field_manager(manager: &str) -> Result<(), FieldError> {
    if manager.chars().count() > managed::MAX_MANAGER_LEN {
        return Err(FieldError::invalid(
            "fieldManager",
            manager,
            format!("must be at most {} characters", managed::MAX_MANAGER_LEN),
        ));
    }
    if manager.chars().any(char::is_control) {
        return Err(FieldError::invalid(
            "fieldManager",
            manager,
            "must consist of printable characters",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: &str = "2026-01-01T00:00:00Z";

    fn writer(manager: &str) -> Writer<'_> {
        Writer {
            manager,
            api_version: "v1",
            subresource: "",
            now: NOW,
        }
    }

    fn configmap() -> Ty<'static> {
        Ty::builtin("v1", "ConfigMap")
    }

    fn cm(data: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "default"}, "data": data})
    }

    #[test]
    fn user_agents_name_managers() {
        assert_eq!(
            manager_from_user_agent("kubectl/v1.35.0 (linux/amd64) kubernetes/abc"),
            "kubectl"
        );
        assert_eq!(manager_from_user_agent("helm"), "helm");
        assert_eq!(manager_from_user_agent(&"x".repeat(300)).len(), 128);
        assert!(validate_field_manager("ok").is_ok());
        assert!(validate_field_manager("a\nb").is_err());
    }

    #[test]
    fn a_create_then_update_records_what_each_writer_set() {
        let mut created = cm(json!({"a": "1"}));
        created["metadata"]["labels"] = json!({"x": "y"});
        track_write(
            configmap(),
            None,
            &mut created,
            Scope::Whole,
            Some(writer("kubectl-create")),
        )
        .unwrap();
        assert_eq!(
            created["metadata"]["managedFields"],
            json!([{"manager": "kubectl-create", "operation": "Update", "apiVersion": "v1",
                "time": NOW, "fieldsType": "FieldsV1",
                "fieldsV1": {"f:data": {".": {}, "f:a": {}}, "f:metadata": {"f:labels": {".": {}, "f:x": {}}}}}])
        );
        let mut updated = created.clone();
        updated["data"]["a"] = json!("2");
        updated["data"]["b"] = json!("3");
        track_write(
            configmap(),
            Some(&created),
            &mut updated,
            Scope::Whole,
            Some(writer("editor")),
        )
        .unwrap();
        let entries = managed::decode(&updated["metadata"]["managedFields"]).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(
            entries[0].fields.to_json(),
            json!({"f:data": {}, "f:metadata": {"f:labels": {".": {}, "f:x": {}}}})
        );
        assert_eq!(
            entries[1].fields.to_json(),
            json!({"f:data": {"f:a": {}, "f:b": {}}})
        );
    }

    #[test]
    fn sent_managed_fields_are_used_validated_or_reset() {
        let mut old = cm(json!({"a": "1"}));
        track_write(
            configmap(),
            None,
            &mut old,
            Scope::Whole,
            Some(writer("one")),
        )
        .unwrap();
        // An empty list keeps what is stored.
        let mut new = old.clone();
        new["metadata"]["managedFields"] = json!([]);
        track_write(
            configmap(),
            Some(&old),
            &mut new,
            Scope::Whole,
            Some(writer("two")),
        )
        .unwrap();
        assert_eq!(
            new["metadata"]["managedFields"],
            old["metadata"]["managedFields"]
        );
        // `[{}]` strips them.
        new["metadata"]["managedFields"] = json!([{}]);
        track_write(
            configmap(),
            Some(&old),
            &mut new,
            Scope::Whole,
            Some(writer("two")),
        )
        .unwrap();
        assert!(new["metadata"].get("managedFields").is_none());
        // Malformed ones are refused.
        new["metadata"]["managedFields"] =
            json!([{"manager": "x", "operation": "Nope", "fieldsType": "FieldsV1"}]);
        assert!(track_write(
            configmap(),
            Some(&old),
            &mut new,
            Scope::Whole,
            Some(writer("two"))
        )
        .is_err());
    }

    #[test]
    fn status_writes_track_status_only() {
        let pod = Ty::builtin("v1", "Pod");
        let old = json!({"metadata": {"name": "p"}, "spec": {"nodeName": "a"}, "status": {}});
        let mut new = old.clone();
        new["status"]["phase"] = json!("Running");
        new["spec"]["nodeName"] = json!("b");
        let w = Writer {
            subresource: "status",
            ..writer("kubelet")
        };
        track_write(pod, Some(&old), &mut new, Scope::Status, Some(w)).unwrap();
        assert_eq!(
            new["metadata"]["managedFields"][0]["fieldsV1"],
            json!({"f:status": {"f:phase": {}}})
        );
        assert_eq!(new["metadata"]["managedFields"][0]["subresource"], "status");
    }

    #[test]
    fn apply_creates_conflicts_forces_and_removes() {
        let ty = configmap();
        let first = apply(
            ty,
            None,
            &cm(json!({"a": "1", "b": "2"})),
            Scope::Whole,
            writer("alice"),
            false,
        )
        .unwrap();
        assert_eq!(first["data"], json!({"a": "1", "b": "2"}));
        assert_eq!(
            first["metadata"]["managedFields"][0]["fieldsV1"],
            json!({"f:data": {"f:a": {}, "f:b": {}}})
        );
        // Bob sets a to something else: a conflict naming alice.
        let Err(ApplyError::Conflicts(c)) = apply(
            ty,
            Some(&first),
            &cm(json!({"a": "9"})),
            Scope::Whole,
            writer("bob"),
            false,
        ) else {
            panic!("expected a conflict")
        };
        assert_eq!(
            c.message(),
            "Apply failed with 1 conflict: conflict with \"alice\": .data.a"
        );
        // Bob agreeing on b shares it; alice dropping b then keeps it, dropping a removes it.
        let shared = apply(
            ty,
            Some(&first),
            &cm(json!({"b": "2"})),
            Scope::Whole,
            writer("bob"),
            false,
        )
        .unwrap();
        let dropped = apply(
            ty,
            Some(&shared),
            &cm(json!({})),
            Scope::Whole,
            writer("alice"),
            false,
        )
        .unwrap();
        assert_eq!(dropped["data"], json!({"b": "2"}));
        // Force takes a field over.
        let forced = apply(
            ty,
            Some(&first),
            &cm(json!({"a": "9"})),
            Scope::Whole,
            writer("bob"),
            true,
        )
        .unwrap();
        assert_eq!(forced["data"]["a"], "9");
        let entries = managed::decode(&forced["metadata"]["managedFields"]).unwrap();
        let alice = entries.iter().find(|e| e.manager == "alice").unwrap();
        assert_eq!(alice.fields.to_json(), json!({"f:data": {"f:b": {}}}));
        // Applying the same again changes nothing, the times included.
        let again = apply(
            ty,
            Some(&forced),
            &cm(json!({"a": "9"})),
            Scope::Whole,
            Writer {
                now: "later",
                ..writer("bob")
            },
            false,
        )
        .unwrap();
        assert_eq!(again, forced);
    }
}
