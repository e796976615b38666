//! `metadata.managedFields`: who set which fields, one entry per manager, operation and
//! subresource (and API version for updates), as Kubernetes' field manager keeps them.

use serde_json::{json, Map, Value};

use super::fieldset::{FieldSet, PathDisplay, PathElement};
use crate::apiserver::error::FieldError;

/// `operation` of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// Server-side apply.
    Apply,
    /// Any other write (create, update, patch).
    Update,
}

impl Operation {
    fn as_str(self) -> &'static str {
        match self {
            Self::Apply => "Apply",
            Self::Update => "Update",
        }
    }
}

/// One entry of `metadata.managedFields`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Who (`fieldManager`, or the client's name).
    pub manager: String,
    /// How.
    pub operation: Operation,
    /// The API version the fields were set through.
    pub api_version: String,
    /// When the entry last changed (RFC 3339), if known.
    pub time: Option<String>,
    /// `status`, `scale` or empty for the object itself.
    pub subresource: String,
    /// The fields.
    pub fields: FieldSet,
}

impl Entry {
    /// Whether `self` is the entry of this manager, operation, version and subresource.
    /// Appliers are one manager whatever version they apply through, as in Kubernetes'
    /// `BuildManagerIdentifier`.
    pub fn is(&self, manager: &str, operation: Operation, api_version: &str, sub: &str) -> bool {
        self.manager == manager
            && self.operation == operation
            && self.subresource == sub
            && (operation == Operation::Apply || self.api_version == api_version)
    }

    /// How conflict messages name the manager (apiserver's `printManager` of the manager's
    /// identifier, which has no time): `"kubectl"` for an applier, `"kubectl" with subresource
    /// "scale" using apps/v1` for an updater.
    pub fn describe(&self) -> String {
        let mut name = format!("{:?}", self.manager);
        if !self.subresource.is_empty() {
            name = format!("{name} with subresource {:?}", self.subresource);
        }
        match self.operation {
            Operation::Apply => name,
            Operation::Update => format!("{name} using {}", self.api_version),
        }
    }
}

/// The longest manager name Kubernetes accepts (`validateFieldManager`).
pub const MAX_MANAGER_LEN: usize = 128;

fn invalid(i: usize, field: &str, value: &str, message: &str) -> FieldError {
    FieldError::invalid(
        format!("metadata.managedFields[{i}].{field}"),
        value,
        message,
    )
}

/// Reads `metadata.managedFields` as a client sent or the store holds it. Malformed entries
/// are the field causes of a 422, as Kubernetes' ObjectMeta validation and its decoding of
/// the field sets give them.
pub fn decode(list: &Value) -> Result<Vec<Entry>, Vec<FieldError>> {
    let Value::Array(items) = list else {
        return Err(vec![FieldError::invalid(
            "metadata.managedFields",
            "",
            "must be a list",
        )]);
    };
    let mut entries = Vec::with_capacity(items.len());
    let mut errors = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let s = |field: &str| item.get(field).and_then(Value::as_str);
        let operation = match s("operation") {
            Some("Apply") => Operation::Apply,
            Some("Update") => Operation::Update,
            other => {
                errors.push(FieldError {
                    reason: "FieldValueNotSupported",
                    field: format!("metadata.managedFields[{i}].operation"),
                    message: format!(
                        "Unsupported value: {:?}: supported values: \"Apply\", \"Update\"",
                        other.unwrap_or_default()
                    ),
                });
                continue;
            }
        };
        if s("fieldsType") != Some("FieldsV1") {
            errors.push(FieldError {
                reason: "FieldValueNotSupported",
                field: format!("metadata.managedFields[{i}].fieldsType"),
                message: format!(
                    "Unsupported value: {:?}: supported values: \"FieldsV1\"",
                    s("fieldsType").unwrap_or_default()
                ),
            });
            continue;
        }
        let manager = s("manager").unwrap_or_default();
        if manager.len() > MAX_MANAGER_LEN {
            errors.push(FieldError {
                reason: "FieldValueTooLong",
                field: format!("metadata.managedFields[{i}].manager"),
                message: format!("Too long: may not be more than {MAX_MANAGER_LEN} bytes"),
            });
            continue;
        }
        let fields = match item.get("fieldsV1") {
            None => FieldSet::new(),
            Some(v) => match FieldSet::from_json(v) {
                Ok(set) => set,
                Err(e) => {
                    errors.push(invalid(i, "fieldsV1", "", &e));
                    continue;
                }
            },
        };
        entries.push(Entry {
            manager: manager.to_owned(),
            operation,
            api_version: s("apiVersion").unwrap_or_default().to_owned(),
            time: s("time").map(str::to_owned),
            subresource: s("subresource").unwrap_or_default().to_owned(),
            fields,
        });
    }
    if errors.is_empty() {
        Ok(entries)
    } else {
        Err(errors)
    }
}

