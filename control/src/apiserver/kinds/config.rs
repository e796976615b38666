//! core/v1 ConfigMap, Secret and ServiceAccount: plain objects; ConfigMap and Secret print
//! how many keys they hold, and a ServiceAccount issues tokens (`serviceaccounts/token`).

use k8s_openapi::api::core::v1::{ConfigMap as CM, Secret as S, ServiceAccount as SA};
use serde_json::{json, Value};

use super::Strategy;
use crate::apiserver::error::FieldError;
use crate::apiserver::objects::Subresource;
use crate::apiserver::registry::ResourceDef;
use crate::apiserver::table::{Column, AGE, NAME};

/// The served resources.
pub fn resources() -> Vec<ResourceDef> {
    vec![
        ResourceDef::of::<CM>(ConfigMap).short_names(&["cm"]),
        ResourceDef::of::<S>(Secret),
        ResourceDef::of::<SA>(ServiceAccount).short_names(&["sa"]),
    ]
}

/// Drops the line breaks Go's base64 decoder skips from every value of the map `field`.
fn unwrap_base64(o: &mut Value, field: &str) {
    let Some(map) = o.get_mut(field).and_then(Value::as_object_mut) else {
        return;
    };
    for v in map.values_mut() {
        if let Some(s) = v.as_str().filter(|s| s.contains(['\r', '\n'])) {
            *v = Value::String(s.replace(['\r', '\n'], ""));
        }
    }
}

/// The most bytes a ConfigMap's or Secret's data may hold, keys included (Kubernetes'
/// `MaxSecretSize`, 1 MiB, which ConfigMaps share).
pub const MAX_DATA_BYTES: usize = 1024 * 1024;

/// The bytes of the string maps `fields` of `o`: each key's length plus its value's, a value
/// counted by `value_len`.
fn data_bytes(o: &Value, fields: &[&str], value_len: fn(&str) -> usize) -> usize {
    fields
        .iter()
        .filter_map(|f| o.get(*f).and_then(Value::as_object))
        .flatten()
        .map(|(k, v)| k.len() + v.as_str().map_or(0, value_len))
        .sum()
}

/// The length base64 text decodes to.
fn base64_decoded_len(text: &str) -> usize {
    let padding = text.bytes().rev().take_while(|b| *b == b'=').count();
    (text.len() / 4 * 3).saturating_sub(padding)
}

fn data_too_long(field: &str, size: usize, errs: &mut Vec<FieldError>) {
    if size > MAX_DATA_BYTES {
        errs.push(FieldError {
            reason: "FieldValueTooLong",
            field: field.into(),
            message: format!("Too long: must have at most {MAX_DATA_BYTES} bytes"),
        });
    }
}

fn keys(o: &Value, field: &str) -> usize {
    o.get(field).and_then(Value::as_object).map_or(0, |m| m.len())
}

struct ConfigMap;

impl Strategy for ConfigMap {
    fn before_decode(&self, object: &mut Value) {
        unwrap_base64(object, "binaryData");
    }

    fn validate(&self, object: &Value, errs: &mut Vec<FieldError>) {
        // Kubernetes counts data and binaryData (decoded) together and reports the whole
        // object (an empty field path).
        let size = data_bytes(object, &["data"], str::len)
            + data_bytes(object, &["binaryData"], base64_decoded_len);
        data_too_long("", size, errs);
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            NAME,
            Column::new("Data", "integer", |o, _| {
                json!(keys(o, "data") + keys(o, "binaryData"))
            }),
            AGE,
        ]
    }
}

struct Secret;

impl Strategy for Secret {
    fn before_decode(&self, object: &mut Value) {
        unwrap_base64(object, "data");
    }

    fn validate(&self, object: &Value, errs: &mut Vec<FieldError>) {
        data_too_long(
            "data",
            data_bytes(object, &["data"], base64_decoded_len),
            errs,
        );
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            NAME,
            Column::new("Type", "string", |o, _| {
                json!(o.get("type").and_then(Value::as_str).unwrap_or("Opaque"))
            }),
            Column::new("Data", "integer", |o, _| json!(keys(o, "data"))),
            AGE,
        ]
    }

    fn field_selectors(&self) -> Vec<&str> {
        vec!["type"]
    }
}

struct ServiceAccount;

impl Strategy for ServiceAccount {
    /// `serviceaccounts/{name}/token`, a TokenRequest (`auth::service_account::token_request`).
    fn subresource(&self, name: &str, namespaced_path: bool) -> Option<Subresource> {
        (name == "token" && namespaced_path).then_some(Subresource::Token)
    }

    fn discovery_subresources(&self) -> Vec<Value> {
        vec![json!({
            "name": "serviceaccounts/token", "singularName": "", "namespaced": true,
            "group": "authentication.k8s.io", "version": "v1",
            "kind": "TokenRequest", "verbs": ["create"],
        })]
    }
}
