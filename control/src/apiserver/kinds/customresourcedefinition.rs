//! CustomResourceDefinition (`apiextensions.k8s.io/v1`): defaulting and validation
//! (apiextensions-apiserver's `pkg/apis/apiextensions/validation`). Serving what a definition
//! declares is `apiextensions/`'s work.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::{json, Value};

use super::Strategy;
use crate::apiserver::apiextensions::custom::{pointer_of, printer_path, CLEANUP_FINALIZER};
use crate::apiserver::apiextensions::schema::Schema;
use crate::apiserver::error::FieldError;
use crate::apiserver::registry::ResourceDef;
use crate::apiserver::table::{Column, NAME};

/// The groups of the built-in kinds and Kubernetes' own: a definition may not take them
/// without the `api-approved.kubernetes.io` annotation (and never a built-in resource).
const PROTECTED_SUFFIXES: [&str; 2] = [".k8s.io", ".kubernetes.io"];

/// The most versions one definition may declare.
const MAX_VERSIONS: usize = 100;

/// The most selectable fields a version may declare, as Kubernetes allows.
const MAX_SELECTABLE_FIELDS: usize = 8;

/// The declared type of the schema node at a JSON pointer through `properties`.
fn schema_type_at(
    props: &k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaProps,
    pointer: &str,
) -> Option<String> {
    let mut node = props;
    for segment in pointer.split('/').skip(1) {
        node = node.properties.as_ref()?.get(segment)?;
    }
    node.type_.clone()
}

/// Printer column types Kubernetes accepts.
const COLUMN_TYPES: [&str; 5] = ["integer", "number", "string", "boolean", "date"];

pub fn resources() -> Vec<ResourceDef> {
    vec![
        ResourceDef::of::<CustomResourceDefinition>(CustomResourceDefinitions)
            .short_names(&["crd", "crds"])
            .with_status(),
    ]
}

struct CustomResourceDefinitions;

fn dns1035_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[b.len() - 1] != b'-'
}

fn check_label(field: String, value: &str, errs: &mut Vec<FieldError>) {
    if !dns1035_label(value) {
        errs.push(FieldError::invalid(
            field,
            value,
            "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')",
        ));
    }
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

impl Strategy for CustomResourceDefinitions {
    fn default(&self, object: &mut Value) {
        let Some(names) = object.pointer_mut("/spec/names") else {
            return;
        };
        let kind = names
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        if names.get("singular").is_none_or(Value::is_null) && !kind.is_empty() {
            names["singular"] = json!(kind.to_ascii_lowercase());
        }
        if names.get("listKind").is_none_or(Value::is_null) && !kind.is_empty() {
            names["listKind"] = json!(format!("{kind}List"));
        }
        if let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut) {
            spec.entry("conversion")
                .or_insert_with(|| json!({"strategy": "None"}));
        }
    }

    fn validate(&self, object: &Value, errs: &mut Vec<FieldError>) {
        let group = str_at(object, "/spec/group");
        let plural = str_at(object, "/spec/names/plural");
        let name = str_at(object, "/metadata/name");
        if name != format!("{plural}.{group}") {
            errs.push(FieldError::invalid(
                "metadata.name",
                name,
                "must be spec.names.plural+\".\"+spec.group",
            ));
        }
        if group.is_empty() {
            errs.push(FieldError::required("spec.group"));
        } else if !group.contains('.')
            || !skiff_k8s::names::dns_subdomain_errors(group).is_empty()
        {
            errs.push(FieldError::invalid(
                "spec.group",
                group,
                "should be a domain with at least one dot",
            ));
        }
        let approved = object
            .pointer("/metadata/annotations/api-approved.kubernetes.io")
            .and_then(Value::as_str)
            .is_some_and(|a| !a.is_empty());
        let builtin_group = super::builtins().iter().any(|d| d.group == group);
        if builtin_group
            || (PROTECTED_SUFFIXES.iter().any(|s| group.ends_with(s)) && !approved)
        {
            errs.push(FieldError::invalid(
                "spec.group",
                group,
                if builtin_group {
                    "is the group of built-in resources"
                } else {
                    "protected groups (*.k8s.io, *.kubernetes.io) need the annotation api-approved.kubernetes.io"
                },
            ));
        }
        match str_at(object, "/spec/scope") {
            "Namespaced" | "Cluster" => {}
            other => errs.push(FieldError {
                reason: "FieldValueNotSupported",
                field: "spec.scope".into(),
                message: format!(
                    "Unsupported value: {other:?}: supported values: \"Cluster\", \"Namespaced\""
                ),
            }),
        }
        names(object, errs);
        versions(object, errs);
        match str_at(object, "/spec/conversion/strategy") {
            "" | "None" => {}
            "Webhook" => errs.push(FieldError::forbidden(
                "spec.conversion.strategy",
                "Webhook conversion is not supported by skiff; use None",
            )),
            other => errs.push(FieldError {
                reason: "FieldValueNotSupported",
                field: "spec.conversion.strategy".into(),
                message: format!(
                    "Unsupported value: {other:?}: supported values: \"None\", \"Webhook\""
                ),
            }),
        }
    }

    fn validate_update(&self, old: &Value, new: &Value, errs: &mut Vec<FieldError>) {
        for (field, pointer) in [
            ("spec.scope", "/spec/scope"),
            ("spec.group", "/spec/group"),
            ("spec.names.plural", "/spec/names/plural"),
        ] {
            if old.pointer(pointer) != new.pointer(pointer) {
                errs.push(FieldError::immutable(field));
            }
        }
    }

    fn delete_finalizers(&self) -> &'static [&'static str] {
        &[CLEANUP_FINALIZER]
    }

    /// `kubectl get crd` prints NAME and CREATED AT, as against Kubernetes.
    fn columns(&self) -> Vec<Column> {
        vec![
            NAME,
            Column::new("Created At", "date", |o, _| {
                o.pointer("/metadata/creationTimestamp")
                    .cloned()
                    .unwrap_or(Value::Null)
            }),
        ]
    }
}

