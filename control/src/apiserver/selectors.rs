//! Label and field selectors in the string syntax of `?labelSelector=` and `?fieldSelector=`.
//!
//! Labels: `k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`, `k`, `!k`, comma-separated
//! (all must hold). Fields: `path=v`, `path==v`, `path!=v` over a fixed set of paths per kind.

use std::collections::BTreeSet;

use serde_json::Value;

/// Errors parsing a selector.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SelectorError {
    /// The selector string does not parse.
    #[error("unable to parse requirement: {0}")]
    Syntax(String),
    /// The field path cannot be selected on for this kind.
    #[error("field label not supported: {0}")]
    UnsupportedField(String),
}

/// One label requirement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    /// `k=v` / `k==v` / `k in (..)`.
    In(String, BTreeSet<String>),
    /// `k!=v` / `k notin (..)`: true also when the label is absent.
    NotIn(String, BTreeSet<String>),
    /// `k`.
    Exists(String),
    /// `!k`.
    DoesNotExist(String),
}

/// A parsed label selector; empty matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector(pub Vec<Requirement>);

fn valid_key(key: &str) -> bool {
    crate::apiserver::validation::label_key_errors(key).is_empty()
}

fn valid_value(value: &str) -> bool {
    crate::apiserver::validation::label_value_errors(value).is_empty()
}

/// Splits on commas that are not inside parentheses.
fn split_top_level(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

fn parse_set(s: &str, whole: &str) -> Result<BTreeSet<String>, SelectorError> {
    let inner = s
        .trim()
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| {
            SelectorError::Syntax(format!("{whole}: expected a parenthesised set of values"))
        })?;
    let values: BTreeSet<String> = inner
        .split(',')
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .collect();
    if values.is_empty() && !inner.trim().is_empty() {
        return Err(SelectorError::Syntax(whole.into()));
    }
    if let Some(bad) = values.iter().find(|v| !valid_value(v)) {
        return Err(SelectorError::Syntax(format!(
            "{whole}: invalid label value {bad:?}"
        )));
    }
    Ok(values)
}

impl LabelSelector {
    /// Parses the string syntax.
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        let mut reqs = Vec::new();
        if s.trim().is_empty() {
            return Ok(Self(reqs));
        }
        for part in split_top_level(s) {
            let part = part.trim();
            if part.is_empty() {
                return Err(SelectorError::Syntax(format!("{s}: empty requirement")));
            }
            let req = if let Some(key) = part.strip_prefix('!') {
                Requirement::DoesNotExist(key.trim().to_owned())
            } else if let Some((k, v)) = part.split_once("!=") {
                Requirement::NotIn(k.trim().to_owned(), [v.trim().to_owned()].into())
            } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                Requirement::In(k.trim().to_owned(), [v.trim().to_owned()].into())
            } else if let Some((k, set)) = split_keyword(part, "notin") {
                Requirement::NotIn(k, parse_set(set, part)?)
            } else if let Some((k, set)) = split_keyword(part, "in") {
                Requirement::In(k, parse_set(set, part)?)
            } else {
                Requirement::Exists(part.to_owned())
            };
            let (key, values) = match &req {
                Requirement::In(k, v) | Requirement::NotIn(k, v) => (k, Some(v)),
                Requirement::Exists(k) | Requirement::DoesNotExist(k) => (k, None),
            };
            if !valid_key(key) {
                return Err(SelectorError::Syntax(format!(
                    "{part}: invalid label key {key:?}"
                )));
            }
            if let Some(bad) = values.into_iter().flatten().find(|v| !valid_value(v)) {
                return Err(SelectorError::Syntax(format!(
                    "{part}: invalid label value {bad:?}"
                )));
            }
            reqs.push(req);
        }
        Ok(Self(reqs))
    }

    /// Builds a selector from a `metav1.LabelSelector` object (matchLabels, matchExpressions).
    pub fn from_object(selector: &Value) -> Result<Self, SelectorError> {
        let mut reqs = Vec::new();
        if let Some(labels) = selector.get("matchLabels").and_then(Value::as_object) {
            for (k, v) in labels {
                reqs.push(Requirement::In(
                    k.clone(),
                    [v.as_str().unwrap_or_default().to_owned()].into(),
                ));
            }
        }
        for expr in selector
            .get("matchExpressions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let key = expr
                .get("key")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            let values: BTreeSet<String> = expr
                .get("values")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect();
            reqs.push(match expr.get("operator").and_then(Value::as_str) {
                Some("In") => Requirement::In(key, values),
                Some("NotIn") => Requirement::NotIn(key, values),
                Some("Exists") => Requirement::Exists(key),
                Some("DoesNotExist") => Requirement::DoesNotExist(key),
                other => return Err(SelectorError::Syntax(format!("unknown operator {other:?}"))),
            });
        }
        Ok(Self(reqs))
    }

    /// Whether the selector matches nothing in particular (i.e. everything).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Matches an object's `metadata.labels`.
    pub fn matches(&self, object: &Value) -> bool {
        let labels = object
            .pointer("/metadata/labels")
            .and_then(Value::as_object);
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.0.iter().all(|req| match req {
            Requirement::In(k, vals) => get(k).is_some_and(|v| vals.contains(v)),
            Requirement::NotIn(k, vals) => get(k).is_none_or(|v| !vals.contains(v)),
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::DoesNotExist(k) => get(k).is_none(),
        })
    }
}

