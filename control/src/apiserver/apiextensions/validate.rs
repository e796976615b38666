//! Validation of a custom resource against its compiled schema (kube-openapi's `validate` as
//! apiextensions-apiserver runs it): every cause is collected, with Kubernetes' field paths
//! and phrasing, so a 422 lists all of them.

use std::collections::HashSet;

use serde_json::Value;

use super::schema::{Additional, ListType, Node, Type};
use crate::apiserver::error::FieldError;

/// Go's `%#v`-like rendering of a value in a message: strings quoted, the rest as JSON.
fn render(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn type_invalid(path: &str, v: &Value, expected: &str, actual: &str) -> FieldError {
    FieldError {
        reason: "FieldValueTypeInvalid",
        field: path.to_owned(),
        message: format!(
            "Invalid value: {}: {path} in body must be of type {expected}: {actual:?}",
            render(v)
        ),
    }
}

fn invalid(path: &str, v: &Value, detail: String) -> FieldError {
    FieldError {
        reason: "FieldValueInvalid",
        field: path.to_owned(),
        message: format!("Invalid value: {}: {detail}", render(v)),
    }
}

fn child(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_owned()
    } else {
        format!("{path}.{name}")
    }
}

/// Validates `v` against `n` at `path` (`""` for the root), appending every cause.
pub fn value(n: &Node, v: &Value, path: &str, errs: &mut Vec<FieldError>) {
    if v.is_null() {
        if !n.nullable && (n.ty.is_some() || n.int_or_string) {
            let expected = n.ty.map_or("string", Type::name);
            errs.push(type_invalid(path, v, expected, "null"));
        }
        return;
    }
    if n.int_or_string {
        if !matches!(type_name(v), "integer" | "string") {
            errs.push(type_invalid(path, v, "integer or string", type_name(v)));
            return;
        }
    } else if let Some(ty) = n.ty {
        let actual = type_name(v);
        let ok = match ty {
            Type::Number => matches!(actual, "integer" | "number"),
            other => other.name() == actual,
        };
        if !ok {
            errs.push(type_invalid(path, v, ty.name(), actual));
            return;
        }
    }
    if !n.enumeration.is_empty() && !n.enumeration.contains(v) {
        let supported: Vec<String> = n.enumeration.iter().map(render).collect();
        errs.push(FieldError {
            reason: "FieldValueNotSupported",
            field: path.to_owned(),
            message: format!(
                "Unsupported value: {}: supported values: {}",
                render(v),
                supported.join(", ")
            ),
        });
    }
    match v {
        Value::String(s) => string(n, v, s, path, errs),
        Value::Number(num) => number(n, v, num.as_f64().unwrap_or_default(), path, errs),
        Value::Array(items) => array(n, v, items, path, errs),
        Value::Object(map) => object(n, v, map, path, errs),
        _ => {}
    }
    for sub in &n.all_of {
        value(sub, v, path, errs);
    }
    if !n.any_of.is_empty() && !n.any_of.iter().any(|s| passes(s, v)) {
        errs.push(invalid(
            path,
            v,
            format!("{path} in body must be valid against any of the schemas (anyOf)"),
        ));
    }
    if !n.one_of.is_empty() && n.one_of.iter().filter(|s| passes(s, v)).count() != 1 {
        errs.push(invalid(
            path,
            v,
            format!("{path} in body must be valid against exactly one of the schemas (oneOf)"),
        ));
    }
    if let Some(not) = &n.not {
        if passes(not, v) {
            errs.push(invalid(
                path,
                v,
                format!("{path} in body must not be valid against the schema (not)"),
            ));
        }
    }
}

fn passes(n: &Node, v: &Value) -> bool {
    let mut errs = Vec::new();
    value(n, v, "", &mut errs);
    errs.is_empty()
}