fn names(object: &Value, errs: &mut Vec<FieldError>) {
    let n = object.pointer("/spec/names").cloned().unwrap_or_default();
    let get = |k: &str| n.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    for field in ["plural", "singular"] {
        let value = get(field);
        if value.is_empty() {
            errs.push(FieldError::required(format!("spec.names.{field}")));
        } else {
            check_label(format!("spec.names.{field}"), &value, errs);
        }
    }
    for field in ["kind", "listKind"] {
        let value = get(field);
        let lower = value.to_ascii_lowercase();
        if value.is_empty() {
            errs.push(FieldError::required(format!("spec.names.{field}")));
        } else if !dns1035_label(&lower) {
            errs.push(FieldError::invalid(
                format!("spec.names.{field}"),
                &value,
                "may have mixed case, but should otherwise match: [a-z]([-a-z0-9]*[a-z0-9])?",
            ));
        }
    }
    if get("kind") == get("listKind") && !get("kind").is_empty() {
        errs.push(FieldError::invalid(
            "spec.names.listKind",
            &get("listKind"),
            "kind and listKind may not be the same",
        ));
    }
    for (i, short) in n
        .get("shortNames")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        check_label(
            format!("spec.names.shortNames[{i}]"),
            short.as_str().unwrap_or(""),
            errs,
        );
    }
    for (i, category) in n
        .get("categories")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        check_label(
            format!("spec.names.categories[{i}]"),
            category.as_str().unwrap_or(""),
            errs,
        );
    }
}