/// The entries as `metadata.managedFields`.
pub fn encode(entries: &[Entry]) -> Value {
    Value::Array(
        entries
            .iter()
            .map(|e| {
                let mut m = Map::new();
                m.insert("manager".into(), json!(e.manager));
                m.insert("operation".into(), json!(e.operation.as_str()));
                m.insert("apiVersion".into(), json!(e.api_version));
                if let Some(time) = &e.time {
                    m.insert("time".into(), json!(time));
                }
                m.insert("fieldsType".into(), json!("FieldsV1"));
                m.insert("fieldsV1".into(), e.fields.to_json());
                if !e.subresource.is_empty() {
                    m.insert("subresource".into(), json!(e.subresource));
                }
                Value::Object(m)
            })
            .collect(),
    )
}

/// Who writes, and how.
#[derive(Debug, Clone, Copy)]
pub struct Writer<'a> {
    /// The manager's name.
    pub manager: &'a str,
    /// The API version written through.
    pub api_version: &'a str,
    /// The subresource written (`""` for the object).
    pub subresource: &'a str,
    /// The time to record.
    pub now: &'a str,
}

/// Records an update that `changed` and `removed` these paths: removed paths are nobody's
/// any more, changed ones become the writer's alone (an update takes what it changes, as
/// Kubernetes' field manager does). A write without a manager (the server's own) only takes
/// fields away from the others.
pub fn record_update(
    entries: &mut Vec<Entry>,
    changed: &FieldSet,
    removed: &FieldSet,
    writer: Option<Writer<'_>>,
) {
    let lost = changed.union(removed);
    if !lost.is_empty() {
        for entry in entries.iter_mut() {
            entry.fields = entry.fields.difference(&lost);
        }
    }
    if let Some(w) = writer {
        if !changed.is_empty() {
            match entries
                .iter_mut()
                .find(|e| e.is(w.manager, Operation::Update, w.api_version, w.subresource))
            {
                Some(entry) => {
                    entry.fields.union_with(changed);
                    entry.time = Some(w.now.to_owned());
                }
                None => entries.push(Entry {
                    manager: w.manager.to_owned(),
                    operation: Operation::Update,
                    api_version: w.api_version.to_owned(),
                    time: Some(w.now.to_owned()),
                    subresource: w.subresource.to_owned(),
                    fields: changed.clone(),
                }),
            }
        }
    }
    entries.retain(|e| !e.fields.is_empty());
    cap_updaters(entries);
}

/// The most `Update` entries an object keeps, as Kubernetes' `capManagers`: every distinct
/// User-Agent would otherwise add one.
pub const MAX_UPDATE_ENTRIES: usize = 10;

/// The manager the oldest `Update` entries are merged into once there are too many.
pub const ANCIENT_CHANGES: &str = "ancient-changes";

/// Merges the oldest `Update` entries into one [`ANCIENT_CHANGES`] entry until at most
/// [`MAX_UPDATE_ENTRIES`] remain.
fn cap_updaters(entries: &mut Vec<Entry>) {
    let updaters = entries
        .iter()
        .filter(|e| e.operation == Operation::Update)
        .count();
    if updaters <= MAX_UPDATE_ENTRIES {
        return;
    }
    // Oldest first (RFC 3339 times in UTC sort as strings); an existing ancient-changes entry
    // is merged again with the rest.
    let mut order: Vec<usize> = (0..entries.len())
        .filter(|&i| entries[i].operation == Operation::Update)
        .collect();
    order.sort_by(|&a, &b| entries[a].time.cmp(&entries[b].time));
    let merge: Vec<usize> = order[..updaters - MAX_UPDATE_ENTRIES + 1].to_vec();
    let mut ancient = Entry {
        manager: ANCIENT_CHANGES.into(),
        operation: Operation::Update,
        api_version: String::new(),
        time: None,
        subresource: String::new(),
        fields: FieldSet::new(),
    };
    for &i in &merge {
        ancient.fields.union_with(&entries[i].fields);
        ancient.api_version.clone_from(&entries[i].api_version);
        ancient.time.clone_from(&entries[i].time);
    }
    let mut i = 0;
    entries.retain(|_| {
        i += 1;
        !merge.contains(&(i - 1))
    });
    entries.push(ancient);
}

/// Fields an apply would change that other managers own.
#[derive(Debug, Default)]
pub struct Conflicts(pub Vec<(Entry, Vec<PathElement>)>);