/// `key in (a,b)`: returns the key and the set text, when `keyword` separates them.
fn split_keyword<'a>(part: &'a str, keyword: &str) -> Option<(String, &'a str)> {
    let (key, rest) = part.split_once(char::is_whitespace)?;
    let rest = rest.trim_start().strip_prefix(keyword)?;
    rest.starts_with(|c: char| c.is_whitespace() || c == '(')
        .then(|| (key.to_owned(), rest))
}

/// One field requirement: path equals (or not) a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldRequirement {
    /// Dotted path, e.g. `spec.nodeName`.
    pub path: String,
    /// The value compared with.
    pub value: String,
    /// `!=` rather than `=`.
    pub negated: bool,
}

/// A parsed field selector; empty matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector(pub Vec<FieldRequirement>);

impl FieldSelector {
    /// Parses the string syntax, allowing metadata.name, metadata.namespace and `allowed`.
    pub fn parse(s: &str, allowed: &[&str]) -> Result<Self, SelectorError> {
        let mut reqs = Vec::new();
        if s.trim().is_empty() {
            return Ok(Self(reqs));
        }
        for part in s.split(',') {
            let part = part.trim();
            let (path, value, negated) = if let Some((p, v)) = part.split_once("!=") {
                (p, v, true)
            } else if let Some((p, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                (p, v, false)
            } else {
                return Err(SelectorError::Syntax(format!(
                    "{part}: field selectors need = or !="
                )));
            };
            let path = path.trim();
            if path != "metadata.name" && path != "metadata.namespace" && !allowed.contains(&path) {
                return Err(SelectorError::UnsupportedField(path.into()));
            }
            reqs.push(FieldRequirement {
                path: path.into(),
                value: value.trim().into(),
                negated,
            });
        }
        Ok(Self(reqs))
    }

    /// The value of `metadata.name` when the selector pins it (kubectl's single-object watch).
    pub fn pinned_name(&self) -> Option<&str> {
        self.0
            .iter()
            .find(|r| r.path == "metadata.name" && !r.negated)
            .map(|r| r.value.as_str())
    }

    /// Matches an object.
    pub fn matches(&self, object: &Value) -> bool {
        self.0.iter().all(|req| {
            let pointer = format!("/{}", req.path.replace('.', "/"));
            let actual = match object.pointer(&pointer) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Bool(b)) => b.to_string(),
                Some(Value::Number(n)) => n.to_string(),
                _ => String::new(),
            };
            (actual == req.value) != req.negated
        })
    }
}

/// The parts of an object's metadata that list filters read, decoded without building the
/// whole document.
#[derive(Debug, Default, serde::Deserialize)]
struct MetaOnly {
    #[serde(default)]
    metadata: MetaFields,
}

#[derive(Debug, Default, serde::Deserialize)]
struct MetaFields {
    #[serde(default)]
    name: String,
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    labels: std::collections::BTreeMap<String, String>,
}

/// A label and a field selector together, matched against stored JSON bytes.
#[derive(Debug, Clone, Copy)]
pub struct Filter<'a> {
    /// Label requirements.
    pub labels: &'a LabelSelector,
    /// Field requirements.
    pub fields: &'a FieldSelector,
}