fn versions(object: &Value, errs: &mut Vec<FieldError>) {
    let Ok(crd) = serde_json::from_value::<CustomResourceDefinition>(object.clone()) else {
        return;
    };
    let versions = &crd.spec.versions;
    if versions.is_empty() {
        errs.push(FieldError::invalid(
            "spec.versions",
            "null",
            "must have exactly one version marked as storage version",
        ));
        return;
    }
    if versions.len() > MAX_VERSIONS {
        errs.push(FieldError::forbidden(
            "spec.versions",
            format!("may not have more than {MAX_VERSIONS} versions"),
        ));
        return;
    }
    let storage = versions.iter().filter(|v| v.storage).count();
    if storage != 1 {
        errs.push(FieldError::invalid(
            "spec.versions",
            &format!("{storage}"),
            "must have exactly one version marked as storage version",
        ));
    }
    if !versions.iter().any(|v| v.served) {
        errs.push(FieldError::invalid(
            "spec.versions",
            "",
            "must have at least one served version",
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for (i, v) in versions.iter().enumerate() {
        let at = format!("spec.versions[{i}]");
        check_label(format!("{at}.name"), &v.name, errs);
        if !seen.insert(v.name.clone()) {
            errs.push(FieldError {
                reason: "FieldValueDuplicate",
                field: format!("{at}.name"),
                message: format!("Duplicate value: {:?}", v.name),
            });
        }
        match v.schema.as_ref().and_then(|s| s.open_api_v3_schema.as_ref()) {
            None => errs.push(
                FieldError::required(format!("{at}.schema.openAPIV3Schema"))
                    .with_message("schemas are required"),
            ),
            Some(props) => {
                if let Err(causes) =
                    Schema::compile(props, &format!("{at}.schema.openAPIV3Schema"))
                {
                    errs.extend(causes);
                }
            }
        }
        if let Some(scale) = v.subresources.as_ref().and_then(|s| s.scale.as_ref()) {
            let sub = format!("{at}.subresources.scale");
            if !scale.spec_replicas_path.starts_with(".spec.")
                || pointer_of(&scale.spec_replicas_path).is_none()
            {
                errs.push(FieldError::invalid(
                    format!("{sub}.specReplicasPath"),
                    &scale.spec_replicas_path,
                    "should be a json path under .spec",
                ));
            }
            if !scale.status_replicas_path.starts_with(".status.")
                || pointer_of(&scale.status_replicas_path).is_none()
            {
                errs.push(FieldError::invalid(
                    format!("{sub}.statusReplicasPath"),
                    &scale.status_replicas_path,
                    "should be a json path under .status",
                ));
            }
            if let Some(path) = &scale.label_selector_path {
                if !(path.starts_with(".spec.") || path.starts_with(".status."))
                    || pointer_of(path).is_none()
                {
                    errs.push(FieldError::invalid(
                        format!("{sub}.labelSelectorPath"),
                        path,
                        "should be a json path under either .spec or .status",
                    ));
                }
            }
        }
        let selectable = v.selectable_fields.as_deref().unwrap_or_default();
        if selectable.len() > MAX_SELECTABLE_FIELDS {
            errs.push(FieldError {
                reason: "FieldValueTooMany",
                field: format!("{at}.selectableFields"),
                message: format!(
                    "Too many: {}: must have at most {MAX_SELECTABLE_FIELDS} items",
                    selectable.len()
                ),
            });
        }
        for (j, f) in selectable.iter().enumerate() {
            let field = format!("{at}.selectableFields[{j}].jsonPath");
            let scalar = pointer_of(&f.json_path).and_then(|p| {
                let props = v.schema.as_ref()?.open_api_v3_schema.as_ref()?;
                schema_type_at(props, &p)
            });
            match scalar.as_deref() {
                Some("string" | "integer" | "boolean") => {}
                Some(other) => errs.push(FieldError::invalid(
                    field,
                    &f.json_path,
                    format!("selectable fields must be of type string, integer or boolean, not {other}"),
                )),
                None => errs.push(FieldError::invalid(
                    field,
                    &f.json_path,
                    "must be a simple path (.spec.field) to a field of the schema",
                )),
            }
        }
        for (j, c) in v
            .additional_printer_columns
            .iter()
            .flatten()
            .enumerate()
        {
            let col = format!("{at}.additionalPrinterColumns[{j}]");
            if c.name.is_empty() {
                errs.push(FieldError::required(format!("{col}.name")));
            }
            if !COLUMN_TYPES.contains(&c.type_.as_str()) {
                errs.push(FieldError {
                    reason: "FieldValueNotSupported",
                    field: format!("{col}.type"),
                    message: format!(
                        "Unsupported value: {:?}: supported values: \"boolean\", \"date\", \"integer\", \"number\", \"string\"",
                        c.type_
                    ),
                });
            }
            if let Err(e) = printer_path(&c.json_path) {
                errs.push(FieldError::invalid(
                    format!("{col}.jsonPath"),
                    &c.json_path,
                    format!("must be a simple json path: {e}"),
                ));
            }
        }
    }
}