impl Conflicts {
    /// The message Kubernetes gives (apiserver's `getConflictMessage`).
    pub fn message(&self) -> String {
        if let [(entry, path)] = self.0.as_slice() {
            return format!(
                "Apply failed with 1 conflict: conflict with {}: {}",
                entry.describe(),
                PathDisplay(path)
            );
        }
        let mut by_manager: std::collections::BTreeMap<String, Vec<String>> =
            std::collections::BTreeMap::new();
        for (entry, path) in &self.0 {
            by_manager
                .entry(entry.describe())
                .or_default()
                .push(PathDisplay(path).to_string());
        }
        let mut lines = Vec::new();
        for (manager, paths) in by_manager {
            lines.push(format!("conflicts with {manager}:"));
            lines.extend(paths.into_iter().map(|p| format!("- {p}")));
        }
        format!(
            "Apply failed with {} conflicts: {}",
            self.0.len(),
            lines.join("\n")
        )
    }

    /// `details.causes`: one FieldManagerConflict per field.
    pub fn causes(&self) -> Vec<(String, String)> {
        self.0
            .iter()
            .map(|(entry, path)| {
                (
                    PathDisplay(path).to_string(),
                    format!("conflict with {}", entry.describe()),
                )
            })
            .collect()
    }
}

/// Records an apply by `writer` whose configuration sets `applied`, which would change
/// `changed`: other managers owning changed fields conflict unless `force` takes the fields
/// from them. Returns the paths the writer applied before and gave up that nobody else owns
/// (to remove from the object).
pub fn record_apply(
    entries: &mut Vec<Entry>,
    applied: &FieldSet,
    changed: &FieldSet,
    writer: Writer<'_>,
    force: bool,
) -> Result<FieldSet, Conflicts> {
    let mine = |e: &Entry| e.is(writer.manager, Operation::Apply, "", writer.subresource);
    let mut conflicts = Conflicts::default();
    for entry in entries.iter_mut().filter(|e| !mine(e)) {
        let overlap = entry.fields.intersection(changed);
        if overlap.is_empty() {
            continue;
        }
        if force {
            entry.fields = entry.fields.difference(&overlap);
        } else {
            for path in overlap.paths() {
                conflicts.0.push((entry.clone(), path));
            }
        }
    }
    if !conflicts.0.is_empty() {
        return Err(conflicts);
    }
    let before = entries
        .iter()
        .find(|e| mine(e))
        .map(|e| e.fields.clone())
        .unwrap_or_default();
    let mut others = FieldSet::new();
    for entry in entries.iter().filter(|e| !mine(e)) {
        others.union_with(&entry.fields);
    }
    let dropped = before.difference(applied).difference(&others);
    let changes_anything = !changed.is_empty() || !dropped.is_empty() || before != *applied;
    match entries.iter_mut().find(|e| mine(e)) {
        Some(entry) => {
            entry.fields = applied.clone();
            entry.api_version = writer.api_version.to_owned();
            if changes_anything {
                entry.time = Some(writer.now.to_owned());
            }
        }
        None => entries.push(Entry {
            manager: writer.manager.to_owned(),
            operation: Operation::Apply,
            api_version: writer.api_version.to_owned(),
            time: Some(writer.now.to_owned()),
            subresource: writer.subresource.to_owned(),
            fields: applied.clone(),
        }),
    }
    entries.retain(|e| !e.fields.is_empty());
    Ok(dropped)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(v: Value) -> FieldSet {
        FieldSet::from_json(&v).unwrap()
    }

    fn writer(manager: &str) -> Writer<'_> {
        Writer {
            manager,
            api_version: "apps/v1",
            subresource: "",
            now: "2026-01-01T00:00:00Z",
        }
    }

    #[test]
    fn entries_round_trip_and_bad_ones_are_causes() {
        let doc = json!([{
            "manager": "kubectl", "operation": "Apply", "apiVersion": "apps/v1",
            "time": "2026-01-01T00:00:00Z", "fieldsType": "FieldsV1",
            "fieldsV1": {"f:spec": {"f:replicas": {}}}
        }, {
            "manager": "kubelet", "operation": "Update", "apiVersion": "v1",
            "time": "2026-01-01T00:00:00Z", "fieldsType": "FieldsV1",
            "fieldsV1": {"f:status": {"f:phase": {}}}, "subresource": "status"
        }]);
        assert_eq!(encode(&decode(&doc).unwrap()), doc);
        let bad = json!([
            {"manager": "a", "operation": "Patch", "fieldsType": "FieldsV1"},
            {"manager": "b", "operation": "Update", "fieldsType": "FieldsV2"},
            {"manager": "c", "operation": "Update", "fieldsType": "FieldsV1", "fieldsV1": {"x": {}}},
        ]);
        let errors = decode(&bad).unwrap_err();
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "metadata.managedFields[0].operation",
                "metadata.managedFields[1].fieldsType",
                "metadata.managedFields[2].fieldsV1"
            ]
        );
        assert!(decode(&json!({})).is_err());
    }

    #[test]
    fn updates_take_what_they_change_and_lose_what_they_remove() {
        let mut entries = vec![Entry {
            manager: "a".into(),
            operation: Operation::Apply,
            api_version: "apps/v1".into(),
            time: None,
            subresource: String::new(),
            fields: set(json!({"f:spec": {"f:replicas": {}, "f:paused": {}}})),
        }];
        record_update(
            &mut entries,
            &set(json!({"f:spec": {"f:replicas": {}}})),
            &set(json!({"f:spec": {"f:paused": {}}})),
            Some(writer("b")),
        );
        assert!(entries.iter().all(|e| e.manager == "b"), "{entries:?}");
        assert_eq!(entries[0].operation, Operation::Update);
        // Nothing changed, nothing recorded, the time kept.
        let before = entries.clone();
        record_update(
            &mut entries,
            &FieldSet::new(),
            &FieldSet::new(),
            Some(writer("c")),
        );
        assert_eq!(entries, before);
    }

    #[test]
    fn applies_conflict_force_and_give_up_fields() {
        let replicas = set(json!({"f:spec": {"f:replicas": {}}}));
        let mut entries = vec![Entry {
            manager: "other".into(),
            operation: Operation::Update,
            api_version: "apps/v1".into(),
            time: Some("2026-01-01T00:00:00Z".into()),
            subresource: String::new(),
            fields: replicas.clone(),
        }];
        let conflicts =
            record_apply(&mut entries, &replicas, &replicas, writer("me"), false).unwrap_err();
        assert_eq!(
            conflicts.message(),
            "Apply failed with 1 conflict: conflict with \"other\" using apps/v1: .spec.replicas"
        );
        assert_eq!(conflicts.causes()[0].0, ".spec.replicas");
        // The same value is shared ownership, not a conflict.
        record_apply(
            &mut entries,
            &replicas,
            &FieldSet::new(),
            writer("me"),
            false,
        )
        .unwrap();
        assert_eq!(entries.len(), 2);
        // Dropping a shared field keeps it; forcing takes it.
        let dropped = record_apply(
            &mut entries,
            &FieldSet::new(),
            &FieldSet::new(),
            writer("me"),
            false,
        )
        .unwrap();
        assert!(dropped.is_empty());
        record_apply(&mut entries, &replicas, &replicas, writer("me"), true).unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].manager, "me");
        let dropped = record_apply(
            &mut entries,
            &FieldSet::new(),
            &FieldSet::new(),
            writer("me"),
            false,
        )
        .unwrap();
        assert_eq!(dropped, replicas);
        assert!(entries.is_empty());
    }

    #[test]
    fn update_entries_are_capped_into_ancient_changes() {
        let mut entries = Vec::new();
        for i in 0..12 {
            let manager = format!("m{i}");
            let now = format!("2026-01-01T00:00:{i:02}Z");
            record_update(
                &mut entries,
                &set(json!({"f:data": {format!("f:k{i}"): {}}})),
                &FieldSet::new(),
                Some(Writer {
                    manager: &manager,
                    api_version: "v1",
                    subresource: "",
                    now: &now,
                }),
            );
        }
        assert_eq!(entries.len(), MAX_UPDATE_ENTRIES);
        let ancient = entries
            .iter()
            .find(|e| e.manager == ANCIENT_CHANGES)
            .unwrap();
        assert_eq!(
            ancient.fields.to_json(),
            json!({"f:data": {"f:k0": {}, "f:k1": {}, "f:k2": {}}})
        );
        assert!(entries.iter().any(|e| e.manager == "m11"));
    }

    #[test]
    fn several_conflicts_are_listed_by_manager() {
        let mut entries = vec![Entry {
            manager: "x".into(),
            operation: Operation::Apply,
            api_version: "v1".into(),
            time: None,
            subresource: String::new(),
            fields: set(json!({"f:data": {"f:a": {}, "f:b": {}}})),
        }];
        let all = set(json!({"f:data": {"f:a": {}, "f:b": {}}}));
        let conflicts = record_apply(&mut entries, &all, &all, writer("me"), false).unwrap_err();
        assert_eq!(
            conflicts.message(),
            "Apply failed with 2 conflicts: conflicts with \"x\":\n- .data.a\n- .data.b"
        );
    }
}
