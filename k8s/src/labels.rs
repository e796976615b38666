//! Label selectors: the string syntax of `?labelSelector=` (`k=v`, `k==v`, `k!=v`,
//! `k in (a,b)`, `k notin (a,b)`, `k`, `!k`, comma-separated, all must hold) and
//! `metav1.LabelSelector` objects (matchLabels, matchExpressions), as JSON or typed.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector as LabelSelectorObject;
use serde_json::Value;

/// Why a label selector is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelSelectorError {
    /// The selector does not parse, or names an invalid key, value or operator.
    #[error("unable to parse requirement: {0}")]
    Syntax(String),
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
    crate::names::label_key_errors(key).is_empty()
}

fn valid_value(value: &str) -> bool {
    crate::names::label_value_errors(value).is_empty()
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

fn parse_set(s: &str, whole: &str) -> Result<BTreeSet<String>, LabelSelectorError> {
    let inner = s
        .trim()
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| {
            LabelSelectorError::Syntax(format!("{whole}: expected a parenthesised set of values"))
        })?;
    let values: BTreeSet<String> = inner
        .split(',')
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .collect();
    if values.is_empty() && !inner.trim().is_empty() {
        return Err(LabelSelectorError::Syntax(whole.into()));
    }
    if let Some(bad) = values.iter().find(|v| !valid_value(v)) {
        return Err(LabelSelectorError::Syntax(format!(
            "{whole}: invalid label value {bad:?}"
        )));
    }
    Ok(values)
}

impl LabelSelector {
    /// Parses the string syntax.
    pub fn parse(s: &str) -> Result<Self, LabelSelectorError> {
        let mut reqs = Vec::new();
        if s.trim().is_empty() {
            return Ok(Self(reqs));
        }
        for part in split_top_level(s) {
            let part = part.trim();
            if part.is_empty() {
                return Err(LabelSelectorError::Syntax(format!(
                    "{s}: empty requirement"
                )));
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
                return Err(LabelSelectorError::Syntax(format!(
                    "{part}: invalid label key {key:?}"
                )));
            }
            if let Some(bad) = values.into_iter().flatten().find(|v| !valid_value(v)) {
                return Err(LabelSelectorError::Syntax(format!(
                    "{part}: invalid label value {bad:?}"
                )));
            }
            reqs.push(req);
        }
        Ok(Self(reqs))
    }

    /// Builds a selector from a `metav1.LabelSelector` object (matchLabels, matchExpressions).
    pub fn from_object(selector: &Value) -> Result<Self, LabelSelectorError> {
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
                other => {
                    return Err(LabelSelectorError::Syntax(format!(
                        "unknown operator {other:?}"
                    )))
                }
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
        self.matches_with(|k| labels.and_then(|l| l.get(k)).and_then(Value::as_str))
    }

    /// Matches a label map.
    pub fn matches_map(&self, labels: &BTreeMap<String, String>) -> bool {
        self.matches_with(|k| labels.get(k).map(String::as_str))
    }

    fn matches_with<'a>(&self, get: impl Fn(&str) -> Option<&'a str>) -> bool {
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

/// Whether a label selector matches labels (a missing selector matches nothing, an empty one
/// everything, as for affinity terms).
pub fn selector_matches(
    selector: Option<&LabelSelectorObject>,
    labels: Option<&BTreeMap<String, String>>,
) -> bool {
    let Some(selector) = selector else {
        return false;
    };
    let empty = BTreeMap::new();
    let labels = labels.unwrap_or(&empty);
    selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v))
        && selector.match_expressions.iter().flatten().all(|e| {
            let value = labels.get(&e.key);
            let values = e.values.as_deref().unwrap_or_default();
            match e.operator.as_str() {
                "In" => value.is_some_and(|v| values.contains(v)),
                "NotIn" => value.is_none_or(|v| !values.contains(v)),
                "Exists" => value.is_some(),
                "DoesNotExist" => value.is_none(),
                _ => false,
            }
        })
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
    fn typed_selectors_match_as_affinity_terms_read_them() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;
        let labels = BTreeMap::from([("app".to_owned(), "web".to_owned())]);
        assert!(
            !selector_matches(None, Some(&labels)),
            "missing matches nothing"
        );
        let empty = LabelSelectorObject::default();
        assert!(
            selector_matches(Some(&empty), None),
            "empty matches everything"
        );
        let expr = |op: &str, values: &[&str]| LabelSelectorObject {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "app".into(),
                operator: op.into(),
                values: Some(values.iter().map(|v| (*v).to_owned()).collect()),
            }]),
            ..LabelSelectorObject::default()
        };
        assert!(selector_matches(Some(&expr("In", &["web"])), Some(&labels)));
        assert!(!selector_matches(
            Some(&expr("NotIn", &["web"])),
            Some(&labels)
        ));
        assert!(selector_matches(Some(&expr("Exists", &[])), Some(&labels)));
        assert!(!selector_matches(Some(&expr("Gt", &["1"])), Some(&labels)));
    }
}
