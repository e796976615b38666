//! Field selectors in the string syntax of `?fieldSelector=` (`path=v`, `path==v`,
//! `path!=v` over a fixed set of paths per kind), and the list filter that applies them with a
//! label selector (`skiff_k8s::labels`, the `?labelSelector=` syntax) to stored objects.

use serde_json::Value;
use skiff_k8s::labels::LabelSelector;

/// Errors parsing a selector.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SelectorError {
    /// The selector string does not parse.
    #[error("unable to parse requirement: {0}")]
    Syntax(String),
    /// The field path cannot be selected on for this kind.
    #[error("field label not supported: {0}")]
    UnsupportedField(String),
    /// The label selector does not parse.
    #[error(transparent)]
    Label(#[from] skiff_k8s::labels::LabelSelectorError),
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
        // Empty terms are skipped, as Kubernetes' fields.ParseSelector does: kr8s sends
        // `metadata.name=x,` with a trailing comma.
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
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
        self.labels.matches_map(&m.labels)
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
        // Empty terms are skipped (kr8s sends a trailing comma), but a term is still checked.
        assert_eq!(
            FieldSelector::parse("metadata.name=p,", &allowed),
            FieldSelector::parse("metadata.name=p", &allowed)
        );
        assert!(FieldSelector::parse(",,", &allowed).unwrap().0.is_empty());
        assert!(FieldSelector::parse("metadata.name,", &allowed).is_err());
    }
}