fn string(n: &Node, v: &Value, s: &str, path: &str, errs: &mut Vec<FieldError>) {
    let chars = s.chars().count() as i64;
    if let Some(max) = n.max_length.filter(|&m| chars > m) {
        errs.push(FieldError {
            reason: "FieldValueTooLong",
            field: path.to_owned(),
            message: format!("Too long: may not be more than {max} bytes"),
        });
    }
    if let Some(min) = n.min_length.filter(|&m| chars < m) {
        errs.push(invalid(
            path,
            v,
            format!("{path} in body should be at least {min} chars long"),
        ));
    }
    if let Some((source, re)) = &n.pattern {
        if !re.is_match(s) {
            errs.push(invalid(
                path,
                v,
                format!("{path} in body should match '{source}'"),
            ));
        }
    }
    if let Some(format) = n.format.as_deref() {
        if !format_ok(format, s) {
            errs.push(type_invalid(path, v, format, s));
        }
    }
}

/// The string formats Kubernetes checks; unknown formats pass, as there.
fn format_ok(format: &str, s: &str) -> bool {
    use base64::Engine as _;
    match format {
        "date-time" | "datetime" => s.parse::<jiff::Timestamp>().is_ok(),
        "date" => s.parse::<jiff::civil::Date>().is_ok() && s.len() == 10,
        "byte" => base64::engine::general_purpose::STANDARD.decode(s).is_ok(),
        "uuid" => uuid::Uuid::try_parse(s).is_ok() && s.len() == 36,
        "ipv4" => s.parse::<std::net::Ipv4Addr>().is_ok(),
        "ipv6" => s.parse::<std::net::Ipv6Addr>().is_ok(),
        // Go's net.ParseCIDR: either family, host bits allowed.
        "cidr" => s.split_once('/').is_some_and(|(ip, prefix)| {
            let max = match ip.parse::<std::net::IpAddr>() {
                Ok(std::net::IpAddr::V4(_)) => 32,
                Ok(std::net::IpAddr::V6(_)) => 128,
                Err(_) => return false,
            };
            prefix.parse::<u8>().is_ok_and(|p| p <= max)
        }),
        "hostname" => skiff_k8s::names::dns_subdomain_errors(s).is_empty(),
        _ => true,
    }
}

fn number(n: &Node, v: &Value, x: f64, path: &str, errs: &mut Vec<FieldError>) {
    if let Some((min, exclusive)) = n.minimum {
        if x < min || (exclusive && x == min) {
            let relation = if exclusive {
                "greater than"
            } else {
                "greater than or equal to"
            };
            errs.push(invalid(
                path,
                v,
                format!("{path} in body should be {relation} {}", trim(min)),
            ));
        }
    }
    if let Some((max, exclusive)) = n.maximum {
        if x > max || (exclusive && x == max) {
            let relation = if exclusive {
                "less than"
            } else {
                "less than or equal to"
            };
            errs.push(invalid(
                path,
                v,
                format!("{path} in body should be {relation} {}", trim(max)),
            ));
        }
    }
    if let Some(m) = n.multiple_of {
        let q = x / m;
        if (q - q.round()).abs() > 1e-9 {
            errs.push(invalid(
                path,
                v,
                format!("{path} in body should be a multiple of {}", trim(m)),
            ));
        }
    }
    if n.format.as_deref() == Some("int32")
        && v.as_i64()
            .is_none_or(|i| i < i64::from(i32::MIN) || i > i64::from(i32::MAX))
    {
        errs.push(type_invalid(path, v, "int32", &v.to_string()));
    }
}

/// A bound as Go prints a float64 with `%v`: `10`, not `10.0`.
fn trim(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        x.to_string()
    }
}