impl Filter<'_> {
    /// Whether the filter lets everything through.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.fields.0.is_empty()
    }

    /// Matches a stored object. Only metadata is decoded unless a field selector reads beyond
    /// it; `full` supplies the parsed document then (so callers can cache it).
    pub fn matches_raw<'v>(
        &self,
        raw: &[u8],
        full: impl FnOnce() -> Option<std::borrow::Cow<'v, Value>>,
    ) -> bool {
        if self.is_empty() {
            return true;
        }
        let only_meta = self
            .fields
            .0
            .iter()
            .all(|r| r.path == "metadata.name" || r.path == "metadata.namespace");
        if !only_meta {
            return full().is_some_and(|v| self.labels.matches(&v) && self.fields.matches(&v));
        }
        let Ok(meta) = serde_json::from_slice::<MetaOnly>(raw) else {
            return false;
        };
        let m = &meta.metadata;
        let labels_ok = self.labels.0.iter().all(|req| match req {
            Requirement::In(k, vals) => m.labels.get(k).is_some_and(|v| vals.contains(v)),
            Requirement::NotIn(k, vals) => m.labels.get(k).is_none_or(|v| !vals.contains(v)),
            Requirement::Exists(k) => m.labels.contains_key(k),
            Requirement::DoesNotExist(k) => !m.labels.contains_key(k),
        });
        labels_ok
            && self.fields.0.iter().all(|r| {
                let actual = if r.path == "metadata.name" {
                    &m.name
                } else {
                    &m.namespace
                };
                (actual == &r.value) != r.negated
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(labels: Value) -> Value {
        json!({"metadata": {"name": "p", "namespace": "default", "labels": labels}, "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}})
    }

    #[test]
    fn equality_and_inequality() {
        let p = pod(json!({"app": "kubia", "env": "prod"}));
        assert!(LabelSelector::parse("app=kubia").unwrap().matches(&p));
        assert!(LabelSelector::parse("app==kubia,env=prod")
            .unwrap()
            .matches(&p));
        assert!(!LabelSelector::parse("app=kubia,env=dev")
            .unwrap()
            .matches(&p));
        assert!(LabelSelector::parse("env!=dev").unwrap().matches(&p));
        assert!(
            LabelSelector::parse("missing!=x").unwrap().matches(&p),
            "!= holds when the label is absent"
        );
    }

    #[test]
    fn set_based() {
        let p = pod(json!({"app": "kubia", "env": "prod"}));
        assert!(LabelSelector::parse("env in (prod,dev)")
            .unwrap()
            .matches(&p));
        assert!(LabelSelector::parse("env notin (dev, qa)")
            .unwrap()
            .matches(&p));
        assert!(!LabelSelector::parse("env notin (prod)")
            .unwrap()
            .matches(&p));
        assert!(LabelSelector::parse("app").unwrap().matches(&p));
        assert!(LabelSelector::parse("!creation_method")
            .unwrap()
            .matches(&p));
        assert!(!LabelSelector::parse("!app").unwrap().matches(&p));
        assert!(LabelSelector::parse("app,env in (prod),!x")
            .unwrap()
            .matches(&p));
        assert!(LabelSelector::parse("").unwrap().matches(&p));
    }

    #[test]
    fn bad_syntax_is_rejected() {
        assert!(
            LabelSelector::parse("app=").is_ok(),
            "empty value is a valid label value"
        );
        assert!(LabelSelector::parse("a b c").is_err());
        assert!(LabelSelector::parse("app in prod").is_err());
        assert!(LabelSelector::parse("-bad=x").is_err());
        assert!(LabelSelector::parse("app=,").is_err());
    }

    #[test]
    fn from_object() {
        let sel = LabelSelector::from_object(&json!({"matchLabels": {"app": "kubia"}, "matchExpressions": [{"key": "env", "operator": "In", "values": ["prod"]}]})).unwrap();
        assert!(sel.matches(&pod(json!({"app": "kubia", "env": "prod"}))));
        assert!(!sel.matches(&pod(json!({"app": "kubia"}))));
    }

    #[test]
    fn raw_matching_agrees_with_value_matching() {
        let p = pod(json!({"app": "kubia", "env": "prod"}));
        let raw = serde_json::to_vec(&p).unwrap();
        let allowed = ["spec.nodeName", "status.phase"];
        for (l, f) in [
            ("app=kubia", ""),
            ("env notin (prod)", ""),
            ("!x", "metadata.name=p"),
            ("", "spec.nodeName=n1"),
            ("app", "status.phase!=Running"),
            ("", "metadata.namespace!=default"),
        ] {
            let labels = LabelSelector::parse(l).unwrap();
            let fields = FieldSelector::parse(f, &allowed).unwrap();
            let filter = Filter {
                labels: &labels,
                fields: &fields,
            };
            let expected = labels.matches(&p) && fields.matches(&p);
            assert_eq!(
                filter.matches_raw(&raw, || Some(std::borrow::Cow::Borrowed(&p))),
                expected,
                "{l} / {f}"
            );
        }
    }

    #[test]
    fn fields() {
        let p = pod(json!({}));
        let allowed = ["spec.nodeName", "status.phase"];
        assert!(FieldSelector::parse("spec.nodeName=n1", &allowed)
            .unwrap()
            .matches(&p));
        assert!(
            FieldSelector::parse("status.phase!=Pending,metadata.name=p", &allowed)
                .unwrap()
                .matches(&p)
        );
        assert!(
            !FieldSelector::parse("metadata.namespace=kube-system", &allowed)
                .unwrap()
                .matches(&p)
        );
        assert!(!FieldSelector::parse("spec.nodeName=", &allowed)
            .unwrap()
            .matches(&pod(json!({}))));
        assert_eq!(
            FieldSelector::parse("spec.foo=x", &allowed),
            Err(SelectorError::UnsupportedField("spec.foo".into()))
        );
    }
}