fn array(n: &Node, v: &Value, items: &[Value], path: &str, errs: &mut Vec<FieldError>) {
    let len = items.len() as i64;
    if let Some(max) = n.max_items.filter(|&m| len > m) {
        errs.push(FieldError {
            reason: "FieldValueTooMany",
            field: path.to_owned(),
            message: format!("Too many: {len}: must have at most {max} items"),
        });
    }
    if let Some(min) = n.min_items.filter(|&m| len < m) {
        errs.push(invalid(
            path,
            v,
            format!("{path} in body should have at least {min} items"),
        ));
    }
    if let Some(item) = &n.items {
        for (i, x) in items.iter().enumerate() {
            value(item, x, &format!("{path}[{i}]"), errs);
        }
    }
    match &n.list_type {
        Some(ListType::Set) => {
            let mut seen = HashSet::new();
            for (i, x) in items.iter().enumerate() {
                if !seen.insert(x.to_string()) {
                    errs.push(duplicate(&format!("{path}[{i}]"), x));
                }
            }
        }
        Some(ListType::Map(keys)) => {
            let mut seen = HashSet::new();
            for (i, x) in items.iter().enumerate() {
                let key: Vec<String> = keys
                    .iter()
                    .map(|k| x.get(k).map(Value::to_string).unwrap_or_default())
                    .collect();
                if !seen.insert(key) {
                    let shown: serde_json::Map<String, Value> = keys
                        .iter()
                        .filter_map(|k| Some((k.clone(), x.get(k)?.clone())))
                        .collect();
                    errs.push(duplicate(&format!("{path}[{i}]"), &Value::Object(shown)));
                }
            }
        }
        _ => {}
    }
}

fn duplicate(path: &str, v: &Value) -> FieldError {
    FieldError {
        reason: "FieldValueDuplicate",
        field: path.to_owned(),
        message: format!("Duplicate value: {}", render(v)),
    }
}

fn object(
    n: &Node,
    v: &Value,
    map: &serde_json::Map<String, Value>,
    path: &str,
    errs: &mut Vec<FieldError>,
) {
    let len = map.len() as i64;
    if let Some(max) = n.max_properties.filter(|&m| len > m) {
        errs.push(FieldError {
            reason: "FieldValueTooMany",
            field: path.to_owned(),
            message: format!("Too many: {len}: must have at most {max} items"),
        });
    }
    if let Some(min) = n.min_properties.filter(|&m| len < m) {
        errs.push(invalid(
            path,
            v,
            format!("{path} in body should have at least {min} properties"),
        ));
    }
    for required in &n.required {
        if !map.contains_key(required) {
            errs.push(FieldError::required(child(path, required)));
        }
    }
    for (k, x) in map {
        let at = child(path, k);
        match n.properties.get(k) {
            Some(p) => value(p, x, &at, errs),
            None => {
                if let Additional::Schema(s) = &n.additional {
                    value(s, x, &at, errs);
                }
            }
        }
    }
    if n.embedded {
        for field in ["apiVersion", "kind"] {
            if map
                .get(field)
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                errs.push(
                    FieldError::required(child(path, field)).with_message("must not be empty"),
                );
            }
        }
    }
}

/// Runs the CEL rules of the schema on `new`. Without `old` (create, and every update's
/// validation of the new object) the plain rules run everywhere; with `old` (an update) the
/// transition rules run where an old value corresponds: through object fields and map values,
/// and associative (`map`) list items with the same keys, as Kubernetes correlates them.
pub fn rules(n: &Node, new: &Value, old: Option<&Value>, path: &str, errs: &mut Vec<FieldError>) {
    if new.is_null() {
        return;
    }
    if !n.rules.is_empty() {
        let type_name = n.ty.map_or_else(|| type_name(new), Type::name);
        super::cel::check(&n.rules, type_name, new, old, path, errs);
    }
    match new {
        Value::Object(map) => {
            for (k, x) in map {
                let child_node = match n.properties.get(k) {
                    Some(p) => p,
                    None => match &n.additional {
                        Additional::Schema(s) => s,
                        _ => continue,
                    },
                };
                let old_child = old.and_then(|o| o.get(k));
                if old.is_some() && old_child.is_none() {
                    continue;
                }
                rules(child_node, x, old_child, &child(path, k), errs);
            }
        }
        Value::Array(items) => {
            let Some(item) = &n.items else {
                return;
            };
            for (i, x) in items.iter().enumerate() {
                let at = format!("{path}[{i}]");
                match old {
                    None => rules(item, x, None, &at, errs),
                    Some(old) => {
                        let Some(ListType::Map(keys)) = &n.list_type else {
                            continue;
                        };
                        let same = old
                            .as_array()
                            .into_iter()
                            .flatten()
                            .find(|o| keys.iter().all(|k| o.get(k) == x.get(k)));
                        if let Some(o) = same {
                            rules(item, x, Some(o), &at, errs);
                        }
                    }
                }
            }
        }
        _ => {}
    }
}
